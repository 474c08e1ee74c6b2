"""Blocks, their headers and the genesis configuration.

Header (the paper's Table 1 plus what a verifier needs):

=============  ==============================================================
height         Block ID: 0 for genesis, parent height + 1 otherwise
winner         Winner's ID: the account of the block generator
s_avg          Averaged S̄: the iteration-weighted network average (Alg. 1, l. 16)
prev_hash      Previous Hash: SHA-256 of the parent's header
s_winner       Winner's S: the winner's own running estimate
difficulty     Difficulty D in force at this height (see :mod:`fedcoin.difficulty`)
merkle_root    Merkle root of the body's transactions' wtxids (signature included)
timestamp      milliseconds since the Unix epoch, set by the winner
task_id        the Shapley task this block settles
task_hash      SHA-256 of that task's signed content
iterations     the number of Shapley iterations the winner ran
signature      the winner's Ed25519 signature over the header hash
=============  ==============================================================

Block hash = SHA-256 of ``tagged("fedcoin/header/v1", header without signature)``;
the signature covers exactly that hash. The body holds the task specification
(:class:`fedcoin.tasks.ShapleyTask`, which itself names the content hash of the
updates and where they are held) and the transactions.

The genesis block has no winner (the all-zero account), no task and no
signature; its ``task_id`` is ``"genesis"`` and its ``task_hash`` commits to
the chain parameters, so two nodes with different parameters have different
genesis hashes and never accept each other's blocks.
"""

from __future__ import annotations

import math
from typing import ClassVar

from pydantic import Field, field_validator, model_validator

from .encoding import ZERO_HASH, sha256_hex, tagged
from .identity import check_account
from .merkle import merkle_root
from .model import AccountId, FiniteFloat, LedgerModel, Sha256Hex, TaskId
from .tasks import ShapleyTask
from .transactions import MAX_AMOUNT, MINT_ACCOUNT, Transaction

HEADER_DOMAIN = "fedcoin/header/v1"
PARAMS_DOMAIN = "fedcoin/params/v1"
GENESIS_TASK_ID = "genesis"
MAX_TRANSACTIONS = 10_000


def body_merkle_root(transactions: list[Transaction]) -> str:
    """The Merkle root a header must carry for these transactions (leaves: wtxids)."""
    return merkle_root([tx.wtxid for tx in transactions])


class BlockHeader(LedgerModel):
    what: ClassVar[str] = "block header"

    height: int = Field(ge=0)
    prev_hash: Sha256Hex
    timestamp: int = Field(ge=0)
    winner: AccountId
    s_avg: list[FiniteFloat]
    s_winner: list[FiniteFloat]
    difficulty: FiniteFloat = Field(gt=0)
    merkle_root: Sha256Hex
    task_id: TaskId
    task_hash: Sha256Hex
    iterations: int = Field(ge=0)
    signature: str = ""

    def signing_payload(self) -> bytes:
        return tagged(HEADER_DOMAIN, self.model_dump(exclude={"signature"}))

    @property
    def hash(self) -> str:
        return sha256_hex(self.signing_payload())


class BlockBody(LedgerModel):
    what: ClassVar[str] = "block body"

    task: ShapleyTask | None = None
    transactions: list[Transaction] = Field(default_factory=list, max_length=MAX_TRANSACTIONS)


class Block(LedgerModel):
    what: ClassVar[str] = "block"

    header: BlockHeader
    body: BlockBody

    @property
    def hash(self) -> str:
        return self.header.hash

    @property
    def height(self) -> int:
        return self.header.height

    def to_json(self) -> str:
        return self.model_dump_json()


class ChainParams(LedgerModel):
    """Consensus parameters, fixed at genesis."""

    what: ClassVar[str] = "chain parameters"

    chain_id: str = Field(default="fedcoin-local", min_length=1, max_length=64)
    p: float = Field(default=2.0, ge=1.0, le=64.0, description="the p of the p-norm distance (paper: 2)")
    initial_difficulty: float = Field(default=1e-2, gt=0)
    target_block_ms: int = Field(default=60_000, gt=0, description="target mining time per block")
    retarget_window: int = Field(default=10, ge=1, le=10_000)
    max_adjust: float = Field(default=4.0, ge=1.0, le=1e6)
    min_difficulty: float = Field(default=1e-9, gt=0)
    max_difficulty: float = Field(default=1e3, gt=0)
    max_future_ms: int = Field(default=2 * 3600 * 1000, ge=0)
    median_time_window: int = Field(default=11, ge=1, le=1000)

    @model_validator(mode="after")
    def _bounds(self) -> "ChainParams":
        for name in ("p", "initial_difficulty", "max_adjust", "min_difficulty", "max_difficulty"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite")
        if not self.min_difficulty <= self.initial_difficulty <= self.max_difficulty:
            raise ValueError("need min_difficulty <= initial_difficulty <= max_difficulty")
        return self

    @property
    def params_hash(self) -> str:
        return sha256_hex(tagged(PARAMS_DOMAIN, self.model_dump()))


class GenesisConfig(LedgerModel):
    """Initial allocations and chain parameters; the genesis block derives from it."""

    what: ClassVar[str] = "genesis configuration"

    params: ChainParams = Field(default_factory=ChainParams)
    allocations: dict[str, int] = Field(default_factory=dict)
    timestamp: int = Field(default=0, ge=0)

    @field_validator("allocations")
    @classmethod
    def _alloc(cls, v: dict[str, int]) -> dict[str, int]:
        for account, amount in v.items():
            check_account(account, "allocation account")
            if amount <= 0 or amount > MAX_AMOUNT:
                raise ValueError(f"allocation to {account[:16]}... must be in (0, 2^63)")
        if sum(v.values()) > MAX_AMOUNT:
            raise ValueError("total allocation exceeds 2^63 - 1 base units")
        return v

    def block(self) -> Block:
        txs = [
            Transaction(sender=MINT_ACCOUNT, recipient=account, amount=amount, nonce=i, kind="genesis")
            for i, (account, amount) in enumerate(sorted(self.allocations.items()))
        ]
        header = BlockHeader(
            height=0,
            prev_hash=ZERO_HASH,
            timestamp=self.timestamp,
            winner=MINT_ACCOUNT,
            s_avg=[],
            s_winner=[],
            difficulty=self.params.initial_difficulty,
            merkle_root=body_merkle_root(txs),
            task_id=GENESIS_TASK_ID,
            task_hash=self.params.params_hash,
            iterations=0,
        )
        return Block(header=header, body=BlockBody(task=None, transactions=txs))
