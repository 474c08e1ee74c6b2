"""Model requester: creates training tasks with a budget V, pays V to the FL server as an
on-chain deposit, follows the task and fetches the final model.

Environment: FEDCOIN_DATA_DIR, FEDCOIN_KEY (the requester's key, funded at genesis),
FEDCOIN_SERVER_URL, FEDCOIN_MINERS, FEDCOIN_DEFAULT_TASK ("on"/"off"), FEDCOIN_BUDGET,
FEDCOIN_ROUNDS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

import httpx
from fastapi import FastAPI, HTTPException
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from fedcoin.encoding import sha256_hex
from fedcoin.errors import InvalidInput
from fedcoin.messages import SignedMessage
from fedcoin.schemas import TrainingRequest
from fedcoin.store import DocStore, connect
from fedcoin.transactions import MAX_AMOUNT, make_transaction

from ..common import start_node, env, env_list, get_json, install_error_handlers

log = logging.getLogger("fedcoin.requester")


class NewTask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    budget: int = Field(gt=0, le=MAX_AMOUNT, description="V in base units")
    rounds: int = Field(default=1, ge=1, le=100)
    task_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    ratio: tuple[int, int, int] = (7, 1, 2)


def create_app() -> FastAPI:
    ddir, identity = start_node("requester")
    docs = DocStore(conn=connect(ddir / "requester.sqlite"))
    server_url = (env("SERVER_URL", "http://127.0.0.1:8001") or "").rstrip("/")
    miners = env_list("MINERS")
    lock = asyncio.Lock()

    async def create_task(http: httpx.AsyncClient, spec: NewTask) -> dict:
        async with lock:
            info = await get_json(http, f"{server_url}/info")
            if info is None:
                raise HTTPException(503, "the FL server is unreachable")
            chain_nonce = None
            for m in miners:
                bal = await get_json(http, f"{m}/balances/{identity.account}")
                if bal:
                    chain_nonce = bal["nonce"]
                    if bal["balance"] < spec.budget:
                        raise InvalidInput(f"budget {spec.budget} exceeds the requester's balance {bal['balance']}")
                    break
            if chain_nonce is None:
                raise HTTPException(503, "no miner reachable")
            used = docs.get("meta", "nonce")
            nonce = max(chain_nonce, (used["next"] if used else 0))
            task_id = spec.task_id or f"task-{uuid.uuid4().hex[:12]}"
            if docs.get("tasks", task_id) is not None:
                raise InvalidInput(f"task {task_id} exists already")
            deposit = make_transaction(identity, info["account"], spec.budget, nonce, "deposit", task_id)
            req = TrainingRequest(task_id=task_id, budget=spec.budget, rounds=spec.rounds, ratio=spec.ratio, deposit=deposit)
            msg = SignedMessage.create(identity, TrainingRequest.KIND, req.model_dump())
            doc = {"task_id": task_id, "budget": spec.budget, "rounds": spec.rounds, "deposit_txid": deposit.txid,
                   "created_at": time.time(), "request": msg.model_dump(), "submitted": False}
            docs.put("tasks", task_id, doc)  # persisted before anything leaves this node
            docs.put("meta", "nonce", {"next": nonce + 1})
        for m in miners:
            with contextlib.suppress(httpx.HTTPError):
                await http.post(f"{m}/transactions", json=deposit.to_dict(), timeout=10)
        r = await http.post(f"{server_url}/tasks", json=msg.model_dump(), timeout=30)
        if r.status_code >= 400:
            raise HTTPException(r.status_code, f"server refused the task: {r.text}")
        doc["submitted"] = True
        docs.put("tasks", task_id, doc)
        return {"task_id": task_id, "deposit_txid": deposit.txid, "server": r.json().get("status")}

    async def default_task() -> None:
        if (env("DEFAULT_TASK", "on") or "on").lower() in ("off", "0", "false", "no"):
            return
        if docs.get("meta", "default_task") is not None:
            return
        spec = NewTask(budget=int(env("BUDGET", "1000000")), rounds=int(env("ROUNDS", "1")), task_id=env("DEFAULT_TASK_ID", "default"))
        async with httpx.AsyncClient() as http:
            while True:
                try:
                    out = await create_task(http, spec)
                    docs.put("meta", "default_task", out)
                    log.info("default task submitted: %s", out)
                    return
                except (HTTPException, httpx.HTTPError) as exc:
                    log.info("default task not submitted yet (%s); retrying", getattr(exc, "detail", exc))
                    await asyncio.sleep(2.0)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.http = httpx.AsyncClient()
        job = asyncio.create_task(default_task())
        try:
            yield
        finally:
            job.cancel()
            await app.state.http.aclose()

    app = FastAPI(title="FedCoin model requester", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "role": "requester", "account": identity.account}

    @app.post("/tasks", status_code=202)
    async def post_task(spec: NewTask) -> dict:
        """Create a training task: sign a deposit of V to the server and submit the request."""
        return await create_task(app.state.http, spec)

    @app.get("/tasks")
    def list_tasks() -> list[dict]:
        return [{k: d[k] for k in ("task_id", "budget", "rounds", "deposit_txid", "submitted")} for d in docs.list("tasks")]

    @app.get("/tasks/{task_id}")
    async def get_task(task_id: str) -> dict:
        doc = docs.get("tasks", task_id)
        if doc is None:
            raise HTTPException(404, "unknown task")
        server = await get_json(app.state.http, f"{server_url}/tasks/{task_id}")
        return {"task_id": task_id, "budget": doc["budget"], "rounds": doc["rounds"], "deposit_txid": doc["deposit_txid"],
                "server": server}

    @app.get("/tasks/{task_id}/model")
    async def get_model(task_id: str) -> Response:
        if docs.get("tasks", task_id) is None:
            raise HTTPException(404, "unknown task")
        path = ddir / "models" / f"{task_id}.npz"
        if not path.exists():
            r = await app.state.http.get(f"{server_url}/tasks/{task_id}/model", timeout=60)
            if r.status_code != 200:
                raise HTTPException(409 if r.status_code == 409 else 502, f"model not available: {r.text[:200]}")
            if sha256_hex(r.content) != r.headers.get("X-Content-SHA256"):
                raise HTTPException(502, "model bytes do not match the server's hash")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(r.content)
        return Response(path.read_bytes(), media_type="application/octet-stream")

    return app
