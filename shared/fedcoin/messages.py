"""Signed messages between nodes.

Every state-changing message that is not itself a signed ledger object
(transactions, tasks and blocks carry their own signatures) travels in a
:class:`SignedMessage`: the sender's account, a message ``kind``, a JSON
``payload``, the sender's clock in milliseconds and an Ed25519 signature over
``tagged("fedcoin/msg/v1", {kind, sender, payload, timestamp})``. Binary
content (model weights) is never inside the payload; the payload names its
SHA-256 instead.

:meth:`SignedMessage.open` checks the kind, the signature and the freshness of
the timestamp (default ±10 minutes) and returns the payload.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from pydantic import Field

from .encoding import tagged
from .errors import InvalidInput, InvalidSignature
from .identity import Identity, verify_signature
from .model import AccountId, LedgerModel

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
    def create(cls, identity: Identity, kind: str, payload: dict[str, Any], timestamp: int | None = None) -> "SignedMessage":
        ts = int(time.time() * 1000) if timestamp is None else timestamp
        unsigned = cls(kind=kind, sender=identity.account, payload=payload, timestamp=ts, signature="")
        return unsigned.model_copy(update={"signature": identity.sign(unsigned.signing_payload())})

    def open(self, kind: str, *, sender: str | None = None, max_skew_ms: int | None = DEFAULT_MAX_SKEW_MS, now: int | None = None) -> dict[str, Any]:
        """Verify and return the payload; raise InvalidSignature / InvalidInput otherwise."""
        if self.kind != kind:
            raise InvalidInput(f"expected a {kind!r} message, got {self.kind!r}")
        if sender is not None and self.sender != sender:
            raise InvalidSignature(f"message is from {self.sender[:16]}..., expected {sender[:16]}...")
        verify_signature(self.sender, self.signing_payload(), self.signature)
        if max_skew_ms is not None:
            current = int(time.time() * 1000) if now is None else now
            if abs(current - self.timestamp) > max_skew_ms:
                raise InvalidInput(f"message timestamp is {abs(current - self.timestamp)} ms away from this node's clock")
        return self.payload
