"""Chain parameters and the genesis configuration the genesis block derives from.

The genesis block has no winner (the all-zero account), no task and no
signature; its ``task_id`` is ``"genesis"`` and its ``task_hash`` commits to
the chain parameters, so two nodes with different parameters have different
genesis hashes and never accept each other's blocks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from fedcoin.errors import InvalidInput

from .blocks import Block, BlockBody, BlockHeader, body_merkle_root, reports_merkle_root
from .encoding import ZERO_HASH, sha256_hex, tagged
from .fields import AccountId, LedgerModel
from .identity import check_account
from .transactions import MAX_AMOUNT, MINT_ACCOUNT, Transaction
from .work import empty_root

PARAMS_DOMAIN = "fedcoin/params/v1"
GENESIS_TASK_ID = "genesis"


class ChainParams(LedgerModel):
    """Consensus parameters, fixed at genesis."""

    what: ClassVar[str] = "chain parameters"

    chain_id: str = Field(default="fedcoin-local", min_length=1, max_length=64)
    p: float = Field(default=2.0, ge=1.0, le=64.0, description="the p of the p-norm distance (paper: 2)")
    sampler: Literal["uniform", "stratified", "paired"] = Field(
        default="paired",
        description="how miners derive their permutations (fedcoin.consensus.posap.derive_permutation): "
        "`uniform`: each one an independent shuffle (paper); `stratified`: each one still uniform, but in "
        "every cycle of n iterations each client comes first once and last once; `paired`: each one still "
        "uniform, every client first once and second once in every n iterations and every ordered pair of "
        "clients first and second once in every n(n-1) (lowest variance)",
    )
    initial_difficulty: float = Field(default=1e-2, gt=0)
    target_block_ms: int = Field(default=60_000, gt=0, description="target mining time per block")
    retarget_window: int = Field(default=10, ge=1, le=10_000)
    max_adjust: float = Field(default=4.0, ge=1.0, le=1e6)
    min_difficulty: float = Field(default=1e-9, gt=0)
    max_difficulty: float = Field(default=1e3, gt=0)
    max_future_ms: int = Field(default=2 * 3600 * 1000, ge=0)
    median_time_window: int = Field(default=11, ge=1, le=1000)
    consensus: Literal["verified", "paper"] = Field(
        default="verified",
        description="`verified`: admitted servers and miners, verifiable work, S̄ from carried reports, "
        "fork choice by work; `paper`: Algorithm 2 as published (insecure, for comparison only)",
    )
    servers: list[AccountId] = Field(default_factory=list, max_length=1024, description="admitted FL servers")
    miners: list[AccountId] = Field(default_factory=list, max_length=1024, description="admitted miners")
    min_reports: int = Field(default=1, ge=0, le=256, description="reports of other miners a block must carry")
    max_report_rate: float = Field(
        default=5_000.0, gt=0, description="iterations per second a report may claim since its task and parent"
    )
    work_tolerance: float = Field(
        default=2e-3, ge=0, le=1.0, description="largest |recomputed − logged| marginal a leaf may show"
    )

    @model_validator(mode="after")
    def _bounds(self) -> ChainParams:
        for name in ("p", "initial_difficulty", "max_adjust", "min_difficulty", "max_difficulty", "max_report_rate"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite")
        if not self.min_difficulty <= self.initial_difficulty <= self.max_difficulty:
            raise ValueError("need min_difficulty <= initial_difficulty <= max_difficulty")
        if len(set(self.miners)) != len(self.miners) or len(set(self.servers)) != len(self.servers):
            raise ValueError("admitted miners and servers must be distinct accounts")
        return self

    @property
    def verified(self) -> bool:
        return self.consensus == "verified"

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
            work_root=empty_root(),
            reports_root=reports_merkle_root([]),
        )
        return Block(header=header, body=BlockBody(task=None, transactions=txs))

    @classmethod
    def load(cls, path: str | Path) -> GenesisConfig:
        """Read a ``genesis.json`` (as ``fedcoin testnet init`` writes it)."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise InvalidInput(f"cannot read the genesis configuration {path}: {exc}") from exc
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        """Write this configuration to ``path`` atomically."""
        path = Path(path)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.model_dump(), indent=2))
        tmp.replace(path)
