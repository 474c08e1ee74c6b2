"""A miner node's protocol logic, independent of the transport.

:class:`MinerNode` owns the node's chain (with its SQLite store), mempool and
Shapley tasks (:class:`~fedcoin.node.taskbook.TaskBook`), and runs Proof of
Shapley on the oldest unsettled task in a worker thread (:meth:`MinerNode.run`,
:class:`~fedcoin.node.worker.PoSapWorker`).
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
from collections.abc import Callable, Sequence
from pathlib import Path

from fedcoin.chain.blocks import Block
from fedcoin.chain.encoding import sha256_hex
from fedcoin.chain.identity import Identity
from fedcoin.chain.tasks import ShapleyTask
from fedcoin.chain.transactions import Transaction
from fedcoin.consensus.posap import Report
from fedcoin.errors import FedcoinError, InvalidInput
from fedcoin.ledger.chain import AddResult, Chain
from fedcoin.ledger.mempool import Mempool
from fedcoin.ledger.store import connect

from .blobs import BlobStore
from .docstore import DocStore
from .messages import PoSapReport, SignedMessage
from .taskbook import MarginalsFactory, TaskBook
from .worker import PoSapWorker, Work

log = logging.getLogger("fedcoin.miner")
MAX_EARLY_REPORTS = 64


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
        self.wake = threading.Condition(self.lock)
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
        with self.lock:
            settled = self.chain.is_settled(task.task_id)
        if settled or not self.tasks.claim(task.task_id):  # claim() is the authoritative "known" check
            return False
        self.tasks.accept(task, content)  # builds the engine (a moment), outside the node's lock
        with self.lock:
            for tx in task.funding:
                try:
                    self.mempool.add(tx, self.chain.head_state)
                except FedcoinError as exc:  # already confirmed, or pending
                    log.debug("funding %s of task %s not pooled: %s", tx.txid[:12], task.task_id, exc)
            self.wake.notify_all()
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
                self.after_head_change(result.abandoned)
            return result

    def add_chain(self, blocks: list[Block]) -> AddResult:
        with self.lock:
            result = self.chain.add_chain(blocks)
            if result.status != "known":
                self.after_head_change(result.abandoned)
            return result

    def after_head_change(self, abandoned: Sequence[Block] = ()) -> None:
        """After the head moved (call under the lock): the transactions of abandoned blocks return to the
        mempool, spent ones leave it, settled tasks' engines go, and work on an old head stops."""
        state = self.chain.head_state
        if abandoned:
            back = self.mempool.restore(abandoned, state)
            log.info("reorg abandoned %d block(s); %d transaction(s) back in the mempool", len(abandoned), len(back))
        self.mempool.prune(state)
        self.tasks.evict(self.chain.is_settled)
        w = self.work
        if w is not None and w.head != self.chain.head:
            self.work = None
        self.wake.notify_all()

    # --- for the worker ------------------------------------------------------------
    def take_early_reports(self, task_id: str, head: str) -> dict[str, Report]:
        """Reports that arrived for (task, head) before this node started that work (call under the lock)."""
        return self._early_reports.pop((task_id, head), {})

    def run(self, stop: threading.Event) -> None:
        """The mining loop (:class:`~fedcoin.node.worker.PoSapWorker`); returns when ``stop`` is set."""
        PoSapWorker(self).run(stop)
