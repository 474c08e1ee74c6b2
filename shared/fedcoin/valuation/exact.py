"""The exact Shapley value of a cooperative game, by enumerating every coalition.

A *game* on ``n`` players is a ``utility`` callable mapping a ``frozenset`` of
player indices (``0 .. n-1``) to a real number; the empty coalition is a valid
argument and its value ``v(∅)`` need not be zero.
"""

from __future__ import annotations

import math

import numpy as np

from fedcoin.errors import InvalidInput

from .checks import Utility, check_n_players, check_utility, evaluate

#: Largest number of players :func:`exact_shapley` accepts (``2**20`` coalitions).
MAX_EXACT_PLAYERS = 20


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
            values[mask] = evaluate(utility, frozenset(low + high))
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
    n = check_n_players(n_players)
    if n > MAX_EXACT_PLAYERS:
        raise InvalidInput(
            f"exact_shapley enumerates 2**n coalitions and supports at most "
            f"{MAX_EXACT_PLAYERS} players, got {n}; use permutation_shapley instead"
        )
    check_utility(utility)

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
        class_means = [float(np.sum(diffs[bounds[s] : bounds[s + 1]])) / class_sizes[s] for s in range(n)]
        phi.append(math.fsum(class_means) / n)
    return phi
