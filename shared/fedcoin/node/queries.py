"""What a miner answers about itself and its chain, read under the node's lock.

:class:`MinerQueries` is the read side of :class:`~fedcoin.node.miner.MinerNode`:
every answer is taken in one critical section, so it is never a mix of two heads.
Answers are plain JSON-ready dicts; ``None`` means "not found".
"""

from __future__ import annotations

from typing import Any

from fedcoin.chain.identity import check_account
from fedcoin.consensus.posap import p_distance

from .miner import MinerNode

MAX_BLOCKS_PER_PAGE = 100
MAX_HISTORY = 200


class MinerQueries:
    def __init__(self, node: MinerNode) -> None:
        self.node = node
        self.chain = node.chain

    def health(self) -> dict[str, Any]:
        with self.node.lock:
            return {"status": "ok", "role": "miner", "account": self.node.identity.account, "height": self.chain.height}

    def status(self) -> dict[str, Any]:
        node = self.node
        with node.lock:
            w = node.work
            mining = None
            if w is not None:
                mining = {
                    "task_id": w.task.task_id,
                    "iterations": w.posap.iterations,
                    "peers": len(w.posap.peer_reports),
                    "distance": w.posap.distance() if w.posap.peer_reports else None,
                    "difficulty": w.posap.difficulty,
                }
            return {
                "account": node.identity.account,
                "height": self.chain.height,
                "head": self.chain.head,
                "pending_transactions": len(node.mempool),
                "mining": mining,
                "engines_cached": node.tasks.cached,
                **node.stats,
            }

    def head(self) -> dict[str, Any]:
        with self.node.lock:
            h = self.chain.head_header
            return {
                "height": h.height,
                "hash": h.hash,
                "work": self.chain.work,
                "tie": self.chain.tie,
                "timestamp": h.timestamp,
                "difficulty": h.difficulty,
                "next_difficulty": self.chain.next_difficulty(),
                "genesis": self.chain.genesis.hash,
            }

    def summary(self) -> list[dict[str, Any]]:
        with self.node.lock:
            return [
                {
                    "height": b.height,
                    "hash": b.hash,
                    "winner": b.header.winner,
                    "task_id": b.header.task_id,
                    "difficulty": b.header.difficulty,
                    "iterations": b.header.iterations,
                    "transactions": len(b.body.transactions),
                    "timestamp": b.header.timestamp,
                }
                for b in self.chain.main_chain_light()
            ]

    def blocks(self, start: int, end: int | None = None) -> list[dict[str, Any]]:
        """Main-chain blocks ``start..end`` (inclusive), at most ``MAX_BLOCKS_PER_PAGE``."""
        with self.node.lock:
            last = self.chain.height if end is None else min(end, self.chain.height)
            last = min(last, start + MAX_BLOCKS_PER_PAGE - 1)
            return [self.chain.block_at(h).to_dict() for h in range(start, last + 1)]

    def block_at(self, height: int) -> dict[str, Any] | None:
        with self.node.lock:
            if not 0 <= height <= self.chain.height:
                return None
            return self.chain.block_at(height).to_dict()

    def block_by_hash(self, block_hash: str) -> dict[str, Any] | None:
        with self.node.lock:
            b = self.chain.get(block_hash)
        return None if b is None else b.to_dict()

    def transaction(self, txid: str) -> dict[str, Any] | None:
        with self.node.lock:
            for b in reversed(self.chain.main_chain_light()):
                for tx in b.body.transactions:
                    if tx.txid == txid:
                        return {
                            "txid": txid,
                            "status": "confirmed",
                            "height": b.height,
                            "block_hash": b.hash,
                            "transaction": tx.to_dict(),
                        }
            pending = self.node.mempool.get(txid)
        if pending is not None:
            return {"txid": txid, "status": "pending", "transaction": pending.to_dict()}
        return None

    def pending(self, offset: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Pending transactions in the order a block would take them (sender, nonce), a page of them."""
        with self.node.lock:
            txs = self.node.mempool.pending()
        end = None if limit is None else offset + limit
        return [t.to_dict() for t in txs[offset:end]]

    def balances(self) -> dict[str, Any]:
        with self.node.lock:
            return {
                "height": self.chain.height,
                "head": self.chain.head,
                "balances": self.chain.balances(),
                "supply": self.chain.supply,
            }

    def balance(self, account: str) -> dict[str, Any]:
        check_account(account)
        with self.node.lock:
            return {
                "account": account,
                "balance": self.chain.balance(account),
                "nonce": self.chain.nonce(account),
                "height": self.chain.height,
            }

    def tasks(self) -> list[dict[str, Any]]:
        known = self.node.tasks.all()
        with self.node.lock:
            return [{"task_id": t.task_id, "settled": self.chain.is_settled(t)} for t in known]

    def task(self, task_id: str) -> dict[str, Any] | None:
        """Whether ``task_id`` is settled on the main chain (and by which block), or being mined."""
        known = self.node.tasks.get(task_id)
        with self.node.lock:
            settled = next((b for b in reversed(self.chain.main_chain_light()) if b.header.task_id == task_id), None)
            if known is None and settled is None:
                return None
            out: dict[str, Any] = {"task_id": task_id, "settled": settled is not None}
            if settled is not None:
                out.update(
                    height=settled.height,
                    block_hash=settled.hash,
                    winner=settled.header.winner,
                    s_avg=settled.header.s_avg,
                )
            w = self.node.work
            if w is not None and w.task.task_id == task_id:
                out.update(mining=True, iterations=w.posap.iterations, distance=w.posap.distance())
            return out

    def race(self) -> dict[str, Any]:
        """The PoSap race this miner is in: each miner's latest (S, iterations), this one's included,
        and its distance to S̄ against D; ``task_id`` None when it mines nothing."""
        with self.node.lock:
            w = self.node.work
            if w is None:
                return {"task_id": None, "head": self.chain.head, "height": self.chain.height, "miners": []}
            posap = w.posap
            avg = posap.network_average()
            rows = []
            own = self.node.identity.account
            for account, report in [(own, posap.report()), *sorted(posap.peer_reports.items())]:
                distance = None
                if avg is not None and report.iterations > 0:
                    distance = p_distance(report.shapley, avg, posap.p)
                rows.append(
                    {
                        "account": account,
                        "self": account == own,
                        "iterations": report.iterations,
                        "shapley": [float(x) for x in report.shapley],
                        "distance": distance,
                        "within": distance is not None and distance <= posap.difficulty,
                    }
                )
            return {
                "task_id": w.task.task_id,
                "head": w.head,
                "height": self.chain.height,
                "difficulty": posap.difficulty,
                "p": posap.p,
                "average": None if avg is None else [float(x) for x in avg],
                "miners": rows,
            }

    def history(self, account: str, limit: int = MAX_HISTORY) -> list[dict[str, Any]]:
        """The main chain's transactions to or from ``account``, newest first (at most ``limit``)."""
        check_account(account)
        out: list[dict[str, Any]] = []
        with self.node.lock:
            for b in reversed(self.chain.main_chain_light()):
                for tx in b.body.transactions:
                    if account in (tx.sender, tx.recipient):
                        out.append({"height": b.height, "block_hash": b.hash, **tx.to_dict(), "txid": tx.txid})
                        if len(out) >= limit:
                            return out
        return out
