"""FedAvg, with every client update checked *before* it can reach the aggregate."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fedcoin.errors import InvalidInput

from .model import Update


def validate_update(update: object, reference_shapes: Mapping[str, Sequence[int]]) -> None:
    """Reject a malformed client update with :class:`InvalidInput`.

    Checks, in order: it is a mapping; no missing and no extra keys versus
    ``reference_shapes``; every value is a ``torch.Tensor`` of dtype float32
    with exactly the reference shape; every entry is finite (no NaN/Inf).
    """
    if not isinstance(update, Mapping):
        raise InvalidInput(f"update must be a mapping name -> tensor, got {type(update).__name__}")
    ref_keys = set(reference_shapes)
    keys = set(update)
    missing, extra = sorted(ref_keys - keys), sorted(keys - ref_keys, key=str)
    if missing:
        raise InvalidInput(f"update is missing keys {missing}")
    if extra:
        raise InvalidInput(f"update has unexpected keys {extra}")
    for name in sorted(ref_keys):
        value = update[name]
        if not isinstance(value, torch.Tensor):
            raise InvalidInput(f"update[{name!r}] is a {type(value).__name__}, not a tensor")
        if value.dtype != torch.float32:
            raise InvalidInput(f"update[{name!r}] has dtype {value.dtype}, expected torch.float32")
        if tuple(value.shape) != tuple(reference_shapes[name]):
            raise InvalidInput(
                f"update[{name!r}] has shape {tuple(value.shape)}, expected {tuple(reference_shapes[name])}"
            )
        if not bool(torch.isfinite(value).all()):
            raise InvalidInput(f"update[{name!r}] contains NaN or Inf")


def _check_sample_counts(weights_n: Sequence[float] | np.ndarray, count: int) -> np.ndarray:
    try:
        w = np.asarray(weights_n, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"sample counts must be numbers: {exc}") from None
    if w.shape != (count,):
        raise InvalidInput(f"expected {count} sample counts, got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise InvalidInput("sample counts must be positive and finite")
    return w


def weighted_average(updates: Sequence[Mapping[str, torch.Tensor]], weights_n: Sequence[float] | np.ndarray) -> Update:
    """FedAvg arithmetic *without* validation: ``sum_k n_k w_k / sum_k n_k``.

    Accumulates in float64 (in the given order) and returns float32 tensors on
    the device of the inputs.  Callers must have validated the updates (see
    :func:`fedavg`).
    """
    if len(updates) == 0:
        raise InvalidInput("cannot average an empty set of updates")
    w = _check_sample_counts(weights_n, len(updates))
    total = float(w.sum())
    out: Update = {}
    for name in updates[0]:
        acc = torch.zeros(updates[0][name].shape, dtype=torch.float64, device=updates[0][name].device)
        for u, n in zip(updates, w, strict=False):
            acc.add_(u[name], alpha=float(n))
        out[name] = acc.div_(total).to(torch.float32)
    return out


def fedavg(
    updates: Sequence[Mapping[str, torch.Tensor]],
    weights_n: Sequence[float],
    reference_shapes: Mapping[str, Sequence[int]] | None = None,
) -> Update:
    """FedAvg: the ``n_k``-weighted average of client updates.

    Every update is checked with :func:`validate_update` against
    ``reference_shapes`` (default: the first update's shapes) *before* any
    arithmetic, so a NaN/Inf, mis-shaped, mis-typed or incomplete update raises
    :class:`InvalidInput` and is never aggregated.
    """
    if not isinstance(updates, Sequence) or len(updates) == 0:
        raise InvalidInput("fedavg needs a non-empty sequence of updates")
    _check_sample_counts(weights_n, len(updates))
    validate_updates(updates, reference_shapes)
    return weighted_average(updates, weights_n)


def validate_updates(
    updates: Sequence[object], reference_shapes: Mapping[str, Sequence[int]] | None = None
) -> dict[str, tuple[int, ...]]:
    """:func:`validate_update` on each of ``updates`` against ``reference_shapes`` (default: the
    first update's shapes); the error names the first bad update. Returns the shapes checked against."""
    if reference_shapes is None:
        if not updates or not isinstance(updates[0], Mapping):
            raise InvalidInput("update 0 is not a mapping name -> tensor")
        reference_shapes = {k: tuple(v.shape) for k, v in updates[0].items() if isinstance(v, torch.Tensor)}
    for i, u in enumerate(updates):
        try:
            validate_update(u, reference_shapes)
        except InvalidInput as exc:
            raise InvalidInput(f"update {i} rejected: {exc}") from None
    return {k: tuple(v) for k, v in reference_shapes.items()}
