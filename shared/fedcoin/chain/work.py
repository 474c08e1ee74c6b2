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

The leaves are a row-major float64 array (8·K bytes per iteration for K
clients), carried as base64 either as they are (``encoding="raw"``) or
deflated (``"deflate"``, zlib, what miners send). The encoding is not part of
any hash: the root and the mean are over the decoded leaves, so a node may
re-encode a log without changing its block. Two limits, both checked before
anything is decoded past them:

- the encoded log is at most :data:`MAX_WORK_BYTES` (16 MiB), so a block
  stays under the services' 24 MiB body limit;
- the decoded log is at most :data:`MAX_WORK_VALUES` float64 values (128 MiB;
  167,772 iterations at K = 100), which bounds a verifier's memory (a deflated
  stream that decodes past it is refused unread).

Deflate is lossless and pays where the leaves repeat: under the accuracy
metric every marginal is a difference of two multiples of 1/M, and the paper's
round (K = 100, M = 1,000) deflates ~4.7× at level 6, so a block carries ~98,000
iterations where the raw encoding stopped at 20,971; under ``neg_loss`` the
leaves are nearly incompressible and the encoded limit binds first.
:class:`WorkLogWriter` deflates as a miner works and bounds the encoded size,
so a miner knows when its log is full.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import zlib
from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, PrivateAttr

from ..errors import InvalidInput
from .fields import LedgerModel
from .merkle import merkle_path, merkle_root

LEAF_DOMAIN = b"fedcoin/work-leaf/v1"
MAX_WORK_BYTES = 16 * 1024 * 1024  # encoded (a block fits 24 MiB)
MAX_WORK_VALUES = 16 * 1024 * 1024  # decoded float64 values: 128 MiB, 167,772 iterations of K = 100
DEFLATE_LEVEL = 6
Encoding = Literal["raw", "deflate"]


def max_iterations(n_players: int) -> int:
    """The most leaves a decoded work log of ``n_players`` values per leaf can hold (167,772 at
    K = 100). The encoded size may bind first (:class:`WorkLogWriter` says when)."""
    return MAX_WORK_VALUES // n_players


def _encoded_limit_error(size: int) -> InvalidInput:
    return InvalidInput(
        f"the work log encodes to {size / 2**20:.1f} MiB; a block carries at most {MAX_WORK_BYTES // 2**20} MiB"
    )


def leaf_hash(index: int, leaf: np.ndarray | Sequence[float]) -> str:
    """The hash leaf ``index`` of a work log commits to."""
    row = np.ascontiguousarray(np.asarray(leaf, dtype="<f8"))
    return hashlib.sha256(LEAF_DOMAIN + index.to_bytes(8, "big") + row.tobytes()).hexdigest()


class WorkLog(LedgerModel):
    what: ClassVar[str] = "work log"

    n_players: int = Field(ge=1, le=4096)
    encoding: Encoding = "raw"
    leaves_b64: str = Field(max_length=(MAX_WORK_BYTES * 4) // 3 + 4)
    _decoded: np.ndarray | None = PrivateAttr(default=None)

    @classmethod
    def from_leaves(
        cls, leaves: np.ndarray | Sequence[Sequence[float]], n_players: int, *, encoding: Encoding = "deflate"
    ) -> WorkLog:
        """Encode ``leaves`` (InvalidInput past either limit, or for non-finite values)."""
        arr = np.ascontiguousarray(np.asarray(leaves, dtype="<f8")).reshape(-1, n_players)
        if not np.isfinite(arr).all():
            raise InvalidInput("a work log holds finite values only")
        if arr.shape[0] > max_iterations(n_players):
            raise InvalidInput(
                f"a work log of {n_players} players holds at most {max_iterations(n_players):,} iterations "
                f"({MAX_WORK_VALUES * 8 // 2**20} MiB decoded); this one has {arr.shape[0]:,}"
            )
        if encoding == "deflate":
            data = zlib.compress(arr.tobytes(), DEFLATE_LEVEL)
        elif encoding == "raw":
            data = arr.tobytes()
        else:
            raise InvalidInput(f"unknown work log encoding {encoding!r}")
        return cls._from_bytes(n_players, encoding, data)

    @classmethod
    def _from_bytes(cls, n_players: int, encoding: Encoding, data: bytes) -> WorkLog:
        if len(data) > MAX_WORK_BYTES:
            raise _encoded_limit_error(len(data))
        return cls(n_players=n_players, encoding=encoding, leaves_b64=base64.b64encode(data).decode("ascii"))

    def __eq__(self, other: object) -> bool:  # the decoded cache is not part of the value
        if not isinstance(other, WorkLog):
            return NotImplemented
        return (self.n_players, self.encoding, self.leaves_b64) == (other.n_players, other.encoding, other.leaves_b64)

    def __hash__(self) -> int:
        return hash((self.n_players, self.encoding, self.leaves_b64))

    def leaves(self) -> np.ndarray:
        """The (iterations × n_players) float64 array (read-only, decoded once); InvalidInput when the
        encoding is malformed or decodes past :data:`MAX_WORK_VALUES`."""
        if self._decoded is None:
            self._decoded = self._decode()
        return self._decoded

    def _decode(self) -> np.ndarray:
        try:
            data = base64.b64decode(self.leaves_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput(f"work log is not base64: {exc}") from exc
        limit = MAX_WORK_VALUES * 8
        if self.encoding == "deflate":
            inflater = zlib.decompressobj()
            try:
                raw = inflater.decompress(data, limit)
                if inflater.unconsumed_tail:
                    raise InvalidInput(f"work log decodes past {limit // 2**20} MiB")
                raw += inflater.flush()
            except zlib.error as exc:
                raise InvalidInput(f"work log is not a deflate stream: {exc}") from exc
            if not inflater.eof or inflater.unused_data:
                raise InvalidInput("work log's deflate stream is truncated or followed by other bytes")
        else:
            raw = data
        if len(raw) > limit:
            raise InvalidInput(f"work log decodes past {limit // 2**20} MiB")
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


class WorkLogWriter:
    """A work log deflated as it grows, with a bound on its encoded size.

    The stream is sync-flushed every :attr:`FLUSH_BYTES` of input, so everything
    before the last flush is final output and :attr:`encoded_bound` (that output
    plus the input since, as if incompressible) is a true upper bound on what
    :meth:`log` encodes to (deflate expands incompressible input by at most 5
    bytes per 16 KiB block; the bound allows 1% plus 1 KiB). A miner so stops at
    most ~256 KiB short of the limit.
    """

    FLUSH_BYTES = 256 << 10

    def __init__(self, n_players: int, *, max_bytes: int = MAX_WORK_BYTES) -> None:
        self.n_players = n_players
        self.max_bytes = max_bytes
        self._deflater = zlib.compressobj(DEFLATE_LEVEL)
        self._chunks: list[bytes] = []
        self._out = 0
        self._flushed = 0  # output bytes up to the last sync flush, which hold every leaf before it
        self._pending = 0  # input bytes since
        self.rows = 0

    @property
    def encoded_bound(self) -> int:
        return self._flushed + self._pending + self._pending // 100 + 1024

    def fits(self, rows: int) -> bool:
        """Whether ``rows`` more leaves keep the log within both limits, whatever they hold."""
        incoming = rows * 8 * self.n_players
        return (
            self.rows + rows <= max_iterations(self.n_players)
            and self.encoded_bound + incoming + incoming // 100 <= self.max_bytes
        )

    def append(self, rows: np.ndarray) -> None:
        data = np.ascontiguousarray(np.asarray(rows, dtype="<f8")).reshape(-1, self.n_players)
        self._emit(self._deflater.compress(data.tobytes()))
        self._pending += data.nbytes
        self.rows += data.shape[0]
        if self._pending >= self.FLUSH_BYTES:
            self._emit(self._deflater.flush(zlib.Z_SYNC_FLUSH))
            self._flushed, self._pending = self._out, 0

    def _emit(self, chunk: bytes) -> None:
        if chunk:
            self._chunks.append(chunk)
            self._out += len(chunk)

    def log(self) -> WorkLog:
        """The deflated log of every leaf appended so far (the writer can go on afterwards)."""
        data = b"".join(self._chunks) + self._deflater.copy().flush()
        return WorkLog._from_bytes(self.n_players, "deflate", data)


def work_mean(leaves: np.ndarray) -> list[float]:
    """The exact-rounded mean of each column (the S a work log commits to); empty logs have none."""
    if leaves.shape[0] == 0:
        raise InvalidInput("an empty work log has no mean")
    n = leaves.shape[0]
    return [math.fsum(col.tolist()) / n for col in leaves.T]


def empty_root() -> str:
    return merkle_root([])
