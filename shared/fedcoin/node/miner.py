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

A report is checked at the door (:meth:`MinerNode.receive_report`): signed by
an admitted miner other than this one, fresh, and claiming no more iterations
than the chain's rate cap allows since its task and head existed; the block
that wins carries these signed reports. Every block is verified with this
node's :class:`~fedcoin.consensus.proofs.WorkVerifier` (sampled leaves
recomputed on the task's engine); a block with a bad leaf is rejected and its
fraud proof kept and handed to ``broadcast_proof``; a peer's proof is checked
and applied by :meth:`MinerNode.receive_fraud_proof`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from fedcoin.chain.blocks import Block
from fedcoin.chain.clock import now_ms
from fedcoin.chain.encoding import sha256_hex
from fedcoin.chain.identity import Identity
from fedcoin.chain.reports import ShapleyReport
from fedcoin.chain.tasks import ShapleyTask
from fedcoin.chain.transactions import Transaction
from fedcoin.consensus.proofs import BadLeaf, FraudProof, WorkVerifier
from fedcoin.consensus.rules import max_report_iterations
from fedcoin.errors import Conflict, FedcoinError, InvalidBlock, InvalidInput, Rejected, Unavailable
from fedcoin.ledger.chain import AddResult, Chain, tie_key
from fedcoin.ledger.mempool import Mempool
from fedcoin.ledger.store import connect

from .blobs import BlobStore
from .docstore import DocStore
from .logs import event
from .metrics import Metric, MinerMetrics, counter, gauge
from .taskbook import MarginalFn, MarginalsFactory, TaskBook
from .worker import PoSapWorker, Work

log = logging.getLogger("fedcoin.miner")
MAX_EARLY_REPORTS = 64
MAX_OPEN_TASKS = 256  # unsettled tasks a miner holds at once
REPORT_MAX_SKEW_MS = 10 * 60 * 1000


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
        verify_samples: int = 16,
        broadcast_report: Callable[[ShapleyReport], None] | None = None,
        broadcast_block: Callable[[Block], None] | None = None,
        broadcast_proof: Callable[[FraudProof], None] | None = None,
    ) -> None:
        self.identity = identity
        self.chain = chain
        self.data_dir = Path(data_dir)
        self.metrics = MinerMetrics()
        self.metrics.levels(self._levels)
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
        self.broadcast_proof = broadcast_proof or (lambda p: None)
        self.lock = threading.RLock()
        self.wake = threading.Condition(self.lock)
        self.work: Work | None = None
        self._early_reports: dict[tuple[str, str], dict[str, ShapleyReport]] = {}
        self.stats = {"blocks_won": 0, "iterations": 0, "fraud_proofs": 0}
        chain.verifier = WorkVerifier(self._task_marginals, samples=verify_samples, identity=identity)
        self.mempool.prune(self.chain.head_state)

    def _task_marginals(self, task: ShapleyTask) -> MarginalFn:
        """The marginal function of a task this node holds (Unavailable until its content arrived)."""
        known = self.tasks.get(task.task_id)
        if known is None or known.task_hash != task.task_hash:
            raise Unavailable(f"task {task.task_id} is not held here yet; fetch its content first")
        return self.tasks.marginals(known)

    def close(self) -> None:
        with self.lock:
            self.chain.close()
            self._conn.close()

    # --- inputs ---------------------------------------------------------------
    def add_transaction(self, tx: Transaction) -> bool:
        with self.lock:
            return self.mempool.add(tx, self.chain.head_state)

    def check_origin(self, task: ShapleyTask) -> None:
        """A task is taken (and its content fetched) only from an admitted server, signed by it."""
        params = self.chain.params
        if params.verified and task.server not in params.servers:
            raise InvalidInput(f"task signed by {task.server[:16]}..., not an admitted server")
        task.verify_signature()

    def wants_task(self, task: ShapleyTask) -> bool:
        """False when ``task`` is known, being delivered, or settled already (no need to fetch its content)."""
        with self.lock:
            settled = self.chain.is_settled(task)
        return not settled and not self.tasks.known(task.task_id)

    def add_task(self, task: ShapleyTask, content: bytes) -> bool:
        """Accept a server-signed Shapley task with its content; False if already known (or settled)."""
        if not isinstance(task, ShapleyTask):
            raise InvalidInput("add_task needs a ShapleyTask")
        self.check_origin(task)
        if sha256_hex(content) != task.content_hash:
            raise InvalidInput("content does not match the task's content_hash")
        with self.lock:
            settled = self.chain.is_settled(task)
        if settled or not self.tasks.claim(task.task_id):  # claim() is the authoritative "known" check
            return False
        with self.lock:
            waiting = sum(1 for t in self.tasks.all() if not self.chain.is_settled(t))
        if waiting >= MAX_OPEN_TASKS:
            self.tasks.release(task.task_id)
            raise Conflict(f"{waiting} tasks are waiting to be mined here already; retry later")
        self.tasks.accept(task, content)  # builds the engine (a moment), outside the node's lock
        with self.lock:
            for tx in task.funding:
                try:
                    self.mempool.add(tx, self.chain.head_state)
                except FedcoinError as exc:  # already confirmed, or pending
                    log.debug("funding %s of task %s not pooled: %s", tx.txid[:12], task.task_id, exc)
            self.wake.notify_all()
        return True

    def receive_report(self, report: ShapleyReport, *, now: int | None = None) -> None:
        """A peer's signed PoSap report: checked here (InvalidInput/InvalidSignature), then kept for the
        work on its (task, head), or until this node starts that work."""
        try:
            self._receive_report(report, now=now)
        except FedcoinError:
            self.metrics.reports.labels("rejected").inc()
            raise
        self.metrics.reports.labels("accepted").inc()

    def _receive_report(self, report: ShapleyReport, *, now: int | None) -> None:
        if not isinstance(report, ShapleyReport):
            raise InvalidInput("receive_report needs a ShapleyReport")
        params = self.chain.params
        if report.miner == self.identity.account:
            raise InvalidInput("a report signed with this node's own key")
        if params.verified and report.miner not in params.miners:
            raise InvalidInput(f"report of {report.miner[:16]}..., not an admitted miner")
        current = now_ms() if now is None else now
        if abs(current - report.timestamp) > REPORT_MAX_SKEW_MS:
            raise InvalidInput(f"report timestamp is {abs(current - report.timestamp)} ms from this node's clock")
        report.verify_signature()
        with self.lock:
            parent = self.chain.get_light(report.prev_hash)
            w = self.work  # reports arrive several times a second: the task at work needs no store read
            task = w.task if w is not None and w.task.task_id == report.task_id else self.tasks.get(report.task_id)
            if parent is not None and task is not None:
                if report.iterations > max_report_iterations(params, task, parent, report.timestamp):
                    raise InvalidInput(
                        f"report claims {report.iterations} iterations, more than {params.max_report_rate:g}/s allows"
                    )
                if len(report.shapley) != task.n_players:
                    raise InvalidInput(f"report has {len(report.shapley)} values, the task {task.n_players} clients")
            if w is not None and w.task.task_id == report.task_id and w.head == report.prev_hash:
                w.posap.receive(report.miner, report)
                return
            bucket = self._early_reports.setdefault((report.task_id, report.prev_hash), {})
            old = bucket.get(report.miner)
            if old is None or report.iterations >= old.iterations:
                bucket[report.miner] = report
            while len(self._early_reports) > MAX_EARLY_REPORTS:
                self._early_reports.pop(next(iter(self._early_reports)))

    def receive_block(self, block: Block) -> AddResult:
        """VerifyBlock (with this node's local S̄ when it works on the same task) and append.

        The sampled leaves are recomputed before the node's lock is taken (the verifier remembers
        the blocks it passed); a bad leaf raises :class:`~fedcoin.consensus.proofs.BadLeaf` after
        its proof is kept and broadcast."""
        t0 = time.perf_counter()
        try:
            if isinstance(block, Block) and block.body.task is not None and self._may_beat_head([block]):
                self._precheck_work(block)
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
        except Rejected as exc:
            self.metrics.block("rejected", str(exc.reason), seconds=time.perf_counter() - t0)
            log.info(
                "block %s rejected: %s",
                getattr(getattr(block, "header", None), "height", "?"),
                exc,
                extra=event("block-rejected", reason=str(exc.reason)),
            )
            raise
        seconds = time.perf_counter() - t0
        self.metrics.block(result.status, reorg_depth=result.reorg_depth, seconds=seconds)
        if result.status != "known":
            log.info(
                "block %d accepted (%s), head at height %d",
                block.height,
                result.status,
                result.height,
                extra=event(
                    "block-accepted", height=block.height, status=result.status, reorg_depth=result.reorg_depth
                ),
            )
        return result

    def _levels(self) -> list[Metric]:
        with self.lock:
            w = self.work
            rate = None
            if w is not None:
                elapsed = time.time() - w.started
                rate = w.posap.iterations / elapsed if elapsed > 0 else None
            return [
                gauge("fedcoin_chain_height", "height of the main chain's head", self.chain.height),
                gauge("fedcoin_mempool_transactions", "transactions pending in the mempool", len(self.mempool)),
                counter("fedcoin_posap_iterations", "PoSap iterations mined", self.stats["iterations"]),
                counter("fedcoin_blocks_won", "blocks this miner won", self.stats["blocks_won"]),
                counter("fedcoin_fraud_proofs", "fraud proofs received", self.stats["fraud_proofs"]),
                gauge("fedcoin_engines_cached", "Shapley engines held in memory", len(self.tasks.cached)),
                gauge(
                    "fedcoin_posap_iterations_per_second",
                    "the current race's iterations per second (0 when not mining)",
                    rate or 0.0,
                ),
            ]

    def _may_beat_head(self, blocks: Sequence[Block]) -> bool:
        """False when the new blocks of ``blocks`` (a linked run) attach to a known block and bring less
        work than the head's: fork choice refuses them (stale-block) without their leaves, so recomputing
        them (and rebuilding a settled task's engine for it) is wasted."""
        with self.lock:
            chain = self.chain
            new = [b for b in blocks if isinstance(b, Block) and b.hash not in chain]
            if not new:
                return False
            base = chain.work_at(new[0].header.prev_hash)
            if base is None:
                return True
            work = base + sum(chain.block_work(b) for b in new)
            return work > chain.work or (work == chain.work and tie_key(new[-1].header) < chain.tie)

    def _precheck_work(self, block: Block) -> None:
        verifier = self.chain.verifier
        if verifier is None or not self.chain.params.verified or block.body.work is None:
            return
        if self.chain.is_condemned(block.hash) or self.chain.is_condemned(block.header.prev_hash):
            return  # refused as fraudulent-block under the lock, without recomputing
        try:
            verifier.verify(block, self.chain.params)
        except BadLeaf as exc:
            self._proof_found(exc.proof)
            raise
        except (InvalidInput, InvalidBlock):
            return  # a malformed log: VerifyBlock rejects it with its reason under the lock

    def _proof_found(self, proof: FraudProof) -> None:
        log.warning("fraud proof: block %s logs a bad leaf %d", proof.block_hash[:12], proof.index)
        with self.lock:
            self.stats["fraud_proofs"] += 1
            try:
                self.chain.apply_fraud_proof(proof)
            except FedcoinError as exc:
                log.error("own fraud proof for %s does not hold: %s", proof.block_hash[:12], exc)
                return
        try:
            self.broadcast_proof(proof)
        except Exception:
            log.exception("fraud proof broadcast failed")

    def add_chain(self, blocks: list[Block]) -> AddResult:
        """A run of blocks from a peer (sync); counted per run in ``fedcoin_blocks_total{outcome="sync-..."}``."""
        t0 = time.perf_counter()
        try:
            if isinstance(blocks, Sequence) and self._may_beat_head(blocks):
                for b in blocks:
                    if isinstance(b, Block) and b.body.task is not None and b.hash not in self.chain:
                        self._precheck_work(b)
            with self.lock:
                result = self.chain.add_chain(blocks)
                if result.status != "known":
                    self.after_head_change(result.abandoned)
        except Rejected as exc:
            self.metrics.block("sync-rejected", str(exc.reason))
            raise
        self.metrics.block(f"sync-{result.status}", reorg_depth=result.reorg_depth, seconds=time.perf_counter() - t0)
        return result

    def receive_fraud_proof(self, proof: FraudProof) -> AddResult:
        """A peer's fraud proof: checked with one recomputation (InvalidInput if it does not hold),
        then its block and everything built on it are condemned; the head moves if it was among them."""
        if not isinstance(proof, FraudProof):
            raise InvalidInput("receive_fraud_proof needs a FraudProof")
        with self.lock:
            known = self.chain.is_condemned(proof.block_hash)
        if known:
            return AddResult("known", self.chain.head, self.chain.height)
        self._task_marginals(proof.task)  # Unavailable before this node holds the task
        with self.lock:
            result = self.chain.apply_fraud_proof(proof)
            self.stats["fraud_proofs"] += 1
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
            if self.chain.is_settled(w.task) and self.chain.head_header.winner != self.identity.account:
                log.info(
                    "race for task %s lost after %d iterations",
                    w.task.task_id,
                    w.posap.iterations,
                    extra=event("race-lost", task_id=w.task.task_id, iterations=w.posap.iterations),
                )
            self.work = None
        self.wake.notify_all()

    # --- for the worker ------------------------------------------------------------
    def take_early_reports(self, task_id: str, head: str) -> dict[str, ShapleyReport]:
        """Reports that arrived for (task, head) before this node started that work (call under the lock)."""
        return self._early_reports.pop((task_id, head), {})

    def run(self, stop: threading.Event) -> None:
        """The mining loop (:class:`~fedcoin.node.worker.PoSapWorker`); returns when ``stop`` is set."""
        PoSapWorker(self).run(stop)
