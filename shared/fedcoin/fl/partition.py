"""The paper's non-IID split of a labelled data set, and its data-quality measure (Section 6).

* :func:`partition_by_type` -- ``K`` clients of ``T`` quality types; a client of
  type ``j`` holds ``labels_for_type(j)`` distinct labels (``10 - j`` in the paper);
* :func:`label_distribution` / :func:`emd` -- the data-quality measure of
  Section 6.2 (Table 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fedcoin.errors import InvalidInput

from .checks import as_int as _as_int


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
        for c, cnt in zip(chosen, counts, strict=False):
            pool = pools[int(c)]
            if cnt > len(pool):
                raise InvalidInput(f"client {k} needs {cnt} samples of class {int(c)} but only {len(pool)} exist")
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
