"""A miner node's protocol logic, independent of the transport.

:class:`MinerNode` owns the node's chain (with its SQLite store), mempool and
Shapley tasks, and runs Proof of Shapley on the oldest unsettled task in a
worker thread. The transport (the FastAPI miner service, or a test) feeds it
incoming transactions, tasks, reports and blocks, and gets outgoing reports
and blocks through the ``broadcast_report`` / ``broadcast_block`` callbacks.

Work on a task is bound to the head it started from: the permutations are
derived from the head's hash, so when the head moves (another task settled)
the work restarts on the new head. Reports of other miners are matched by
(task id, head hash); reports that arrive before this node starts the same
work are kept and applied when it does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .blocks import Block
from .errors import InvalidBlock, InvalidInput, OrphanBlock
from .identity import Identity
from .ledger import AddResult, Chain, build_block
from .mempool import Mempool
from .messages import SignedMessage
from .posap import PoSapMiner, Report
from .store import DocStore
from .tasks import ShapleyTask
from .encoding import sha256_hex
from .transactions import Transaction

log = logging.getLogger("fedcoin.miner")
REPORT_KIND = "posap-report"

MarginalsFactory = Callable[[ShapleyTask, bytes], Callable]


@dataclass
class _Work:
    task: ShapleyTask
    head: str
    posap: PoSapMiner
    started: float = field(default_factory=time.time)
    last_broadcast: float = 0.0


class MinerNode:
    def __init__(
        self,
        identity: Identity,
        chain: Chain,
        data_dir: str | Path,
        marginals_factory: MarginalsFactory,
        *,
        batch: int = 4,
        report_interval: float = 0.25,
        min_peers: int = 1,
        broadcast_report: Callable[[SignedMessage], None] | None = None,
        broadcast_block: Callable[[Block], None] | None = None,
    ) -> None:
        self.identity = identity
        self.chain = chain
        self.data_dir = Path(data_dir)
        (self.data_dir / "content").mkdir(parents=True, exist_ok=True)
        db = self.data_dir / "node.sqlite"
        from .store import connect

        self._conn = connect(db)
        self.mempool = Mempool(conn=self._conn)
        self.docs = DocStore(conn=self._conn)
        self._factory = marginals_factory
        self.batch = batch
        self.report_interval = report_interval
        self.min_peers = min_peers
        self.broadcast_report = broadcast_report or (lambda m: None)
        self.broadcast_block = broadcast_block or (lambda b: None)
        self.lock = threading.RLock()
        self._wake = threading.Condition(self.lock)
        self._work: _Work | None = None
        self._marginals_cache: dict[str, Callable] = {}
        self._early_reports: dict[tuple[str, str], dict[str, Report]] = {}
        self.stats = {"blocks_won": 0, "iterations": 0}
        self.mempool.prune(self.chain.head_state)

    # --- inputs ---------------------------------------------------------------
    def add_transaction(self, tx: Transaction) -> bool:
        with self.lock:
            return self.mempool.add(tx, self.chain.head_state)

    def add_task(self, task: ShapleyTask, content: bytes) -> bool:
        """Accept a server-signed Shapley task with its content; False if already known."""
        if not isinstance(task, ShapleyTask):
            raise InvalidInput("add_task needs a ShapleyTask")
        task.verify_signature()
        if sha256_hex(content) != task.content_hash:
            raise InvalidInput("content does not match the task's content_hash")
        with self.lock:
            if self.docs.get("tasks", task.task_id) is not None:
                return False
            if self.chain.is_settled(task.task_id):
                return False
        marginals = self._factory(task, content)  # validates the content; may take a moment
        path = self.data_dir / "content" / f"{task.content_hash}.npz"
        path.write_bytes(content)
        with self.lock:
            self.docs.put("tasks", task.task_id, {"task": task.to_dict(), "received_at": time.time()})
            self._marginals_cache[task.task_id] = marginals
            for tx in task.funding:
                try:
                    self.mempool.add(tx, self.chain.head_state)
                except Exception:  # noqa: BLE001 - already pending or confirmed
                    pass
            self._wake.notify_all()
        return True

    def tasks(self) -> list[dict]:
        with self.lock:
            return self.docs.list("tasks")

    def task_status(self, task_id: str) -> dict | None:
        with self.lock:
            doc = self.docs.get("tasks", task_id)
            settled = None
            for b in reversed(self.chain.main_chain()):
                if b.header.task_id == task_id:
                    settled = b
                    break
            if doc is None and settled is None:
                return None
            out: dict = {"task_id": task_id, "settled": settled is not None}
            if settled is not None:
                out.update(height=settled.height, block_hash=settled.hash, winner=settled.header.winner, s_avg=settled.header.s_avg)
            w = self._work
            if w is not None and w.task.task_id == task_id:
                out.update(mining=True, iterations=w.posap.iterations, distance=w.posap.distance())
            return out

    def receive_report(self, message: SignedMessage) -> None:
        payload = message.open(REPORT_KIND)
        try:
            task_id = str(payload["task_id"])
            head = str(payload["prev_hash"])
            report = Report(tuple(float(x) for x in payload["shapley"]), int(payload["iterations"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"malformed PoSap report: {exc}") from exc
        with self.lock:
            w = self._work
            if w is not None and w.task.task_id == task_id and w.head == head:
                w.posap.receive(message.sender, report)
            else:
                bucket = self._early_reports.setdefault((task_id, head), {})
                old = bucket.get(message.sender)
                if old is None or report.iterations >= old.iterations:
                    bucket[message.sender] = report
                if len(self._early_reports) > 64:
                    self._early_reports.pop(next(iter(self._early_reports)))

    def receive_block(self, block: Block) -> AddResult:
        """VerifyBlock (with this node's local S̄ when it works on the same task) and append."""
        with self.lock:
            local = None
            w = self._work
            if (
                w is not None
                and w.task.task_id == block.header.task_id
                and w.head == block.header.prev_hash
                and w.posap.iterations > 0
                and len(w.posap.peer_reports) >= self.min_peers
            ):
                avg = w.posap.network_average()
                local = None if avg is None else list(avg)
            result = self.chain.add_block(block, local_avg=local)
            if result.status != "known":
                self._after_head_change()
            return result

    def add_chain(self, blocks: list[Block]) -> AddResult:
        with self.lock:
            result = self.chain.add_chain(blocks)
            if result.status != "known":
                self._after_head_change()
            return result

    def _after_head_change(self) -> None:
        self.mempool.prune(self.chain.head_state)
        w = self._work
        if w is not None and w.head != self.chain.head:
            self._work = None
        self._wake.notify_all()

    # --- the PoSap worker -------------------------------------------------------
    def _next_task(self) -> ShapleyTask | None:
        for doc in self.docs.list("tasks"):
            task = ShapleyTask.from_dict(doc["task"])
            if not self.chain.is_settled(task.task_id):
                return task
        return None

    def _marginals_for(self, task: ShapleyTask) -> Callable:
        fn = self._marginals_cache.get(task.task_id)
        if fn is None:
            content = (self.data_dir / "content" / f"{task.content_hash}.npz").read_bytes()
            fn = self._factory(task, content)
            self._marginals_cache = {task.task_id: fn}
        return fn

    def _start_work(self) -> _Work | None:
        task = self._next_task()
        if task is None:
            return None
        posap = PoSapMiner(
            miner=self.identity.account,
            task_id=task.task_id,
            prev_hash=self.chain.head,
            n_players=task.n_players,
            marginals=self._marginals_for(task),
            difficulty=self.chain.next_difficulty(),
            p=self.chain.params.p,
            min_peers=self.min_peers,
        )
        for peer, rep in self._early_reports.pop((task.task_id, self.chain.head), {}).items():
            posap.receive(peer, rep)
        log.info("mining task %s on head %s (D=%g)", task.task_id, self.chain.head[:12], posap.difficulty)
        return _Work(task, self.chain.head, posap)

    def run(self, stop: threading.Event) -> None:
        """The mining loop; returns when ``stop`` is set."""
        while not stop.is_set():
            with self.lock:
                if self._work is None:
                    self._work = self._start_work()
                w = self._work
                if w is None:
                    self._wake.wait(timeout=0.5)
                    continue
            try:
                report = w.posap.step(self.batch)  # the expensive part, outside the lock
            except Exception:  # noqa: BLE001 - a broken task must not kill the miner
                log.exception("PoSap step failed on task %s; dropping it", w.task.task_id)
                with self.lock:
                    self.docs.delete("tasks", w.task.task_id)
                    self._work = None
                continue
            self.stats["iterations"] += self.batch
            now = time.time()
            if now - w.last_broadcast >= self.report_interval:
                w.last_broadcast = now
                payload = {"task_id": w.task.task_id, "prev_hash": w.head, "shapley": list(report.shapley), "iterations": report.iterations}
                self.broadcast_report(SignedMessage.create(self.identity, REPORT_KIND, payload))
            block = None
            with self.lock:
                if self._work is w and w.posap.is_winner() and self.chain.head == w.head:
                    avg = w.posap.network_average()
                    block = build_block(
                        self.chain,
                        task=w.task,
                        winner=self.identity,
                        s_winner=list(w.posap.shapley),
                        s_avg=list(np.asarray(avg)),
                        iterations=w.posap.iterations,
                        transactions=self.mempool.pending(),
                    )
                    try:
                        self.chain.add_block(block)
                    except InvalidBlock:
                        log.exception("own block rejected")
                        block = None
                    else:
                        self.stats["blocks_won"] += 1
                        log.info("won task %s at height %d after %d iterations", w.task.task_id, block.height, w.posap.iterations)
                        self._after_head_change()
            if block is not None:
                self.broadcast_block(block)

    def status(self) -> dict:
        with self.lock:
            w = self._work
            return {
                "account": self.identity.account,
                "height": self.chain.height,
                "head": self.chain.head,
                "pending_transactions": len(self.mempool),
                "mining": None
                if w is None
                else {
                    "task_id": w.task.task_id,
                    "iterations": w.posap.iterations,
                    "peers": len(w.posap.peer_reports),
                    "distance": w.posap.distance() if w.posap.peer_reports else None,
                    "difficulty": w.posap.difficulty,
                },
                **self.stats,
            }


__all__ = ["MinerNode", "OrphanBlock", "REPORT_KIND"]
