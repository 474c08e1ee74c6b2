"""Payloads of the signed messages the services exchange (defined once, used by every role).

Each is carried as the ``payload`` of a :class:`fedcoin.messages.SignedMessage`
whose ``kind`` is the model's ``KIND``.
"""

from __future__ import annotations

import re
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .model import AccountId, Sha256Hex, TaskId
from .transactions import MAX_AMOUNT, Transaction

TRAINING_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainingRequest(_Payload):
    """Requester → server: train a model for ``budget``, paid by the signed ``deposit``."""

    KIND: ClassVar[str] = "training-request"
    task_id: str
    budget: int = Field(gt=0, le=MAX_AMOUNT)
    rounds: int = Field(default=1, ge=1, le=100)
    ratio: tuple[int, int, int] = (7, 1, 2)
    deposit: Transaction

    @field_validator("task_id")
    @classmethod
    def _task_id(cls, v: str) -> str:
        if not TRAINING_ID_RE.fullmatch(v):
            raise ValueError("task_id must be 1-64 characters of A-Z a-z 0-9 _ -")
        return v


class ClientRegistration(_Payload):
    """Client → server: a logical client, where to reach it and what data it holds."""

    KIND: ClassVar[str] = "client-registration"
    url: str = Field(min_length=1, max_length=256)
    n_samples: int = Field(ge=1)
    client_type: int = Field(ge=0)
    labels: list[int] = Field(default_factory=list)


class TrainOrder(_Payload):
    """Server → client: train locally from the global model at ``global_uri``."""

    KIND: ClassVar[str] = "train-order"
    task_id: TaskId
    round: int = Field(ge=0)
    client: AccountId
    global_uri: str
    global_hash: Sha256Hex
    iterations: int = Field(default=20, ge=1, le=10_000)
    batch_size: int = Field(default=64, ge=1, le=65_536)
    lr: float = Field(default=0.1, gt=0, le=10)
    seed: int = Field(default=0, ge=0)



class UpdateReceipt(_Payload):
    """Client → server: the signed statement that the attached update is this client's."""

    KIND: ClassVar[str] = "update"
    task_id: TaskId
    round: int = Field(ge=0)
    n_samples: int = Field(ge=1)
    update_hash: Sha256Hex
