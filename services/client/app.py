"""FL client node: hosts one or more logical clients, each with its own key, account and
local data of one quality type; trains locally on the server's orders and registers with it.

Environment: FEDCOIN_DATA_DIR, FEDCOIN_SERVER_URL, FEDCOIN_ADVERTISE_URL (this node's URL
as the server reaches it; default: http://<own address>:<FEDCOIN_PORT>), FEDCOIN_CLIENT_TYPES
(e.g. "0-9" or "0,3,5": one logical client per entry), FEDCOIN_SAMPLES_PER_CLIENT (600),
FEDCOIN_DATASET / FEDCOIN_DATASET_DIR, FEDCOIN_MINERS (to read balances).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import socket
from dataclasses import dataclass

import httpx
import numpy as np
import torch
from fastapi import FastAPI, HTTPException
from fastapi.concurrency import run_in_threadpool

from fedcoin.encoding import sha256_hex
from fedcoin.errors import InvalidInput, InvalidSignature
from fedcoin.fl import local_train, partition_by_type
from fedcoin.identity import Identity
from fedcoin.messages import SignedMessage
from fedcoin.network import parse_types
from fedcoin.schemas import ClientRegistration, TrainOrder, UpdateReceipt
from fedcoin.taskdata import pack_weights, unpack_weights

from ..common import configure_logging, data_dir, env, env_list, get_json

log = logging.getLogger("fedcoin.client")


@dataclass
class LocalClient:
    identity: Identity
    client_type: int
    labels: list[int]
    X: torch.Tensor
    y: torch.Tensor


def _own_url(port: str) -> str:
    try:
        host = socket.gethostbyname(socket.gethostname())
    except OSError:
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def create_app() -> FastAPI:
    configure_logging()
    torch.set_num_threads(int(env("TORCH_THREADS", "1")))
    ddir = data_dir("client")
    server_url = (env("SERVER_URL", "http://127.0.0.1:8001") or "").rstrip("/")
    url = (env("ADVERTISE_URL") or _own_url(env("PORT", "8002"))).rstrip("/")
    types = parse_types(env("CLIENT_TYPES", "0-9"))
    num_types = int(env("NUM_TYPES", "10"))
    per_client = int(env("SAMPLES_PER_CLIENT", "600"))
    miners = env_list("MINERS")

    from fedcoin.data import load_dataset

    ds = load_dataset(env("DATASET", "fashion-mnist"), env("DATASET_DIR"))
    X_all, y_all = ds.train_tensors()
    clients: dict[str, LocalClient] = {}
    for i, t in enumerate(types):
        ident = Identity.load_or_create(ddir / "keys" / f"client-{i}.key")
        # The client's data is drawn from a seed derived from its own account: replicas of
        # this service hold different data, and a restarted node holds the same data again.
        seed = int.from_bytes(hashlib.sha256(bytes.fromhex(ident.account)).digest()[:4], "big")
        part = partition_by_type(y_all.numpy(), num_clients=num_types, num_types=num_types, samples_per_client=per_client, seed=seed)
        j = min(t, num_types - 1)
        idx = torch.from_numpy(part.indices[j])
        clients[ident.account] = LocalClient(ident, t, list(part.label_sets[j]), X_all[idx].contiguous(), y_all[idx].contiguous())
    state: dict = {"server_account": None, "registered": set()}

    async def register_loop() -> None:
        async with httpx.AsyncClient() as http:
            while len(state["registered"]) < len(clients):
                info = await get_json(http, f"{server_url}/info")
                if info:
                    state["server_account"] = info["account"]
                    for acct, c in clients.items():
                        if acct in state["registered"]:
                            continue
                        reg = ClientRegistration(url=url, n_samples=int(c.X.shape[0]), client_type=c.client_type, labels=c.labels)
                        msg = SignedMessage.create(c.identity, ClientRegistration.KIND, reg.model_dump())
                        try:
                            r = await http.post(f"{server_url}/clients", json=msg.model_dump(), timeout=10)
                            if r.status_code in (200, 201):
                                state["registered"].add(acct)
                        except httpx.HTTPError:
                            pass
                await asyncio.sleep(1.0)
            log.info("%d clients registered with %s", len(clients), server_url)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(register_loop())
        try:
            yield
        finally:
            task.cancel()

    app = FastAPI(title="FedCoin FL client", version="0.1.0", lifespan=lifespan)
    from ..common import install_error_handlers

    install_error_handlers(app)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "role": "client", "clients": len(clients), "registered": len(state["registered"])}

    @app.get("/clients")
    def list_clients() -> list[dict]:
        return [
            {"account": a, "client_type": c.client_type, "labels": c.labels, "n_samples": int(c.X.shape[0]),
             "label_counts": np.bincount(c.y.numpy(), minlength=10).tolist(), "registered": a in state["registered"]}
            for a, c in clients.items()
        ]

    @app.get("/clients/{account}/balance")
    async def balance(account: str) -> dict:
        if account not in clients:
            raise HTTPException(404, "no such client on this node")
        async with httpx.AsyncClient() as http:
            for m in miners:
                info = await get_json(http, f"{m}/balances/{account}")
                if info:
                    return info
        raise HTTPException(503, "no miner reachable")

    @app.post("/train")
    async def train(body: dict) -> dict:
        """A server-signed train order: fetch the global model, train locally, return the signed update."""
        msg = SignedMessage.from_dict(body)
        if state["server_account"] is None:
            raise HTTPException(409, "not registered with a server yet")
        try:
            order = TrainOrder.model_validate(msg.open(TrainOrder.KIND, sender=state["server_account"]))
        except ValueError as exc:
            if isinstance(exc, (InvalidInput,)):
                raise
            raise InvalidInput(f"malformed train order: {exc}") from exc
        client = clients.get(order.client)
        if client is None:
            raise HTTPException(404, "the order names no client of this node")
        async with httpx.AsyncClient() as http:
            try:
                r = await http.get(order.global_uri, timeout=60)
            except httpx.HTTPError as exc:
                raise InvalidInput(f"cannot fetch the global model: {exc}") from exc
        if r.status_code != 200 or sha256_hex(r.content) != order.global_hash:
            raise InvalidInput("global model unavailable or not matching its hash")
        global_weights = unpack_weights(r.content)

        def work() -> tuple[bytes, int]:
            w, n = local_train(global_weights, client.X, client.y, order.iterations, order.batch_size, order.lr, order.seed)
            return pack_weights(w), n

        blob, n = await run_in_threadpool(work)
        receipt = UpdateReceipt(task_id=order.task_id, round=order.round, n_samples=n, update_hash=sha256_hex(blob))
        out = SignedMessage.create(client.identity, UpdateReceipt.KIND, receipt.model_dump())
        return {"message": out.model_dump(), "update_b64": base64.b64encode(blob).decode("ascii")}

    _ = InvalidSignature  # signature failures are mapped to 401 by the shared handlers
    return app
