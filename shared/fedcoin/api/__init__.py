"""The services' HTTP schemas, defined once: what the miner, FL server and requester take and
answer. The services declare them as their routes' models; :mod:`fedcoin.client` parses
answers into them. Blocks and transactions travel as :mod:`fedcoin.chain`'s own models.

May import: fedcoin.errors, fedcoin.chain, fedcoin.fl, fedcoin.valuation, fedcoin.consensus,
fedcoin.ledger; pydantic, never torch, httpx or a web framework.
"""

from .models import (
    AccountBalance,
    Balances,
    BlockAccepted,
    BlockSummary,
    ChainHead,
    Health,
    MinerStatus,
    MinerTask,
    MinerTaskSummary,
    Mining,
    NewTask,
    RequesterTask,
    RequesterTaskSummary,
    RoundResult,
    ServerInfo,
    ServerTask,
    ServerTaskSummary,
    TaskCancelled,
    TaskCreated,
    TaskStatus,
    TransactionAccepted,
    TransactionStatus,
)

__all__ = [
    "AccountBalance",
    "Balances",
    "BlockAccepted",
    "BlockSummary",
    "ChainHead",
    "Health",
    "MinerStatus",
    "MinerTask",
    "MinerTaskSummary",
    "Mining",
    "NewTask",
    "RequesterTask",
    "RequesterTaskSummary",
    "RoundResult",
    "ServerInfo",
    "ServerTask",
    "ServerTaskSummary",
    "TaskCancelled",
    "TaskCreated",
    "TaskStatus",
    "TransactionAccepted",
    "TransactionStatus",
]
