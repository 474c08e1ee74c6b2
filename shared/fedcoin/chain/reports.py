"""Signed PoSap reports (Algorithm 1, line 13): a miner's running S after some iterations.

A report names the task and the head (``prev_hash``) the miner works from, so
it only counts for blocks on that parent. Reports travel between miners as
they are, and the winner's block carries the ones its S̄ averages, so every
node recomputes S̄ from signed statements (:mod:`fedcoin.consensus.rules`).
Report hash = SHA-256 of ``tagged("fedcoin/report/v1", fields without
signature)``; the signature covers those bytes.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from .clock import now_ms
from .encoding import sha256_hex, tagged
from .fields import AccountId, FiniteFloat, LedgerModel, Sha256Hex, TaskId
from .identity import Identity, verify_signature
from .tasks import MAX_CLIENTS
from .transactions import MAX_AMOUNT

REPORT_DOMAIN = "fedcoin/report/v1"


class ShapleyReport(LedgerModel):
    what: ClassVar[str] = "PoSap report"

    miner: AccountId
    task_id: TaskId
    prev_hash: Sha256Hex
    shapley: list[FiniteFloat] = Field(min_length=1, max_length=MAX_CLIENTS)
    iterations: int = Field(ge=1, le=MAX_AMOUNT)
    timestamp: int = Field(ge=0, description="milliseconds since the Unix epoch, the miner's clock")
    signature: str = ""

    def signing_payload(self) -> bytes:
        return tagged(REPORT_DOMAIN, self.model_dump(exclude={"signature"}))

    @property
    def hash(self) -> str:
        return sha256_hex(self.signing_payload())

    def verify_signature(self) -> None:
        verify_signature(self.miner, self.signing_payload(), self.signature)


def make_report(
    miner: Identity,
    *,
    task_id: str,
    prev_hash: str,
    shapley: list[float],
    iterations: int,
    timestamp: int | None = None,
) -> ShapleyReport:
    unsigned = ShapleyReport(
        miner=miner.account,
        task_id=task_id,
        prev_hash=prev_hash,
        shapley=[float(x) for x in shapley],
        iterations=iterations,
        timestamp=now_ms() if timestamp is None else timestamp,
    )
    return unsigned.model_copy(update={"signature": miner.sign(unsigned.signing_payload())})
