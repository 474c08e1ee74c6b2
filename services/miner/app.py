"""Miner service: PoSap mining, gossip of reports and blocks, chain and balances over HTTP.

Environment: FEDCOIN_GENESIS (genesis.json), FEDCOIN_DATA_DIR (node state),
FEDCOIN_KEY (key file; created if absent), FEDCOIN_PEERS (comma-separated
base URLs of the other miners), FEDCOIN_DEVICE (torch device; default CUDA
when present), FEDCOIN_SYNC_INTERVAL (seconds between head polls).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import threading
from typing import Any

import httpx
from fastapi import BackgroundTasks, FastAPI, HTTPException, Query
from fastapi.concurrency import run_in_threadpool

from fedcoin.blocks import Block
from fedcoin.encoding import sha256_hex
from fedcoin.errors import InvalidInput, OrphanBlock
from fedcoin.identity import is_account
from fedcoin.ledger import Chain
from fedcoin.messages import SignedMessage
from fedcoin.miner import MinerNode
from fedcoin.taskdata import engine_for, unpack_task_content
from fedcoin.tasks import ShapleyTask
from fedcoin.transactions import Transaction

from ..common import start_node, env, env_list, get_json, install_error_handlers, load_genesis, post_json

log = logging.getLogger("fedcoin.miner.service")
MAX_BLOCKS_PER_PAGE = 100


def _marginals_factory(device: str | None):
    def factory(task: ShapleyTask, content: bytes):
        parsed = unpack_task_content(content, task.content_hash, task.n_players)
        engine = engine_for(parsed, metric=task.metric, empty_value=task.empty_value, device=device)
        return engine.marginals

    return factory


def create_app() -> FastAPI:
    ddir, identity = start_node("miner")
    genesis = load_genesis()
    chain = Chain.open(ddir / "chain.sqlite", genesis)
    peers = env_list("PEERS")
    self_url = (env("ADVERTISE_URL", "") or "").rstrip("/")
    peers = [p for p in peers if p != self_url]
    state: dict[str, Any] = {}

    def _schedule(coro) -> None:  # noqa: ANN001
        loop = state.get("loop")
        if loop is not None:
            asyncio.run_coroutine_threadsafe(coro, loop)

    async def broadcast(path: str, body: Any, exclude: str | None = None) -> None:
        client: httpx.AsyncClient = state["http"]
        await asyncio.gather(*(post_json(client, f"{p}{path}", body, retries=1) for p in peers if p != exclude))

    # PoSap reports are superseded by the next one, so each peer gets only the latest, and at
    # most one report per peer is in flight: a slow peer can never build up a queue.
    latest_report: dict[str, Any] = {}
    reports_in_flight: set[str] = set()

    async def _drain_reports(peer: str) -> None:
        try:
            while (body := latest_report.pop(peer, None)) is not None:
                await post_json(state["gossip"], f"{peer}/reports", body, retries=0)
        finally:
            reports_in_flight.discard(peer)

    def _queue_report(body: dict) -> None:  # runs on the event loop
        for peer in peers:
            latest_report[peer] = body
            if peer not in reports_in_flight:
                reports_in_flight.add(peer)
                asyncio.ensure_future(_drain_reports(peer))

    def _send_report(msg: SignedMessage) -> None:  # called from the mining thread
        loop = state.get("loop")
        if loop is not None:
            loop.call_soon_threadsafe(_queue_report, msg.model_dump())

    node = MinerNode(
        identity,
        chain,
        ddir,
        _marginals_factory(env("DEVICE")),
        batch=int(env("BATCH", "4")),
        report_interval=float(env("REPORT_INTERVAL", "0.25")),
        broadcast_report=_send_report,
        broadcast_block=lambda block: _schedule(broadcast("/blocks", block.to_dict())),
    )

    async def sync_once() -> None:
        """Poll peers' heads; adopt any branch that beats ours (catch-up after a restart or a partition)."""
        client: httpx.AsyncClient = state["sync"]
        for peer in peers:
            head = await get_json(client, f"{peer}/chain/head")
            if not head:
                continue
            with node.lock:
                mine_h, mine = chain.height, chain.head
            if not (head["height"] > mine_h or (head["height"] == mine_h and head["hash"] < mine)):
                continue
            start = min(mine_h, head["height"])
            while start > 0:
                b = await get_json(client, f"{peer}/blocks/{start}")
                if b is None:
                    break
                if b["header"] and Block.from_dict(b).hash in chain:
                    break
                start -= 1
            blocks: list[Block] = []
            h = start + 1
            while h <= head["height"]:
                page = await get_json(client, f"{peer}/blocks?start={h}&end={min(h + MAX_BLOCKS_PER_PAGE - 1, head['height'])}")
                if not page:
                    break
                blocks.extend(Block.from_dict(x) for x in page)
                h += len(page)
            if blocks:
                try:
                    result = await run_in_threadpool(node.add_chain, blocks)
                    log.info("synced from %s: %s to height %d", peer, result.status, result.height)
                except Exception as exc:  # noqa: BLE001 - a bad peer must not stop the loop
                    log.warning("sync from %s failed: %s", peer, exc)

    async def sync_loop() -> None:
        interval = float(env("SYNC_INTERVAL", "2"))
        while True:
            with contextlib.suppress(Exception):
                await sync_once()
            await asyncio.sleep(interval)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state["loop"] = asyncio.get_running_loop()
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
        state["http"] = httpx.AsyncClient(limits=limits)  # blocks, transactions, tasks, content
        state["gossip"] = httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(3.0, connect=1.0))  # PoSap reports
        state["sync"] = httpx.AsyncClient(limits=limits)  # head polling and catch-up, never starved by gossip
        stop = threading.Event()
        worker = threading.Thread(target=node.run, args=(stop,), name="posap", daemon=True)
        worker.start()
        syncer = asyncio.create_task(sync_loop())
        try:
            yield
        finally:
            syncer.cancel()
            stop.set()
            worker.join(timeout=10)
            for name in ("http", "gossip", "sync"):
                await state[name].aclose()
            chain.close()

    app = FastAPI(title="FedCoin miner", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.state.node = node

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "role": "miner", "account": identity.account, "height": chain.height}

    @app.get("/status")
    def status() -> dict:
        return {**node.status(), "peers": peers}

    @app.get("/chain/head")
    def chain_head() -> dict:
        with node.lock:
            b = chain.head_block
            return {
                "height": b.height,
                "hash": b.hash,
                "timestamp": b.header.timestamp,
                "difficulty": b.header.difficulty,
                "next_difficulty": chain.next_difficulty(),
                "genesis": chain.genesis.hash,
            }

    @app.get("/chain")
    def chain_summary() -> list[dict]:
        with node.lock:
            return [
                {"height": b.height, "hash": b.hash, "winner": b.header.winner, "task_id": b.header.task_id,
                 "difficulty": b.header.difficulty, "iterations": b.header.iterations, "transactions": len(b.body.transactions)}
                for b in chain.main_chain()
            ]

    @app.get("/blocks")
    def blocks_range(start: int = Query(0, ge=0), end: int | None = Query(None, ge=0)) -> list[dict]:
        with node.lock:
            last = chain.height if end is None else min(end, chain.height)
            last = min(last, start + MAX_BLOCKS_PER_PAGE - 1)
            return [chain.block_at(h).to_dict() for h in range(start, last + 1)]

    @app.get("/blocks/{height}")
    def block_at(height: int) -> dict:
        with node.lock:
            if not 0 <= height <= chain.height:
                raise HTTPException(404, f"no block at height {height} (head is at {chain.height})")
            return chain.block_at(height).to_dict()

    @app.get("/blocks/hash/{block_hash}")
    def block_by_hash(block_hash: str) -> dict:
        with node.lock:
            b = chain.get(block_hash)
        if b is None:
            raise HTTPException(404, "unknown block")
        return b.to_dict()

    @app.post("/blocks")
    async def post_block(body: dict, background: BackgroundTasks) -> dict:
        block = Block.from_dict(body)
        try:
            result = await run_in_threadpool(node.receive_block, block)
        except OrphanBlock:
            background.add_task(sync_once)
            raise
        if result.status != "known":
            background.add_task(broadcast, "/blocks", block.to_dict())
        return {"status": result.status, "height": result.height, "head": result.head, "reorg_depth": result.reorg_depth}

    @app.post("/transactions", status_code=202)
    async def post_transaction(body: dict, background: BackgroundTasks) -> dict:
        tx = Transaction.from_dict(body)
        added = node.add_transaction(tx)
        if added:
            background.add_task(broadcast, "/transactions", tx.to_dict())
        return {"txid": tx.txid, "status": "pending", "new": added}

    @app.get("/transactions/pending")
    def pending() -> list[dict]:
        with node.lock:
            return [t.to_dict() for t in node.mempool.pending()]

    @app.get("/transactions/{txid}")
    def transaction(txid: str) -> dict:
        with node.lock:
            for b in reversed(chain.main_chain()):
                for tx in b.body.transactions:
                    if tx.txid == txid:
                        return {"txid": txid, "status": "confirmed", "height": b.height, "block_hash": b.hash, "transaction": tx.to_dict()}
            tx = node.mempool.get(txid)
            if tx is not None:
                return {"txid": txid, "status": "pending", "transaction": tx.to_dict()}
        raise HTTPException(404, "unknown transaction")

    @app.get("/balances")
    def balances() -> dict:
        with node.lock:
            return {"height": chain.height, "head": chain.head, "balances": chain.balances(), "supply": chain.supply}

    @app.get("/balances/{account}")
    def balance(account: str) -> dict:
        if not is_account(account):
            raise HTTPException(400, "account must be 64 lowercase hex characters (an Ed25519 public key)")
        with node.lock:
            return {"account": account, "balance": chain.balance(account), "nonce": chain.nonce(account), "height": chain.height}

    @app.post("/tasks", status_code=202)
    async def post_task(body: dict, background: BackgroundTasks) -> dict:
        """A server-signed Shapley task; the content is fetched from ``content_uri`` unless given as ``content_b64``."""
        content_b64 = body.pop("content_b64", None) if isinstance(body, dict) else None
        task = ShapleyTask.from_dict(body)
        task.verify_signature()
        if node.docs.get("tasks", task.task_id) is not None or chain.is_settled(task.task_id):
            return {"task_id": task.task_id, "status": "known"}
        if content_b64 is not None:
            try:
                content = base64.b64decode(content_b64, validate=True)
            except ValueError as exc:
                raise InvalidInput(f"content_b64 is not base64: {exc}") from exc
        else:
            if not task.content_uri.startswith(("http://", "https://")):
                raise InvalidInput("task has no http(s) content_uri and no content_b64")
            try:
                r = await state["http"].get(task.content_uri, timeout=httpx.Timeout(60.0, connect=5.0))
            except httpx.HTTPError as exc:
                raise InvalidInput(f"cannot fetch task content from {task.content_uri}: {exc}") from exc
            if r.status_code != 200:
                raise InvalidInput(f"content_uri answered {r.status_code}")
            content = r.content
        if sha256_hex(content) != task.content_hash:
            raise InvalidInput("content does not match the task's content_hash")
        added = await run_in_threadpool(node.add_task, task, content)
        if added:
            background.add_task(broadcast, "/tasks", task.to_dict())
        return {"task_id": task.task_id, "status": "accepted" if added else "known"}

    @app.get("/tasks")
    def tasks() -> list[dict]:
        return [{"task_id": d["task"]["task_id"], "settled": chain.is_settled(d["task"]["task_id"])} for d in node.tasks()]

    @app.get("/tasks/{task_id}")
    def task(task_id: str) -> dict:
        out = node.task_status(task_id)
        if out is None:
            raise HTTPException(404, "unknown task")
        return out

    @app.post("/reports", status_code=202)
    def post_report(body: dict) -> dict:
        node.receive_report(SignedMessage.from_dict(body))
        return {"status": "accepted"}

    @app.get("/peers")
    def get_peers() -> list[str]:
        return peers

    return app
