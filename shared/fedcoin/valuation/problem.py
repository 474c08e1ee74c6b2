"""The valuation problem both FL utilities share: validated inputs, the metric and the device.

The utility of a coalition ``S`` of FL clients is ``v(S) = F(A(W(S)))``: the
FedAvg (weights ``n_k``) of the members' local models, scored by a metric ``F``
on the FL server's held-out validation set.  ``v(empty)`` is configurable: a
number (the paper uses 0) or ``"global"``, the score of the round's starting
global model.

Metrics: ``"neg_loss"`` (minus the mean cross-entropy, so larger is better and
a useful client has a positive marginal) and ``"accuracy"``.  Both utilities
score float32 logits with the same function (:func:`metric_values`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fedcoin.errors import InvalidInput
from fedcoin.fl.fedavg import validate_update, validate_updates
from fedcoin.fl.model import forward, mlp_layers

METRICS = ("neg_loss", "accuracy")


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidInput(f"bad device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInput("device 'cuda' requested but CUDA is not available")
    return dev


def metric_values(logits: torch.Tensor, y: torch.Tensor, metric: str) -> torch.Tensor:
    """Metric per prefix from class-major float32 logits ``(P, O, M)``; returns float64 ``(P,)``.

    ``neg_loss`` = minus the mean over samples of the cross-entropy: the
    per-sample losses come from ``F.cross_entropy`` in float32 (a
    max-shifted log-softmax, error ~1e-7 per sample), the mean is float64.
    ``accuracy`` = mean of ``argmax == y`` (first maximum on ties), decided without an argmax:
    a sample is right when its label's logit is above every class before the label and not below
    any class after it, which is exactly when the first maximum is the label. Each class's
    ``(P, M)`` slice is contiguous along the samples, so this is O elementwise passes; an argmax
    over the strided class axis took 40% of a permutation's time.
    """
    P, n_classes, M = logits.shape
    target = y.view(1, M).expand(P, M)
    if metric == "neg_loss":
        losses = F.cross_entropy(logits, target, reduction="none")  # (P, M)
        return losses.mean(dim=1, dtype=torch.float64).neg_()
    label = logits.gather(1, y.view(1, 1, M).expand(P, 1, M)).squeeze(1)  # (P, M)
    right = torch.ones((P, M), dtype=torch.bool, device=logits.device)
    below = torch.empty((P, M), dtype=torch.bool, device=logits.device)
    for c in range(n_classes):
        x = logits[:, c, :]
        torch.where(y.view(1, M) > c, x < label, x <= label, out=below)
        right &= below
    return right.double().mean(dim=1)


def check_permutation(permutation: object, n_players: int) -> np.ndarray:
    """Return ``permutation`` as an int64 array, or raise :class:`InvalidInput`.

    Accepts a sequence, NumPy array or torch tensor of integers holding each of
    ``0 .. n_players-1`` exactly once.
    """
    if isinstance(permutation, torch.Tensor):
        permutation = permutation.detach().cpu().numpy()
    if isinstance(permutation, (str, bytes, Mapping)) or not isinstance(permutation, (Sequence, np.ndarray)):
        raise InvalidInput(f"permutation must be a sequence of player indices, got {type(permutation).__name__}")
    if not isinstance(permutation, np.ndarray) and any(isinstance(p, bool) for p in permutation):
        raise InvalidInput("permutation entries must be integers, not bools")
    arr = np.asarray(permutation)
    if arr.ndim != 1 or arr.shape[0] != n_players:
        raise InvalidInput(f"permutation must be 1-D of length {n_players}, got shape {arr.shape}")
    if n_players and not np.issubdtype(arr.dtype, np.integer):
        raise InvalidInput(f"permutation entries must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if not np.array_equal(np.sort(arr), np.arange(n_players)):
        raise InvalidInput(f"permutation must contain each of 0..{n_players - 1} exactly once")
    return arr


def check_coalition(coalition: object, n_players: int) -> list[int]:
    if isinstance(coalition, (str, bytes, Mapping)) or not isinstance(coalition, Iterable):
        raise InvalidInput(f"coalition must be a set of player indices, got {type(coalition).__name__}")
    members = list(coalition)
    for p in members:
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)):
            raise InvalidInput(f"coalition members must be integers, got {p!r}")
        if not 0 <= int(p) < n_players:
            raise InvalidInput(f"player {int(p)} out of range [0, {n_players})")
    out = sorted({int(p) for p in members})
    if len(out) != len(members):
        raise InvalidInput("coalition has duplicate members")
    return out


class Problem:
    """Validated inputs shared by :class:`NaiveUtility` and :class:`ShapleyEngine`."""

    def __init__(self, updates, n_samples, X_val, y_val, metric, empty_value, device, global_weights):
        if metric not in METRICS:
            raise InvalidInput(f"metric must be one of {METRICS}, got {metric!r}")
        if isinstance(updates, Mapping) or not isinstance(updates, Sequence) or len(updates) == 0:
            raise InvalidInput("updates must be a non-empty sequence of weight dicts")
        self.device = resolve_device(device)
        if global_weights is not None:
            if not isinstance(global_weights, Mapping):
                raise InvalidInput("global_weights must be a weight dict")
            ref = {k: tuple(v.shape) for k, v in global_weights.items() if isinstance(v, torch.Tensor)}
            validate_update(global_weights, ref)
            validate_updates(updates, ref)
        else:
            validate_updates(updates)
        layers = mlp_layers(updates[0])
        self.in_features = layers[0][0].shape[1]
        self.num_classes = layers[-1][0].shape[0]
        self.K = len(updates)
        try:
            n = np.asarray([float(x) for x in n_samples], dtype=np.float64)
        except (TypeError, ValueError):
            raise InvalidInput("n_samples must be a sequence of positive numbers") from None
        if n.shape != (self.K,) or not np.all(np.isfinite(n)) or np.any(n <= 0):
            raise InvalidInput(f"n_samples must hold {self.K} positive finite numbers")
        self.n = n
        if not isinstance(X_val, torch.Tensor) or not isinstance(y_val, torch.Tensor):
            raise InvalidInput("X_val and y_val must be torch tensors")
        if X_val.ndim != 2 or X_val.shape[1] != self.in_features or X_val.shape[0] == 0:
            raise InvalidInput(f"X_val must be (M, {self.in_features}) with M > 0, got {tuple(X_val.shape)}")
        if not X_val.is_floating_point() or not bool(torch.isfinite(X_val).all()):
            raise InvalidInput("X_val must be a finite floating-point tensor")
        if y_val.shape != (X_val.shape[0],) or y_val.is_floating_point() or y_val.dtype == torch.bool:
            raise InvalidInput(f"y_val must be integer labels of shape ({X_val.shape[0]},)")
        if int(y_val.min()) < 0 or int(y_val.max()) >= self.num_classes:
            raise InvalidInput(f"y_val labels must lie in [0, {self.num_classes})")
        self.metric = metric
        self.X = X_val.detach().to(self.device, torch.float32).contiguous()
        self.y = y_val.detach().to(self.device, torch.int64)
        self.M = self.X.shape[0]
        self.global_weights = (
            {k: v.detach().to(self.device, torch.float32) for k, v in global_weights.items()}
            if global_weights is not None
            else None
        )
        if isinstance(empty_value, str):
            if empty_value != "global":
                raise InvalidInput(f"empty_value must be a number or 'global', got {empty_value!r}")
            if self.global_weights is None:
                raise InvalidInput("empty_value='global' needs global_weights=")
            self.empty_value = self.score(self.global_weights)
        else:
            if isinstance(empty_value, bool) or not isinstance(empty_value, (int, float, np.floating, np.integer)):
                raise InvalidInput(f"empty_value must be a number or 'global', got {empty_value!r}")
            if not math.isfinite(float(empty_value)):
                raise InvalidInput("empty_value must be finite")
            self.empty_value = float(empty_value)

    @torch.no_grad()
    def score(self, weights: Mapping[str, torch.Tensor]) -> float:
        logits = forward(weights, self.X)  # (M, O)
        return float(metric_values(logits.t().unsqueeze(0), self.y, self.metric)[0])


class UtilityBase:
    """What both evaluators expose about their game."""

    _p: Problem

    @property
    def n_players(self) -> int:
        return self._p.K

    @property
    def empty_value(self) -> float:
        return self._p.empty_value

    @property
    def metric(self) -> str:
        return self._p.metric

    @property
    def device(self) -> torch.device:
        return self._p.device
