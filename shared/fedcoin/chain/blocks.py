"""Blocks and their headers (the paper's Table 1).

Header (the paper's Table 1 plus what a verifier needs):

=============  ==============================================================
height         Block ID: 0 for genesis, parent height + 1 otherwise
winner         Winner's ID: the account of the block generator
s_avg          Averaged S̄: the iteration-weighted network average (Alg. 1, l. 16)
prev_hash      Previous Hash: SHA-256 of the parent's header
s_winner       Winner's S: the winner's own running estimate
difficulty     Difficulty D in force at this height (:mod:`fedcoin.consensus.difficulty`)
merkle_root    Merkle root of the body's transactions' wtxids (signature included)
timestamp      milliseconds since the Unix epoch, set by the winner
task_id        the Shapley task this block settles
task_hash      SHA-256 of that task's signed content
iterations     the number of Shapley iterations the winner ran: its work log's leaf count
work_root      Merkle root of the winner's work log (:mod:`fedcoin.chain.work`)
reports_root   Merkle root of the hashes of the reports S̄ averages (:mod:`fedcoin.chain.reports`)
signature      the winner's Ed25519 signature over the header hash
=============  ==============================================================

Block hash = SHA-256 of ``tagged("fedcoin/header/v1", header without signature)``;
the signature covers exactly that hash. The body holds the task specification
(:class:`fedcoin.chain.tasks.ShapleyTask`, which itself names the content hash of the
updates and where they are held), the winner's work log, the other miners'
signed reports its S̄ averages, and the transactions.

The genesis block (:mod:`fedcoin.chain.genesis`) is the one block without a
winner, a task or a signature.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from .encoding import sha256_hex, tagged
from .fields import AccountId, FiniteFloat, LedgerModel, Sha256Hex, TaskId
from .merkle import merkle_root
from .reports import ShapleyReport
from .tasks import ShapleyTask
from .transactions import Transaction
from .work import WorkLog

HEADER_DOMAIN = "fedcoin/header/v1"
MAX_TRANSACTIONS = 10_000
MAX_REPORTS = 256


def body_merkle_root(transactions: list[Transaction]) -> str:
    """The Merkle root a header must carry for these transactions (leaves: wtxids)."""
    return merkle_root([tx.wtxid for tx in transactions])


def reports_merkle_root(reports: list[ShapleyReport]) -> str:
    """The Merkle root a header must carry for these reports (leaves: report hashes, signature excluded)."""
    return merkle_root([r.hash for r in reports])


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
    work_root: Sha256Hex
    reports_root: Sha256Hex
    signature: str = ""

    def signing_payload(self) -> bytes:
        return tagged(HEADER_DOMAIN, self.model_dump(exclude={"signature"}))

    @property
    def hash(self) -> str:
        return sha256_hex(self.signing_payload())


class BlockBody(LedgerModel):
    what: ClassVar[str] = "block body"

    task: ShapleyTask | None = None
    work: WorkLog | None = None
    reports: list[ShapleyReport] = Field(default_factory=list, max_length=MAX_REPORTS)
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
