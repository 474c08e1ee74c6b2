"""Gossip: how a miner's blocks, transactions, tasks and PoSap reports reach its peers.

Blocks and tasks are broadcast to every peer with a few retries (a miner that
missed a block fetches it when it syncs). Transactions have no such second
path, so each peer has an outbox (:meth:`Gossip.send_transaction`): one sender
per peer posts them in order, up to ``BATCH`` at a time (``POST
/transactions/batch``), and keeps retrying (with backoff) while the peer is
unreachable or answers 5xx; an answer below 500 ends those transactions'
delivery to that peer (the peer judged each one). An outbox holds at most ``MAX_OUTBOX`` transactions (the
mempool's size); beyond that the oldest is dropped and logged. PoSap reports
are superseded by the next one, so each peer gets only the latest, and at most
one report per peer is in flight: a slow peer can never build up a queue. The mining thread hands reports and blocks
over with :meth:`Gossip.send_report` / :meth:`Gossip.send_block`, which are
thread-safe; the sending happens on the event loop given to :meth:`Gossip.start`.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
from collections.abc import Coroutine
from typing import Any

from fedcoin.chain.blocks import Block
from fedcoin.chain.reports import ShapleyReport
from fedcoin.consensus.proofs import FraudProof

from .peers import Transport

log = logging.getLogger("fedcoin.gossip")
MAX_OUTBOX = 10_000
RETRY_MAX_S = 5.0
BATCH = 200  # transactions per POST /transactions/batch (about 90 KB)


class Gossip:
    def __init__(self, peers: list[str], transport: Transport, report_transport: Transport | None = None) -> None:
        self.peers = list(peers)
        self.transport = transport
        self.report_transport = report_transport or transport
        self._loop: asyncio.AbstractEventLoop | None = None
        self._latest_report: dict[str, Any] = {}
        self._in_flight: set[str] = set()
        self._outbox: dict[str, collections.deque[dict[str, Any]]] = {p: collections.deque() for p in self.peers}
        self._sending: set[str] = set()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._submitted: set[concurrent.futures.Future[Any]] = set()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for peer, box in self._outbox.items():  # what was queued before the loop ran
            if box:
                loop.call_soon_threadsafe(self._kick, peer)

    def stop(self) -> None:
        self._loop = None
        for t in list(self._tasks):
            t.cancel()
        for f in list(self._submitted):
            f.cancel()

    async def broadcast(self, path: str, body: Any, exclude: str | None = None) -> list[int | None]:
        """POST ``body`` to ``path`` on every peer but ``exclude``; their status codes (None: unreachable)."""
        return list(
            await asyncio.gather(
                *(self.transport.post_json(f"{p}{path}", body, retries=1) for p in self.peers if p != exclude)
            )
        )

    # --- from the mining thread ----------------------------------------------------
    def _submit(self, coro: Coroutine[Any, Any, Any]) -> None:
        loop = self._loop
        if loop is None:
            coro.close()
            return
        fut = asyncio.run_coroutine_threadsafe(coro, loop)
        self._submitted.add(fut)
        fut.add_done_callback(self._submitted.discard)

    def send_block(self, block: Block) -> None:
        self._submit(self.broadcast("/blocks", block.to_dict()))

    def send_report(self, report: ShapleyReport) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._queue_report, report.to_dict())

    def send_proof(self, proof: FraudProof) -> None:
        self._submit(self.broadcast("/fraud-proofs", proof.to_dict()))

    # --- transactions: an outbox per peer ----------------------------------------------
    def send_transaction(self, tx: dict[str, Any], exclude: str | None = None) -> None:
        """Queue ``tx`` (a transaction dict) for every peer but ``exclude``; call on the event loop."""
        for peer in self.peers:
            if peer == exclude:
                continue
            box = self._outbox.setdefault(peer, collections.deque())
            if len(box) >= MAX_OUTBOX:
                box.popleft()
                log.warning("outbox to %s full: the oldest transaction was dropped", peer)
            box.append(tx)
            if self._loop is not None:
                self._kick(peer)

    def _kick(self, peer: str) -> None:
        if peer not in self._sending and self._outbox.get(peer):
            self._sending.add(peer)
            task = asyncio.ensure_future(self._drain_outbox(peer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def outbox_size(self) -> int:
        return sum(len(b) for b in self._outbox.values())

    async def _drain_outbox(self, peer: str) -> None:
        box = self._outbox[peer]
        delay = 0.25
        try:
            while box:
                batch = [box[i] for i in range(min(BATCH, len(box)))]
                try:
                    status = await self.transport.post_json(f"{peer}/transactions/batch", batch, retries=0)
                except Exception:  # a transport that fails unexpectedly: keep the batch, try again later
                    log.exception("gossip to %s failed", peer)
                    status = None
                if status is None or status >= 500:  # unreachable or failing: keep them, try again later
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                    continue
                for _ in batch:
                    box.popleft()
                delay = 0.25
        finally:
            self._sending.discard(peer)

    # --- on the event loop ----------------------------------------------------------
    def _queue_report(self, body: dict[str, Any]) -> None:
        for peer in self.peers:
            self._latest_report[peer] = body
            if peer not in self._in_flight:
                self._in_flight.add(peer)
                task = asyncio.ensure_future(self._drain_reports(peer))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _drain_reports(self, peer: str) -> None:
        try:
            while (body := self._latest_report.pop(peer, None)) is not None:
                await self.report_transport.post_json(f"{peer}/reports", body, retries=0)
        finally:
            self._in_flight.discard(peer)
