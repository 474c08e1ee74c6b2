"""Small cooperative games: test games whose Shapley values are known in closed form, and
the toy data-quality game of ``fedcoin simulate``.

Each ``*_game`` constructor returns a :class:`KnownGame`: the utility (a coalition
``frozenset`` to a float) together with its exact Shapley vector, so an estimator
can be checked against the truth without enumerating coalitions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from fedcoin.errors import InvalidInput

from .checks import check_n_players


@dataclass(frozen=True)
class KnownGame:
    n_players: int
    utility: Callable[[frozenset[int]], float]
    shapley: tuple[float, ...]


def additive_game(weights: Sequence[float], base: float = 0.0) -> KnownGame:
    """``v(S) = base + sum_{i in S} w_i``: every marginal of player ``i`` is ``w_i``, so ``phi = w``."""
    w = tuple(float(x) for x in weights)
    check_n_players(len(w))
    return KnownGame(len(w), lambda s: base + sum(w[i] for i in s), w)


def symmetric_game(n_players: int, f: Callable[[int], float]) -> KnownGame:
    """``v(S) = f(|S|)``: all players are alike, so each gets ``(f(n) - f(0)) / n``."""
    n = check_n_players(n_players)
    share = (float(f(n)) - float(f(0))) / n
    return KnownGame(n, lambda s: float(f(len(s))), (share,) * n)


def unanimity_game(n_players: int, carrier: Iterable[int]) -> KnownGame:
    """``v(S) = 1`` if ``S`` contains every player of ``carrier``, else 0: the carrier's
    members share 1 equally, everyone else is a null player."""
    n = check_n_players(n_players)
    t = frozenset(int(i) for i in carrier)
    if not t or not all(0 <= i < n for i in t):
        raise InvalidInput(f"carrier must be a non-empty set of players in [0, {n})")
    return KnownGame(n, lambda s: 1.0 if t <= s else 0.0, tuple(1.0 / len(t) if i in t else 0.0 for i in range(n)))


def quality_game(qualities: Sequence[float]) -> Callable[[frozenset[int]], float]:
    """A toy data-quality game: good players add accuracy with diminishing returns,
    players with negative quality take it away. v(∅) = 0. (No closed form.)"""
    q = [float(x) for x in qualities]

    def v(coalition: frozenset[int]) -> float:
        if not coalition:
            return 0.0
        good = sum(q[i] for i in coalition if q[i] > 0)
        bad = sum(-q[i] for i in coalition if q[i] <= 0)
        return (1.0 - math.exp(-good)) * (1.0 - bad / (1.0 + bad))

    return v
