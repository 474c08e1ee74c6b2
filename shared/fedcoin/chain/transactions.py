"""Signed transfers of FedCoin.

A transaction moves ``amount`` integer base units from ``sender`` to
``recipient``. Its signing payload is ``tagged("fedcoin/tx/v1", fields)``
(see :mod:`fedcoin.chain.encoding`) where ``fields`` are all fields except
``signature``; the transaction id is the SHA-256 of that payload. Ed25519
signatures are deterministic, so the id is stable and cannot be changed by
re-signing. The ``wtxid`` hashes the whole transaction, signature included;
blocks commit to their transactions' wtxids, so no byte of a body can change
without changing the block hash.

Kinds:

``transfer``
    an ordinary payment, signed by the sender;
``deposit``
    a model requester's budget V for the FL server named as ``recipient``;
    ``memo`` names the training task; signed by the sender. V does not reach
    the server's balance: it is held in escrow under the account whose id is
    the deposit's txid (no key exists for it), and leaves it only by the
    ``payout`` and ``commission`` of Shapley tasks that name the deposit, at
    the prices the division contract fixes (:mod:`fedcoin.consensus.payments`);
``reward``
    the block winner paying a client its share of TrainPrice (Algorithm 3,
    line 12); signed by the winner; ``memo`` is the Shapley task id;
``payout``
    TrainPrice + SapPrice paid to the block winner (Algorithm 3, line 9), from
    the escrow of the deposit the task names, or from the FL server's own
    balance for a task that names none. It carries no signature of its own and
    consumes no nonce: it is authorised by the server's signature on the
    Shapley task in the same block, and a task settles at most once per chain;
``commission``
    a round's ComPrice released from a deposit's escrow to the FL server, in
    the block that settles the round (unsigned, like ``payout``);
``refund``
    what is left of a deposit's escrow, returned whole to its requester when
    its task failed or was cancelled: ``sender`` is the escrow (the deposit's
    txid), ``recipient`` the requester, nonce 0, signed by the deposit's
    server (:func:`make_refund`); submitted like a user transaction;
``genesis``
    an initial allocation in the genesis block, from the all-zero account.

Replay protection: a signed transaction carries the sender's nonce, which must
equal the number of signed transactions the sender already has on the chain.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from ..errors import InvalidInput
from .encoding import ZERO_HASH, sha256_hex, tagged
from .fields import AccountId, LedgerModel
from .identity import Identity, verify_signature

TX_DOMAIN = "fedcoin/tx/v1"
WTX_DOMAIN = "fedcoin/wtx/v1"
MINT_ACCOUNT = ZERO_HASH  # sender of genesis allocations; has no key
MAX_AMOUNT = 2**63 - 1
MAX_MEMO = 256
SIGNED_KINDS = frozenset({"transfer", "deposit", "reward"})
USER_KINDS = frozenset({"transfer", "deposit", "refund"})  # kinds accepted from users into a mempool
SETTLEMENT_KINDS = frozenset({"payout", "commission"})  # unsigned, authorised by the task in the block

TxKind = Literal["transfer", "deposit", "reward", "payout", "commission", "refund", "genesis"]
_MEMO_RE = re.compile(r"[\x20-\x7e]*")


class Transaction(LedgerModel):
    what: ClassVar[str] = "transaction"

    sender: AccountId
    recipient: AccountId
    amount: int = Field(gt=0, le=MAX_AMOUNT)
    nonce: int = Field(ge=0, le=MAX_AMOUNT)
    kind: TxKind = "transfer"
    memo: str = Field(default="", max_length=MAX_MEMO)
    signature: str = ""

    @field_validator("memo")
    @classmethod
    def _memo(cls, v: str) -> str:
        if not _MEMO_RE.fullmatch(v):
            raise ValueError("memo must be printable ASCII")
        return v

    # --- encoding -------------------------------------------------------
    def unsigned_fields(self) -> dict[str, Any]:
        return self.model_dump(exclude={"signature"})

    def signing_payload(self) -> bytes:
        return tagged(TX_DOMAIN, self.unsigned_fields())

    @property
    def txid(self) -> str:
        return sha256_hex(self.signing_payload())

    @property
    def wtxid(self) -> str:
        """Hash of the whole transaction, signature included: the Merkle leaf."""
        return sha256_hex(tagged(WTX_DOMAIN, self.model_dump()))

    # --- signatures -------------------------------------------------------
    def verify_signature(self) -> None:
        """Raise :class:`fedcoin.errors.InvalidSignature` if a signed kind is not signed by its sender."""
        verify_signature(self.sender, self.signing_payload(), self.signature)


def make_transaction(
    identity: Identity,
    recipient: str,
    amount: int,
    nonce: int,
    kind: TxKind = "transfer",
    memo: str = "",
) -> Transaction:
    """Build and sign a transaction from ``identity``."""
    if kind not in SIGNED_KINDS:
        raise InvalidInput(f"kind {kind!r} is not signed by a sender")
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise InvalidInput("amount must be an integer number of base units")
    if not isinstance(nonce, int) or isinstance(nonce, bool):
        raise InvalidInput("nonce must be an integer")
    unsigned = Transaction.from_dict(
        {
            "sender": identity.account,
            "recipient": recipient,
            "amount": amount,
            "nonce": nonce,
            "kind": kind,
            "memo": memo,
        }
    )
    return unsigned.model_copy(update={"signature": identity.sign(unsigned.signing_payload())})


def make_refund(server: Identity, deposit_txid: str, requester: str, amount: int) -> Transaction:
    """The refund of a deposit's remaining escrow (``amount``) to its ``requester``, signed by its server."""
    unsigned = Transaction.from_dict(
        {"sender": deposit_txid, "recipient": requester, "amount": amount, "nonce": 0, "kind": "refund"}
    )
    return unsigned.model_copy(update={"signature": server.sign(unsigned.signing_payload())})
