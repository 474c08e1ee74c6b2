"""Shapley values of a cooperative game, exact and by permutation sampling.

FedCoin pays federated-learning clients in proportion to their Shapley value.
A *game* on ``n`` players is given by a ``utility`` callable mapping a
``frozenset`` of player indices (``0 .. n-1``) to a real number; the empty
coalition is a valid argument and its value ``v(∅)`` need not be zero.

Two estimators are provided:

* :func:`exact_shapley` enumerates all ``2**n`` coalitions once (``n <= 20``).
* :func:`permutation_shapley` is the miners' Monte Carlo estimator (Algorithm 1
  of the FedCoin paper): draw random permutations of the players, evaluate the
  utility on every prefix, and average the telescoping marginal vectors.

The building blocks :func:`marginals_for_permutation`, :class:`RunningMean` and
:func:`relative_l2_error` are public so that other modules (miners, block
verification, experiments) can reuse them.

Every public entry point validates its arguments and raises
:class:`fedcoin.errors.InvalidInput` (a ``ValueError``) on bad input.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fedcoin.errors import InvalidInput

__all__ = [
    "MAX_EXACT_PLAYERS",
    "RunningMean",
    "Utility",
    "exact_shapley",
    "marginals_for_permutation",
    "permutation_shapley",
    "relative_l2_error",
]

#: Largest number of players :func:`exact_shapley` accepts (``2**20`` coalitions).
MAX_EXACT_PLAYERS = 20

#: A game: maps a coalition (frozenset of player indices) to its real utility.
Utility = Callable[[frozenset[int]], Any]


# ---------------------------------------------------------------------------
# validation helpers (private)
# ---------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    """True for Python/numpy integers, False for ``bool`` and everything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _check_n_players(n_players: object) -> int:
    if not _is_int(n_players):
        raise InvalidInput(f"n_players must be an int, got {type(n_players).__name__}")
    n = int(n_players)  # type: ignore[arg-type]
    if n < 1:
        raise InvalidInput(f"n_players must be >= 1, got {n}")
    return n


def _check_utility(utility: object) -> None:
    if not callable(utility):
        raise InvalidInput(f"utility must be callable, got {type(utility).__name__}")


def _as_finite_real(value: object, what: str) -> float:
    """Convert ``value`` to a finite float or raise :class:`InvalidInput`."""
    kind = type(value)
    if kind is not float and kind is not int:  # fast path for the common cases
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise InvalidInput(f"{what} must be a real number, got {kind.__name__}: {value!r}")
    try:
        result = float(value)  # type: ignore[arg-type]
    except (OverflowError, TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} is not representable as a float: {value!r}") from exc
    if not math.isfinite(result):
        raise InvalidInput(f"{what} must be finite, got {result!r}")
    return result


def _evaluate(utility: Utility, coalition: frozenset[int]) -> float:
    """Call ``utility(coalition)`` and return its value as a checked finite float."""
    value = utility(coalition)
    if type(value) is float and math.isfinite(value):  # fast path
        return value
    return _as_finite_real(value, f"utility of coalition {sorted(coalition)}")


def _as_vector(values: object, name: str) -> np.ndarray:
    """Return ``values`` as a finite 1-D float64 array or raise :class:`InvalidInput`."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{name} must be a sequence of real numbers") from exc
    if arr.ndim != 1:
        raise InvalidInput(f"{name} must be one-dimensional, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InvalidInput(f"{name} must contain only finite numbers")
    return arr


def _check_permutation(permutation: object) -> list[int]:
    """Return ``permutation`` as a list of ints after checking it permutes ``range(n)``."""
    if isinstance(permutation, (str, bytes)) or not isinstance(
        permutation, (Sequence, np.ndarray)
    ):
        raise InvalidInput(
            f"permutation must be a sequence of ints, got {type(permutation).__name__}"
        )
    if isinstance(permutation, np.ndarray) and permutation.ndim != 1:
        raise InvalidInput(f"permutation must be one-dimensional, got shape {permutation.shape}")
    items = list(permutation)
    n = len(items)
    if n < 1:
        raise InvalidInput("permutation must contain at least one player")
    seen = [False] * n
    result = []
    for position, item in enumerate(items):
        if not _is_int(item):
            raise InvalidInput(
                f"permutation entry {position} must be an int, got {type(item).__name__}"
            )
        player = int(item)
        if not 0 <= player < n:
            raise InvalidInput(
                f"permutation entry {position} is {player}, outside range(0, {n})"
            )
        if seen[player]:
            raise InvalidInput(f"permutation lists player {player} more than once")
        seen[player] = True
        result.append(player)
    return result


# ---------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------


def _marginals(order: Sequence[int], utility: Utility, v_empty: float) -> np.ndarray:
    """Unchecked core of :func:`marginals_for_permutation` (``order`` already valid)."""
    marginals = np.empty(len(order), dtype=np.float64)
    prefix: set[int] = set()
    previous = v_empty
    for player in order:
        prefix.add(player)
        current = _evaluate(utility, frozenset(prefix))
        marginals[player] = current - previous
        previous = current
    return marginals


def marginals_for_permutation(
    permutation: Sequence[int], utility: Utility, v_empty: float
) -> np.ndarray:
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
    order = _check_permutation(permutation)
    _check_utility(utility)
    empty_value = _as_finite_real(v_empty, "v_empty")
    return _marginals(order, utility, empty_value)


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
            if not _is_int(size) or int(size) < 1:
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
        x = _as_vector(vec, "vec")
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


def relative_l2_error(
    estimate: Sequence[float] | np.ndarray, reference: Sequence[float] | np.ndarray
) -> float:
    """``||estimate - reference||_2 / ||reference||_2``.

    If ``reference`` has norm 0 the absolute error ``||estimate - reference||_2``
    is returned instead. Raises :class:`InvalidInput` unless both arguments are
    finite 1-D vectors of the same length.
    """
    est = _as_vector(estimate, "estimate")
    ref = _as_vector(reference, "reference")
    if est.shape != ref.shape:
        raise InvalidInput(f"estimate has length {est.size}, reference has length {ref.size}")
    error = float(np.linalg.norm(est - ref))
    norm = float(np.linalg.norm(ref))
    return error / norm if norm > 0.0 else error


# ---------------------------------------------------------------------------
# exact Shapley value
# ---------------------------------------------------------------------------


def _popcounts(n: int) -> np.ndarray:
    """Number of set bits of every mask in ``range(2**n)`` (int64 array)."""
    counts = np.zeros(1, dtype=np.int64)
    for _ in range(n):  # counts for n+1 bits = [counts, counts + 1]
        counts = np.concatenate((counts, counts + 1))
    return counts


def _coalition_values(n: int, utility: Utility) -> np.ndarray:
    """``values[mask] = v({i : bit i of mask set})`` for every mask, one call each."""
    low_bits = n // 2
    high_bits = n - low_bits

    def member_tuples(bits: int, offset: int) -> list[tuple[int, ...]]:
        tuples: list[tuple[int, ...]] = [()]
        for bit in range(bits):  # masks with top bit `bit` = earlier masks + (bit,)
            tuples.extend(t + (bit + offset,) for t in tuples[:])
        return tuples

    lows = member_tuples(low_bits, 0)
    highs = member_tuples(high_bits, low_bits)
    values = np.empty(1 << n, dtype=np.float64)
    mask = 0
    for high in highs:  # mask = (high index << low_bits) | low index
        for low in lows:
            values[mask] = _evaluate(utility, frozenset(low + high))
            mask += 1
    return values


def exact_shapley(n_players: int, utility: Utility) -> list[float]:
    """Exact Shapley value of an ``n_players`` game (``1 <= n_players <= 20``).

    ``phi_i = sum_{S ⊆ N \\ {i}} |S|! (n-|S|-1)! / n! * (v(S ∪ {i}) - v(S))``.

    The utility is called exactly once for each of the ``2**n`` coalitions
    (the empty one included) and the values are cached in an array indexed by
    bitmask. The aggregation is vectorised: for each player, the marginal
    differences over all coalitions are summed per coalition size (pairwise
    summation), each size class is divided by ``comb(n-1, s)`` and the ``n``
    class averages are combined with :func:`math.fsum`, i.e. the weight
    ``1 / (n * comb(n-1, s))`` is applied without forming huge factorials.

    Returns ``n_players`` floats; they sum to ``v(N) - v(∅)`` (efficiency).

    Raises :class:`InvalidInput` for a non-int or out-of-range ``n_players``,
    a non-callable ``utility`` or a utility value that is not a finite real.
    """
    n = _check_n_players(n_players)
    if n > MAX_EXACT_PLAYERS:
        raise InvalidInput(
            f"exact_shapley enumerates 2**n coalitions and supports at most "
            f"{MAX_EXACT_PLAYERS} players, got {n}; use permutation_shapley instead"
        )
    _check_utility(utility)

    values = _coalition_values(n, utility)
    masks = np.arange(1 << n, dtype=np.int64)
    sizes = _popcounts(n)
    order = np.argsort(sizes, kind="stable")  # masks grouped by coalition size
    bounds = np.searchsorted(sizes[order], np.arange(n + 1))  # start of each size class
    class_sizes = [math.comb(n - 1, s) for s in range(n)]

    phi: list[float] = []
    for player in range(n):
        # v(S | {i}) - v(S); exactly 0 for masks already containing i, so the
        # per-size sums below only see coalitions S of N \ {i}.
        diffs = (values[masks | (1 << player)] - values)[order]
        class_means = [
            float(np.sum(diffs[bounds[s] : bounds[s + 1]])) / class_sizes[s] for s in range(n)
        ]
        phi.append(math.fsum(class_means) / n)
    return phi


# ---------------------------------------------------------------------------
# Monte Carlo estimate (Algorithm 1)
# ---------------------------------------------------------------------------


def permutation_shapley(
    n_players: int,
    utility: Utility,
    n_permutations: int,
    seed: int | None = None,
    *,
    cache: bool = False,
) -> list[float]:
    """Monte Carlo Shapley estimate by random permutations (Algorithm 1).

    ``v(∅)`` is evaluated once. Then, for each of ``n_permutations``
    permutations drawn from ``numpy.random.default_rng(seed)``, the utility is
    evaluated on every non-empty prefix, the telescoping marginal vector is
    computed (:func:`marginals_for_permutation`) and folded into a
    :class:`RunningMean`. The result is that mean as a list of floats.

    Without ``cache`` the utility is called exactly
    ``1 + n_players * n_permutations`` times, mirroring a miner's cost. With
    ``cache=True`` values are memoised in a dict keyed by coalition, so each
    distinct coalition is evaluated at most once (same result for the same
    seed, assuming a deterministic utility).

    Because each marginal vector telescopes, the estimate satisfies
    efficiency (``sum = v(N) - v(∅)``) for any number of permutations.

    Raises :class:`InvalidInput` for a bad ``n_players``, ``n_permutations``
    (int >= 1), ``seed`` (``None`` or a non-negative int), ``cache`` (bool),
    non-callable ``utility`` or a utility value that is not a finite real.
    """
    n = _check_n_players(n_players)
    _check_utility(utility)
    if not _is_int(n_permutations):
        raise InvalidInput(
            f"n_permutations must be an int, got {type(n_permutations).__name__}"
        )
    if int(n_permutations) < 1:
        raise InvalidInput(f"n_permutations must be >= 1, got {n_permutations}")
    if seed is not None and not _is_int(seed):
        raise InvalidInput(f"seed must be None or an int, got {type(seed).__name__}")
    if seed is not None and int(seed) < 0:
        raise InvalidInput(f"seed must be non-negative, got {seed}")
    if not isinstance(cache, bool):
        raise InvalidInput(f"cache must be a bool, got {type(cache).__name__}")

    game: Utility = utility
    if cache:
        memo: dict[frozenset[int], float] = {}

        def game(coalition: frozenset[int]) -> float:
            try:
                return memo[coalition]
            except KeyError:
                value = memo[coalition] = _evaluate(utility, coalition)
                return value

    rng = np.random.default_rng(None if seed is None else int(seed))
    v_empty = _evaluate(game, frozenset())
    running = RunningMean(n)
    for _ in range(int(n_permutations)):
        order = rng.permutation(n).tolist()
        running.update(_marginals(order, game, v_empty))
    return [float(x) for x in running.mean]
