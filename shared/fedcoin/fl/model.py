"""The "classical neural network" of the paper's experiments (784-200-10 by default).

Weights ("updates") are plain ``dict[str, torch.Tensor]`` with the keys of
:class:`MLP`'s ``state_dict`` (``layers.0.weight``, ``layers.0.bias``,
``layers.1.weight``, ...), float32, on the CPU.  Layer ``l`` computes
``x @ W_l.T + b_l``; every layer but the last is followed by a ReLU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fedcoin.errors import InvalidInput

from .checks import as_int as _as_int

Update = dict[str, torch.Tensor]

DEFAULT_HIDDEN: tuple[int, ...] = (200,)


class MLP(nn.Module):
    """ReLU multilayer perceptron ``in -> hidden[0] -> ... -> out`` (784-200-10 by default)."""

    def __init__(self, hidden: Sequence[int] = DEFAULT_HIDDEN, in_features: int = 784, num_classes: int = 10):
        super().__init__()
        dims = [_as_int(in_features, "in_features", 1)]
        dims += [_as_int(h, "hidden size", 1) for h in hidden]
        dims.append(_as_int(num_classes, "num_classes", 1))
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return x


def init_weights(
    hidden: Sequence[int] = DEFAULT_HIDDEN, in_features: int = 784, num_classes: int = 10, seed: int = 0
) -> Update:
    """Freshly initialised (PyTorch default init) MLP weights, deterministic in ``seed``."""
    seed = _as_int(seed, "seed", 0)
    devices: list[str] = []  # fork_rng only touches the CPU generator
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = MLP(hidden, in_features, num_classes)
    return {k: v.detach().clone().float() for k, v in model.state_dict().items()}


def weight_shapes(weights: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """``name -> shape`` of a weights dict (the ``reference_shapes`` of :func:`validate_update`)."""
    return {k: tuple(v.shape) for k, v in weights.items()}


def mlp_layers(weights: Mapping[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[(W_0, b_0), (W_1, b_1), ...]`` of an MLP weights dict, checking the layer chain."""
    if not isinstance(weights, Mapping) or not weights:
        raise InvalidInput("weights must be a non-empty mapping name -> tensor")
    n_layers = len(weights) // 2
    expected = {f"layers.{i}.{p}" for i in range(n_layers) for p in ("weight", "bias")}
    if set(weights) != expected or len(weights) % 2:
        raise InvalidInput(f"weights keys {sorted(weights)} are not those of an MLP (layers.<i>.weight/bias)")
    out = []
    prev = None
    for i in range(n_layers):
        W, b = weights[f"layers.{i}.weight"], weights[f"layers.{i}.bias"]
        if W.ndim != 2 or b.ndim != 1 or b.shape[0] != W.shape[0]:
            raise InvalidInput(f"layer {i}: weight {tuple(W.shape)} / bias {tuple(b.shape)} mismatch")
        if prev is not None and W.shape[1] != prev:
            raise InvalidInput(f"layer {i} expects {W.shape[1]} inputs, previous layer gives {prev}")
        prev = W.shape[0]
        out.append((W, b))
    return out


def model_from_weights(weights: Mapping[str, torch.Tensor], device: str | torch.device = "cpu") -> MLP:
    """An :class:`MLP` (eval mode) carrying ``weights``."""
    layers = mlp_layers(weights)
    hidden = [W.shape[0] for W, _ in layers[:-1]]
    model = MLP(hidden, layers[0][0].shape[1], layers[-1][0].shape[0])
    model.load_state_dict({k: v.detach().float() for k, v in weights.items()})
    return model.to(device).eval()


def forward(weights: Mapping[str, torch.Tensor], X: torch.Tensor) -> torch.Tensor:
    """Logits of the MLP ``weights`` on ``X`` (functional; same arithmetic as :class:`MLP`)."""
    layers = mlp_layers(weights)
    h = X
    for i, (W, b) in enumerate(layers):
        h = F.linear(h, W, b)
        if i < len(layers) - 1:
            h = F.relu(h)
    return h


@torch.no_grad()
def evaluate(weights: Mapping[str, torch.Tensor], X: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """``{"loss": mean cross-entropy, "accuracy": ...}`` of ``weights`` on ``(X, y)``."""
    logits = forward(weights, X).double()
    loss = F.cross_entropy(logits, y)
    acc = (logits.argmax(1) == y).double().mean()
    return {"loss": float(loss), "accuracy": float(acc)}
