"""A miner as a running process: the node, its worker thread, gossip, sync and HTTP transports.

:class:`MinerHost` wires a :class:`~fedcoin.node.miner.MinerNode` from
:class:`~fedcoin.node.settings.MinerSettings` and handles what arrives from the
network (``deliver_*``): parse, hand to the node, gossip what was new. The miner
service maps routes onto it; tests drive it in-process.
"""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Coroutine
from typing import Any

from fedcoin.chain.blocks import Block
from fedcoin.chain.genesis import GenesisConfig
from fedcoin.chain.identity import Identity
from fedcoin.chain.reports import ShapleyReport
from fedcoin.chain.tasks import ShapleyTask
from fedcoin.chain.transactions import Transaction
from fedcoin.consensus.proofs import FraudProof
from fedcoin.errors import FedcoinError, InvalidInput, OrphanBlock
from fedcoin.ledger.chain import Chain
from fedcoin.valuation.problem import resolve_device

from .gossip import BATCH as MAX_BATCH
from .gossip import Gossip
from .miner import MinerNode
from .peers import GOSSIP_TIMEOUT, HttpTransport, Transport
from .queries import MinerQueries
from .settings import MinerSettings
from .sync import ChainSync, ensure_task
from .taskbook import MarginalsFactory, engine_factory


def default_batch(device: str | None) -> int:
    """PoSap iterations per step when ``FEDCOIN_BATCH`` is unset: 64 where the engine runs on CUDA
    (batched, :meth:`~fedcoin.valuation.engine.ShapleyEngine.marginals_many`), else 4."""
    return 64 if resolve_device(device).type == "cuda" else 4


class MinerHost:
    def __init__(
        self,
        settings: MinerSettings,
        identity: Identity,
        *,
        factory: MarginalsFactory | None = None,
        transport: Transport | None = None,
        gossip_transport: Transport | None = None,
        sync_transport: Transport | None = None,
    ) -> None:
        self.settings = settings
        self.peers = settings.other_peers
        self._owned: list[HttpTransport] = []
        self.http = transport or self._own(HttpTransport())
        self.gossip = Gossip(self.peers, self.http, gossip_transport or self._own(HttpTransport(GOSSIP_TIMEOUT)))
        chain = Chain.open(settings.state_dir / "chain.sqlite", GenesisConfig.load(settings.genesis))
        self.node = MinerNode(
            identity,
            chain,
            settings.state_dir,
            factory or engine_factory(settings.device),
            batch=settings.batch or default_batch(settings.device),
            report_interval=settings.report_interval,
            verify_samples=settings.verify_samples,
            broadcast_report=self.gossip.send_report,
            broadcast_block=self.gossip.send_block,
            broadcast_proof=self.gossip.send_proof,
        )
        self.queries = MinerQueries(self.node)
        self.sync = ChainSync(self.node, self.peers, sync_transport or self._own(HttpTransport()))
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._syncer: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()

    def _own(self, transport: HttpTransport) -> HttpTransport:
        self._owned.append(transport)
        return transport

    # --- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        self.gossip.start(asyncio.get_running_loop())
        self._worker = threading.Thread(target=self.node.run, args=(self._stop,), name="posap", daemon=True)
        self._worker.start()
        self._syncer = asyncio.create_task(self.sync.run(self.settings.sync_interval))

    async def stop(self) -> None:
        if self._syncer is not None:
            self._syncer.cancel()
        self._stop.set()
        if self._worker is not None:
            await asyncio.to_thread(self._worker.join, 10)
        self.gossip.stop()
        for t in self._owned:
            await t.aclose()
        self.node.close()

    def _later(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- what arrives -----------------------------------------------------------------
    async def fetch_task(self, task: ShapleyTask) -> None:
        await ensure_task(self.node, self.http, task)

    async def deliver_block(self, body: dict[str, Any]) -> dict[str, Any]:
        block = Block.from_dict(body)
        chain = self.node.chain
        if block.body.task is not None and block.hash not in chain and block.header.prev_hash in chain:
            await self.fetch_task(block.body.task)  # (an orphan is answered as one, without a fetch)
        try:
            result = await asyncio.to_thread(self.node.receive_block, block)
        except OrphanBlock:
            self._later(self.sync.sync_once())  # fetch the missing ancestors
            raise
        if result.status != "known":
            self._later(self.gossip.broadcast("/blocks", block.to_dict()))
        return {
            "status": result.status,
            "height": result.height,
            "head": result.head,
            "reorg_depth": result.reorg_depth,
        }

    async def deliver_transaction(self, body: dict[str, Any]) -> dict[str, Any]:
        tx = Transaction.from_dict(body)
        added = await asyncio.to_thread(self.node.add_transaction, tx)
        if added:
            self.gossip.send_transaction(tx.to_dict())
        return {"txid": tx.txid, "status": "pending", "new": added}

    async def deliver_transactions(self, body: Any) -> dict[str, Any]:
        """A batch of transactions (a peer's gossip): each judged on its own; the new ones go on to the
        other peers. Answers how many were new, known, and refused (with the first reasons)."""
        if not isinstance(body, list) or len(body) > MAX_BATCH:
            raise InvalidInput(f"a batch is a list of at most {MAX_BATCH} transactions")
        new, known, refused = await asyncio.to_thread(self._add_batch, body)
        for tx in new:
            self.gossip.send_transaction(tx.to_dict())
        return {"new": len(new), "known": known, "refused": len(refused), "reasons": refused[:5]}

    def _add_batch(self, body: list[Any]) -> tuple[list[Transaction], int, list[str]]:
        new: list[Transaction] = []
        known, refused = 0, []
        for item in body:
            try:
                tx = Transaction.from_dict(item)
                if self.node.add_transaction(tx):
                    new.append(tx)
                else:
                    known += 1
            except FedcoinError as exc:
                refused.append(str(exc)[:200])
        return new, known, refused

    async def deliver_task(self, body: dict[str, Any]) -> dict[str, Any]:
        """A server-signed Shapley task; its content comes from ``content_uri`` unless given as ``content_b64``."""
        body = dict(body)
        content_b64 = body.pop("content_b64", None)
        task = ShapleyTask.from_dict(body)
        self.node.check_origin(task)  # before any content is fetched from the address it names
        if not self.node.wants_task(task):
            return {"task_id": task.task_id, "status": "known"}
        if content_b64 is not None:
            try:
                content = base64.b64decode(content_b64, validate=True)
            except (ValueError, TypeError) as exc:
                raise InvalidInput(f"content_b64 is not base64: {exc}") from exc
        else:
            content = await self.http.get_bytes(task.content_uri)
        added = await asyncio.to_thread(self.node.add_task, task, content)
        if added:
            self._later(self.gossip.broadcast("/tasks", task.to_dict()))
        return {"task_id": task.task_id, "status": "accepted" if added else "known"}

    def deliver_report(self, body: dict[str, Any]) -> dict[str, str]:
        self.node.receive_report(ShapleyReport.from_dict(body))
        return {"status": "accepted"}

    async def deliver_fraud_proof(self, body: dict[str, Any]) -> dict[str, Any]:
        """A peer's fraud proof: checked (one leaf recomputed), applied, and relayed when new."""
        proof = FraudProof.from_dict(body)
        await self.fetch_task(proof.task)
        new = not self.node.chain.is_condemned(proof.block_hash)
        result = await asyncio.to_thread(self.node.receive_fraud_proof, proof)
        if new:
            self._later(self.gossip.broadcast("/fraud-proofs", proof.to_dict()))
        return {"status": result.status, "condemned": proof.block_hash, "head": result.head, "height": result.height}
