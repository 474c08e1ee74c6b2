"""An FL client node: one or more logical clients, each with its own key, account and data.

Each logical client holds the training data of one quality type (the paper's
partition, :func:`fedcoin.fl.partition.partition_by_type`), drawn with a seed
derived from its own account: replicas of a client node hold different data,
and a restarted node holds the same data again. The node registers every
client with the FL server (:meth:`ClientNode.register_all`) and trains on the
server's signed orders (:meth:`ClientNode.train`), answering with the update
and a receipt signed by the client's key.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedcoin.chain.encoding import sha256_hex
from fedcoin.chain.identity import Identity
from fedcoin.errors import Conflict, InvalidInput, NotFound, Unavailable
from fedcoin.fl.content import pack_weights, unpack_weights
from fedcoin.fl.partition import partition_by_type
from fedcoin.fl.training import local_train

from .messages import ClientRegistration, SignedMessage, TrainOrder, UpdateReceipt
from .metrics import ClientMetrics, gauge
from .peers import HttpTransport

log = logging.getLogger("fedcoin.client")


@dataclass
class LocalClient:
    identity: Identity
    client_type: int
    labels: list[int]
    X: torch.Tensor
    y: torch.Tensor

    def describe(self, registered: bool) -> dict[str, Any]:
        return {
            "account": self.identity.account,
            "client_type": self.client_type,
            "labels": self.labels,
            "n_samples": int(self.X.shape[0]),
            "label_counts": np.bincount(self.y.numpy(), minlength=10).tolist(),
            "registered": registered,
        }


def make_clients(
    keys_dir: Path, types: list[int], X: torch.Tensor, y: torch.Tensor, *, num_types: int, samples_per_client: int
) -> dict[str, LocalClient]:
    """One logical client per entry of ``types``, its key in ``keys_dir`` (created if absent)."""
    clients: dict[str, LocalClient] = {}
    labels = y.numpy()
    for i, t in enumerate(types):
        ident = Identity.load_or_create(keys_dir / f"client-{i}.key")
        seed = int.from_bytes(hashlib.sha256(bytes.fromhex(ident.account)).digest()[:4], "big")
        part = partition_by_type(
            labels, num_clients=num_types, num_types=num_types, samples_per_client=samples_per_client, seed=seed
        )
        j = min(t, num_types - 1)
        idx = torch.from_numpy(part.indices[j])
        clients[ident.account] = LocalClient(
            ident, t, list(part.label_sets[j]), X[idx].contiguous(), y[idx].contiguous()
        )
    return clients


class ClientNode:
    def __init__(
        self, clients: dict[str, LocalClient], server_url: str, own_url: str, transport: HttpTransport
    ) -> None:
        self.clients = clients
        self.server_url = server_url
        self.own_url = own_url
        self.transport = transport
        self.server_account: str | None = None
        self.registered: set[str] = set()
        self.metrics = ClientMetrics()
        self.metrics.levels(
            lambda: [
                gauge("fedcoin_clients", "logical FL clients on this node", len(self.clients)),
                gauge("fedcoin_registered_clients", "of them, registered with the server", len(self.registered)),
            ]
        )

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "role": "client", "clients": len(self.clients), "registered": len(self.registered)}

    def describe(self) -> list[dict[str, Any]]:
        return [c.describe(a in self.registered) for a, c in self.clients.items()]

    async def register_all(self, retry: float = 1.0) -> None:
        """Register every logical client with the server, retrying until all are."""
        while len(self.registered) < len(self.clients):
            info = await self.transport.get_json(f"{self.server_url}/info")
            if info:
                self.server_account = info["account"]
                for acct, c in self.clients.items():
                    if acct in self.registered:
                        continue
                    reg = ClientRegistration(
                        url=self.own_url, n_samples=int(c.X.shape[0]), client_type=c.client_type, labels=c.labels
                    )
                    status = await self.transport.post_json(
                        f"{self.server_url}/clients", reg.sign(c.identity).model_dump(), retries=0
                    )
                    if status in (200, 201):
                        self.registered.add(acct)
            await asyncio.sleep(retry)
        log.info("%d clients registered with %s", len(self.clients), self.server_url)

    def open_order(self, msg: SignedMessage) -> tuple[LocalClient, TrainOrder]:
        """The client an order from the registered server names, and the order; raises if it is not one."""
        if self.server_account is None:
            raise Conflict("not registered with a server yet")
        order = TrainOrder.open(msg, sender=self.server_account)
        client = self.clients.get(order.client)
        if client is None:
            raise NotFound("the order names no client of this node")
        return client, order

    async def train(self, msg: SignedMessage) -> dict[str, Any]:
        """Fetch the global model, train locally, return the update with its signed receipt."""
        client, order = self.open_order(msg)
        data = await self.transport.get_bytes(order.global_uri)
        if sha256_hex(data) != order.global_hash:
            raise InvalidInput("global model does not match its hash")
        global_weights = unpack_weights(data)

        def work() -> tuple[bytes, int]:
            w, n = local_train(
                global_weights, client.X, client.y, order.iterations, order.batch_size, order.lr, order.seed
            )
            return pack_weights(w), n

        t0 = time.perf_counter()
        try:
            blob, n = await asyncio.to_thread(work)
        except Exception:
            self.metrics.trainings.labels("failed").inc()
            raise
        self.metrics.train_seconds.observe(time.perf_counter() - t0)
        self.metrics.trainings.labels("done").inc()
        receipt = UpdateReceipt(task_id=order.task_id, round=order.round, n_samples=n, update_hash=sha256_hex(blob))
        return {
            "message": receipt.sign(client.identity).model_dump(),
            "update_b64": base64.b64encode(blob).decode("ascii"),
        }

    async def balance(self, account: str, miners: list[str]) -> dict[str, Any]:
        if account not in self.clients:
            raise NotFound("no such client on this node")
        for m in miners:
            info = await self.transport.get_json(f"{m}/balances/{account}")
            if info:
                return dict(info)
        raise Unavailable("no miner reachable")
