#!/usr/bin/env python
"""Shapley estimators against their peers: accuracy per second, time to a target error, in one run.

Two FL rounds of the paper's kind (scripts/bench_shapley.py's ``setup``: clients of 10 quality
types, the 784-200-10 MLP, one FedAvg round, utility = minus the validation loss, v(empty) = 0):

* K=100 (the paper's round): target 5% relative L2 error against a reference, the mean of at
  least ``--ref-perms`` (16,000) ShapleyEngine permutations from the paired sampler on a
  stream of its own, continued until its relative standard error (from the per-client variance)
  is below 1.5% or ``--ref-budget-s`` (1,500 s) is spent; the JSON flags a reference that is not.
  Errors against it are also given with its noise removed (the method's stream is independent).
* K=16 (16 clients spread over the 10 types as ``partition_by_type`` does): target 1% against the
  exact Shapley values (all 65,536 coalitions through the engine).

Methods (each a class whose ``run(budget_s)`` returns a :class:`Trace` of (elapsed_s, estimate)
snapshots, so errors compare at equal wall-clock budgets):

* ``alg1_naive``: Algorithm 1 (uniform PoSAP permutations, mean of marginals), NaiveUtility.
* ``gtg``: GTG-Shapley (Liu et al., 2022) on NaiveUtility: guided sampling (in every round of K
  permutations each client comes first once, in a random rotation order; the rest of the
  permutation is uniform), within-round truncation (a permutation stops once
  |v(prefix) - v(N)| < eps |v(N)|, eps = 0.001; the remaining clients get 0), between-round
  truncation (skip the round when |v(N) - v(empty)| < eps; with a single FL round it is checked
  once and never triggers here, as the JSON records) and a memo of coalition values, as in the
  authors' code. Convergence is not tested: it samples until the budget is spent.
* ``pydvl_tmc``: pyDVL's TMCShapleyValuation with its default truncation (RelativeTruncation,
  rtol 0.01, burn-in 0.4), driven through NaiveUtility, stopped by wall-clock budget.
* ``shapiq_best``: the shapiq approximator of the Shapley value (KernelSHAP with and without
  pairing, SVARM, permutation, stratified and Owen sampling, unbiased KernelSHAP) with the lowest
  error in a pilot, then run through NaiveUtility. K=16 pilot: the exact coalition table, at the
  evaluation count the naive utility reaches in the largest budget; K=100: engine coalition
  values against the reference, at up to 2,000 evaluations (500 with --quick). The pilot sees the
  values it is scored on, which favours the chosen approximator a little. An approximator has no
  running estimate, so its snapshots are independent runs with evaluation budgets sized to the
  common wall-clock budgets from the measured evaluation rate (a run that used < 60% of its
  budget is kept and followed by a larger one).
* ``engine_uniform``: ShapleyEngine + uniform PoSAP permutations (the engine's own contribution).
* ``ours``: ShapleyEngine + the paired PoSAP sampler (the chain's default), mean of marginals.

Optional packages (``pip install -e .[bench]``): pydvl 0.10.0 and shapiq 1.4.1, the newest
releases that install on Python 3.11 (shapiq 1.5.0-1.8.0 require Python >= 3.12). pydvl 0.10.0
declares numpy < 2. A missing package gives ``"skipped": "<why>"`` for its method in the JSON.

Time to target: a method that gets (and stays) below the target within its budget reports the
measured time (K=100: errors with the reference's noise removed). Otherwise the time is
extrapolated with the 1/sqrt(t) law (``"extrapolated": true``, marked * in the table). For a
mean of permutation marginals: R = V / ((target ||phi||)^2 - floor^2 ||phi||^2) permutations at
the measured seconds per permutation, V the per-permutation variance summed over clients. Where
the design balances positions (every client once per K permutations: GTG's first client, the
paired sampler's first and second) V counts only their within-position variance (zero for the
first: the marginal there is deterministic given the client), see ``design_variance``; for the
paired sampler it is an upper bound (every ordered pair takes the first two places once per
K(K-1) permutations, which makes the second position exact over whole cycles). For shapiq: err(t) = c / sqrt(t)
fitted to its snapshots. Truncation bias gives a floor (``error_floor``): the paired difference
between truncated and untruncated marginals on the same permutations, the method's truncation
rule applied to engine prefix values (debiased for sampling noise). A floor at or above the
target makes ``t_target_s`` null.

Also measured: ``engine_fraction_of_bandwidth_bound`` (engine perm/s at the current torch thread
count over the memory-bandwidth bound: NumPy copy of a 512 MiB float32 array, read GB/s =
bytes / seconds, divided by engine.workspace_bytes) and ``max_abs_marginal_diff`` (engine vs
naive marginals on a few permutations).

Run: python scripts/bench_accuracy.py --json PATH [--quick] [--dataset mnist --data-dir DIR]
(--quick: budgets of 1-4 s and a 300-permutation reference, about 2.5 minutes on an idle 2-core
machine; default: budgets up to 120 s (K=100) and 90 s (K=16), about 40-45 minutes).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from bench_shapley import fmt_time, setup

from fedcoin.consensus.posap import Sampler, derive_permutation
from fedcoin.valuation.engine import ShapleyEngine
from fedcoin.valuation.exact import exact_shapley
from fedcoin.valuation.naive import NaiveUtility

METHODS = ("alg1_naive", "gtg", "pydvl_tmc", "shapiq_best", "engine_uniform", "ours")
# shapiq approximators of the Shapley value tried in the pilot: (label, class name, keyword arguments)
SHAPIQ_CANDIDATES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("KernelSHAP", "KernelSHAP", {}),
    ("KernelSHAP(pairing)", "KernelSHAP", {"pairing_trick": True}),
    ("SVARM", "SVARM", {}),
    ("PermutationSamplingSV", "PermutationSamplingSV", {}),
    ("StratifiedSamplingSV", "StratifiedSamplingSV", {}),
    ("OwenSamplingSV", "OwenSamplingSV", {}),
    ("UnbiasedKernelSHAP", "UnbiasedKernelSHAP", {}),
)
PYDVL_RTOL = 0.01  # TMCShapleyValuation's default truncation: RelativeTruncation(rtol=0.01, burn_in_fraction=0.4)
PYDVL_BURN_IN = 0.4


class Game(Protocol):
    """What an estimator needs from a utility: NaiveUtility, ShapleyEngine and
    fedcoin.valuation.sampling.CoalitionGame all fit."""

    @property
    def n_players(self) -> int: ...

    def __call__(self, coalition: frozenset[int]) -> float: ...

    def marginals(self, permutation: Sequence[int]) -> np.ndarray: ...


PermFn = Callable[[int], Sequence[int]]


# ---------------------------------------------------------------------------------------------- traces
@dataclass
class Trace:
    """An estimator's run: snapshots ``(times[i], estimates[i])`` after ``counts[i]`` samples
    (permutations, or utility evaluations for shapiq), plus what the extrapolation needs."""

    times: np.ndarray
    estimates: np.ndarray
    counts: np.ndarray
    unit: str
    marginals: np.ndarray | None = None  # (R, K) per-permutation marginals, in order
    permutations: np.ndarray | None = None  # (R, K)
    fixed_positions: tuple[int, ...] = ()
    evaluations: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def snapshots(self) -> list[tuple[float, np.ndarray]]:
        return [(float(t), e) for t, e in zip(self.times, self.estimates, strict=True)]

    def index_at(self, t: float) -> int | None:
        """Index of the last snapshot taken within ``t`` seconds (None if none)."""
        i = int(np.searchsorted(self.times, t, side="right")) - 1
        return i if i >= 0 else None


def permutation_trace(
    rows: list[np.ndarray],
    perms: list[Sequence[int]],
    times: list[float],
    fixed_positions: tuple[int, ...],
    evaluations: int,
    info: dict[str, Any] | None = None,
) -> Trace:
    m = np.asarray(rows, dtype=np.float64)
    est = np.cumsum(m, axis=0) / np.arange(1, len(m) + 1)[:, None]
    return Trace(
        times=np.asarray(times, dtype=np.float64),
        estimates=est,
        counts=np.arange(1, len(m) + 1),
        unit="permutations",
        marginals=m,
        permutations=np.asarray(perms, dtype=np.int64),
        fixed_positions=fixed_positions,
        evaluations=evaluations,
        info=info or {},
    )


def posap_permutations(sampler: Sampler, n: int, label: str) -> PermFn:
    """Iteration -> permutation of the PoSAP sampler (``derive_permutation``) on a stream named ``label``."""
    prev_hash = hashlib.sha256(f"bench_accuracy/{label}".encode()).hexdigest()
    return lambda i: derive_permutation(prev_hash, label, "bench", i, n, sampler=sampler)


def guided_permutations(n: int, seed: int) -> PermFn:
    """GTG's guided sampling: in every round of ``n`` permutations each player comes first once
    (a random rotation order per round), the others follow in uniform random order."""
    rng = np.random.default_rng(seed)
    order: list[int] = []

    def perm(i: int) -> list[int]:
        if i % n == 0:
            order[:] = rng.permutation(n).tolist()
        first = order[i % n]
        rest = np.array([p for p in range(n) if p != first])
        return [first, *rng.permutation(rest).tolist()]

    return perm


# ---------------------------------------------------------------------------------------------- estimators
class PermutationMean:
    """Algorithm 1: the mean of the marginal vectors of a stream of permutations."""

    def __init__(self, name: str, game: Game, perms: PermFn, fixed_positions: tuple[int, ...] = ()) -> None:
        self.name, self.game, self.perms, self.fixed_positions = name, game, perms, fixed_positions

    def run(self, budget_s: float, max_samples: int | None = None) -> Trace:
        rows: list[np.ndarray] = []
        perms: list[Sequence[int]] = []
        times: list[float] = []
        t0 = time.perf_counter()
        i = 0
        while max_samples is None or i < max_samples:
            if i and time.perf_counter() - t0 >= budget_s:
                break
            p = self.perms(i)
            rows.append(np.asarray(self.game.marginals(p), dtype=np.float64))
            perms.append(p)
            times.append(time.perf_counter() - t0)
            i += 1
        n = self.game.n_players
        return permutation_trace(rows, perms, times, self.fixed_positions, evaluations=n * len(rows))


class GTGShapley:
    """GTG-Shapley for one FL round (Liu et al., 2022), see the module docstring.

    The utility is evaluated through ``game(coalition)`` (NaiveUtility: FedAvg of the coalition's
    updates, then evaluation); values are memoised by coalition as in the authors' code."""

    name = "gtg"

    def __init__(self, game: Game, eps: float = 1e-3, seed: int = 0, between_round_tol: float | None = None) -> None:
        self.game, self.eps, self.seed = game, eps, seed
        self.between_round_tol = eps if between_round_tol is None else between_round_tol

    def run(self, budget_s: float, max_samples: int | None = None) -> Trace:
        n = self.game.n_players
        t0 = time.perf_counter()
        memo: dict[int, float] = {}
        evaluations = lookups = 0

        def value(mask: int, members: frozenset[int]) -> float:
            nonlocal evaluations, lookups
            lookups += 1
            if mask not in memo:
                memo[mask] = float(self.game(members))
                evaluations += 1
            return memo[mask]

        v0 = float(self.game(frozenset()))
        v_full = value((1 << n) - 1, frozenset(range(n)))
        tol = self.eps * abs(v_full)
        skip = abs(v_full - v0) < self.between_round_tol
        info: dict[str, Any] = {
            "eps": self.eps,
            "within_round_tol_abs": tol,
            "between_round_truncation": {
                "threshold": self.between_round_tol,
                "abs_v_full_minus_v_empty": abs(v_full - v0),
                "triggered": bool(skip),
                "note": "one FL round: checked once; it would skip the whole round (all values 0)",
            },
        }
        if skip:
            t = time.perf_counter() - t0
            return Trace(np.array([t]), np.zeros((1, n)), np.array([0]), "permutations", evaluations=1, info=info)
        perms = guided_permutations(n, self.seed)
        rows: list[np.ndarray] = []
        plist: list[Sequence[int]] = []
        times: list[float] = []
        truncated_positions = 0
        i = 0
        while max_samples is None or i < max_samples:
            if i and time.perf_counter() - t0 >= budget_s:
                break
            p = perms(i)
            m = np.zeros(n)
            prev, mask = v0, 0
            members: set[int] = set()
            for j, c in enumerate(p):
                if abs(v_full - prev) < tol:  # within-round truncation: the rest get 0
                    truncated_positions += n - j
                    break
                mask |= 1 << c
                members.add(c)
                cur = value(mask, frozenset(members))
                m[c] = cur - prev
                prev = cur
            rows.append(m)
            plist.append(p)
            times.append(time.perf_counter() - t0)
            i += 1
        info["truncated_fraction_of_positions"] = truncated_positions / (n * len(rows))
        info["memo_hit_fraction"] = 1 - evaluations / lookups
        return permutation_trace(rows, plist, times, (0,), evaluations, info)


def _import_optional(name: str) -> tuple[Any | None, str | None]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(name), None
    except ImportError as exc:
        return None, f"{name} is not installed ({exc}); pip install -e '.[bench]'"


class PydvlTMC:
    """pyDVL's TMC-Shapley (TMCShapleyValuation with its default truncation) through ``game``,
    stopped when the wall-clock budget is spent; a snapshot after every permutation."""

    name = "pydvl_tmc"

    def __init__(self, game: Game, seed: int = 0, rtol: float = PYDVL_RTOL) -> None:
        self.game, self.seed, self.rtol = game, seed, rtol

    @staticmethod
    def available() -> str | None:
        mod, why = _import_optional("pydvl.valuation")
        return why if mod is None else None

    def run(self, budget_s: float, max_samples: int | None = None) -> Trace:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pv = importlib.import_module("pydvl.valuation")
            dataset_mod = importlib.import_module("pydvl.valuation.dataset")
            utility_mod = importlib.import_module("pydvl.valuation.utility.base")
            stopping_mod = importlib.import_module("pydvl.valuation.stopping")
            truncation_mod = importlib.import_module("pydvl.valuation.samplers.truncation")
            status_mod = importlib.import_module("pydvl.utils.status")
            joblib = importlib.import_module("joblib")
            pydvl_version = importlib.import_module("pydvl").__version__
        game = self.game
        n = game.n_players
        empty = float(game(frozenset()))
        calls = [0]

        utility_base: Any = utility_mod.UtilityBase
        criterion_base: Any = stopping_mod.StoppingCriterion

        class GameUtility(utility_base):
            def __call__(self, sample: Any) -> float:
                if sample is None or len(sample.subset) == 0:
                    return empty
                calls[0] += 1
                return float(game(frozenset(int(i) for i in sample.subset)))

        t0 = time.perf_counter()
        times: list[float] = []
        estimates: list[np.ndarray] = []
        counts: list[int] = []
        final: dict[str, Any] = {}

        class Snapshots(criterion_base):
            """Records the running values after every permutation; stops at the budget."""

            def _check(self, result: Any) -> Any:
                est = np.zeros(n)
                est[np.asarray(result.indices, dtype=np.int64)] = result.values
                times.append(time.perf_counter() - t0)
                estimates.append(est)
                counts.append(len(estimates))
                final["variances"] = np.asarray(result.variances, dtype=np.float64).copy()
                final["counts"] = np.asarray(result.counts).copy()
                if time.perf_counter() - t0 >= budget_s or (max_samples is not None and len(estimates) >= max_samples):
                    self._converged.fill(True)
                    return status_mod.Status.Converged
                return status_mod.Status.Pending

        data = dataset_mod.Dataset(np.arange(n, dtype=np.float64).reshape(-1, 1), np.zeros(n))
        truncation = truncation_mod.RelativeTruncation(rtol=self.rtol, burn_in_fraction=PYDVL_BURN_IN)
        valuation = pv.TMCShapleyValuation(
            GameUtility(),
            truncation=truncation,
            is_done=Snapshots(),
            seed=self.seed,
            show_warnings=False,
            progress=False,
        )
        with joblib.parallel_config(n_jobs=1):
            valuation.fit(data)
        var = final.get("variances", np.full(n, np.nan))
        info = {
            "pydvl_version": pydvl_version,
            "truncation": f"RelativeTruncation(rtol={self.rtol}, burn_in_fraction={PYDVL_BURN_IN})"
            + (" (the library's default)" if self.rtol == PYDVL_RTOL else ""),
            "variance_per_permutation": float(np.sum(var)),
        }
        return Trace(
            np.asarray(times),
            np.asarray(estimates),
            np.asarray(counts),
            "permutations",
            evaluations=calls[0],
            info=info,
        )


def coalition_batch_game(game: Game) -> Callable[[np.ndarray], np.ndarray]:
    """shapiq's game interface (boolean coalition matrix -> values) over ``game``."""

    def values(coalitions: np.ndarray) -> np.ndarray:
        rows = np.atleast_2d(np.asarray(coalitions, dtype=bool))
        return np.array([float(game(frozenset(np.flatnonzero(r).tolist()))) for r in rows])

    return values


def shapiq_estimate(
    label: str, n: int, budget: int, game_fn: Callable[[np.ndarray], np.ndarray], seed: int
) -> np.ndarray:
    shapiq, why = _import_optional("shapiq")
    if shapiq is None:
        raise RuntimeError(why)
    cls_name, kwargs = next((c, k) for lab, c, k in SHAPIQ_CANDIDATES if lab == label)
    approximator = getattr(shapiq, cls_name)(n=n, random_state=seed, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        iv = approximator.approximate(budget, game_fn)
    return np.array([float(iv[(i,)]) for i in range(n)])


class ShapiqLadder:
    """A shapiq approximator through ``game``: one independent run per wall-clock rung (each
    sized to its rung from the measured evaluation rate), a snapshot per run."""

    name = "shapiq_best"

    def __init__(self, game: Game, label: str, rungs: Sequence[float], seed: int = 0, safety: float = 0.85) -> None:
        self.game, self.label, self.rungs, self.seed, self.safety = game, label, list(rungs), seed, safety

    def run(self, budget_s: float, max_samples: int | None = None) -> Trace:
        n = self.game.n_players
        game_fn = coalition_batch_game(self.game)
        rng = np.random.default_rng(self.seed)
        probe = rng.random((20, n)) < rng.random((20, 1))
        t = time.perf_counter()
        game_fn(probe)
        rate = 20 / (time.perf_counter() - t)  # evaluations per second (calibration, not counted)
        rungs = [b for b in self.rungs if b <= budget_s] or [budget_s]
        times, estimates, counts, failures = [], [], [], []
        evaluations = 0
        seed = self.seed
        for b in rungs:
            for _attempt in range(3):  # a run that used < 60% of its rung is kept and the rung run again, larger
                evals = max(n + 2, int(self.safety * b * rate))
                if max_samples is not None:
                    evals = min(evals, max_samples)
                seed += 1
                t = time.perf_counter()
                try:
                    est = shapiq_estimate(self.label, n, evals, game_fn, seed)
                except Exception as exc:  # a rung the approximator refuses (e.g. too small a budget)
                    failures.append(f"{evals} evaluations: {type(exc).__name__}: {exc}")
                    break
                dt = time.perf_counter() - t
                rate = evals / dt
                times.append(dt)
                estimates.append(est)
                counts.append(evals)
                evaluations += evals
                if dt >= 0.6 * b or (max_samples is not None and evals >= max_samples):
                    break
        info = {"approximator": self.label, "rungs_s": rungs, "failed_rungs": failures, "snapshots": "independent runs"}
        order = np.argsort(times)
        return Trace(
            np.asarray(times)[order],
            np.asarray(estimates).reshape(-1, n)[order],
            np.asarray(counts)[order],
            "evaluations",
            evaluations=evaluations,
            info=info,
        )


# ---------------------------------------------------------------------------------------------- statistics
def relative_error(est: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(est - ref) / np.linalg.norm(ref))


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties get their average rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    _, inv, cnt = np.unique(x, return_inverse=True, return_counts=True)
    if (cnt > 1).any():
        sums = np.bincount(inv, weights=ranks)
        ranks = (sums / cnt)[inv]
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / den if den > 0 else float("nan")


def design_variance(marginals: np.ndarray, perms: np.ndarray, fixed_positions: tuple[int, ...] = ()) -> float:
    """Per-permutation variance of a mean of marginals, summed over players.

    Positions in ``fixed_positions`` are balanced by the design: every player takes each of them
    once per block of K permutations (GTG's and the stratified sampler's first and last, the
    paired sampler's first and second), so the between-position part of their variance is gone
    and only the within-position part is left: sum_k [sum_{p fixed} Var(m_k | p) / K
    + (K - f)/K Var(m_k | k not at a fixed position)]. The first position's marginal is
    deterministic given the player (v({k}) - v(empty)), as is the last's (v(N) - v(N - k)), so
    their term is 0. The paired sampler also makes the second position exact over a whole cycle of
    K(K-1) permutations (every ordered pair once); that gain is not counted, so V is an upper
    bound there."""
    R, n = marginals.shape
    if R < 2:
        return float("nan")
    fixed = sorted({p % n for p in fixed_positions})
    pos = np.empty_like(perms)
    pos[np.arange(R)[:, None], perms] = np.arange(n)[None, :]
    free = ~np.isin(pos, fixed)
    total = 0.0
    for k in range(n):
        x = marginals[free[:, k], k]
        if x.size >= 2:
            total += (n - len(fixed)) / n * float(x.var(ddof=1))
        for p in fixed:
            y = marginals[pos[:, k] == p, k]
            if y.size >= 2:
                total += float(y.var(ddof=1)) / n
    return total


def prefix_values(game: Game, perm: Sequence[int], v_empty: float) -> np.ndarray:
    """``v(R[:i])`` for i = 0..K from one untruncated marginal vector."""
    m = np.asarray(game.marginals(perm), dtype=np.float64)
    vals = np.empty(len(perm) + 1)
    vals[0] = v_empty
    vals[1:] = v_empty + np.cumsum(m[np.asarray(perm)])
    return vals


def gtg_truncate(vals: np.ndarray, v_full: float, eps: float) -> np.ndarray:
    """GTG's within-round truncation applied to prefix values: before evaluating prefix j, stop when
    |v(N) - v(R[:j-1])| < eps |v(N)|; the later prefixes keep that value."""
    out = vals.copy()
    hits = np.flatnonzero(np.abs(v_full - vals[:-1]) < eps * abs(v_full))
    if hits.size:
        out[hits[0] + 1 :] = vals[hits[0]]
    return out


def tmc_truncate(
    vals: np.ndarray, v_full: float, rtol: float = PYDVL_RTOL, burn_in: float = PYDVL_BURN_IN
) -> np.ndarray:
    """pyDVL's RelativeTruncation: after the prefix of length c >= burn_in * K is evaluated, stop
    when |v(prefix) - v(N)| <= 1e-8 + rtol |v(N)| (numpy.allclose); the later prefixes keep it."""
    n = len(vals) - 1
    out = vals.copy()
    c = np.arange(1, n + 1)
    ok = (c >= burn_in * n) & (np.abs(vals[1:] - v_full) <= 1e-8 + rtol * abs(v_full))
    hits = np.flatnonzero(ok)
    if hits.size:
        out[hits[0] + 2 :] = vals[hits[0] + 1]
    return out


def truncation_floor(
    game: Game,
    perms: PermFn,
    truncate: Callable[[np.ndarray, float], np.ndarray],
    phi_norm: float,
    n_perms: int,
    budget_s: float,
) -> dict[str, Any]:
    """Relative L2 bias of a truncation rule: paired truncated - untruncated marginals on the same
    permutations (``game`` evaluates every prefix; the engine), debiased for sampling noise."""
    n = game.n_players
    v_empty = float(game(frozenset()))
    v_full = float(game(frozenset(range(n))))
    diffs, kept = [], []
    t0 = time.perf_counter()
    for i in range(n_perms):
        if i >= 20 and time.perf_counter() - t0 > budget_s:
            break
        p = list(perms(i))
        vals = prefix_values(game, p, v_empty)
        tv = truncate(vals, v_full)
        d = np.zeros(n)
        d[np.asarray(p)] = np.diff(tv) - np.diff(vals)
        diffs.append(d)
        nz = np.flatnonzero(tv[1:] != tv[-1])  # prefixes before the value freezes
        kept.append((int(nz[-1]) + 2 if nz.size else 1) / n)
    D = np.asarray(diffs)
    R = len(D)
    bias = D.mean(0)
    noise = float(D.var(0, ddof=1).sum()) / R if R > 1 else 0.0
    b2 = max(float(bias @ bias) - noise, 0.0)
    return {
        "error_floor": math.sqrt(b2) / phi_norm,
        "error_floor_raw": float(np.linalg.norm(bias)) / phi_norm,
        "error_floor_se": math.sqrt(noise) / phi_norm,
        "permutations": R,
        "mean_fraction_of_prefixes_evaluated": float(np.mean(kept)),
        "method": "truncation rule emulated on engine prefix values, paired with the untruncated marginals",
    }


def time_to_target(
    times: np.ndarray, errors: np.ndarray, target: float, floor: float | None, extrapolated_t: float | None
) -> dict[str, Any]:
    """Measured time when the error gets below ``target`` and stays there to the end of the run;
    else the extrapolated time; None when the floor is at/above the target or nothing fits."""
    if floor is not None and floor >= target:
        return {"t_target_s": None, "extrapolated": False, "why": f"error floor {floor:.3g} >= target {target:g}"}
    below = errors <= target
    if below.size and below[-1]:
        j = int(np.flatnonzero(~below)[-1]) + 1 if (~below).any() else 0
        return {"t_target_s": float(times[j]), "extrapolated": False}
    if extrapolated_t is None or not math.isfinite(extrapolated_t):
        return {"t_target_s": None, "extrapolated": False, "why": "target not reached and no extrapolation"}
    return {"t_target_s": float(extrapolated_t), "extrapolated": True}


def clt_time(variance: float, s_per_perm: float, phi_norm: float, target: float, floor: float) -> float | None:
    """Seconds to reach ``target``: R = V / ((target ||phi||)^2 - (floor ||phi||)^2) permutations."""
    room = (target * phi_norm) ** 2 - (floor * phi_norm) ** 2
    if room <= 0 or not math.isfinite(variance):
        return None
    return variance / room * s_per_perm


def sqrt_law_fit(times: np.ndarray, errors: np.ndarray) -> float | None:
    """c of err(t) = c / sqrt(t), least squares in log space over the snapshots."""
    ok = (times > 0) & (errors > 0) & np.isfinite(errors)
    if not ok.any():
        return None
    return float(np.exp(np.mean(np.log(errors[ok]) + 0.5 * np.log(times[ok]))))


def evaluate_trace(
    trace: Trace,
    ref: np.ndarray,
    target: float,
    budgets: Sequence[float],
    floor: dict[str, Any] | None,
    ref_noise2: float = 0.0,
) -> dict[str, Any]:
    """Errors at the budgets, final accuracy and time to target of one run against ``ref``.

    ``ref_noise2`` is E||ref - phi||^2 of a sampled reference (0 for exact values): errors
    against it are also given debiased, sqrt(err^2 - ref_noise2 / ||ref||^2), and the time to
    target uses the debiased errors (the method's stream is independent of the reference's)."""
    phi_norm = float(np.linalg.norm(ref))
    raw = np.array([relative_error(e, ref) for e in trace.estimates])
    errors = np.sqrt(np.maximum(raw**2 - ref_noise2 / phi_norm**2, 0.0))
    last = trace.index_at(max(budgets))
    if last is None:
        last = 0
    est = trace.estimates[last]
    out: dict[str, Any] = {
        "errors_at_budgets": {f"{b:g}": (None if (i := trace.index_at(b)) is None else float(raw[i])) for b in budgets},
        "errors_at_budgets_debiased": {
            f"{b:g}": (None if (i := trace.index_at(b)) is None else float(errors[i])) for b in budgets
        },
        "samples_at_budgets": {
            f"{b:g}": (None if (i := trace.index_at(b)) is None else int(trace.counts[i])) for b in budgets
        },
        "sample_unit": trace.unit,
        "final": {
            "elapsed_s": float(trace.times[last]),
            "samples": int(trace.counts[last]),
            "rel_l2_error": float(raw[last]),
            "rel_l2_error_debiased": float(errors[last]),
            "spearman": spearman(est, ref),
            "max_abs_error": float(np.max(np.abs(est - ref))),
            "max_abs_error_rel_to_max_abs_value": float(np.max(np.abs(est - ref)) / np.max(np.abs(ref))),
        },
        "evaluations": trace.evaluations,
        "run_wall_s": float(trace.times[-1]),
        **trace.info,
    }
    fl = float(floor["error_floor"]) if floor else 0.0
    out["error_floor"] = fl if floor else None
    if floor:
        out["error_floor_detail"] = floor
    extrap: float | None = None
    if trace.unit == "permutations" and int(trace.counts[-1]) > 0:
        R = int(trace.counts[-1])
        s = float(trace.times[-1]) / R
        if trace.marginals is not None and trace.permutations is not None:
            V = design_variance(trace.marginals, trace.permutations, trace.fixed_positions)
            V_iid = float(trace.marginals.var(0, ddof=1).sum()) if R > 1 else float("nan")
            out["variance_iid_per_permutation"] = V_iid
        else:
            V = float(trace.info.get("variance_per_permutation", float("nan")))
        out["variance_per_permutation"] = V
        out["fixed_positions"] = list(trace.fixed_positions)
        out["s_per_permutation"] = s
        extrap = clt_time(V, s, phi_norm, target, fl)
        if math.isfinite(V):
            out["predicted_error_at_end"] = math.sqrt(V / R + (fl * phi_norm) ** 2) / phi_norm
        out["extrapolation"] = "CLT: R = V / ((target |phi|)^2 - floor^2 |phi|^2) x measured s/permutation"
    elif trace.unit == "evaluations":
        c = sqrt_law_fit(trace.times, errors)
        if c is not None:
            extrap = (c / target) ** 2
            out["sqrt_law_c"] = c
        out["extrapolation"] = "err(t) = c / sqrt(t) fitted to the independent runs"
    out["t_target_extrapolated_s"] = extrap
    out.update(time_to_target(trace.times, errors, target, fl if floor else None, extrap))
    return out


# ---------------------------------------------------------------------------------------------- measurements
def numpy_read_bandwidth(nbytes: int = 512 * 2**20, repeats: int = 5) -> dict[str, float]:
    """Read GB/s of a NumPy copy of a float32 array: bytes / seconds (best of ``repeats``)."""
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return {"buffer_bytes": float(src.nbytes), "best_copy_s": best, "read_GBps": src.nbytes / best / 1e9}


def engine_perm_rate(engine: ShapleyEngine, n_perms: int, repeats: int) -> float:
    """Engine permutations per second: 1 / median time of ``repeats`` timings of each permutation."""
    rng = np.random.default_rng(12345)
    ps = [rng.permutation(engine.n_players) for _ in range(n_perms)]
    engine.marginals(ps[0])
    ts = []
    for p in ps:
        for _ in range(repeats):
            t = time.perf_counter()
            engine.marginals(p)
            ts.append(time.perf_counter() - t)
    return 1.0 / statistics.median(ts)


def all_coalition_values(engine: ShapleyEngine) -> np.ndarray:
    """``table[mask] = v({i : bit i of mask})`` for every mask, through the engine."""
    n = engine.n_players
    table = np.empty(1 << n)
    table[0] = engine.empty_value
    for mask in range(1, 1 << n):
        table[mask] = engine(frozenset(i for i in range(n) if mask >> i & 1))
    return table


def table_game(table: np.ndarray, n: int) -> Callable[[np.ndarray], np.ndarray]:
    weights = 1 << np.arange(n, dtype=np.int64)

    def values(coalitions: np.ndarray) -> np.ndarray:
        c = np.atleast_2d(np.asarray(coalitions, dtype=bool))
        return table[c.astype(np.int64) @ weights]

    return values


def shapiq_pilot(
    n: int, budget: int, game_fn: Callable[[np.ndarray], np.ndarray], ref: np.ndarray, seeds: int, seed: int
) -> dict[str, Any]:
    """Error of every candidate approximator at ``budget`` evaluations (mean over ``seeds`` runs)."""
    out: dict[str, Any] = {}
    for label, _, _ in SHAPIQ_CANDIDATES:
        errs, secs = [], []
        try:
            for s in range(seeds):
                t = time.perf_counter()
                est = shapiq_estimate(label, n, budget, game_fn, seed + s)
                secs.append(time.perf_counter() - t)
                errs.append(relative_error(est, ref))
            out[label] = {"rel_l2_error": float(np.mean(errs)), "wall_s": float(np.mean(secs))}
        except Exception as exc:
            out[label] = {"failed": f"{type(exc).__name__}: {exc}"[:300]}
    return out


def sampled_reference(
    engine: ShapleyEngine, min_perms: int, max_perms: int, budget_s: float, se_target: float
) -> tuple[np.ndarray, dict[str, Any], float]:
    """Mean of paired engine permutations (a stream of its own): at least ``min_perms``, then on
    (checked every 10 cycles) until the relative standard error is below ``se_target``, up to
    ``max_perms`` permutations or ``budget_s`` seconds. Returns (phi, JSON section, V / R)."""
    K = engine.n_players
    perms = posap_permutations("paired", K, "reference")
    rows: list[np.ndarray] = []
    plist: list[Sequence[int]] = []
    t0 = time.perf_counter()

    def stats() -> tuple[float, float, float]:
        M, P = np.asarray(rows), np.asarray(plist)
        V = design_variance(M, P, (0, 1))
        phi = M.mean(0)
        norm2 = max(float(phi @ phi) - V / len(M), 0.25 * float(phi @ phi))  # ||phi||^2 less the noise energy
        return V, float(M.var(0, ddof=1).sum()), norm2

    while len(rows) < max_perms:
        i = len(rows)
        if i >= min_perms and i % (10 * K) == 0:
            V, _, norm2 = stats()
            if V / i / norm2 < se_target**2:
                break
        if i >= 20 and time.perf_counter() - t0 > budget_s:
            break
        p = perms(i)
        rows.append(np.asarray(engine.marginals(p), dtype=np.float64))
        plist.append(p)
    wall = time.perf_counter() - t0
    R = len(rows)
    V, V_iid, norm2 = stats()
    rel_se = math.sqrt(V / R / norm2)
    info = {
        "kind": "engine, paired sampler",
        "permutations": R,
        "min_permutations": min_perms,
        "max_permutations": max_perms,
        "budget_s": budget_s,
        "wall_s": wall,
        "variance_per_permutation": V,
        "rel_standard_error": rel_se,
        "rel_standard_error_iid_variance": math.sqrt(V_iid / R / norm2),
        "se_target": se_target,
        "ok": rel_se < se_target,
        "note": "rel_standard_error from the paired design's variance (first/second positions balanced, the "
        "pair-exactness over whole cycles not counted: an upper bound); the iid figure ignores the design too. "
        "Errors against this reference are also given with "
        "its noise removed (debiased: sqrt(err^2 - rel_standard_error^2)); times to target use those.",
    }
    return np.asarray(rows).mean(0), info, V / R


# ---------------------------------------------------------------------------------------------- driver
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--json", metavar="PATH", help="write all figures as JSON to PATH")
    ap.add_argument("--quick", action="store_true", help="small budgets, 300-permutation reference (a few minutes)")
    ap.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "mnist"])
    ap.add_argument("--data-dir", default=None, help="directory of IDX files (required for mnist)")
    ap.add_argument("--types", type=int, default=10)
    ap.add_argument("--samples-per-client", type=int, default=600)
    ap.add_argument("--hidden", type=int, nargs="*", default=[200])
    ap.add_argument("--iterations", type=int, default=20, help="local SGD iterations per round")
    ap.add_argument("--val", type=int, default=1000, help="validation samples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--rounds", nargs="+", default=["k100", "k16"], choices=["k100", "k16"])
    ap.add_argument(
        "--ref-perms", type=int, default=None, help="K=100 reference: at least this many permutations (default 16,000)"
    )
    ap.add_argument(
        "--ref-max-perms",
        type=int,
        default=None,
        help="K=100 reference: past --ref-perms, go on until its relative standard error is below --ref-se-target, "
        "up to this many permutations (default 200,000; quick: --ref-perms) or --ref-budget-s",
    )
    ap.add_argument("--ref-se-target", type=float, default=0.015, help="reference relative standard error wanted")
    ap.add_argument("--ref-budget-s", type=float, default=None, help="wall-time cap of the reference (default 1500)")
    ap.add_argument("--budgets-k100", type=float, nargs="+", default=None, help="common budgets, seconds")
    ap.add_argument("--budgets-k16", type=float, nargs="+", default=None, help="common budgets, seconds")
    ap.add_argument("--target-k100", type=float, default=0.05)
    ap.add_argument("--target-k16", type=float, default=0.01)
    ap.add_argument("--eps", type=float, default=1e-3, help="GTG truncation tolerance (relative to |v(N)|)")
    ap.add_argument(
        "--tmc-rtol", type=float, default=PYDVL_RTOL, help="pyDVL TMC truncation rtol (default: the library's 0.01)"
    )
    ap.add_argument("--floor-perms", type=int, default=None, help="engine permutations per truncation-floor estimate")
    args = ap.parse_args(argv)
    q = args.quick
    defaults = {
        "ref_perms": 300 if q else 16000,
        "ref_budget_s": 60.0 if q else 1500.0,
        "budgets_k100": [1.0, 2.0, 4.0] if q else [10.0, 30.0, 60.0, 120.0],
        "budgets_k16": [1.0, 2.0, 4.0] if q else [3.0, 10.0, 30.0, 90.0],
        "floor_perms": 200 if q else 2000,
    }
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.ref_max_perms is None:
        args.ref_max_perms = args.ref_perms if q else max(args.ref_perms, 200_000)
    args.budgets_k100 = sorted(args.budgets_k100)
    args.budgets_k16 = sorted(args.budgets_k16)
    return args


def build_round(args: argparse.Namespace, clients: int) -> dict[str, Any]:
    ns = copy.copy(args)
    ns.clients = clients
    updates, n_samples, g0, X_val, y_val, part, info = setup(ns)
    common: dict[str, Any] = {"metric": "neg_loss", "empty_value": 0.0, "global_weights": g0}
    return {
        "engine": ShapleyEngine(updates, n_samples, X_val, y_val, **common),
        "naive": NaiveUtility(updates, n_samples, X_val, y_val, **common),
        "types": [int(t) for t in part.types],
        "info": info,
    }


def max_abs_diff(engine: ShapleyEngine, naive: NaiveUtility, n_perms: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    worst = 0.0
    for _ in range(n_perms):
        p = rng.permutation(engine.n_players)
        worst = max(worst, float(np.max(np.abs(engine.marginals(p) - naive.marginals(p)))))
    return worst


def run_round(args: argparse.Namespace, key: str, rnd: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """Reference, truncation floors and every method on one round; the round's JSON section."""
    engine: ShapleyEngine = rnd["engine"]
    naive: NaiveUtility = rnd["naive"]
    K = engine.n_players
    budgets: list[float] = args.budgets_k100 if key == "k100" else args.budgets_k16
    target: float = args.target_k100 if key == "k100" else args.target_k16
    top = max(budgets)
    out: dict[str, Any] = {"clients": K, "types": rnd["types"], "setup": rnd["info"], "budgets_s": budgets}
    out["target_rel_l2"] = target
    t = time.perf_counter()
    out["max_abs_marginal_diff"] = max_abs_diff(engine, naive, 2 if args.quick else 3, args.seed + 7)
    log(
        f"[{key}] engine vs naive marginals: max |diff| = {out['max_abs_marginal_diff']:.2e} "
        f"({time.perf_counter() - t:.1f} s)"
    )

    # ---- reference
    table: np.ndarray | None = None
    ref_noise2 = 0.0  # E||phi_ref - phi||^2: 0 for the exact values
    t = time.perf_counter()
    if key == "k16":
        values = all_coalition_values(engine)
        ref = np.asarray(exact_shapley(K, lambda s: float(values[sum(1 << i for i in s)])))
        table = values
        out["reference"] = {"kind": "exact", "coalitions": 1 << K, "wall_s": time.perf_counter() - t}
        log(f"[{key}] exact Shapley values from {1 << K:,} coalition values: {time.perf_counter() - t:.1f} s")
    else:
        ref, out["reference"], ref_noise2 = sampled_reference(
            engine, args.ref_perms, args.ref_max_perms, args.ref_budget_s, args.ref_se_target
        )
        r = out["reference"]
        flag = "" if r["ok"] else f"  ** >= {args.ref_se_target:.1%}: the reference is not sharp **"
        log(
            f"[{key}] reference: {r['permutations']:,} paired engine permutations in {r['wall_s']:.1f} s, "
            f"relative standard error {r['rel_standard_error']:.2%} "
            f"(iid bound {r['rel_standard_error_iid_variance']:.2%}){flag}"
        )
    out["reference"]["phi"] = ref.tolist()
    phi_norm = float(np.linalg.norm(ref))

    # ---- truncation floors (engine prefix values, same rules as the methods)
    floors: dict[str, dict[str, Any]] = {}
    fb = 10.0 if args.quick else 30.0  # wall-time cap per floor estimate
    if "gtg" in args.methods:
        floors["gtg"] = truncation_floor(
            engine,
            guided_permutations(K, args.seed + 101),
            lambda v, f: gtg_truncate(v, f, args.eps),
            phi_norm,
            args.floor_perms * (5 if K <= 16 else 1),
            fb,
        )
    if "pydvl_tmc" in args.methods:
        floors["pydvl_tmc"] = truncation_floor(
            engine,
            posap_permutations("uniform", K, "tmc-floor"),
            lambda v, f: tmc_truncate(v, f, args.tmc_rtol),
            phi_norm,
            args.floor_perms * (5 if K <= 16 else 1),
            fb,
        )
    for name, fl in floors.items():
        log(
            f"[{key}] {name} truncation floor: {fl['error_floor']:.2%} +- {fl['error_floor_se']:.2%} "
            f"({fl['permutations']} perms)"
        )

    # ---- methods
    methods: dict[str, Any] = {}
    pydvl_why = PydvlTMC.available()
    shapiq_mod, shapiq_why = _import_optional("shapiq")
    for name in args.methods:
        if name == "pydvl_tmc" and pydvl_why:
            methods[name] = {"skipped": pydvl_why}
            continue
        if name == "shapiq_best" and shapiq_why:
            methods[name] = {"skipped": shapiq_why}
            continue
        t = time.perf_counter()
        extra: dict[str, Any] = {}
        runner: Any
        if name == "alg1_naive":
            runner = PermutationMean(name, naive, posap_permutations("uniform", K, "alg1"))
        elif name == "engine_uniform":
            runner = PermutationMean(name, engine, posap_permutations("uniform", K, "engine-uniform"))
        elif name == "ours":
            runner = PermutationMean(name, engine, posap_permutations("paired", K, "ours"), (0, 1))
        elif name == "gtg":
            runner = GTGShapley(naive, eps=args.eps, seed=args.seed + 11)
        elif name == "pydvl_tmc":
            runner = PydvlTMC(naive, seed=args.seed + 13, rtol=args.tmc_rtol)
        else:
            rate_probe = coalition_batch_game(naive)
            rng = np.random.default_rng(args.seed)
            tp = time.perf_counter()
            rate_probe(rng.random((8, K)) < 0.5)
            naive_rate = 8 / (time.perf_counter() - tp)
            if table is not None:
                pilot_budget = int(min(0.85 * top * naive_rate, (1 << K) - 2))
                pilot = shapiq_pilot(K, pilot_budget, table_game(table, K), ref, 2, args.seed + 17)
                where = "exact coalition table"
            else:
                pilot_budget = int(min(0.85 * top * naive_rate, 500 if args.quick else 2000))
                pilot = shapiq_pilot(K, pilot_budget, coalition_batch_game(engine), ref, 1, args.seed + 17)
                where = "engine coalition values vs the reference"
            ok = {k: v for k, v in pilot.items() if "rel_l2_error" in v}
            if not ok:
                methods[name] = {"skipped": "no shapiq approximator ran in the pilot", "pilot": pilot}
                continue
            best = min(ok, key=lambda k: ok[k]["rel_l2_error"])
            extra = {
                "shapiq_version": shapiq_mod.__version__ if shapiq_mod else None,
                "pilot": {"budget_evaluations": pilot_budget, "game": where, "results": pilot, "chosen": best},
            }
            log(
                f"[{key}] shapiq pilot ({pilot_budget} evaluations, {where}): "
                + ", ".join(f"{k} {v['rel_l2_error']:.1%}" for k, v in ok.items())
                + f" -> {best}"
            )
            runner = ShapiqLadder(naive, best, budgets, seed=args.seed + 19)
        trace = runner.run(top)
        if len(trace.times) == 0:
            methods[name] = {"skipped": f"no run finished: {trace.info.get('failed_rungs')}", **extra}
            continue
        res = evaluate_trace(trace, ref, target, budgets, floors.get(name), ref_noise2)
        res.update(extra)
        methods[name] = res
        tt = res["t_target_s"]
        log(
            f"[{key}] {name:<15} {res['final']['samples']:>7} {trace.unit} in {res['final']['elapsed_s']:.1f} s: "
            f"error {res['final']['rel_l2_error']:.2%} (debiased {res['final']['rel_l2_error_debiased']:.2%}); "
            "t_target "
            + ("never" if tt is None else f"{tt:.4g} s" + (" (extrapolated)" if res["extrapolated"] else ""))
            + f"  [{time.perf_counter() - t:.0f} s]"
        )
    out["methods"] = methods
    return out


def print_tables(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    for key, rnd in res["rounds"].items():
        budgets = rnd["budgets_s"]
        exact = rnd["reference"]["kind"] == "exact"
        err_key = "errors_at_budgets" if exact else "errors_at_budgets_debiased"
        title = (
            f"K={rnd['clients']}: relative L2 error vs "
            + (
                "the exact Shapley values"
                if exact
                else f"the reference ({rnd['reference']['permutations']:,} perms, rel. s.e. "
                f"{rnd['reference']['rel_standard_error']:.1%}, removed from the errors)"
            )
            + f", target {rnd['target_rel_l2']:.0%} (* = extrapolated)"
        )
        table = Table(title=title)
        table.add_column("method")
        for b in budgets:
            table.add_column(f"err@{b:g}s", justify="right")
        for col in ("samples", "t→target", "floor", "spearman", "max|err|"):
            table.add_column(col, justify="right")
        for name, by_round in res["methods"].items():
            if key not in by_round:
                continue
            m = by_round[key]
            if "skipped" in m:
                table.add_row(name, *(["-"] * len(budgets)), "skipped", "", "", "", "")
                continue
            errs = [("-" if (e := m[err_key][f"{b:g}"]) is None else f"{e:.1%}") for b in budgets]
            tt = fmt_time(m["t_target_s"]) + ("*" if m["extrapolated"] else "")
            fl = "-" if m["error_floor"] is None else f"{m['error_floor']:.1%}"
            unit = "perm" if m["sample_unit"] == "permutations" else "eval"
            label = name + (f" [{m['approximator']}]" if "approximator" in m else "")
            table.add_row(
                label,
                *errs,
                f"{m['final']['samples']} {unit}",
                tt,
                fl,
                f"{m['final']['spearman']:.3f}",
                f"{m['final']['max_abs_error']:.2e}",
            )
        console.print(table)


def speedup(rounds: dict[str, Any], key: str, base: str) -> tuple[float | None, bool]:
    if key not in rounds:
        return None, False
    ms = rounds[key]["methods"]
    a, b = ms.get(base, {}), ms.get("ours", {})
    ta, tb = a.get("t_target_s"), b.get("t_target_s")
    if ta is None or tb is None or tb <= 0:
        return None, False
    return ta / tb, bool(a.get("extrapolated") or b.get("extrapolated"))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"{time.perf_counter() - t_start:7.1f}s  {msg}", flush=True)

    res: dict[str, Any] = {
        "args": dict(vars(args)),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "loadavg_start": os.getloadavg(),
        },
    }
    log(
        f"bench_accuracy: torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f}{'  [quick]' if args.quick else ''}"
    )
    bw = numpy_read_bandwidth()
    log(f"NumPy copy of {bw['buffer_bytes'] / 2**20:.0f} MiB float32: read {bw['read_GBps']:.1f} GB/s")
    rounds: dict[str, Any] = {}
    diffs: list[float] = []
    for key in args.rounds:
        K = 100 if key == "k100" else 16
        t = time.perf_counter()
        rnd = build_round(args, K)
        log(
            f"[{key}] setup: {args.dataset}, K={K}, types {rnd['types'] if K <= 16 else '0..9 x 10'}, "
            f"global val loss {rnd['info']['global_model_after_round']['loss']:.4f} ({time.perf_counter() - t:.1f} s)"
        )
        out = run_round(args, key, rnd, log)
        diffs.append(out["max_abs_marginal_diff"])
        if key == "k100":
            engine: ShapleyEngine = rnd["engine"]
            rate = engine_perm_rate(engine, 4 if args.quick else 10, 5)
            bound = bw["read_GBps"] * 1e9 / engine.workspace_bytes
            res["bandwidth"] = {
                **bw,
                "engine_workspace_bytes": engine.workspace_bytes,
                "bandwidth_bound_perm_per_s": bound,
                "engine_perm_per_s": rate,
                "torch_threads": torch.get_num_threads(),
            }
            log(
                f"engine {rate:.1f} perm/s; bound {bound:.0f} perm/s "
                f"({engine.workspace_bytes / 1e6:.1f} MB per permutation) -> {rate / bound:.1%}"
            )
        rounds[key] = out
        del rnd
    res["rounds"] = rounds
    s100, x100 = speedup(rounds, "k100", "alg1_naive")
    s16, x16 = speedup(rounds, "k16", "alg1_naive")
    sg, xg = speedup(rounds, "k100", "gtg")
    res["speedup_5pct_k100_vs_alg1"] = s100
    res["speedup_1pct_k16_vs_alg1"] = s16
    res["speedup_5pct_k100_vs_gtg"] = sg
    res["speedups_extrapolated"] = {"5pct_k100_vs_alg1": x100, "1pct_k16_vs_alg1": x16, "5pct_k100_vs_gtg": xg}
    bwd = res.get("bandwidth")
    res["engine_fraction_of_bandwidth_bound"] = (
        bwd["engine_perm_per_s"] / bwd["bandwidth_bound_perm_per_s"] if bwd else None
    )
    res["max_abs_marginal_diff"] = max(diffs) if diffs else None
    res["machine"]["loadavg_end"] = os.getloadavg()
    res["wall_s"] = time.perf_counter() - t_start

    # methods[name][round]: per method and round; the rounds keep their reference and setup
    res["methods"] = {
        name: {key: rnd["methods"][name] for key, rnd in rounds.items() if name in rnd["methods"]}
        for name in args.methods
    }
    for rnd in rounds.values():
        del rnd["methods"]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2, default=_json_default)

    print()
    print_tables(res)

    def fx(v: float | None, spec: str, x: bool = False) -> str:
        return "null" if v is None else format(v, spec) + (" (extrapolated)" if x else "")

    print(
        f"speedup_5pct_k100_vs_alg1={fx(s100, '.4g', x100)}  speedup_1pct_k16_vs_alg1={fx(s16, '.4g', x16)}  "
        f"speedup_5pct_k100_vs_gtg={fx(sg, '.4g', xg)}  "
        f"engine_fraction_of_bandwidth_bound={fx(res['engine_fraction_of_bandwidth_bound'], '.3f')}  "
        f"max_abs_marginal_diff={fx(res['max_abs_marginal_diff'], '.2e')}"
    )
    print(f"wall time {res['wall_s']:.0f} s; load average at end {os.getloadavg()[0]:.2f}")
    if args.json:
        print(f"wrote {args.json}")
    return 0


def _json_default(o: object) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


if __name__ == "__main__":
    sys.exit(main())
