"""Binary content that travels beside signed messages: model weights and Shapley-task content.

Both are NumPy ``.npz`` archives read with ``allow_pickle=False`` (no code
can ride along). The signed message or task names the SHA-256 of the exact
bytes, and a receiver checks it before unpacking.

Task content (what a miner needs to evaluate F(A(W(coalition))))::

    n_samples            int64 (K,)        FedAvg weights n_k
    X_val, y_val         float32 (M, d), int64 (M,)   the server's validation set
    global/<name>        the round's starting global model
    update/<k>/<name>    client k's local model (player k = task.clients[k])
"""

from __future__ import annotations

import io
import threading
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedcoin.chain.encoding import sha256_hex
from fedcoin.errors import InvalidInput

from .fedavg import validate_update
from .model import weight_shapes

MAX_CONTENT_BYTES = 512 * 1024 * 1024

# NumPy parses each array's .npy header with ``ast.literal_eval``, and CPython
# before 3.12 can fail there with "SystemError: AST constructor recursion depth
# mismatch" when two threads compile at once (CPython gh-106905). Nodes unpack
# content from worker threads (a server training clients in parallel), so one
# archive is read at a time.
_NPZ_LOCK = threading.Lock()


def _load_npz(data: bytes) -> dict[str, np.ndarray]:
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_CONTENT_BYTES:
        raise InvalidInput("content must be bytes of at most 512 MiB")
    try:
        with _NPZ_LOCK, np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InvalidInput(f"content is not a valid npz archive: {exc}") from exc


def _save_npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    named: dict[str, Any] = dict(arrays)
    np.savez(buf, **named)
    return buf.getvalue()


def pack_weights(weights: Mapping[str, torch.Tensor]) -> bytes:
    return _save_npz({k: v.detach().cpu().numpy() for k, v in weights.items()})


def unpack_weights(data: bytes) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.array(v)) for k, v in _load_npz(data).items()}


@dataclass
class TaskContent:
    updates: list[dict[str, torch.Tensor]]
    n_samples: list[int]
    X_val: torch.Tensor
    y_val: torch.Tensor
    global_weights: dict[str, torch.Tensor]


def pack_task_content(
    updates: Sequence[Mapping[str, torch.Tensor]],
    n_samples: Sequence[int],
    X_val: torch.Tensor,
    y_val: torch.Tensor,
    global_weights: Mapping[str, torch.Tensor],
) -> bytes:
    if len(updates) != len(n_samples) or not updates:
        raise InvalidInput("one sample count per update, at least one update")
    arrays: dict[str, np.ndarray] = {
        "n_samples": np.asarray(n_samples, dtype=np.int64),
        "X_val": X_val.detach().cpu().numpy().astype(np.float32),
        "y_val": y_val.detach().cpu().numpy().astype(np.int64),
    }
    for name, v in global_weights.items():
        arrays[f"global/{name}"] = v.detach().cpu().numpy()
    for k, u in enumerate(updates):
        for name, v in u.items():
            arrays[f"update/{k}/{name}"] = v.detach().cpu().numpy()
    return _save_npz(arrays)


def unpack_task_content(data: bytes, expected_hash: str | None = None, n_players: int | None = None) -> TaskContent:
    if expected_hash is not None and sha256_hex(bytes(data)) != expected_hash:
        raise InvalidInput("task content does not match the task's content_hash")
    arrays = _load_npz(data)
    try:
        n = arrays["n_samples"]
        X, y = arrays["X_val"], arrays["y_val"]
    except KeyError as exc:
        raise InvalidInput(f"task content lacks {exc}") from exc
    K = int(n.shape[0])
    if n_players is not None and n_players != K:
        raise InvalidInput(f"task content holds {K} updates, the task has {n_players} clients")
    glob = {k.split("/", 1)[1]: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k.startswith("global/")}
    updates: list[dict[str, torch.Tensor]] = [{} for _ in range(K)]
    for key, v in arrays.items():
        if key.startswith("update/"):
            _, idx, name = key.split("/", 2)
            if not idx.isdigit() or int(idx) >= K:
                raise InvalidInput(f"task content has a stray entry {key!r}")
            updates[int(idx)][name] = torch.from_numpy(np.array(v))
    shapes = weight_shapes(glob)
    for u in updates:
        validate_update(u, shapes)
    return TaskContent(updates, [int(x) for x in n], torch.from_numpy(np.array(X)), torch.from_numpy(np.array(y)), glob)
