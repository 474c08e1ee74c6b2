"""Shapley values by permutation sampling (Algorithm 1 of the FedCoin paper).

The pieces are separate objects, so each can be swapped:

* a **game** that gives the marginal vector of a permutation
  (:class:`MarginalSource`): :class:`CoalitionGame` wraps a plain coalition
  utility; :class:`fedcoin.valuation.naive.NaiveUtility` and
  :class:`fedcoin.valuation.engine.ShapleyEngine` value FL coalitions;
* a **sampler** of permutations: :func:`random_permutations` (seeded NumPy), or
  the miners' hash-derived permutations
  (:func:`fedcoin.consensus.posap.derive_permutation`), either ``uniform``
  (independent shuffles), ``stratified`` (in every cycle of ``n``
  permutations each player comes first once and last once) or ``paired`` (each
  player first once and second once in every ``n`` permutations, each ordered
  pair first and second once in every n(n−1)); each permutation is still
  uniform, so the mean below stays unbiased, with a lower variance, since the
  first two positions carry most of it; the chain's ``ChainParams.sampler``
  picks the one its miners use;
* the **estimate**: :class:`RunningMean` of the marginal vectors, and
  :func:`permutation_shapley`, which runs the loop with an optional stopping
  ``callback``.

Marginal vectors are indexed by *player*: ``m[R[i]] = v(R[:i+1]) - v(R[:i])``,
so they telescope to ``v(N) - v(∅)`` and the estimate satisfies efficiency for
any number of permutations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from fedcoin.errors import InvalidInput

from .checks import (
    Utility,
    as_finite_real,
    as_vector,
    check_n_players,
    check_permutation,
    check_utility,
    evaluate,
    is_int,
)


class MarginalSource(Protocol):
    """A game that gives the marginal vector (by player) of a permutation of its players."""

    @property
    def n_players(self) -> int: ...

    def marginals(self, permutation: Sequence[int]) -> np.ndarray: ...


def _marginals(order: Sequence[int], utility: Utility, v_empty: float) -> np.ndarray:
    """Unchecked core of :func:`marginals_for_permutation` (``order`` already valid)."""
    marginals = np.empty(len(order), dtype=np.float64)
    prefix: set[int] = set()
    previous = v_empty
    for player in order:
        prefix.add(player)
        current = evaluate(utility, frozenset(prefix))
        marginals[player] = current - previous
        previous = current
    return marginals


def marginals_for_permutation(permutation: Sequence[int], utility: Utility, v_empty: float) -> np.ndarray:
    """Marginal contribution of every player along one permutation (Algorithm 1, lines 5-9).

    For ``R = permutation`` the player ``R[i]`` receives
    ``v(R[:i+1]) - v(R[:i])``, where ``v(R[:0])`` is the supplied ``v_empty``
    (so callers evaluate the empty coalition once and reuse it). The utility is
    called once per non-empty prefix, i.e. ``n`` times.

    Returns a float64 array of length ``n`` indexed by player; its entries
    telescope to ``v(N) - v_empty``.

    Raises :class:`InvalidInput` if ``permutation`` is not a permutation of
    ``range(n)`` (wrong length, duplicates, out-of-range or non-int entries),
    ``utility`` is not callable, ``v_empty`` is not a finite real, or the
    utility returns a non-number / non-finite value.
    """
    order = check_permutation(permutation)
    check_utility(utility)
    empty_value = as_finite_real(v_empty, "v_empty")
    return _marginals(order, utility, empty_value)


class CoalitionGame:
    """A plain coalition utility as a :class:`MarginalSource`.

    ``v(∅)`` is evaluated once, at construction; each permutation then costs
    ``n_players`` utility calls (a miner's cost). With ``cache=True`` values are
    memoised by coalition, so each distinct coalition is evaluated at most once
    (same results for a deterministic utility).
    """

    def __init__(self, n_players: int, utility: Utility, *, cache: bool = False) -> None:
        self._n = check_n_players(n_players)
        check_utility(utility)
        if not isinstance(cache, bool):
            raise InvalidInput(f"cache must be a bool, got {type(cache).__name__}")
        self._utility: Utility = utility
        if cache:
            memo: dict[frozenset[int], float] = {}

            def cached(coalition: frozenset[int]) -> float:
                try:
                    return memo[coalition]
                except KeyError:
                    value = memo[coalition] = evaluate(utility, coalition)
                    return value

            self._utility = cached
        self.empty_value = evaluate(self._utility, frozenset())

    @property
    def n_players(self) -> int:
        return self._n

    def __call__(self, coalition: frozenset[int]) -> float:
        return evaluate(self._utility, frozenset(coalition))

    def marginals(self, permutation: Sequence[int]) -> np.ndarray:
        order = check_permutation(permutation)
        if len(order) != self._n:
            raise InvalidInput(f"permutation has {len(order)} players, the game has {self._n}")
        return _marginals(order, self._utility, self.empty_value)


class RunningMean:
    """Running average of equally sized vectors (Algorithm 1, line 11).

    The paper writes ``S = (S * time + St) / (time + 1)``; this class uses the
    numerically equivalent, overflow-safe incremental form
    ``mean += (x - mean) / count``.

    ``size`` fixes the vector length up front; if omitted it is taken from the
    first :meth:`update`. Before any update :attr:`mean` is an all-zero vector
    of length ``size`` (empty if the size is still unknown) and
    :attr:`count` is 0.
    """

    __slots__ = ("_count", "_mean", "_size")

    def __init__(self, size: int | None = None) -> None:
        if size is not None:
            if not is_int(size) or int(size) < 1:
                raise InvalidInput(f"size must be a positive int or None, got {size!r}")
            size = int(size)
        self._size: int | None = size
        self._count = 0
        self._mean = np.zeros(size if size is not None else 0, dtype=np.float64)

    @property
    def count(self) -> int:
        """Number of vectors averaged so far."""
        return self._count

    @property
    def size(self) -> int | None:
        """Vector length, or ``None`` before it is known."""
        return self._size

    @property
    def mean(self) -> np.ndarray:
        """Current average (a copy; mutating it does not affect the accumulator)."""
        return self._mean.copy()

    def update(self, vec: Sequence[float] | np.ndarray) -> None:
        """Fold one vector into the average. Raises :class:`InvalidInput` if it is
        not a finite 1-D vector of the right length (the state is then unchanged)."""
        x = as_vector(vec, "vec")
        if self._size is None:
            if x.size < 1:
                raise InvalidInput("vec must not be empty")
            self._size = int(x.size)
            self._mean = np.zeros(self._size, dtype=np.float64)
        elif x.size != self._size:
            raise InvalidInput(f"vec has length {x.size}, expected {self._size}")
        self._count += 1
        self._mean += (x - self._mean) / self._count

    def __repr__(self) -> str:
        return f"RunningMean(size={self._size}, count={self._count})"


def relative_l2_error(estimate: Sequence[float] | np.ndarray, reference: Sequence[float] | np.ndarray) -> float:
    """``||estimate - reference||_2 / ||reference||_2``.

    If ``reference`` has norm 0 the absolute error ``||estimate - reference||_2``
    is returned instead. Raises :class:`InvalidInput` unless both arguments are
    finite 1-D vectors of the same length.
    """
    est = as_vector(estimate, "estimate")
    ref = as_vector(reference, "reference")
    if est.shape != ref.shape:
        raise InvalidInput(f"estimate has length {est.size}, reference has length {ref.size}")
    error = float(np.linalg.norm(est - ref))
    norm = float(np.linalg.norm(ref))
    return error / norm if norm > 0.0 else error


def random_permutations(n_players: int, count: int, seed: int | None = 0) -> np.ndarray:
    """``count`` uniformly random permutations of ``n_players`` (int64 ``(count, n_players)``).

    Drawn one after the other with ``numpy.random.default_rng(seed).permutation``.
    """
    rng = np.random.default_rng(seed)
    if not count:
        return np.empty((0, n_players), np.int64)
    return np.stack([rng.permutation(n_players) for _ in range(count)])


def permutation_shapley(
    game: MarginalSource,
    n_permutations: int | None = None,
    *,
    seed: int | None = None,
    permutations: np.ndarray | Sequence[Sequence[int]] | None = None,
    callback: Callable[[int, np.ndarray], object] | None = None,
) -> np.ndarray:
    """Monte Carlo Shapley estimate (Algorithm 1, lines 4-12): the mean of marginal vectors.

    Uses ``permutations`` when given, else ``n_permutations`` drawn by
    :func:`random_permutations` with ``seed`` (``None``: fresh entropy).
    ``callback(t, estimate)`` is called after each permutation (``t`` =
    permutations so far); returning ``True`` stops early. Returns the
    estimate as a float64 array of ``game.n_players`` values.

    Raises :class:`InvalidInput` for a bad ``n_permutations`` (an int >= 1,
    unless ``permutations`` is given) or ``seed`` (``None`` or an int >= 0).
    """
    if permutations is None:
        if not is_int(n_permutations):
            raise InvalidInput(f"n_permutations must be an int, got {type(n_permutations).__name__}")
        if int(n_permutations) < 1:  # type: ignore[arg-type]
            raise InvalidInput(f"n_permutations must be >= 1, got {n_permutations}")
        if seed is not None and (not is_int(seed) or int(seed) < 0):
            raise InvalidInput(f"seed must be None or a non-negative int, got {seed!r}")
        permutations = random_permutations(game.n_players, int(n_permutations), None if seed is None else int(seed))  # type: ignore[arg-type]
    running = RunningMean(game.n_players)
    for perm in permutations:
        running.update(game.marginals(perm))  # S = (S * (t-1) + S_t) / t
        if callback is not None and callback(running.count, running.mean) is True:
            break
    return running.mean
