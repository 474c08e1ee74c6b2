"""A miner's work log: the per-permutation marginal vectors its S is the mean of.

Verifiable work (Proof of Shapley that is a proof). Leaf ``t`` of a winner's
log is the marginal-contribution vector of the permutation
:func:`fedcoin.consensus.posap.derive_permutation` (prev_hash, task_id,
winner, t, under the chain's ``sampler``); the log travels in the block body
and the header commits to it:

- ``work_root`` is the Merkle root (:mod:`fedcoin.chain.merkle`) of the leaf
  hashes ``SHA-256("fedcoin/work-leaf/v1" || t as 8-byte big-endian || the
  leaf's float64 little-endian bytes)``, so a fraud proof about one leaf
  carries that leaf and its path, not the whole log;
- ``iterations`` is the leaf count;
- ``s_winner`` is the leaves' mean, computed exactly as :func:`WorkLog.mean`
  does (an exactly rounded sum per client, ``math.fsum``, then one division),
  so every platform agrees on it to the bit.

The leaves are stored as base64 of a row-major float64 array (8·K bytes per
iteration for K clients).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
from pydantic import Field

from ..errors import InvalidInput
from .fields import LedgerModel
from .merkle import merkle_path, merkle_root

LEAF_DOMAIN = b"fedcoin/work-leaf/v1"
MAX_WORK_BYTES = 16 * 1024 * 1024  # 2 M float64 values: 20,000 iterations of K = 100 (a block fits 24 MiB)


def max_iterations(n_players: int) -> int:
    """The most leaves a work log of ``n_players`` values per leaf can hold (20,971 at K = 100)."""
    return MAX_WORK_BYTES // (8 * n_players)


def leaf_hash(index: int, leaf: np.ndarray | Sequence[float]) -> str:
    """The hash leaf ``index`` of a work log commits to."""
    row = np.ascontiguousarray(np.asarray(leaf, dtype="<f8"))
    return hashlib.sha256(LEAF_DOMAIN + index.to_bytes(8, "big") + row.tobytes()).hexdigest()


class WorkLog(LedgerModel):
    what: ClassVar[str] = "work log"

    n_players: int = Field(ge=1, le=4096)
    leaves_b64: str = Field(max_length=(MAX_WORK_BYTES * 4) // 3 + 4)

    @classmethod
    def from_leaves(cls, leaves: np.ndarray | Sequence[Sequence[float]], n_players: int) -> WorkLog:
        arr = np.ascontiguousarray(np.asarray(leaves, dtype="<f8")).reshape(-1, n_players)
        if not np.isfinite(arr).all():
            raise InvalidInput("a work log holds finite values only")
        if arr.shape[0] > max_iterations(n_players):
            raise InvalidInput(
                f"a work log of {n_players} players holds at most {max_iterations(n_players):,} iterations "
                f"({MAX_WORK_BYTES // 2**20} MiB); this one has {arr.shape[0]:,}"
            )
        return cls(n_players=n_players, leaves_b64=base64.b64encode(arr.tobytes()).decode("ascii"))

    def leaves(self) -> np.ndarray:
        """The (iterations × n_players) float64 array; InvalidInput when the encoding is malformed."""
        try:
            raw = base64.b64decode(self.leaves_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput(f"work log is not base64: {exc}") from exc
        if len(raw) % (8 * self.n_players):
            raise InvalidInput(f"work log holds {len(raw)} bytes, not a whole number of {self.n_players}-value leaves")
        arr = np.frombuffer(raw, dtype="<f8").reshape(-1, self.n_players)
        if not np.isfinite(arr).all():
            raise InvalidInput("work log holds non-finite values")
        return arr

    def leaf_hashes(self) -> list[str]:
        return [leaf_hash(t, row) for t, row in enumerate(self.leaves())]

    def root(self) -> str:
        return merkle_root(self.leaf_hashes())

    def path(self, index: int) -> list[str]:
        return merkle_path(self.leaf_hashes(), index)

    def mean(self) -> list[float]:
        return work_mean(self.leaves())


def work_mean(leaves: np.ndarray) -> list[float]:
    """The exact-rounded mean of each column (the S a work log commits to); empty logs have none."""
    if leaves.shape[0] == 0:
        raise InvalidInput("an empty work log has no mean")
    n = leaves.shape[0]
    return [math.fsum(col.tolist()) / n for col in leaves.T]


def empty_root() -> str:
    return merkle_root([])
