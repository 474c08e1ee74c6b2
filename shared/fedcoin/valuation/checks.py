"""Argument checks shared by the Shapley estimators: every public entry point validates
its input and raises :class:`fedcoin.errors.InvalidInput` (a ``ValueError``)."""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Callable, Sequence
from typing import Any, SupportsIndex, cast

import numpy as np

from fedcoin.errors import InvalidInput

#: A game: maps a coalition (frozenset of player indices) to its real utility.
Utility = Callable[[frozenset[int]], Any]


def is_int(value: object) -> bool:
    """True for Python/numpy integers, False for ``bool`` and everything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_n_players(n_players: object) -> int:
    if not is_int(n_players):
        raise InvalidInput(f"n_players must be an int, got {type(n_players).__name__}")
    n = operator.index(cast(SupportsIndex, n_players))
    if n < 1:
        raise InvalidInput(f"n_players must be >= 1, got {n}")
    return n


def check_utility(utility: object) -> None:
    if not callable(utility):
        raise InvalidInput(f"utility must be callable, got {type(utility).__name__}")


def as_finite_real(value: object, what: str) -> float:
    """Convert ``value`` to a finite float or raise :class:`InvalidInput`."""
    kind = type(value)
    if (kind is not float and kind is not int) and (  # fast path for the common cases
        isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real)
    ):
        raise InvalidInput(f"{what} must be a real number, got {kind.__name__}: {value!r}")
    try:
        result = float(value)  # type: ignore[arg-type]
    except (OverflowError, TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} is not representable as a float: {value!r}") from exc
    if not math.isfinite(result):
        raise InvalidInput(f"{what} must be finite, got {result!r}")
    return result


def evaluate(utility: Utility, coalition: frozenset[int]) -> float:
    """Call ``utility(coalition)`` and return its value as a checked finite float."""
    value = utility(coalition)
    if type(value) is float and math.isfinite(value):  # fast path
        return value
    return as_finite_real(value, f"utility of coalition {sorted(coalition)}")


def as_vector(values: object, name: str) -> np.ndarray:
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


def check_permutation(permutation: object) -> list[int]:
    """Return ``permutation`` as a list of ints after checking it permutes ``range(n)``."""
    if isinstance(permutation, (str, bytes)) or not isinstance(permutation, (Sequence, np.ndarray)):
        raise InvalidInput(f"permutation must be a sequence of ints, got {type(permutation).__name__}")
    if isinstance(permutation, np.ndarray) and permutation.ndim != 1:
        raise InvalidInput(f"permutation must be one-dimensional, got shape {permutation.shape}")
    items = list(permutation)
    n = len(items)
    if n < 1:
        raise InvalidInput("permutation must contain at least one player")
    seen = [False] * n
    result = []
    for position, item in enumerate(items):
        if not is_int(item):
            raise InvalidInput(f"permutation entry {position} must be an int, got {type(item).__name__}")
        player = int(item)
        if not 0 <= player < n:
            raise InvalidInput(f"permutation entry {position} is {player}, outside range(0, {n})")
        if seen[player]:
            raise InvalidInput(f"permutation lists player {player} more than once")
        seen[player] = True
        result.append(player)
    return result
