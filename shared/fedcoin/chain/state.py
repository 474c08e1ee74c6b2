"""Balances, nonces and settled tasks, derived by replaying blocks.

:class:`ChainState` is never stored as the source of truth: it is derived by
replaying a branch from genesis, so balances are always reproducible from the
blocks alone. The sum of all balances equals the genesis allocation forever:
every transaction moves value, none creates it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedcoin.errors import InvalidBlock, InvalidSignature, InvalidTransaction, Reason

from .blocks import Block
from .transactions import USER_KINDS, Transaction


@dataclass
class ChainState:
    balances: dict[str, int] = field(default_factory=dict)
    nonces: dict[str, int] = field(default_factory=dict)
    settled: set[str] = field(default_factory=set)  # settlement keys (server/task_id) of settled tasks
    deposits: set[str] = field(default_factory=set)  # txids of confirmed deposits

    def copy(self) -> ChainState:
        return ChainState(dict(self.balances), dict(self.nonces), set(self.settled), set(self.deposits))

    def balance(self, account: str) -> int:
        return self.balances.get(account, 0)

    def nonce(self, account: str) -> int:
        return self.nonces.get(account, 0)

    @property
    def total(self) -> int:
        return sum(self.balances.values())

    def apply(self, tx: Transaction, *, check_signature: bool = True) -> None:
        """Apply one transaction in place; raise InvalidTransaction (state untouched) if it cannot apply.

        ``genesis`` and ``payout`` transactions are only valid where the block
        rules place them; this method applies their value movement and nothing more.
        """
        if tx.kind == "genesis":
            self.balances[tx.recipient] = self.balance(tx.recipient) + tx.amount
            return
        if tx.sender == tx.recipient and tx.kind in USER_KINDS:
            raise InvalidTransaction(Reason.SELF_TRANSFER, "sender and recipient are the same account")
        if tx.kind != "payout":
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
        self.balances[tx.recipient] = self.balance(tx.recipient) + tx.amount
        if tx.kind != "payout":
            self.nonces[tx.sender] = self.nonce(tx.sender) + 1
        if tx.kind == "deposit":
            self.deposits.add(tx.txid)


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
