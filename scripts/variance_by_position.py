#!/usr/bin/env python
"""Where the variance of a permutation estimate sits, by position, and what balancing more positions buys.

One process, the paper's round (K = 100 clients of 10 quality types, MLP 784-200-10, one FedAvg round,
1,000 validation images, accuracy utility, v(∅) = 0), marginals through the Shapley engine:

1. **By position** (``--perms`` uniform permutations): for client i at position k, the variance
   σ²(i, k) of its marginal over the coalitions of the k − 1 clients before it, and its mean μ(i, k).
   Their sums give the estimator's variance per permutation (summed over clients) under designs that
   need no new sampling to evaluate: uniform permutations (Σ_i [mean_k (σ² + μ²) − φ_i²]), every
   position balanced per block of K ("latin": Σ_i mean_k σ²), and exact expected marginals at some
   positions (their terms dropped). A formula from measured cells, not a run of the designs.
2. **Measured** (``--blocks`` independent blocks of K permutations per design): K·Σ_i Var(S_i) of a
   one-block estimate for the ``uniform`` and ``paired`` samplers as miners derive them
   (:func:`fedcoin.consensus.posap.derive_permutation`, one miner id per block) and for a Latin-square
   block (block j: σ[(j + π[k]) mod K] at position k, with π[0] = 0 and π[1] = ρ as in the paired
   sampler, the other offsets shuffled, σ and π from a seeded NumPy generator: an experiment, not a
   consensus sampler). Every permutation of the Latin block is uniform (σ is), so it is unbiased.

Run: python scripts/variance_by_position.py --dataset mnist --data-dir ../shared/data/mnist --json PATH
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from bench_shapley import setup  # the paper round, shared with bench_shapley.py

from fedcoin.consensus.posap import derive_permutation
from fedcoin.valuation.engine import ShapleyEngine

PREV = "00" * 32
DESIGNS = {
    "uniform": ((), False),
    "latin": ((), True),
    "exact 1": ((0,), False),
    "exact 1-2": ((0, 1), False),
    "exact 1-2, latin": ((0, 1), True),
    "exact 1-3": ((0, 1, 2), False),
    "exact 1-3, latin": ((0, 1, 2), True),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "mnist"])
    ap.add_argument("--data-dir", default=None, help="directory of IDX files (required for mnist)")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--types", type=int, default=10)
    ap.add_argument("--samples-per-client", type=int, default=600)
    ap.add_argument("--iterations", type=int, default=20, help="local SGD iterations per round")
    ap.add_argument("--val", type=int, default=1000, help="validation samples")
    ap.add_argument("--perms", type=int, default=3000, help="uniform permutations for the by-position cells")
    ap.add_argument("--blocks", type=int, default=40, help="independent one-block estimates per design")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    args.hidden = [200]
    return args


def cells(marginals: np.ndarray, perms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """σ²(i, k) and μ(i, k): the variance (ddof 1) and mean of client i's marginal at position k."""
    n = perms.shape[1]
    at = np.take_along_axis(marginals, perms, axis=1)  # at[p, k]: the marginal of the client at position k
    var, mean = np.full((n, n), np.nan), np.full((n, n), np.nan)
    for k in range(n):
        who, y = perms[:, k], at[:, k]
        cnt = np.bincount(who, minlength=n)
        s1, s2 = np.bincount(who, y, n), np.bincount(who, y * y, n)
        ok = cnt > 1
        mean[ok, k] = s1[ok] / cnt[ok]
        var[ok, k] = (s2[ok] - s1[ok] ** 2 / cnt[ok]) / (cnt[ok] - 1)
    return var, mean


def design_variance(var: np.ndarray, mean: np.ndarray, exact: tuple[int, ...], latin: bool) -> float:
    n = var.shape[1]
    keep = np.array([k not in exact for k in range(n)])
    if latin:
        return float(np.nansum(np.nanmean(np.where(keep, var, 0.0), axis=1)))
    second = np.nanmean(np.where(keep, var + mean**2, 0.0), axis=1)
    first = np.nanmean(np.where(keep, mean, 0.0), axis=1)
    return float(np.nansum(second - first**2))


def latin_block(rng: np.random.Generator, n: int) -> list[list[int]]:
    sigma = rng.permutation(n)
    rho = int(rng.integers(1, n))
    offsets = np.array([0, rho, *[o for o in rng.permutation(n) if o not in (0, rho)]])
    return [sigma[(j + offsets) % n].tolist() for j in range(n)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    updates, n_samples, g0, X_val, y_val, _part, info = setup(args)
    engine = ShapleyEngine(updates, n_samples, X_val, y_val, metric="accuracy", empty_value=0.0, global_weights=g0)
    n = args.clients
    rng = np.random.default_rng(args.seed)
    perms = np.stack([rng.permutation(n) for _ in range(args.perms)])
    t1 = time.perf_counter()
    marg = engine.marginals_many(list(perms))
    rate = args.perms / (time.perf_counter() - t1)
    var, mean = cells(marg, perms)
    within = np.nanmean(var, axis=0)
    share = within / within.sum()
    groups = {"2": share[1], "3": share[2], "4": share[3], "5-10": share[4:10].sum(), "11-97": share[10:97].sum()}
    groups["1 and 98-100"] = share[0] + share[97:].sum()
    formula = {name: design_variance(var, mean, ex, lat) for name, (ex, lat) in DESIGNS.items()}
    print(f"{args.perms} uniform permutations at {rate:.1f} perm/s ({args.threads} threads)")
    print("share of the within-position variance: " + ", ".join(f"{k}: {v:.1%}" for k, v in groups.items()))
    for name, v in formula.items():
        print(f"  formula, {name:18s} c² = {v:.4f}")

    measured: dict[str, float] = {}
    derive = {
        "uniform": lambda b: [derive_permutation(PREV, "t", f"m{b}", j, n, sampler="uniform") for j in range(n)],
        "paired": lambda b: [derive_permutation(PREV, "t", f"m{b}", j, n, sampler="paired") for j in range(n)],
        "latin": lambda b: latin_block(np.random.default_rng(10_000 + b), n),
    }
    for name, block in derive.items():
        estimates = np.array([engine.marginals_many(block(b)).mean(axis=0) for b in range(args.blocks)])
        measured[name] = float(n * estimates.var(axis=0, ddof=1).sum())
        print(f"  measured, {name:8s} one block of {n}, {args.blocks} blocks: c² = {measured[name]:.4f}")
    print(f"latin / paired: {measured['latin'] / measured['paired']:.3f}")
    doc = {
        "setting": {"clients": n, "metric": "accuracy", "empty_value": 0.0, "dataset": args.dataset, **info},
        "permutations": args.perms,
        "blocks": args.blocks,
        "threads": args.threads,
        "perm_per_s": rate,
        "within_variance_by_position": within.tolist(),
        "within_share_groups": groups,
        "formula_c2": formula,
        "measured_c2_one_block": measured,
        "latin_over_paired": measured["latin"] / measured["paired"],
        "seconds": time.perf_counter() - t0,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=2, default=float))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
