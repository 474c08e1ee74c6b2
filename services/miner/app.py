"""Miner service: PoSap mining, gossip of reports and blocks, the chain and balances over HTTP.

Routes only: the node, its queries, gossip and sync are
:class:`fedcoin.node.miner_host.MinerHost`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Query
from fastapi.responses import HTMLResponse

from fedcoin.api import (
    AccountBalance,
    Balances,
    BlockAccepted,
    BlockSummary,
    ChainHead,
    Health,
    MinerStatus,
    MinerTask,
    MinerTaskSummary,
    TransactionAccepted,
    TransactionStatus,
)
from fedcoin.chain.blocks import Block
from fedcoin.errors import InvalidInput, NotFound
from fedcoin.ledger.mempool import MAX_PENDING
from fedcoin.node import explorer
from fedcoin.node.miner_host import MinerHost
from fedcoin.node.runtime import start_node
from fedcoin.node.settings import MinerSettings, load

from ..common import MiB, service_app, service_doc

__doc__ = service_doc(__doc__, MinerSettings)
Json = dict[str, Any]
BLOCK_BODY_LIMIT = 24 * MiB


def _found(value: Json | None, what: str) -> Json:
    if value is None:
        raise NotFound(f"unknown {what}")
    return value


def create_app() -> FastAPI:
    settings = load(MinerSettings)
    host = MinerHost(settings, start_node(settings))
    q = host.queries

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await host.start()
        try:
            yield
        finally:
            await host.stop()

    app = service_app(
        "FedCoin miner",
        __doc__,
        metrics=host.node.metrics,
        lifespan=lifespan,
        body_limits={
            "POST /blocks": BLOCK_BODY_LIMIT,  # a block carries its work log: 8·K bytes per iteration
            "POST /tasks": 32 * MiB,  # content_b64, for small tasks; larger ones name a content_uri
            "POST /fraud-proofs": 1 * MiB,
        },
    )
    app.state.host = host

    # --- the explorer (HTML; fedcoin.node.explorer) -------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def explorer_chain() -> HTMLResponse:
        heads = await asyncio.gather(*(host.http.get_json(f"{p}/chain/head", retries=0) for p in host.peers))
        network = list(zip(host.peers, heads, strict=True))
        return HTMLResponse(explorer.chain_page(q.head(), q.summary(), q.race(), network))

    @app.get("/explorer/blocks/{height}", response_class=HTMLResponse, include_in_schema=False)
    def explorer_block(height: str) -> HTMLResponse:
        if not height.isdigit():
            return HTMLResponse(explorer.error_page(400, f"not a block height: {height[:80]!r}"), 400)
        block = q.block_at(int(height))
        if block is None:
            return HTMLResponse(explorer.error_page(404, f"no block at height {int(height)} on this chain"), 404)
        return HTMLResponse(explorer.block_page({**block, "hash": Block.from_dict(block).hash}))

    @app.get("/explorer/accounts/{account}", response_class=HTMLResponse, include_in_schema=False)
    def explorer_account(account: str) -> HTMLResponse:
        try:
            balance, history = q.balance(account), q.history(account)
        except InvalidInput as exc:
            return HTMLResponse(explorer.error_page(400, f"not an account: {exc}"), 400)
        return HTMLResponse(explorer.account_page(balance, history))

    @app.get("/race")
    def race() -> Json:
        """The race this miner is in: each miner's latest (S, iterations) and its distance to S̄ against D."""
        return q.race()

    @app.get("/health", response_model=Health)
    def health() -> Json:
        return q.health()

    @app.get("/status", response_model=MinerStatus)
    def status() -> Json:
        return {**q.status(), "peers": host.peers}

    @app.get("/peers")
    def peers() -> list[str]:
        return host.peers

    @app.get("/chain/head", response_model=ChainHead)
    def chain_head() -> Json:
        return q.head()

    @app.get("/chain", response_model=list[BlockSummary])
    def chain_summary() -> list[Json]:
        return q.summary()

    @app.get("/blocks")
    def blocks_range(start: int = Query(0, ge=0), end: int | None = Query(None, ge=0)) -> list[Json]:
        return q.blocks(start, end)

    @app.get("/blocks/{height}")
    def block_at(height: int) -> Json:
        return _found(q.block_at(height), f"block at height {height}")

    @app.get("/blocks/hash/{block_hash}")
    def block_by_hash(block_hash: str) -> Json:
        return _found(q.block_by_hash(block_hash), "block")

    @app.post("/blocks", response_model=BlockAccepted)
    async def post_block(body: Json) -> Json:
        return await host.deliver_block(body)

    @app.post("/transactions", status_code=202, response_model=TransactionAccepted)
    async def post_transaction(body: Json) -> Json:
        return await host.deliver_transaction(body)

    @app.post("/transactions/batch")
    async def post_transactions(body: list[Json]) -> Json:
        """A peer's gossip: up to 200 transactions, each judged on its own (new, known or refused)."""
        return await host.deliver_transactions(body)

    @app.get("/transactions/pending")
    def pending(offset: int = Query(0, ge=0), limit: int = Query(MAX_PENDING, ge=1, le=MAX_PENDING)) -> list[Json]:
        """Pending transactions by sender and nonce, ``limit`` of them from ``offset`` (all by default:
        the mempool holds at most 10,000)."""
        return q.pending(offset, limit)

    @app.get("/transactions/{txid}", response_model=TransactionStatus)
    def transaction(txid: str) -> Json:
        return _found(q.transaction(txid), "transaction")

    @app.get("/balances", response_model=Balances)
    def balances() -> Json:
        return q.balances()

    @app.get("/balances/{account}", response_model=AccountBalance)
    def balance(account: str) -> Json:
        return q.balance(account)

    @app.post("/tasks", status_code=202)
    async def post_task(body: Json) -> Json:
        """A server-signed Shapley task; its content is fetched from ``content_uri`` unless given as ``content_b64``."""
        return await host.deliver_task(body)

    @app.get("/tasks", response_model=list[MinerTaskSummary])
    def tasks() -> list[Json]:
        return q.tasks()

    @app.get("/tasks/{task_id}", response_model=MinerTask)
    def task(task_id: str) -> Json:
        return _found(q.task(task_id), "task")

    @app.post("/reports", status_code=202)
    def post_report(body: Json) -> dict[str, str]:
        """A peer's signed PoSap report (admitted miner, fresh, within the rate cap)."""
        return host.deliver_report(body)

    @app.post("/fraud-proofs")
    async def post_fraud_proof(body: Json) -> Json:
        """A fraud proof: a block's logged leaf and its Merkle path; checked by recomputing that leaf."""
        return await host.deliver_fraud_proof(body)

    return app
