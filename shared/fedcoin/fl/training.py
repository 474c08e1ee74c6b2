"""A client's local round of SGD, and a small multi-round FedAvg loop.

* :func:`local_train` -- one client's local round from the global model;
* :func:`run_fedavg` -- rounds of FedAvg with every client taking part,
  recording each round's client updates and global models.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fedcoin.errors import InvalidInput

from .checks import as_int as _as_int
from .fedavg import fedavg, validate_update
from .model import DEFAULT_HIDDEN, Update, evaluate, forward, init_weights, mlp_layers, weight_shapes


def _check_xy(X: torch.Tensor, y: torch.Tensor, in_features: int | None = None) -> None:
    if not isinstance(X, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise InvalidInput("X and y must be torch tensors")
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0] or X.shape[0] == 0:
        raise InvalidInput(f"X must be (N, D) and y (N,) with N > 0, got {tuple(X.shape)} and {tuple(y.shape)}")
    if not X.is_floating_point():
        raise InvalidInput(f"X must be floating point, got {X.dtype}")
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise InvalidInput(f"y must hold integer labels, got {y.dtype}")
    if in_features is not None and X.shape[1] != in_features:
        raise InvalidInput(f"X has {X.shape[1]} features, model expects {in_features}")


def local_train(
    global_weights: Mapping[str, torch.Tensor],
    X: torch.Tensor,
    y: torch.Tensor,
    iterations: int = 20,
    batch_size: int = 64,
    lr: float = 0.2,
    seed: int = 0,
) -> tuple[Update, int]:
    """One client's local round: ``iterations`` minibatch SGD steps from ``global_weights``.

    Minibatches walk through a seeded shuffle of the client's rows (reshuffled
    when exhausted), cross-entropy loss, plain SGD (no momentum).  Returns
    ``(new_weights, n_k)`` with ``new_weights`` a fresh ``name -> float32 CPU
    tensor`` dict and ``n_k = len(X)``, the FedAvg weight.  Deterministic for a
    given ``seed`` (single-threaded CPU math is bit-reproducible; with several
    threads torch's CPU kernels are still deterministic in practice).
    """
    layers = mlp_layers(global_weights)
    _check_xy(X, y, layers[0][0].shape[1])
    iterations = _as_int(iterations, "iterations", 0)
    batch_size = _as_int(batch_size, "batch_size", 1)
    seed = _as_int(seed, "seed", 0)
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or lr <= 0:
        raise InvalidInput(f"lr must be a positive finite number, got {lr!r}")
    validate_update(global_weights, weight_shapes(global_weights))

    params = {k: v.detach().to("cpu", torch.float32).clone().requires_grad_(True) for k, v in global_weights.items()}
    X = X.detach().to("cpu", torch.float32)
    y = y.detach().to("cpu", torch.int64)
    n = X.shape[0]
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=gen)
    pos = 0
    with torch.enable_grad():  # also works when the caller disabled autograd
        for _ in range(iterations):
            if pos + batch_size > n and pos > 0:
                order = torch.randperm(n, generator=gen)
                pos = 0
            idx = order[pos : pos + batch_size]
            pos += batch_size
            loss = F.cross_entropy(forward(params, X[idx]), y[idx])
            grads = torch.autograd.grad(loss, list(params.values()))
            with torch.no_grad():
                for p, g in zip(params.values(), grads, strict=False):
                    p.sub_(g, alpha=lr)
    return {k: v.detach().clone() for k, v in params.items()}, n


@dataclass
class FedAvgRound:
    """One FedAvg round: the global model sent out, the clients' updates and the new global model."""

    round: int
    global_before: Update
    updates: list[Update]
    n_samples: list[int]
    global_after: Update
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class FedAvgHistory:
    rounds: list[FedAvgRound]

    @property
    def final_weights(self) -> Update:
        return self.rounds[-1].global_after


def run_fedavg(
    clients: Sequence[tuple[torch.Tensor, torch.Tensor]],
    rounds: int = 1,
    hidden: Sequence[int] = DEFAULT_HIDDEN,
    iterations: int = 20,
    batch_size: int = 64,
    lr: float = 0.2,
    seed: int = 0,
    global_weights: Mapping[str, torch.Tensor] | None = None,
    X_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
) -> FedAvgHistory:
    """Run ``rounds`` rounds of FedAvg with all clients participating.

    ``clients[k] = (X_k, y_k)``.  The initial model is ``global_weights`` or
    :func:`init_weights(hidden, seed=seed) <init_weights>`.  Client ``k`` in
    round ``r`` trains with seed ``seed * 1_000_003 + r * 10_007 + k`` (any
    fixed injective-in-practice mix; documented so runs can be reproduced).
    When ``X_val``/``y_val`` are given each round records the new global
    model's validation ``loss`` and ``accuracy``.
    """
    if len(clients) == 0:
        raise InvalidInput("run_fedavg needs at least one client")
    rounds = _as_int(rounds, "rounds", 1)
    seed = _as_int(seed, "seed", 0)
    in_features = clients[0][0].shape[1] if clients[0][0].ndim == 2 else -1
    if global_weights is None:
        current = init_weights(hidden, in_features=in_features, seed=seed)
    else:
        validate_update(global_weights, weight_shapes(global_weights))
        current = {k: v.detach().to("cpu", torch.float32).clone() for k, v in global_weights.items()}
    history = []
    for r in range(rounds):
        updates, ns = [], []
        for k, (Xk, yk) in enumerate(clients):
            u, n = local_train(current, Xk, yk, iterations, batch_size, lr, seed * 1_000_003 + r * 10_007 + k)
            updates.append(u)
            ns.append(n)
        new = fedavg(updates, ns, weight_shapes(current))
        metrics = evaluate(new, X_val, y_val) if X_val is not None and y_val is not None else {}
        history.append(FedAvgRound(r, current, updates, ns, new, metrics))
        current = new
    return FedAvgHistory(history)
