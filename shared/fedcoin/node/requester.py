"""The model requester: creates training tasks with a budget V, pays V for the FL server as an
on-chain deposit (held in escrow), follows its tasks and fetches the final models.

A task is written to the requester's SQLite file, with the nonce its deposit
uses, before anything leaves the node; the signed training request (carrying
the deposit) then goes to the server, and only once the server has accepted
it is the deposit sent to the miners. A refused request leaves no deposit
pending anywhere and frees its nonce.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from fedcoin.api import NewTask
from fedcoin.chain.encoding import sha256_hex
from fedcoin.chain.identity import Identity
from fedcoin.chain.transactions import make_transaction
from fedcoin.errors import Conflict, FedcoinError, InvalidInput, NotFound, Unavailable

from .docstore import DocStore
from .messages import CancelRequest, TrainingRequest
from .metrics import NodeMetrics, gauge
from .peers import HttpTransport

log = logging.getLogger("fedcoin.requester")


class Requester:
    def __init__(
        self,
        identity: Identity,
        docs: DocStore,
        models_dir: Path,
        server_url: str,
        miners: list[str],
        transport: HttpTransport,
    ) -> None:
        self.identity = identity
        self.docs = docs
        self.models_dir = models_dir
        self.server_url = server_url
        self.miners = miners
        self.transport = transport
        self._lock = asyncio.Lock()
        self.metrics = NodeMetrics("requester")
        self.metrics.levels(
            lambda: [
                gauge("fedcoin_requester_tasks", "training tasks created", len(self.docs.list("tasks"))),
            ]
        )

    async def _chain_nonce(self, budget: int) -> int:
        for m in self.miners:
            bal = await self.transport.get_json(f"{m}/balances/{self.identity.account}")
            if bal:
                if bal["balance"] < budget:
                    raise InvalidInput(f"budget {budget} exceeds the requester's balance {bal['balance']}")
                return int(bal["nonce"])
        raise Unavailable("no miner reachable")

    async def create_task(self, spec: NewTask) -> dict[str, Any]:
        """Sign a deposit of V for the server and submit the training request; the deposit is sent to the
        miners only once the server accepted the request (a refused request leaves nothing pending)."""
        async with self._lock:
            info = await self.transport.get_json(f"{self.server_url}/info")
            if info is None:
                raise Unavailable("the FL server is unreachable")
            chain_nonce = await self._chain_nonce(spec.budget)
            used = self.docs.get("meta", "nonce")
            nonce = max(chain_nonce, (used["next"] if used else 0))
            task_id = spec.task_id or f"task-{uuid.uuid4().hex[:12]}"
            if self.docs.get("tasks", task_id) is not None:
                raise Conflict(f"task {task_id} exists already")
            deposit = make_transaction(self.identity, info["account"], spec.budget, nonce, "deposit", task_id)
            req = TrainingRequest(
                task_id=task_id, budget=spec.budget, rounds=spec.rounds, ratio=spec.ratio, deposit=deposit
            )
            msg = req.sign(self.identity)
            doc = {
                "task_id": task_id,
                "budget": spec.budget,
                "rounds": spec.rounds,
                "deposit_txid": deposit.txid,
                "created_at": time.time(),
                "request": msg.model_dump(),
                "submitted": False,
            }
            self.docs.put("tasks", task_id, doc)  # persisted before anything leaves this node
            self.docs.put("meta", "nonce", {"next": nonce + 1})
        try:
            r = await self.transport.client.post(f"{self.server_url}/tasks", json=msg.model_dump(), timeout=30)
        except httpx.HTTPError as exc:
            raise Unavailable(f"the FL server did not answer the training request: {exc}") from exc
        if 400 <= r.status_code < 500:  # refused: the deposit never leaves this node, its nonce is free again
            async with self._lock:
                doc.update(status="refused", refusal=r.text[:500])
                self.docs.put("tasks", task_id, doc)
                if (self.docs.get("meta", "nonce") or {}).get("next") == nonce + 1:
                    self.docs.put("meta", "nonce", {"next": nonce})
            raise Conflict(f"server refused the task: {r.text[:500]}")
        if r.status_code >= 500:
            raise Unavailable(f"server failed on the task (HTTP {r.status_code}): {r.text[:200]}")
        doc["submitted"] = True
        self.docs.put("tasks", task_id, doc)
        # only now, with the server's acceptance, does the deposit go to the miners (the server also
        # sends it when it finds none of them knows it)
        for m in self.miners:
            await self.transport.post_json(f"{m}/transactions", deposit.to_dict(), retries=0)
        return {"task_id": task_id, "deposit_txid": deposit.txid, "server": r.json().get("status")}

    async def cancel(self, task_id: str) -> dict[str, Any]:
        """Sign a cancel request for ``task_id`` and send it to the server."""
        if self.docs.get("tasks", task_id) is None:
            raise NotFound(f"unknown task {task_id}")
        msg = CancelRequest(task_id=task_id).sign(self.identity)
        try:
            r = await self.transport.client.post(
                f"{self.server_url}/tasks/{task_id}/cancel", json=msg.model_dump(), timeout=30
            )
        except httpx.HTTPError as exc:
            raise Unavailable(f"the FL server did not answer the cancel request: {exc}") from exc
        if 400 <= r.status_code < 500:
            raise Conflict(f"server refused to cancel: {r.text[:500]}")
        if r.status_code >= 500:
            raise Unavailable(f"server failed on the cancel request (HTTP {r.status_code})")
        return dict(r.json())

    async def submit_default(self, spec: NewTask, retry: float = 2.0) -> None:
        """Submit ``spec`` once per node lifetime (remembered on disk), retrying until it goes through."""
        if self.docs.get("meta", "default_task") is not None:
            return
        while True:
            try:
                out = await self.create_task(spec)
            except FedcoinError as exc:
                log.info("default task not submitted yet (%s); retrying", exc)
                await asyncio.sleep(retry)
                continue
            self.docs.put("meta", "default_task", out)
            log.info("default task submitted: %s", out)
            return

    def tasks(self) -> list[dict[str, Any]]:
        return [
            {k: d[k] for k in ("task_id", "budget", "rounds", "deposit_txid", "submitted")}
            for d in self.docs.list("tasks")
        ]

    async def task(self, task_id: str) -> dict[str, Any]:
        doc = self.docs.get("tasks", task_id)
        if doc is None:
            raise NotFound(f"unknown task {task_id}")
        server = await self.transport.get_json(f"{self.server_url}/tasks/{task_id}")
        return {
            "task_id": task_id,
            "budget": doc["budget"],
            "rounds": doc["rounds"],
            "deposit_txid": doc["deposit_txid"],
            "server": server,
        }

    async def model(self, task_id: str) -> bytes:
        """The final model of a done task, fetched from the server once and kept."""
        if self.docs.get("tasks", task_id) is None:
            raise NotFound(f"unknown task {task_id}")
        path = self.models_dir / f"{task_id}.npz"
        if not path.exists():
            r = await self.transport.client.get(f"{self.server_url}/tasks/{task_id}/model", timeout=60)
            if r.status_code == 409:
                raise Conflict(f"model not available yet: {r.text[:200]}")
            if r.status_code != 200:
                raise Unavailable(f"model not available: {r.text[:200]}")
            if sha256_hex(r.content) != r.headers.get("X-Content-SHA256"):
                raise Unavailable("model bytes do not match the server's hash")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(r.content)
            tmp.replace(path)
        return path.read_bytes()
