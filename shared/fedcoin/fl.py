"""Federated-learning substrate of the FedCoin experiments (paper, Section 6.1).

This module holds everything the FL server and the paper experiments need
*before* Shapley values enter the picture:

* :func:`partition_by_type` -- the paper's non-IID split of a labelled data set
  among ``K`` clients of ``T`` quality types;
* :func:`label_distribution` / :func:`emd` -- the data-quality measure of
  Section 6.2 (Table 2);
* :class:`MLP`, :func:`init_weights`, :func:`local_train` -- the "classical
  neural network" (784-200-10 by default) and a client's local SGD round;
* :func:`validate_update`, :func:`weighted_average`, :func:`fedavg` -- FedAvg,
  with every update checked *before* it can reach the aggregate;
* :func:`run_fedavg` -- a small multi-round FedAvg loop that records every
  round's client updates and global models.

Weights ("updates") are plain ``dict[str, torch.Tensor]`` with the keys of
:class:`MLP`'s ``state_dict`` (``layers.0.weight``, ``layers.0.bias``,
``layers.1.weight``, ...), float32, on the CPU.  Layer ``l`` computes
``x @ W_l.T + b_l``; every layer but the last is followed by a ReLU.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedcoin.errors import InvalidInput

__all__ = [
    "DEFAULT_HIDDEN",
    "ClientPartition",
    "Update",
    "MLP",
    "FedAvgRound",
    "FedAvgHistory",
    "seed_everything",
    "labels_for_type",
    "assign_types",
    "partition_by_type",
    "label_distribution",
    "emd",
    "init_weights",
    "weight_shapes",
    "mlp_layers",
    "model_from_weights",
    "forward",
    "evaluate",
    "local_train",
    "validate_update",
    "weighted_average",
    "fedavg",
    "run_fedavg",
]

Update = dict[str, torch.Tensor]

DEFAULT_HIDDEN: tuple[int, ...] = (200,)


# --------------------------------------------------------------------------- seeding


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's legacy global RNG and torch (CPU and CUDA).

    The functions of this module do not rely on global RNG state (they take a
    ``seed`` and build private generators); this helper is for scripts that
    also use third-party code.
    """
    seed = _as_int(seed, "seed")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():  # pragma: no cover - no GPU in CI
        torch.cuda.manual_seed_all(seed)


def _as_int(value: object, name: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidInput(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise InvalidInput(f"{name} must be >= {minimum}, got {value}")
    return value


# --------------------------------------------------------------------------- partition


@dataclass(frozen=True)
class ClientPartition:
    """Result of :func:`partition_by_type`.

    ``indices[k]`` are row indices into the partitioned label array (int64,
    sorted, no duplicates within a client), ``label_sets[k]`` the sorted labels
    client ``k`` holds and ``types[k]`` its quality type ``j`` (0 = best).
    """

    indices: list[np.ndarray]
    label_sets: list[tuple[int, ...]]
    types: np.ndarray
    num_classes: int
    num_types: int

    @property
    def num_clients(self) -> int:
        return len(self.indices)

    def sizes(self) -> np.ndarray:
        return np.array([len(ix) for ix in self.indices], dtype=np.int64)


def labels_for_type(j: int, num_types: int = 10, num_classes: int = 10) -> int:
    """Number of distinct labels a client of quality type ``j`` holds.

    Rule: the count falls linearly from ``C`` (type 0) to 1 (type ``T-1``),
    ``round(C - j * (C - 1) / (T - 1))`` (``C`` when ``T == 1``), never below 1.
    For the paper's ``T = C = 10`` this is exactly ``10 - j``.  With ``T > C``
    neighbouring types may share a count; with ``T < C`` counts are skipped
    (e.g. ``T = 4, C = 10`` gives 10, 7, 4, 1).
    """
    num_types = _as_int(num_types, "num_types", 1)
    num_classes = _as_int(num_classes, "num_classes", 1)
    j = _as_int(j, "j", 0)
    if j >= num_types:
        raise InvalidInput(f"type {j} out of range for {num_types} types")
    if num_types == 1:
        return num_classes
    count = num_classes - j * (num_classes - 1) / (num_types - 1)
    return max(1, int(math.floor(count + 0.5)))


def assign_types(num_clients: int, num_types: int = 10) -> np.ndarray:
    """Quality type of each client: ``type(k) = floor(k * T / K)``.

    Contiguous, nearly equal groups: with ``K = 100, T = 10`` clients 0-9 are
    type 0, 10-19 type 1, ...  When ``T`` does not divide ``K`` group sizes are
    ``floor(K/T)`` or ``ceil(K/T)``; when ``K < T`` the ``K`` clients are spread
    over the whole type range (e.g. ``K = 5, T = 10`` gives types 0, 2, 4, 6, 8).
    """
    num_clients = _as_int(num_clients, "num_clients", 1)
    num_types = _as_int(num_types, "num_types", 1)
    return (np.arange(num_clients, dtype=np.int64) * num_types) // num_clients


def partition_by_type(
    labels: np.ndarray | torch.Tensor,
    num_clients: int = 100,
    num_types: int = 10,
    samples_per_client: int = 600,
    num_classes: int | None = None,
    seed: int = 0,
) -> ClientPartition:
    """Split a labelled data set among clients of decreasing data quality (paper, 6.1).

    * Types: :func:`assign_types` (``type(k) = floor(k*T/K)``).
    * Labels: a client of type ``j`` gets ``labels_for_type(j, T, C)`` distinct
      labels (``10 - j`` in the paper's setting), chosen as a uniformly random
      subset of the ``C`` classes by a per-client generator derived from
      ``seed`` (``numpy.random.SeedSequence(seed).spawn``).
    * Samples: "uniform over the labels" is realised with (as nearly as
      possible) equal counts: ``samples_per_client // L`` per label, the
      remainder going to randomly chosen labels of the subset; within a label,
      rows are drawn uniformly *without replacement* inside the client.
      Different clients draw independently, so clients may share rows.

    Deterministic for a given ``seed``.  Raises :class:`InvalidInput` when a
    class does not have enough rows for a client's per-label count.
    """
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if y.ndim != 1 or y.size == 0:
        raise InvalidInput(f"labels must be a non-empty 1-D array, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise InvalidInput(f"labels must be integers, got dtype {y.dtype}")
    if y.min() < 0:
        raise InvalidInput("labels must be non-negative")
    num_clients = _as_int(num_clients, "num_clients", 1)
    num_types = _as_int(num_types, "num_types", 1)
    size = _as_int(samples_per_client, "samples_per_client", 1)
    seed = _as_int(seed, "seed", 0)
    C = int(y.max()) + 1 if num_classes is None else _as_int(num_classes, "num_classes", 1)
    if y.max() >= C:
        raise InvalidInput(f"label {int(y.max())} >= num_classes={C}")

    pools = [np.flatnonzero(y == c) for c in range(C)]
    types = assign_types(num_clients, num_types)
    children = np.random.SeedSequence(seed).spawn(num_clients)
    indices: list[np.ndarray] = []
    label_sets: list[tuple[int, ...]] = []
    for k in range(num_clients):
        rng = np.random.default_rng(children[k])
        n_labels = min(C, labels_for_type(int(types[k]), num_types, C))
        chosen = np.sort(rng.choice(C, size=n_labels, replace=False))
        counts = np.full(n_labels, size // n_labels, dtype=np.int64)
        counts[rng.choice(n_labels, size=size % n_labels, replace=False)] += 1
        parts = []
        for c, cnt in zip(chosen, counts):
            pool = pools[int(c)]
            if cnt > len(pool):
                raise InvalidInput(
                    f"client {k} needs {cnt} samples of class {int(c)} but only {len(pool)} exist"
                )
            parts.append(rng.choice(pool, size=int(cnt), replace=False))
        indices.append(np.sort(np.concatenate(parts)).astype(np.int64))
        label_sets.append(tuple(int(c) for c in chosen))
    return ClientPartition(indices, label_sets, types, C, num_types)


def label_distribution(labels: np.ndarray | torch.Tensor, num_classes: int = 10) -> np.ndarray:
    """Class-probability vector (float64, sums to 1) of an integer label array."""
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    num_classes = _as_int(num_classes, "num_classes", 1)
    if y.ndim != 1 or y.size == 0:
        raise InvalidInput("labels must be a non-empty 1-D array")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_classes:
        raise InvalidInput(f"labels must be integers in [0, {num_classes})")
    return np.bincount(y, minlength=num_classes).astype(np.float64) / y.size


def emd(p: np.ndarray, q: np.ndarray) -> float:
    """Earth mover's distance between two class distributions, as in Zhao et al. (2018).

    ``EMD(p, q) = sum_c |p(c) - q(c)|`` -- the L1 distance between the
    class-probability vectors (labels have no ground metric; Zhao et al.
    "Federated Learning with Non-IID Data" use exactly this).  Range ``[0, 2]``.

    With the paper's partition (type ``j`` = ``10 - j`` equally weighted labels)
    against a balanced data set this gives ``EMD = 2j/10``: 0, 0.2, 0.4, ...,
    1.8 for T0..T9.  The paper's Table 2 reports 0, 0.02, ..., 0.18, i.e. our
    value divided by ``C = 10`` (the *mean* absolute difference per class).
    Divide by the number of classes to compare with Table 2.
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 1:
        raise InvalidInput(f"distributions must be 1-D of equal length, got {p.shape} and {q.shape}")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(q))):
        raise InvalidInput("distributions must be finite")
    return float(np.abs(p - q).sum())


# --------------------------------------------------------------------------- model


class MLP(nn.Module):
    """ReLU multilayer perceptron ``in -> hidden[0] -> ... -> out`` (784-200-10 by default)."""

    def __init__(self, hidden: Sequence[int] = DEFAULT_HIDDEN, in_features: int = 784, num_classes: int = 10):
        super().__init__()
        dims = [_as_int(in_features, "in_features", 1)]
        dims += [_as_int(h, "hidden size", 1) for h in hidden]
        dims.append(_as_int(num_classes, "num_classes", 1))
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

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
    devices = []  # fork_rng only touches the CPU generator
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
        raise InvalidInput(
            f"weights keys {sorted(weights)} are not those of an MLP (layers.<i>.weight/bias)"
        )
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
                for p, g in zip(params.values(), grads):
                    p.sub_(g, alpha=lr)
    return {k: v.detach().clone() for k, v in params.items()}, n


# --------------------------------------------------------------------------- FedAvg


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


def _check_sample_counts(weights_n: Sequence[float], count: int) -> np.ndarray:
    try:
        w = np.asarray(weights_n, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"sample counts must be numbers: {exc}") from None
    if w.shape != (count,):
        raise InvalidInput(f"expected {count} sample counts, got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise InvalidInput("sample counts must be positive and finite")
    return w


def weighted_average(updates: Sequence[Mapping[str, torch.Tensor]], weights_n: Sequence[float]) -> Update:
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
        for u, n in zip(updates, w):
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
    if reference_shapes is None:
        if not isinstance(updates[0], Mapping):
            raise InvalidInput("update 0 is not a mapping name -> tensor")
        reference_shapes = {k: tuple(v.shape) for k, v in updates[0].items() if isinstance(v, torch.Tensor)}
    for i, u in enumerate(updates):
        try:
            validate_update(u, reference_shapes)
        except InvalidInput as exc:
            raise InvalidInput(f"update {i} rejected: {exc}") from None
    return weighted_average(updates, weights_n)


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
