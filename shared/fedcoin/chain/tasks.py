"""Shapley tasks: what the FL server publishes to the miners once per round.

A task is the input of Algorithm 1: the clients whose updates W are valued
(player ``i`` is ``clients[i]``), the aggregation A and the loss F (named by
``aggregation`` and ``metric``, with the value of the empty coalition
``empty_value``), the prices SapPrice and TrainPrice, and the content hash of
the updates and validation data together with where they are held
(``content_uri``). A task paid from a requester's budget names that
``deposit`` (its txid), its ``budget`` V and the contract's ``rounds`` and
``ratio``: consensus then requires the prices to be the round's share of V
(:func:`fedcoin.consensus.payments.round_prices`) and pays them from the
deposit's escrow; a task that names no deposit is paid from the server's own
balance. ``funding`` optionally embeds the requester's deposit
transactions that pay for the task: the block that settles the task must
confirm them (in its body, or earlier on its branch), so a deposit and the
first payout it funds can be mined together on an idle chain, and no payout
is ever mined without its deposit. The task is signed by the FL server; by signing it the
server commits to pay TrainPrice + SapPrice to the winner of the block that
settles it (the ``payout`` transaction). Task hash = SHA-256 of
``tagged("fedcoin/task/v1", fields without signature)``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, field_validator

from .encoding import sha256_hex, tagged
from .fields import AccountId, FiniteFloat, LedgerModel, Sha256Hex, TaskId
from .identity import Identity, check_account, verify_signature
from .transactions import MAX_AMOUNT, Transaction

TASK_DOMAIN = "fedcoin/task/v1"
MAX_CLIENTS = 4096


class ShapleyTask(LedgerModel):
    what: ClassVar[str] = "Shapley task"

    task_id: TaskId
    server: AccountId
    round: int = Field(ge=0)
    clients: list[str] = Field(min_length=1, max_length=MAX_CLIENTS)
    train_price: int = Field(ge=0, le=MAX_AMOUNT)
    sap_price: int = Field(ge=0, le=MAX_AMOUNT)
    published_at: int = Field(ge=0, description="milliseconds since the Unix epoch")
    aggregation: str = Field(default="fedavg", max_length=64)
    metric: str = Field(default="neg_loss", max_length=64)
    empty_value: FiniteFloat = 0.0
    content_hash: Sha256Hex
    content_uri: str = Field(default="", max_length=512)
    funding: list[Transaction] = Field(default_factory=list, max_length=16)
    deposit: Sha256Hex | None = Field(default=None, description="txid of the deposit whose escrow pays this task")
    budget: int = Field(default=0, ge=0, le=MAX_AMOUNT, description="the deposit's V")
    rounds: int = Field(default=1, ge=1, le=1000, description="rounds the deposit's budget is split over")
    ratio: list[int] = Field(default_factory=lambda: [7, 1, 2], min_length=3, max_length=3)
    signature: str = ""

    @field_validator("clients")
    @classmethod
    def _clients(cls, v: list[str]) -> list[str]:
        for c in v:
            check_account(c, "client")
        if len(set(v)) != len(v):
            raise ValueError("client accounts must be distinct")
        return v

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, v: list[int]) -> list[int]:
        if any(r < 0 for r in v) or sum(v) == 0 or max(v) > 10**6:
            raise ValueError("ratio TrainPrice:ComPrice:SapPrice must be three integers in [0, 10^6], not all 0")
        return v

    @field_validator("funding")
    @classmethod
    def _funding(cls, v: list[Transaction]) -> list[Transaction]:
        for tx in v:
            if tx.kind != "deposit":
                raise ValueError("funding holds deposit transactions only")
        return v

    @property
    def n_players(self) -> int:
        return len(self.clients)

    def signing_payload(self) -> bytes:
        return tagged(TASK_DOMAIN, self.model_dump(exclude={"signature"}))

    @property
    def settlement_key(self) -> str:
        """What the chain records as settled: a deposit's round (each round of a budget is paid
        once, whatever the task id), or else the task id within its server's namespace, so no other
        server (or requester choosing an id) can settle or block this server's task."""
        if self.deposit is not None:
            return f"{self.deposit}/r{self.round}"
        return f"{self.server}/{self.task_id}"

    @property
    def payer(self) -> str:
        """The account the payout comes from: the deposit's escrow, or the server."""
        return self.deposit if self.deposit is not None else self.server

    @property
    def task_hash(self) -> str:
        return sha256_hex(self.signing_payload())

    def verify_signature(self) -> None:
        verify_signature(self.server, self.signing_payload(), self.signature)


def make_task(server: Identity, **fields: Any) -> ShapleyTask:
    """Build a task published by ``server`` (its account is filled in) and sign it."""
    unsigned = ShapleyTask.from_dict({**fields, "server": server.account, "signature": ""})
    return unsigned.model_copy(update={"signature": server.sign(unsigned.signing_payload())})
