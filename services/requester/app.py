"""Model requester service: creates training tasks with a budget V, pays V to the FL server as an
on-chain deposit, follows the task and fetches the final model.

Routes only: the logic is :class:`fedcoin.node.requester.Requester`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response

from fedcoin.api import Health, NewTask, RequesterTask, RequesterTaskSummary, TaskCancelled, TaskCreated
from fedcoin.ledger.store import connect
from fedcoin.node.docstore import DocStore
from fedcoin.node.peers import HttpTransport
from fedcoin.node.requester import Requester
from fedcoin.node.runtime import start_node
from fedcoin.node.settings import RequesterSettings, load

from ..common import service_app, service_doc

__doc__ = service_doc(__doc__, RequesterSettings)
Json = dict[str, Any]


def create_app() -> FastAPI:
    settings = load(RequesterSettings)
    identity = start_node(settings)
    http = HttpTransport()
    docs = DocStore(conn=connect(settings.state_dir / "requester.sqlite"))
    requester = Requester(identity, docs, settings.state_dir / "models", settings.server_url, settings.miners, http)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        job = None
        if settings.default_task:
            spec = NewTask(budget=settings.budget, rounds=settings.rounds, task_id=settings.default_task_id)
            job = asyncio.create_task(requester.submit_default(spec))
        try:
            yield
        finally:
            if job is not None:
                job.cancel()
            await http.aclose()

    app = service_app("FedCoin model requester", __doc__, metrics=requester.metrics, lifespan=lifespan)

    @app.get("/health", response_model=Health)
    def health() -> Json:
        return {"status": "ok", "role": "requester", "account": identity.account}

    @app.post("/tasks", status_code=202, response_model=TaskCreated)
    async def post_task(spec: NewTask) -> Json:
        """Create a training task: sign a deposit of V to the server and submit the request."""
        return await requester.create_task(spec)

    @app.post("/tasks/{task_id}/cancel", response_model=TaskCancelled)
    async def cancel_task(task_id: str) -> Json:
        """Ask the server to stop the task and refund what is left of its budget on chain."""
        return await requester.cancel(task_id)

    @app.get("/tasks", response_model=list[RequesterTaskSummary])
    def list_tasks() -> list[Json]:
        return requester.tasks()

    @app.get("/tasks/{task_id}", response_model=RequesterTask)
    async def get_task(task_id: str) -> Json:
        return await requester.task(task_id)

    @app.get("/tasks/{task_id}/model")
    async def get_model(task_id: str) -> Response:
        return Response(await requester.model(task_id), media_type="application/octet-stream")

    return app
