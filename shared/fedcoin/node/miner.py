"""A miner node's protocol logic, independent of the transport.

:class:`MinerNode` owns the node's chain (with its SQLite store), mempool and
Shapley tasks (:class:`~fedcoin.node.taskbook.TaskBook`), and runs Proof of
Shapley on the oldest unsettled task in a worker thread (:meth:`MinerNode.run`).
The transport (the FastAPI miner service, or a test) feeds it incoming
transactions, tasks, reports and blocks, and gets outgoing reports and blocks
through the ``broadcast_report`` / ``broadcast_block`` callbacks; it reads the
node through :class:`~fedcoin.node.queries.MinerQueries`. Every access to the
chain, mempool and work happens under :attr:`MinerNode.lock`.

Work on a task is bound to the head it started from: the permutations are
derived from the head's hash, so when the head moves (another task settled)
the work restarts on the new head. Reports of other miners are matched by
(task id, head hash); reports that arrive before this node starts the same
work are kept (at most ``MAX_EARLY_REPORTS`` buckets) and applied when it does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcoin.chain.blocks import Block
from fedcoin.chain.encoding import sha256_hex
from fedcoin.chain.identity import Identity
from fedcoin.chain.tasks import ShapleyTask
from fedcoin.chain.transactions import Transaction
from fedcoin.consensus.mining import build_block
from fedcoin.consensus.posap import PoSapMiner, Report
from fedcoin.errors import FedcoinError, InvalidBlock, InvalidInput
from fedcoin.ledger.chain import AddResult, Chain
from fedcoin.ledger.mempool import Mempool
from fedcoin.ledger.store import connect

from .blobs import BlobStore
from .docstore import DocStore
from .messages import PoSapReport, SignedMessage
from .taskbook import MarginalsFactory, TaskBook

log = logging.getLogger("fedcoin.miner")
MAX_EARLY_REPORTS = 64


@dataclass
class Work:
    """This miner's PoSap run on one task from one head."""

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
        engine_cache: int = 2,
        broadcast_report: Callable[[SignedMessage], None] | None = None,
        broadcast_block: Callable[[Block], None] | None = None,
    ) -> None:
        self.identity = identity
        self.chain = chain
        self.data_dir = Path(data_dir)
        self._conn = connect(self.data_dir / "node.sqlite")
        self.mempool = Mempool(conn=self._conn)
        self.tasks = TaskBook(
            DocStore(conn=self._conn), BlobStore(self.data_dir / "content"), marginals_factory, cache_size=engine_cache
        )
        self.batch = batch
        self.report_interval = report_interval
        self.min_peers = min_peers
        self.broadcast_report = broadcast_report or (lambda m: None)
        self.broadcast_block = broadcast_block or (lambda b: None)
        self.lock = threading.RLock()
        self._wake = threading.Condition(self.lock)
        self.work: Work | None = None
        self._early_reports: dict[tuple[str, str], dict[str, Report]] = {}
        self.stats = {"blocks_won": 0, "iterations": 0}
        self.mempool.prune(self.chain.head_state)

    def close(self) -> None:
        with self.lock:
            self.chain.close()
            self._conn.close()

    # --- inputs ---------------------------------------------------------------
    def add_transaction(self, tx: Transaction) -> bool:
        with self.lock:
            return self.mempool.add(tx, self.chain.head_state)

    def wants_task(self, task: ShapleyTask) -> bool:
        """False when ``task`` is known, being delivered, or settled already (no need to fetch its content)."""
        with self.lock:
            settled = self.chain.is_settled(task.task_id)
        return not settled and not self.tasks.known(task.task_id)

    def add_task(self, task: ShapleyTask, content: bytes) -> bool:
        """Accept a server-signed Shapley task with its content; False if already known (or settled)."""
        if not isinstance(task, ShapleyTask):
            raise InvalidInput("add_task needs a ShapleyTask")
        task.verify_signature()
        if sha256_hex(content) != task.content_hash:
            raise InvalidInput("content does not match the task's content_hash")
        if not self.wants_task(task) or not self.tasks.claim(task.task_id):
            return False
        self.tasks.accept(task, content)  # builds the engine (a moment), outside the node's lock
        with self.lock:
            for tx in task.funding:
                try:
                    self.mempool.add(tx, self.chain.head_state)
                except FedcoinError as exc:  # already confirmed, or pending
                    log.debug("funding %s of task %s not pooled: %s", tx.txid[:12], task.task_id, exc)
            self._wake.notify_all()
        return True

    def receive_report(self, message: SignedMessage) -> None:
        report = PoSapReport.open(message)
        rep = Report(tuple(report.shapley), report.iterations)
        with self.lock:
            w = self.work
            if w is not None and w.task.task_id == report.task_id and w.head == report.prev_hash:
                w.posap.receive(message.sender, rep)
                return
            bucket = self._early_reports.setdefault((report.task_id, report.prev_hash), {})
            old = bucket.get(message.sender)
            if old is None or rep.iterations >= old.iterations:
                bucket[message.sender] = rep
            while len(self._early_reports) > MAX_EARLY_REPORTS:
                self._early_reports.pop(next(iter(self._early_reports)))

    def receive_block(self, block: Block) -> AddResult:
        """VerifyBlock (with this node's local S̄ when it works on the same task) and append."""
        with self.lock:
            local = None
            w = self.work
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
        self.tasks.evict(self.chain.is_settled)
        w = self.work
        if w is not None and w.head != self.chain.head:
            self.work = None
        self._wake.notify_all()

    # --- the PoSap worker -------------------------------------------------------
    def _start_work(self) -> Work | None:
        task = self.tasks.next_unsettled(self.chain.is_settled)
        if task is None:
            return None
        posap = PoSapMiner(
            miner=self.identity.account,
            task_id=task.task_id,
            prev_hash=self.chain.head,
            n_players=task.n_players,
            marginals=self.tasks.marginals(task),
            difficulty=self.chain.next_difficulty(),
            p=self.chain.params.p,
            min_peers=self.min_peers,
        )
        for peer, rep in self._early_reports.pop((task.task_id, self.chain.head), {}).items():
            posap.receive(peer, rep)
        log.info("mining task %s on head %s (D=%g)", task.task_id, self.chain.head[:12], posap.difficulty)
        return Work(task, self.chain.head, posap)

    def _drop_task(self, w: Work, why: str) -> None:
        log.error("dropping task %s: %s", w.task.task_id, why)
        with self.lock:
            self.tasks.drop(w.task.task_id)
            if self.work is w:
                self.work = None

    def run(self, stop: threading.Event) -> None:
        """The mining loop; returns when ``stop`` is set."""
        while not stop.is_set():
            with self.lock:
                if self.work is None:
                    try:
                        self.work = self._start_work()
                    except FedcoinError as exc:
                        log.error("cannot start PoSap work: %s", exc)
                        self._wake.wait(timeout=0.5)
                        continue
                w = self.work
                if w is None:
                    self._wake.wait(timeout=0.5)
                    continue
            try:
                report = w.posap.step(self.batch)  # the expensive part, outside the lock
            except Exception as exc:  # a broken task must not kill the miner
                log.exception("PoSap step failed on task %s", w.task.task_id)
                self._drop_task(w, f"{type(exc).__name__}: {exc}")
                continue
            self.stats["iterations"] += self.batch
            self._guarded(self._maybe_report, w, report)
            block = self._try_win(w)
            if block is not None:
                self._guarded(self.broadcast_block, block)

    @staticmethod
    def _guarded(send: Callable[..., None], *args: Any) -> None:
        """A transport that fails must not stop the mining."""
        try:
            send(*args)
        except Exception:
            log.exception("broadcast failed")

    def _maybe_report(self, w: Work, report: Report) -> None:
        now = time.time()
        if now - w.last_broadcast >= self.report_interval:
            w.last_broadcast = now
            payload = PoSapReport(
                task_id=w.task.task_id, prev_hash=w.head, shapley=list(report.shapley), iterations=report.iterations
            )
            self.broadcast_report(payload.sign(self.identity))

    def _try_win(self, w: Work) -> Block | None:
        """Line 17: if this miner's S is within D of S̄, build, append and return its block."""
        with self.lock:
            if self.work is not w or not w.posap.is_winner() or self.chain.head != w.head:
                return None
            avg = w.posap.network_average()
            try:
                block = build_block(
                    self.chain,
                    task=w.task,
                    winner=self.identity,
                    s_winner=list(w.posap.shapley),
                    s_avg=[] if avg is None else list(avg),
                    iterations=w.posap.iterations,
                    transactions=self.mempool.pending(),
                )
                self.chain.add_block(block)
            except InvalidBlock as exc:
                log.error("own block on task %s rejected: %s", w.task.task_id, exc)
                return None
            self.stats["blocks_won"] += 1
            log.info("won task %s at height %d after %d iterations", w.task.task_id, block.height, w.posap.iterations)
            self._after_head_change()
            return block
