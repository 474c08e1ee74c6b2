"""The PoSap worker: a miner's loop over Algorithm 1, in its own thread.

The worker takes the oldest unsettled task of its :class:`~fedcoin.node.miner.MinerNode`,
runs iterations from the current head (lines 4–12) outside the node's lock,
broadcasts its report every ``report_interval`` seconds (line 13) and, when its
S is within D of the network average S̄ (line 17), builds the block (line 18)
from its work log and the peers' signed reports, appends it and hands it to
``broadcast_block``. A task whose marginals fail is dropped; a task that cannot
be settled on the current head (its server cannot pay) is set aside until the
head moves; a broadcast that fails is logged; none of these stops the loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fedcoin.chain.blocks import Block
from fedcoin.chain.reports import make_report
from fedcoin.chain.tasks import ShapleyTask
from fedcoin.consensus.mining import build_block
from fedcoin.consensus.posap import PoSapMiner, Report, p_distance
from fedcoin.errors import FedcoinError, InvalidBlock

from .logs import event

if TYPE_CHECKING:
    from .miner import MinerNode

log = logging.getLogger("fedcoin.miner")


@dataclass
class Work:
    """This miner's PoSap run on one task from one head."""

    task: ShapleyTask
    head: str
    posap: PoSapMiner
    started: float = field(default_factory=time.time)
    last_broadcast: float = 0.0


class PoSapWorker:
    def __init__(self, node: MinerNode) -> None:
        self.node = node
        self._unpayable: set[tuple[str, str]] = set()  # (task id, head) whose settlement cannot apply

    def run(self, stop: threading.Event) -> None:
        """Mine until ``stop`` is set; no exception ends the loop (each is logged, then a short pause)."""
        while not stop.is_set():
            try:
                self._once()
            except Exception:
                log.exception("PoSap worker: unexpected failure; carrying on")
                stop.wait(0.5)

    def _once(self) -> None:
        node = self.node
        w = self._current()
        if w is None:
            return
        before = w.posap.iterations
        try:
            report = w.posap.step(node.batch)  # the expensive part, outside the lock
        except Exception as exc:  # a broken task must not kill the miner
            log.exception("PoSap step failed on task %s", w.task.task_id)
            self._drop_task(w, f"{type(exc).__name__}: {exc}")
            return
        node.stats["iterations"] += w.posap.iterations - before
        self._guarded(self._maybe_report, w, report)
        block = self._try_win(w)
        if block is not None:
            self._guarded(node.broadcast_block, block)
        elif w.posap.full:  # no more work fits a block: wait for S̄ to move, a block, or a new head
            if w.posap.iterations > before:  # it just filled up: say so once
                log.warning(
                    "work log full on task %s at %d iterations (D=%g); waiting for the network",
                    w.task.task_id,
                    w.posap.iterations,
                    w.posap.difficulty,
                )
            with node.lock:
                node.wake.wait(timeout=0.5)

    def _current(self) -> Work | None:
        """The work in progress, started on the oldest unsettled task if there is none; None after a wait."""
        node = self.node
        with node.lock:
            if node.work is None:
                try:
                    node.work = self._start_work()
                except FedcoinError as exc:
                    log.error("cannot start PoSap work: %s", exc)
            if node.work is None:
                node.wake.wait(timeout=0.5)
            return node.work

    def _start_work(self) -> Work | None:
        node, chain = self.node, self.node.chain
        head = chain.head
        self._unpayable = {k for k in self._unpayable if k[1] == head}
        task = node.tasks.next_unsettled(lambda t: chain.is_settled(t) or (t.task_id, head) in self._unpayable)
        if task is None:
            return None
        posap = PoSapMiner(
            miner=node.identity.account,
            task_id=task.task_id,
            prev_hash=chain.head,
            n_players=task.n_players,
            marginals=node.tasks.marginals(task),
            difficulty=chain.next_difficulty(),
            p=chain.params.p,
            min_peers=node.min_peers,
            sampler=chain.params.sampler,
        )
        for peer, rep in node.take_early_reports(task.task_id, chain.head).items():
            posap.receive(peer, rep)
        log.info("mining task %s on head %s (D=%g)", task.task_id, chain.head[:12], posap.difficulty)
        return Work(task, chain.head, posap)

    def _drop_task(self, w: Work, why: str) -> None:
        log.error("dropping task %s: %s", w.task.task_id, why)
        with self.node.lock:
            self.node.tasks.drop(w.task.task_id)
            if self.node.work is w:
                self.node.work = None

    @staticmethod
    def _guarded(send: Callable[..., None], *args: Any) -> None:
        """A transport that fails must not stop the mining."""
        try:
            send(*args)
        except Exception:
            log.exception("broadcast failed")

    def _maybe_report(self, w: Work, report: Report) -> None:
        now = time.time()
        if now - w.last_broadcast >= self.node.report_interval:
            w.last_broadcast = now
            signed = make_report(
                self.node.identity,
                task_id=w.task.task_id,
                prev_hash=w.head,
                shapley=list(report.shapley),
                iterations=report.iterations,
            )
            self.node.broadcast_report(signed)

    def _try_win(self, w: Work) -> Block | None:
        """Line 17: if this miner's S is within D of S̄, build, append and return its block."""
        node = self.node
        with node.lock:
            if node.work is not w or not w.posap.is_winner() or node.chain.head != w.head:
                return None
            reports = w.posap.signed_reports()
            if len(reports) < node.chain.params.min_reports:
                return None
            try:
                block = build_block(
                    node.chain,
                    task=w.task,
                    winner=node.identity,
                    leaves=w.posap.work_log(),
                    reports=reports,
                    transactions=node.mempool.pending(),
                )
                # the exact S and S̄ the block states may differ from the running ones in the last bits
                if p_distance(block.header.s_winner, block.header.s_avg, node.chain.params.p) > w.posap.difficulty:
                    return None
                if node.chain.verifier is not None:
                    node.chain.verifier.trust(block)  # its leaves are this node's own computation
                result = node.chain.add_block(block)
            except InvalidBlock as exc:
                log.error("own block on task %s rejected: %s", w.task.task_id, exc)
                if exc.reason == "bad-transaction":  # unpayable on this head: set aside until the head moves
                    self._unpayable.add((w.task.task_id, w.head))
                    node.work = None
                return None
            node.stats["blocks_won"] += 1
            node.metrics.block("mined", reorg_depth=result.reorg_depth)
            log.info(
                "won task %s at height %d after %d iterations",
                w.task.task_id,
                block.height,
                w.posap.iterations,
                extra=event("race-won", task_id=w.task.task_id, height=block.height, iterations=w.posap.iterations),
            )
            node.after_head_change(result.abandoned)
            return block
