"""Signed messages between nodes, and the payloads they carry (defined once, used by every role).

Every state-changing message that is not itself a signed ledger object
(transactions, tasks and blocks carry their own signatures) travels in a
:class:`SignedMessage`: the sender's account, a message ``kind``, a JSON
``payload``, the sender's clock in milliseconds and an Ed25519 signature over
``tagged("fedcoin/msg/v1", {kind, sender, payload, timestamp})``. Binary
content (model weights) is never inside the payload; the payload names its
SHA-256 instead.

:meth:`SignedMessage.open` checks the kind, the signature and the freshness of
the timestamp (default ±10 minutes) and returns the payload; a payload model's
:meth:`~Payload.open` does that and validates the payload against the model.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from fedcoin.chain.clock import now_ms
from fedcoin.chain.encoding import tagged
from fedcoin.chain.fields import AccountId, LedgerModel, Sha256Hex, TaskId
from fedcoin.chain.identity import Identity, verify_signature
from fedcoin.chain.transactions import MAX_AMOUNT, Transaction
from fedcoin.errors import InvalidInput, InvalidSignature

MESSAGE_DOMAIN = "fedcoin/msg/v1"
DEFAULT_MAX_SKEW_MS = 10 * 60 * 1000


class SignedMessage(LedgerModel):
    what: ClassVar[str] = "signed message"

    kind: str = Field(min_length=1, max_length=64)
    sender: AccountId
    payload: dict[str, Any]
    timestamp: int = Field(ge=0)
    signature: str

    def signing_payload(self) -> bytes:
        return tagged(MESSAGE_DOMAIN, self.model_dump(exclude={"signature"}))

    @classmethod
    def create(
        cls, identity: Identity, kind: str, payload: dict[str, Any], timestamp: int | None = None
    ) -> SignedMessage:
        ts = now_ms() if timestamp is None else timestamp
        unsigned = cls(kind=kind, sender=identity.account, payload=payload, timestamp=ts, signature="")
        return unsigned.model_copy(update={"signature": identity.sign(unsigned.signing_payload())})

    def open(
        self,
        kind: str,
        *,
        sender: str | None = None,
        max_skew_ms: int | None = DEFAULT_MAX_SKEW_MS,
        now: int | None = None,
    ) -> dict[str, Any]:
        """Verify and return the payload; raise InvalidSignature / InvalidInput otherwise."""
        if self.kind != kind:
            raise InvalidInput(f"expected a {kind!r} message, got {self.kind!r}")
        if sender is not None and self.sender != sender:
            raise InvalidSignature(f"message is from {self.sender[:16]}..., expected {sender[:16]}...")
        verify_signature(self.sender, self.signing_payload(), self.signature)
        if max_skew_ms is not None:
            current = now_ms() if now is None else now
            if abs(current - self.timestamp) > max_skew_ms:
                raise InvalidInput(
                    f"message timestamp is {abs(current - self.timestamp)} ms away from this node's clock"
                )
        return self.payload


TRAINING_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _training_id(v: str) -> str:
    if not TRAINING_ID_RE.fullmatch(v):
        raise ValueError("task_id must be 1-64 characters of A-Z a-z 0-9 _ -")
    return v


TrainingId = Annotated[str, AfterValidator(_training_id)]  # a requester's task id


class Payload(BaseModel):
    """The payload of a :class:`SignedMessage` whose ``kind`` is ``KIND``."""

    model_config = ConfigDict(extra="forbid")
    KIND: ClassVar[str]

    def sign(self, identity: Identity) -> SignedMessage:
        return SignedMessage.create(identity, self.KIND, self.model_dump())

    @classmethod
    def open(cls, message: SignedMessage, *, sender: str | None = None) -> Self:
        """Verify ``message`` (kind, signature, freshness) and parse its payload; InvalidInput if malformed."""
        payload = message.open(cls.KIND, sender=sender)
        try:
            return cls.model_validate(payload)
        except ValidationError as exc:
            raise InvalidInput(f"malformed {cls.KIND} payload: {exc}") from exc


class TrainingRequest(Payload):
    """Requester → server: train a model for ``budget``, paid by the signed ``deposit``."""

    KIND: ClassVar[str] = "training-request"
    task_id: TrainingId
    budget: int = Field(gt=0, le=MAX_AMOUNT)
    rounds: int = Field(default=1, ge=1, le=100)
    ratio: tuple[int, int, int] = (7, 1, 2)
    deposit: Transaction


class ClientRegistration(Payload):
    """Client → server: a logical client, where to reach it and what data it holds."""

    KIND: ClassVar[str] = "client-registration"
    url: str = Field(min_length=1, max_length=256)
    n_samples: int = Field(ge=1)
    client_type: int = Field(ge=0)
    labels: list[int] = Field(default_factory=list)


class TrainOrder(Payload):
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


class UpdateReceipt(Payload):
    """Client → server: the signed statement that the attached update is this client's."""

    KIND: ClassVar[str] = "update"
    task_id: TaskId
    round: int = Field(ge=0)
    n_samples: int = Field(ge=1)
    update_hash: Sha256Hex


class CancelRequest(Payload):
    """Requester → server: stop the task ``task_id`` and refund what is left of its budget."""

    KIND: ClassVar[str] = "cancel-request"
    task_id: TrainingId
