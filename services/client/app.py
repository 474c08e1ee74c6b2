"""FL client service: hosts one or more logical clients, each with its own key, account and
local data of one quality type; trains locally on the server's orders and registers with it.

Routes only: the clients are :class:`fedcoin.node.client.ClientNode`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from fedcoin.fl.data import load_dataset
from fedcoin.node.client import ClientNode, make_clients
from fedcoin.node.messages import SignedMessage
from fedcoin.node.peers import HttpTransport
from fedcoin.node.runtime import start_node
from fedcoin.node.settings import ClientSettings, load

from ..common import service_app, service_doc

__doc__ = service_doc(__doc__, ClientSettings)
Json = dict[str, Any]


def create_app() -> FastAPI:
    settings = load(ClientSettings)
    start_node(settings)
    X, y = load_dataset(settings.dataset, settings.dataset_dir).train_tensors()
    clients = make_clients(
        settings.state_dir / "keys",
        settings.client_types,
        X,
        y,
        num_types=settings.num_types,
        samples_per_client=settings.samples_per_client,
    )
    http = HttpTransport()
    node = ClientNode(clients, settings.server_url, settings.own_url, http)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registering = asyncio.create_task(node.register_all())
        try:
            yield
        finally:
            registering.cancel()
            await http.aclose()

    app = service_app("FedCoin FL client", __doc__, metrics=node.metrics, lifespan=lifespan)

    @app.get("/health")
    def health() -> Json:
        return node.health()

    @app.get("/clients")
    def list_clients() -> list[Json]:
        return node.describe()

    @app.get("/clients/{account}/balance")
    async def balance(account: str) -> Json:
        return await node.balance(account, settings.miners)

    @app.post("/train")
    async def train(body: Json) -> Json:
        """A server-signed train order: fetch the global model, train locally, return the signed update."""
        return await node.train(SignedMessage.from_dict(body))

    return app
