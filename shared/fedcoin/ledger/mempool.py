"""Pending user transactions, persisted in the node's SQLite file.

A transaction is admitted when its kind is a user kind (``transfer`` or
``deposit``), its signature verifies, its nonce is not below the sender's next
nonce on the head (and at most ``MAX_NONCE_GAP`` above it), no other pending
transaction of the sender has the same nonce, and the sender's balance covers
it together with the sender's other pending transactions. Admitted
transactions are written to disk before :meth:`Mempool.add` returns, so an
accepted transaction survives a restart; they leave the pool when a block on
the main chain makes them stale (their nonce is used up), and the user
transactions of blocks a reorg abandons come back (:meth:`Mempool.restore`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence

from fedcoin.chain.blocks import Block
from fedcoin.chain.state import ChainState
from fedcoin.chain.transactions import USER_KINDS, Transaction
from fedcoin.errors import InvalidInput, InvalidSignature, InvalidTransaction, Reason

from .store import connect

MAX_NONCE_GAP = 64
MAX_PENDING = 10_000


class Mempool:
    def __init__(
        self, path: str | None = None, conn: sqlite3.Connection | None = None, *, max_pending: int = MAX_PENDING
    ) -> None:
        self.max_pending = max_pending
        self._conn = conn if conn is not None else (connect(path) if path is not None else None)
        self._txs: dict[str, Transaction] = {}
        self._by_sender: dict[str, dict[str, Transaction]] = {}  # sender -> txid -> its pending transaction
        if self._conn is not None:
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS mempool "
                "(txid TEXT PRIMARY KEY, data TEXT NOT NULL, received_at REAL NOT NULL)"
            )
            for txid, data in self._conn.execute("SELECT txid, data FROM mempool ORDER BY rowid"):
                self._keep(txid, Transaction.model_validate_json(data))

    def __len__(self) -> int:
        return len(self._txs)

    def __contains__(self, txid: object) -> bool:
        return txid in self._txs

    def get(self, txid: str) -> Transaction | None:
        return self._txs.get(txid)

    def add(self, tx: Transaction, state: ChainState) -> bool:
        """Admit ``tx`` against the head ``state``; False if already pending. Raises InvalidTransaction."""
        if not isinstance(tx, Transaction):
            raise InvalidInput("mempool takes Transactions")
        if tx.txid in self._txs:
            return False
        if tx.kind not in USER_KINDS:
            raise InvalidTransaction(
                Reason.BAD_KIND, f"{tx.kind} transactions are created by block winners, not submitted"
            )
        if tx.sender == tx.recipient:
            raise InvalidTransaction(Reason.SELF_TRANSFER, "sender and recipient are the same account")
        if tx.kind == "refund":
            return self._add_refund(tx, state)
        try:
            tx.verify_signature()
        except InvalidSignature as exc:
            raise InvalidTransaction(Reason.BAD_SIGNATURE, str(exc)) from exc
        next_nonce = state.nonce(tx.sender)
        if tx.nonce < next_nonce:
            raise InvalidTransaction(Reason.BAD_NONCE, f"nonce {tx.nonce} is already used (next is {next_nonce})")
        if tx.nonce > next_nonce + MAX_NONCE_GAP:
            raise InvalidTransaction(
                Reason.NONCE_TOO_FAR_AHEAD, f"nonce {tx.nonce} is too far ahead (next is {next_nonce})"
            )
        mine = self._by_sender.get(tx.sender, {}).values()  # at most MAX_NONCE_GAP + 1 of them
        if any(t.nonce == tx.nonce for t in mine):
            raise InvalidTransaction(
                Reason.NONCE_CONFLICT, f"another pending transaction of this sender has nonce {tx.nonce}"
            )
        committed = sum(t.amount for t in mine) + tx.amount
        if committed > state.balance(tx.sender):
            raise InvalidTransaction(
                Reason.INSUFFICIENT_BALANCE,
                f"sender has {state.balance(tx.sender)}, pending transactions would move {committed}",
            )
        if len(self._txs) >= self.max_pending:
            raise InvalidTransaction(Reason.MEMPOOL_FULL, "too many pending transactions; retry later")
        self._store(tx)
        return True

    def _add_refund(self, tx: Transaction, state: ChainState) -> bool:
        """A refund is checked against the head (the escrow it empties); one per deposit is kept."""
        trial = state.copy()
        trial.apply(tx)  # raises InvalidTransaction (bad-refund) when it does not apply
        if self._by_sender.get(tx.sender):
            raise InvalidTransaction(Reason.NONCE_CONFLICT, "a refund of this deposit is pending already")
        if len(self._txs) >= self.max_pending:
            raise InvalidTransaction(Reason.MEMPOOL_FULL, "too many pending transactions; retry later")
        self._store(tx)
        return True

    def _store(self, tx: Transaction) -> None:
        if self._conn is not None:
            self._conn.execute(
                "INSERT OR IGNORE INTO mempool VALUES (?, ?, ?)", (tx.txid, tx.model_dump_json(), time.time())
            )
        self._keep(tx.txid, tx)

    def _keep(self, txid: str, tx: Transaction) -> None:
        self._txs[txid] = tx
        self._by_sender.setdefault(tx.sender, {})[txid] = tx

    def pending(self) -> list[Transaction]:
        """Pending transactions in an order that applies: by sender, then nonce."""
        return sorted(self._txs.values(), key=lambda t: (t.sender, t.nonce))

    def remove(self, txids: Iterable[str]) -> None:
        gone = [t for t in txids if t in self._txs]
        if not gone:
            return
        if self._conn is not None:
            self._conn.executemany("DELETE FROM mempool WHERE txid = ?", [(t,) for t in gone])
        for t in gone:
            tx = self._txs.pop(t)
            mine = self._by_sender[tx.sender]
            del mine[t]
            if not mine:
                del self._by_sender[tx.sender]

    def restore(self, blocks: Sequence[Block], state: ChainState) -> list[str]:
        """Return the user transactions of ``blocks`` (abandoned by a reorg, oldest first) to the pool,
        each re-validated against the new head ``state``; those that no longer apply (confirmed on the
        new branch too, or double-spent there) are dropped. Returns the ids readmitted."""
        back = []
        for block in blocks:
            for tx in block.body.transactions:
                if tx.kind not in USER_KINDS:
                    continue
                try:
                    if self.add(tx, state):
                        back.append(tx.txid)
                except InvalidTransaction:
                    continue
        return back

    def prune(self, state: ChainState) -> list[str]:
        """Drop transactions whose nonce the head has used up, and refunds of escrows the head has emptied or
        changed; return their ids."""
        stale = [
            txid
            for txid, t in self._txs.items()
            if (t.amount != state.escrow(t.sender) if t.kind == "refund" else t.nonce < state.nonce(t.sender))
        ]
        self.remove(stale)
        return stale
