"""FL server service: accepts paid training tasks, runs FedAvg with the clients and publishes a
Shapley task per round to the miners (Algorithm 3), one task at a time (Observation 1).

Routes only: the round loop is :class:`fedcoin.node.server.FLServer`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from fedcoin.api import Health, ServerInfo, ServerTask, ServerTaskSummary, TaskCancelled
from fedcoin.chain.genesis import GenesisConfig
from fedcoin.errors import InvalidInput, NotFound
from fedcoin.node import explorer
from fedcoin.node.messages import SignedMessage
from fedcoin.node.peers import HttpClientGateway, HttpMinerGateway
from fedcoin.node.runtime import start_node
from fedcoin.node.server import FLServer, load_validation
from fedcoin.node.settings import ServerSettings, load

from ..common import service_app, service_doc

__doc__ = service_doc(__doc__, ServerSettings)
Json = dict[str, Any]


def create_app() -> FastAPI:
    settings = load(ServerSettings)
    identity = start_node(settings)
    GenesisConfig.load(settings.genesis)  # fail fast on a malformed genesis
    http = httpx.Client()
    server = FLServer(
        identity,
        settings,
        HttpMinerGateway(settings.miners, http),
        HttpClientGateway(http),
        validation=lambda: load_validation(
            settings.dataset, settings.dataset_dir, settings.val_size, settings.val_seed
        ),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        worker = threading.Thread(target=server.run, args=(stop,), name="fl-server", daemon=True)
        worker.start()
        try:
            yield
        finally:
            stop.set()
            server.wake.set()
            worker.join(timeout=10)
            http.close()

    app = service_app("FedCoin FL server", __doc__, metrics=server.metrics, lifespan=lifespan)
    app.state.server = server

    def task_doc(task_id: str) -> Json:
        doc = server.task(task_id)
        if doc is None:
            raise NotFound(f"unknown task {task_id}")
        return doc

    # --- the explorer's task pages (HTML; fedcoin.node.explorer) ---------------------------------------
    miner_url = settings.miners[0] if settings.miners else ""

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/explorer/tasks")

    @app.get("/explorer/tasks", response_class=HTMLResponse, include_in_schema=False)
    def explorer_tasks() -> HTMLResponse:
        return HTMLResponse(explorer.tasks_page(server.tasks()))

    @app.get("/explorer/tasks/{task_id}", response_class=HTMLResponse, include_in_schema=False)
    def explorer_task(task_id: str) -> HTMLResponse:
        doc = server.task(task_id)
        if doc is None:
            return HTMLResponse(explorer.error_page(404, f"no training task {task_id[:80]!r}", role="server"), 404)
        return HTMLResponse(explorer.task_page(doc, miner_url))

    @app.get("/health", response_model=Health)
    def health() -> Json:
        return {"status": "ok", "role": "server", "account": identity.account}

    @app.get("/info", response_model=ServerInfo)
    def info() -> Json:
        return {"account": identity.account, "miners": settings.miners, "clients": len(server.registered_clients())}

    @app.post("/clients", status_code=201)
    def register(body: Json) -> Json:
        return server.register_client(SignedMessage.from_dict(body))

    @app.get("/clients")
    def clients() -> list[Json]:
        return server.registered_clients()

    @app.post("/tasks", status_code=202, response_model=ServerTask)
    def submit(body: Json) -> Json:
        """A requester's signed training request with its deposit transaction."""
        return server.submit(SignedMessage.from_dict(body))

    @app.post("/tasks/{task_id}/cancel", response_model=TaskCancelled)
    def cancel(task_id: str, body: Json) -> Json:
        """The requester's signed cancel request: no new round starts; the unspent budget is refunded."""
        msg = SignedMessage.from_dict(body)
        if msg.payload.get("task_id") != task_id:
            raise InvalidInput("the signed request names another task")
        doc = server.cancel(msg)
        return {"task_id": task_id, "status": doc["status"]}

    @app.get("/tasks", response_model=list[ServerTaskSummary])
    def tasks() -> list[Json]:
        return [{k: d[k] for k in ("task_id", "status", "budget", "rounds")} for d in server.tasks()]

    @app.get("/tasks/{task_id}", response_model=ServerTask)
    def task(task_id: str) -> Json:
        return task_doc(task_id)

    @app.get("/tasks/{task_id}/model")
    def model(task_id: str) -> Response:
        found = server.model(task_id)
        if found is None:
            raise NotFound(f"unknown task {task_id}")
        model_hash, data = found
        return Response(data, media_type="application/octet-stream", headers={"X-Content-SHA256": model_hash})

    @app.get("/blobs/{content_hash}")
    def blob(content_hash: str) -> Response:
        data = server.blobs.get(content_hash)
        if data is None:
            raise NotFound("unknown content")
        return Response(data, media_type="application/octet-stream")

    return app
