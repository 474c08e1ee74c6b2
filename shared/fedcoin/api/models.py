"""Request and response models of the three service APIs (see the package docstring).

Answers allow fields beyond those declared (``extra="allow"``), so a client keeps working
against a newer node that says more; every declared field is checked.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fedcoin.chain.transactions import MAX_AMOUNT, Transaction

#: What the FL server reports of a training task, in the order a task goes through them.
TaskStatus = Literal["queued", "awaiting-deposit", "training", "done", "failed", "cancelled"]
#: Statuses after which a task changes no more (its refund aside).
FINAL_STATUSES: tuple[TaskStatus, ...] = ("done", "failed", "cancelled")


class Answer(BaseModel):
    model_config = ConfigDict(extra="allow")


# --- every service ----------------------------------------------------------------------------
class Health(Answer):
    status: Literal["ok"]
    role: Literal["miner", "server", "requester", "client"]
    account: str | None = None
    height: int | None = None


# --- miner ------------------------------------------------------------------------------------
class Mining(Answer):
    task_id: str
    iterations: int
    peers: int
    distance: float | None
    difficulty: float


class MinerStatus(Answer):
    account: str
    height: int
    head: str
    pending_transactions: int
    mining: Mining | None
    engines_cached: list[str]
    blocks_won: int
    iterations: int
    fraud_proofs: int
    peers: list[str] = Field(default_factory=list)


class ChainHead(Answer):
    height: int
    hash: str
    work: float
    tie: str
    timestamp: int
    difficulty: float
    next_difficulty: float
    genesis: str


class BlockSummary(Answer):
    height: int
    hash: str
    winner: str
    task_id: str
    difficulty: float
    iterations: int
    transactions: int
    timestamp: int | None = None


class BlockAccepted(Answer):
    status: str
    height: int | None = None
    head: str | None = None
    reorg_depth: int | None = None


class TransactionAccepted(Answer):
    txid: str
    status: Literal["pending"]
    new: bool


class TransactionStatus(Answer):
    txid: str
    status: Literal["confirmed", "pending"]
    height: int | None = None
    block_hash: str | None = None
    transaction: Transaction


class AccountBalance(Answer):
    account: str
    balance: int
    nonce: int
    height: int


class Balances(Answer):
    height: int
    head: str
    balances: dict[str, int]
    supply: int


class MinerTaskSummary(Answer):
    task_id: str
    settled: bool


class MinerTask(MinerTaskSummary):
    """A Shapley task as a miner sees it: settled (by which block, with which S̄) or being mined."""

    height: int | None = None
    block_hash: str | None = None
    winner: str | None = None
    s_avg: list[float] | None = None
    mining: bool | None = None
    iterations: int | None = None
    distance: float | None = None


# --- FL server --------------------------------------------------------------------------------
class ServerInfo(Answer):
    account: str
    miners: list[str]
    clients: int


class RoundResult(Answer):
    """One settled FedAvg round: its Shapley task, the block that settled it, S̄ and the payments."""

    round: int
    shapley_task_id: str
    clients: list[str]
    n_samples: list[int]
    block_height: int
    block_hash: str
    winner: str
    shapley: list[float]
    payments: dict[str, list[dict[str, Any]]]
    metrics: dict[str, Any]
    dropped: list[Any] = Field(default_factory=list)


class ServerTaskSummary(Answer):
    task_id: str
    status: TaskStatus
    budget: int
    rounds: int


class ServerTask(ServerTaskSummary):
    """The FL server's record of a training task."""

    requester: str
    ratio: list[int]
    prices: dict[str, int]
    deposit_txid: str
    submitted_at: float
    round_results: list[RoundResult]
    error: str | None = None
    model_hash: str | None = None
    refund: dict[str, Any] | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


class TaskCancelled(Answer):
    task_id: str
    status: TaskStatus


# --- requester --------------------------------------------------------------------------------
class NewTask(BaseModel):
    """What a user asks for: a budget V, a number of rounds, optionally a task id and the price ratio."""

    model_config = ConfigDict(extra="forbid")
    budget: int = Field(gt=0, le=MAX_AMOUNT, description="V in base units")
    rounds: int = Field(default=1, ge=1, le=100)
    task_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    ratio: tuple[int, int, int] = (7, 1, 2)


class TaskCreated(Answer):
    task_id: str
    deposit_txid: str
    server: str | None = None


class RequesterTaskSummary(Answer):
    task_id: str
    budget: int
    rounds: int
    deposit_txid: str
    submitted: bool


class RequesterTask(Answer):
    task_id: str
    budget: int
    rounds: int
    deposit_txid: str
    server: ServerTask
