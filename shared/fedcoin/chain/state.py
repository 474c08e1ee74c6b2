"""Balances, nonces and settled tasks, derived by replaying blocks.

:class:`ChainState` is never stored as the source of truth: it is derived by
replaying a branch from genesis, so balances are always reproducible from the
blocks alone. The sum of all balances equals the genesis allocation forever:
every transaction moves value, none creates it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from fedcoin.errors import InvalidBlock, InvalidSignature, InvalidTransaction, Reason

from .blocks import Block
from .transactions import SETTLEMENT_KINDS, USER_KINDS, Transaction


class Deposit(NamedTuple):
    """A confirmed deposit: who paid, for which server, how much (its escrow is the balance of the
    account named by the deposit's txid)."""

    requester: str
    server: str
    amount: int


@dataclass
class ChainState:
    balances: dict[str, int] = field(default_factory=dict)
    nonces: dict[str, int] = field(default_factory=dict)
    settled: set[str] = field(default_factory=set)  # settlement keys of settled tasks
    deposits: dict[str, Deposit] = field(default_factory=dict)  # confirmed deposits by txid

    def copy(self) -> ChainState:
        return ChainState(dict(self.balances), dict(self.nonces), set(self.settled), dict(self.deposits))

    def escrow(self, deposit_txid: str) -> int:
        """What is left of a deposit's budget."""
        return self.balance(deposit_txid)

    def balance(self, account: str) -> int:
        return self.balances.get(account, 0)

    def nonce(self, account: str) -> int:
        return self.nonces.get(account, 0)

    @property
    def total(self) -> int:
        return sum(self.balances.values())

    def apply(self, tx: Transaction, *, check_signature: bool = True) -> None:
        """Apply one transaction in place; raise InvalidTransaction (state untouched) if it cannot apply.

        ``genesis``, ``payout`` and ``commission`` transactions are only valid where the
        block rules place them; this method applies their value movement and nothing more.
        A ``deposit`` credits the escrow account named by its txid, not its recipient.
        """
        if tx.kind == "genesis":
            self.balances[tx.recipient] = self.balance(tx.recipient) + tx.amount
            return
        if tx.sender == tx.recipient and tx.kind in USER_KINDS:
            raise InvalidTransaction(Reason.SELF_TRANSFER, "sender and recipient are the same account")
        if tx.kind not in SETTLEMENT_KINDS:
            if check_signature:
                try:
                    tx.verify_signature()
                except InvalidSignature as exc:
                    raise InvalidTransaction(Reason.BAD_SIGNATURE, f"transaction {tx.txid[:16]}: {exc}") from exc
            expected = self.nonce(tx.sender)
            if tx.nonce != expected:
                raise InvalidTransaction(
                    Reason.BAD_NONCE,
                    f"transaction {tx.txid[:16]} has nonce {tx.nonce}, sender's next nonce is {expected}",
                )
        have = self.balance(tx.sender)
        if have < tx.amount:
            raise InvalidTransaction(
                Reason.INSUFFICIENT_BALANCE, f"transaction {tx.txid[:16]} moves {tx.amount}, sender has {have}"
            )
        self.balances[tx.sender] = have - tx.amount
        if self.balances[tx.sender] == 0:
            del self.balances[tx.sender]
        credited = tx.txid if tx.kind == "deposit" else tx.recipient
        self.balances[credited] = self.balance(credited) + tx.amount
        if tx.kind not in SETTLEMENT_KINDS:
            self.nonces[tx.sender] = self.nonce(tx.sender) + 1
        if tx.kind == "deposit":
            self.deposits[tx.txid] = Deposit(tx.sender, tx.recipient, tx.amount)


def apply_block(state: ChainState, block: Block, *, check_signatures: bool = True) -> ChainState:
    """Apply a block's transactions to a copy of ``state``; the body layout was checked by VerifyBlock."""
    new = state.copy()
    for tx in block.body.transactions:
        try:
            new.apply(tx, check_signature=check_signatures)
        except InvalidTransaction as exc:
            raise InvalidBlock(Reason.BAD_TRANSACTION, f"{exc.reason}: {exc.message}") from exc
    if block.body.task is not None:
        new.settled.add(block.body.task.settlement_key)
    return new
