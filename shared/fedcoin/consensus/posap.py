"""Proof of Shapley (Algorithm 1), free of any transport.

A miner's work on a task is a sequence of iterations; iteration ``t`` uses the
permutation :func:`derive_permutation` (prev_hash, task_id, miner, t, n,
sampler), so any node can re-derive and re-check the permutations a miner
claims to have used. The chain fixes the sampler
(:attr:`fedcoin.chain.genesis.ChainParams.sampler`).

Permutation derivation (fully specified, independent of numpy or Python's
``random``)::

    seed  = SHA-256(tagged("fedcoin/posap-seed/v1", [prev_hash, task_id, miner, t]))
    block_k = SHA-256(seed || k as 8-byte big-endian), k = 0, 1, ...
    words = the 8-byte big-endian unsigned integers of block_0, block_1, ...
    uniform(m): next word w, rejected while w ≥ 2^64 − (2^64 mod m); return w mod m
    shuffle(xs): for i = len(xs)−1 down to 1: j = uniform(i+1); swap xs[i], xs[j]

``uniform`` sampler: perm = shuffle([0..n−1]) with the words of ``seed``.

``stratified`` sampler: the iterations come in cycles of n, cycle c = t // n,
slot j = t mod n. The cycle order is::

    cycle_seed = SHA-256(tagged("fedcoin/posap-cycle/v1", [prev_hash, task_id, miner, c]))
    σ_c = shuffle([0..n−1]) with the words of cycle_seed

and, for n ≥ 2, perm = [σ_c[j]] + shuffle(rest) + [σ_c[(j+1) mod n]], where
rest lists the other n − 2 players in increasing order and is shuffled with the
words of ``seed`` (n = 1 gives [0]). Within a cycle every player comes first
once and last once, which removes most of the estimator's variance that the
first and last positions carry; yet each permutation on its own is uniform (σ_c
is uniform, so its entries at j and j+1 mod n are a uniform ordered pair of
distinct players, and the middle is a uniform shuffle), so the mean of the
marginal vectors stays an unbiased estimate of the Shapley values.

``paired`` sampler (the default of the chain parameters): the iterations come in
cycles of L = n(n−1), cycle C = t // L, u = t mod L, block b = u // n, slot
j = u mod n. The cycle's orders are::

    pair_seed = SHA-256(tagged("fedcoin/posap-pairs/v1", [prev_hash, task_id, miner, C]))
    σ_C = shuffle([0..n−1]), then ρ_C = shuffle([1..n−1]), both with the words of pair_seed

and, for n ≥ 2, perm = [σ_C[j], σ_C[(j + ρ_C[b]) mod n]] + shuffle(rest), rest
the other n − 2 players in increasing order shuffled with the words of ``seed``
(n = 1 gives [0]). In every block of n iterations every player comes first once
and second once; in every cycle every ordered pair of players takes the first
two places once, so over a cycle the first two positions contribute their exact
expected marginals. On the paper's kind of round these two positions carry
~85% of the variance the stratified sampler leaves (the second player's marginal
depends strongly on who came first). Each permutation on its own is again
uniform (for a fixed j and r ≠ 0, σ_C[j] and σ_C[(j + r) mod n] are a uniform
ordered pair of distinct players), so the estimate stays unbiased at any t.

The running estimate S is the mean of the per-iteration marginal vectors
(line 11), each kept as a leaf of the miner's work log
(:mod:`fedcoin.chain.work`); the network average S̄ is the iteration-weighted
mean of the latest (S, time) report of every miner, own included (line 16),
computed by :func:`average_reports` with exactly rounded sums so every node
gets the same bits; a miner wins when ‖S − S̄‖_p ≤ D (line 17).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, get_args

import numpy as np

from fedcoin.chain.encoding import is_hex, tagged
from fedcoin.chain.reports import ShapleyReport
from fedcoin.chain.work import MAX_WORK_BYTES, WorkLog, WorkLogWriter, work_mean
from fedcoin.chain.work import max_iterations as work_capacity
from fedcoin.errors import InvalidInput
from fedcoin.valuation.sampling import RunningMean

SEED_DOMAIN = "fedcoin/posap-seed/v1"
CYCLE_DOMAIN = "fedcoin/posap-cycle/v1"
PAIR_DOMAIN = "fedcoin/posap-pairs/v1"
Sampler = Literal["uniform", "stratified", "paired"]
SAMPLERS: tuple[Sampler, ...] = get_args(Sampler)
DEFAULT_SAMPLER: Sampler = "paired"
Vector = Sequence[float] | np.ndarray
MarginalFn = Callable[[Sequence[int]], Vector]


def _seed(prev_hash: str, task_id: str, miner: str, iteration: int) -> bytes:
    if not is_hex(prev_hash, 64):
        raise InvalidInput("prev_hash must be a SHA-256 hex digest")
    if not isinstance(task_id, str) or not isinstance(miner, str):
        raise InvalidInput("task_id and miner must be strings")
    if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 0:
        raise InvalidInput("iteration must be a non-negative integer")
    return hashlib.sha256(tagged(SEED_DOMAIN, [prev_hash, task_id, miner, iteration])).digest()


class _WordStream:
    __slots__ = ("_seed", "_counter", "_buf")

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._counter = 0
        self._buf: list[int] = []

    def word(self) -> int:
        if not self._buf:
            block = hashlib.sha256(self._seed + self._counter.to_bytes(8, "big")).digest()
            self._counter += 1
            self._buf = [int.from_bytes(block[i : i + 8], "big") for i in (24, 16, 8, 0)]
        return self._buf.pop()

    def uniform(self, m: int) -> int:
        limit = (1 << 64) - ((1 << 64) % m)
        while True:
            w = self.word()
            if w < limit:
                return w % m


def _check_n(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise InvalidInput("n must be a positive integer")


def _check_sampler(sampler: str) -> None:
    if sampler not in SAMPLERS:
        raise InvalidInput(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")


def _shuffle(stream: _WordStream, items: list[int]) -> list[int]:
    """Fisher–Yates in place, drawing from ``stream``; returns ``items``."""
    for i in range(len(items) - 1, 0, -1):
        j = stream.uniform(i + 1)
        items[i], items[j] = items[j], items[i]
    return items


# σ_c costs as much as a permutation and serves n of them: memoised (a pure function of its arguments),
# a stratified permutation costs about what a uniform one does
@lru_cache(maxsize=256)
def _cycle_order(prev_hash: str, task_id: str, miner: str, cycle: int, n: int) -> tuple[int, ...]:
    seed = hashlib.sha256(tagged(CYCLE_DOMAIN, [prev_hash, task_id, miner, cycle])).digest()
    return tuple(_shuffle(_WordStream(seed), list(range(n))))


def cycle_order(prev_hash: str, task_id: str, miner: str, cycle: int, n: int) -> list[int]:
    """σ_c: the order in which the stratified sampler puts the ``n`` players first (and, shifted by
    one, last) over the iterations ``cycle·n … cycle·n + n − 1`` of ``miner``."""
    _check_n(n)
    if not isinstance(cycle, int) or isinstance(cycle, bool) or cycle < 0:
        raise InvalidInput("cycle must be a non-negative integer")
    _seed(prev_hash, task_id, miner, cycle)  # validates the other seed inputs
    return list(_cycle_order(prev_hash, task_id, miner, cycle, n))


@lru_cache(maxsize=256)
def _pair_cycle(
    prev_hash: str, task_id: str, miner: str, cycle: int, n: int
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    stream = _WordStream(hashlib.sha256(tagged(PAIR_DOMAIN, [prev_hash, task_id, miner, cycle])).digest())
    sigma = _shuffle(stream, list(range(n)))
    rho = _shuffle(stream, list(range(1, n)))
    return tuple(sigma), tuple(rho)


def pair_cycle(prev_hash: str, task_id: str, miner: str, cycle: int, n: int) -> tuple[list[int], list[int]]:
    """(σ_C, ρ_C) of the paired sampler: in iteration C·n(n−1) + b·n + j of ``miner`` the first
    player is σ_C[j] and the second σ_C[(j + ρ_C[b]) mod n]."""
    _check_n(n)
    if not isinstance(cycle, int) or isinstance(cycle, bool) or cycle < 0:
        raise InvalidInput("cycle must be a non-negative integer")
    _seed(prev_hash, task_id, miner, cycle)  # validates the other seed inputs
    sigma, rho = _pair_cycle(prev_hash, task_id, miner, cycle, n)
    return list(sigma), list(rho)


def derive_permutation(
    prev_hash: str, task_id: str, miner: str, iteration: int, n: int, *, sampler: Sampler = "uniform"
) -> list[int]:
    """The permutation of ``n`` players that ``miner`` uses in ``iteration`` under ``sampler``.

    ``"uniform"``: a Fisher–Yates shuffle of the iteration's word stream. ``"stratified"``: the
    cycle order σ_c (:func:`cycle_order`, c = iteration // n) gives the first player σ_c[j] and the
    last σ_c[(j + 1) mod n] (j = iteration mod n), the iteration's word stream shuffles the rest
    between them. ``"paired"``: the pair cycle (:func:`pair_cycle`) gives the first two players, the
    word stream shuffles the rest after them. All three are uniform permutations; the stratified one
    makes each player first once and last once in every cycle of ``n`` iterations, the paired one
    each player first once and second once in every block of ``n`` and each ordered pair first and
    second once in every cycle of n(n−1). Raises InvalidInput on bad input.
    """
    _check_n(n)
    _check_sampler(sampler)
    stream = _WordStream(_seed(prev_hash, task_id, miner, iteration))
    if sampler == "uniform":
        return _shuffle(stream, list(range(n)))
    if n == 1:
        return [0]
    if sampler == "paired":
        cycle, u = divmod(iteration, n * (n - 1))
        block, slot = divmod(u, n)
        sigma, rho = _pair_cycle(prev_hash, task_id, miner, cycle, n)
        first, second = sigma[slot], sigma[(slot + rho[block]) % n]
        rest = _shuffle(stream, [p for p in range(n) if p != first and p != second])
        return [first, second, *rest]
    cycle, slot = divmod(iteration, n)
    order = _cycle_order(prev_hash, task_id, miner, cycle, n)
    first, last = order[slot], order[(slot + 1) % n]
    middle = _shuffle(stream, [p for p in range(n) if p != first and p != last])
    return [first, *middle, last]


def p_distance(a: Vector, b: Vector, p: float = 2.0) -> float:
    """‖a − b‖_p for p ≥ 1 (``math.inf`` gives the max norm)."""
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not p >= 1:
        raise InvalidInput(f"p must be >= 1, got {p!r}")
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise InvalidInput(f"vectors must have the same length, got {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise InvalidInput("vectors must be finite")
    if x.size == 0:
        return 0.0
    d = np.abs(x - y)
    if math.isinf(p):
        return float(d.max())
    scale = float(d.max())
    if scale == 0.0:
        return 0.0
    return float(scale * np.sum((d / scale) ** p) ** (1.0 / p))


@dataclass(frozen=True)
class Report:
    """A miner's broadcast (line 13): its running S after ``iterations`` iterations."""

    shapley: tuple[float, ...]
    iterations: int


def average_reports(reports: Iterable[Report | ShapleyReport]) -> np.ndarray:
    """Line 16: S̄ = Σ time·S / Σ time over the given reports, each sum exactly rounded
    (``math.fsum`` of the products), so the value is the same on every platform."""
    reps = [r for r in reports if r.iterations > 0]
    if not reps:
        raise InvalidInput("no report with a positive iteration count")
    n = len(reps[0].shapley)
    if any(len(r.shapley) != n for r in reps):
        raise InvalidInput("reports have different lengths")
    weight = float(sum(r.iterations for r in reps))
    return np.array([math.fsum(r.iterations * float(r.shapley[i]) for r in reps) / weight for i in range(n)])


class PoSapMiner:
    """One miner's state on one Shapley task (lines 1–22 of Algorithm 1).

    ``marginals`` maps a permutation to the vector of marginal contributions
    (for example :meth:`fedcoin.valuation.engine.ShapleyEngine.marginals`, or
    :meth:`fedcoin.valuation.sampling.CoalitionGame.marginals` for a plain game). Call
    :meth:`step` to run iterations, :meth:`receive` with other miners'
    reports, and :meth:`is_winner` to check line 17. ``min_peers`` is the
    number of other miners whose reports must be in S̄ before this miner may
    win (1 by default, so a miner never wins on its own average alone).
    ``sampler`` picks the permutations (:func:`derive_permutation`); a node
    passes its chain's ``params.sampler``, since verifiers re-derive the
    permutations with it. It defaults to the default of
    :attr:`fedcoin.chain.genesis.ChainParams.sampler`, ``"paired"``, so a
    miner that names none mines work a chain with default parameters accepts.
    ``max_iterations`` (default: what a block's decoded work log holds,
    :func:`fedcoin.chain.work.max_iterations`) stops :meth:`step` once the log is
    that long, and so does a log whose deflated size could pass what a block
    carries (:class:`~fedcoin.chain.work.WorkLogWriter`); either way the miner
    is :attr:`full`. ``max_work_bytes`` lowers that encoded limit (for tests).
    """

    def __init__(
        self,
        *,
        miner: str,
        task_id: str,
        prev_hash: str,
        n_players: int,
        marginals: MarginalFn,
        difficulty: float,
        p: float = 2.0,
        min_peers: int = 1,
        sampler: Sampler = DEFAULT_SAMPLER,
        max_iterations: int | None = None,
        max_work_bytes: int | None = None,
    ) -> None:
        if not isinstance(n_players, int) or isinstance(n_players, bool) or n_players < 1:
            raise InvalidInput("n_players must be a positive integer")
        if not callable(marginals):
            raise InvalidInput("marginals must be callable")
        if not isinstance(difficulty, (int, float)) or not (math.isfinite(difficulty) and difficulty > 0):
            raise InvalidInput("difficulty must be a positive finite number")
        if not isinstance(min_peers, int) or min_peers < 0:
            raise InvalidInput("min_peers must be a non-negative integer")
        _check_sampler(sampler)
        cap = work_capacity(n_players)
        if max_iterations is not None and (
            not isinstance(max_iterations, int) or isinstance(max_iterations, bool) or not 1 <= max_iterations <= cap
        ):
            raise InvalidInput(f"max_iterations must be an integer from 1 to {cap} (what a block's work log holds)")
        p_distance([0.0], [0.0], p)  # validates p
        _seed(prev_hash, task_id, miner, 0)  # validates the seed inputs
        self.miner = miner
        self.task_id = task_id
        self.prev_hash = prev_hash
        self.n_players = n_players
        self.difficulty = float(difficulty)
        self.p = p
        self.min_peers = min_peers
        self.sampler: Sampler = sampler
        self.max_iterations = cap if max_iterations is None else max_iterations
        self._marginals = marginals
        self._running = RunningMean(n_players)
        self._writer = WorkLogWriter(n_players, max_bytes=MAX_WORK_BYTES if max_work_bytes is None else max_work_bytes)
        self._peers: dict[str, Report] = {}
        self._signed: dict[str, ShapleyReport] = {}

    @property
    def iterations(self) -> int:
        return self._running.count

    @property
    def shapley(self) -> np.ndarray:
        return self._running.mean

    @property
    def full(self) -> bool:
        """The work log holds ``max_iterations`` leaves, or one more could take its encoding past what
        a block carries: more work could not go into a block, so :meth:`step` runs no more; the
        miner can still win if S̄ comes within D of its S."""
        return self.iterations >= self.max_iterations or not self._writer.fits(1)

    def report(self) -> Report:
        return Report(tuple(float(x) for x in self._running.mean), self.iterations)

    def step(self, count: int = 1) -> Report:
        """Run ``count`` iterations (lines 4–12) and return the report to broadcast.

        When the marginal function offers ``many(permutations) -> (count, K)`` (as
        :attr:`fedcoin.valuation.engine.ShapleyEngine.marginal_fn` does), the ``count``
        permutations are valued in one call; the leaves are the same either way. Runs fewer (none
        once :attr:`full`) when ``count`` would take the log past ``max_iterations``."""
        start, n = self.iterations, self.n_players
        count = max(0, min(count, self.max_iterations - start))
        while count and not self._writer.fits(count):
            count //= 2
        perms = [
            derive_permutation(self.prev_hash, self.task_id, self.miner, start + i, n, sampler=self.sampler)
            for i in range(count)
        ]
        many = getattr(self._marginals, "many", None)
        if callable(many) and count > 1:
            rows = np.array(many(perms), dtype=np.float64)
            if rows.shape[0] != count:
                raise InvalidInput(f"many() gave {rows.shape[0]} marginal vectors for {count} permutations")
            leaves = list(rows)
        else:
            leaves = [np.array(self._marginals(perm), dtype=np.float64) for perm in perms]
        if not leaves:
            return self.report()
        if any(leaf.shape != (n,) for leaf in leaves) or not all(np.isfinite(leaf).all() for leaf in leaves):
            raise InvalidInput(f"marginals must be {n} finite values per permutation")  # nothing folded in
        for leaf in leaves:
            self._running.update(leaf)  # line 11
        self._writer.append(np.stack(leaves))  # the work log keeps them, deflated
        return self.report()

    def leaves(self) -> np.ndarray:
        """The work log: one marginal vector per iteration, in iteration order (read-only; decoded
        from the deflated log, which is the one copy the miner keeps)."""
        if not self.iterations:
            return np.zeros((0, self.n_players))
        return self.work_log().leaves()

    def work_log(self) -> WorkLog:
        """The work log as a block carries it (deflated as the miner went)."""
        return self._writer.log()

    def exact_shapley(self) -> list[float]:
        """S as a block states it: the exactly rounded mean of the work log."""
        return work_mean(self.leaves())

    def receive(self, peer: str, report: Report | ShapleyReport) -> None:
        """Keep the latest report of ``peer`` (a later one with fewer iterations is ignored); a signed
        :class:`~fedcoin.chain.reports.ShapleyReport` must be for this task and head, and is kept for
        the block this miner may build."""
        if peer == self.miner:
            return
        if isinstance(report, ShapleyReport) and (
            report.miner != peer or report.task_id != self.task_id or report.prev_hash != self.prev_hash
        ):
            raise InvalidInput("report is not this peer's report on this task and head")
        if len(report.shapley) != self.n_players:
            raise InvalidInput(f"report has {len(report.shapley)} values, task has {self.n_players} players")
        if not isinstance(report.iterations, int) or report.iterations < 0:
            raise InvalidInput("report iterations must be a non-negative integer")
        if not all(math.isfinite(x) for x in report.shapley):
            raise InvalidInput("report holds non-finite values")
        old = self._peers.get(peer)
        if old is None or report.iterations >= old.iterations:
            self._peers[peer] = Report(tuple(report.shapley), report.iterations)
            if isinstance(report, ShapleyReport):
                self._signed[peer] = report
            else:
                self._signed.pop(peer, None)

    @property
    def peer_reports(self) -> Mapping[str, Report]:
        return dict(self._peers)

    def signed_reports(self) -> list[ShapleyReport]:
        """The peers' latest signed reports, by miner account (what a block carries)."""
        return [self._signed[k] for k in sorted(self._signed)]

    def network_average(self) -> np.ndarray | None:
        reports = [self.report(), *self._peers.values()]
        if all(r.iterations == 0 for r in reports):
            return None
        return average_reports(reports)

    def distance(self) -> float | None:
        avg = self.network_average()
        if avg is None or self.iterations == 0:
            return None
        return p_distance(self._running.mean, avg, self.p)

    def is_winner(self) -> bool:
        """Line 17: ‖S − S̄‖_p ≤ D, with at least ``min_peers`` peers heard from."""
        if sum(1 for r in self._peers.values() if r.iterations > 0) < self.min_peers:
            return False
        d = self.distance()
        return d is not None and d <= self.difficulty
