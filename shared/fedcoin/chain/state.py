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
from .identity import verify_signature
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

    def _refund(self, tx: Transaction, check_signature: bool) -> None:
        problem = _refund_problem(self, tx, check_signature)
        if problem is not None:
            raise InvalidTransaction(Reason.BAD_REFUND, f"transaction {tx.txid[:16]}: {problem}")
        del self.balances[tx.sender]
        self.balances[tx.recipient] = self.balance(tx.recipient) + tx.amount

    def apply(self, tx: Transaction, *, check_signature: bool = True) -> None:
        """Apply one transaction in place; raise InvalidTransaction (state untouched) if it cannot apply.

        ``genesis``, ``payout`` and ``commission`` transactions are only valid where the
        block rules place them; this method applies their value movement and nothing more.
        A ``deposit`` credits the escrow account named by its txid, not its recipient.
        """
        if tx.kind == "genesis":
            self.balances[tx.recipient] = self.balance(tx.recipient) + tx.amount
            return
        if tx.kind == "refund":
            self._refund(tx, check_signature)
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


def _refund_problem(state: ChainState, tx: Transaction, check_signature: bool) -> str | None:
    dep = state.deposits.get(tx.sender)
    if dep is None:
        return f"{tx.sender[:16]}... is not a confirmed deposit"
    if tx.recipient != dep.requester or tx.nonce != 0:
        return "a refund goes to the deposit's requester, with nonce 0"
    left = state.escrow(tx.sender)
    if left == 0 or tx.amount != left:
        return f"a refund returns the whole remaining escrow ({left}), not {tx.amount}"
    if check_signature:
        try:
            verify_signature(dep.server, tx.signing_payload(), tx.signature)
        except InvalidSignature as exc:
            return f"not signed by the deposit's server: {exc}"
    return None


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
