"""The requester's task creation against a fake server and miners (httpx's MockTransport): the deposit
reaches the miners only after the server accepted the request, and a refused request leaves no
deposit pending and frees its nonce."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from fedcoin.api import NewTask
from fedcoin.chain.identity import Identity
from fedcoin.chain.transactions import Transaction
from fedcoin.errors import Conflict
from fedcoin.node.docstore import DocStore
from fedcoin.node.messages import SignedMessage, TrainingRequest
from fedcoin.node.peers import HttpTransport
from fedcoin.node.requester import Requester

SERVER = Identity.from_seed(b"S" * 32)
REQUESTER = Identity.from_seed(b"R" * 32)
SERVER_URL, MINER = "http://server", "http://miner"


class World:
    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse
        self.calls: list[str] = []
        self.deposits: list[Transaction] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        self.calls.append(f"{request.method} {url}")
        if url == f"{SERVER_URL}/info":
            return httpx.Response(200, json={"account": SERVER.account})
        if url.startswith(f"{MINER}/balances/"):
            return httpx.Response(200, json={"balance": 10**9, "nonce": 0})
        if url == f"{SERVER_URL}/tasks":
            req = TrainingRequest.open(SignedMessage.from_dict(json.loads(request.content)))
            if self.refuse:
                return httpx.Response(400, json={"error": "InvalidInput", "reason": "invalid-input", "detail": "no"})
            return httpx.Response(202, json={"task_id": req.task_id, "status": "queued"})
        if url == f"{MINER}/transactions":
            self.deposits.append(Transaction.from_dict(json.loads(request.content)))
            return httpx.Response(202, json={"status": "pending"})
        return httpx.Response(404, json={})


def requester(tmp_path, world: World) -> Requester:
    transport = HttpTransport()
    transport.client = httpx.AsyncClient(transport=httpx.MockTransport(world.handler))
    docs = DocStore(tmp_path / "requester.sqlite")
    return Requester(REQUESTER, docs, tmp_path / "models", SERVER_URL, [MINER], transport)


def test_the_deposit_goes_to_the_miners_only_after_the_server_accepted(tmp_path):
    world = World(refuse=False)
    out = asyncio.run(requester(tmp_path, world).create_task(NewTask(budget=1000, task_id="a")))
    server_at = world.calls.index(f"POST {SERVER_URL}/tasks")
    miner_at = world.calls.index(f"POST {MINER}/transactions")
    assert server_at < miner_at
    assert [d.txid for d in world.deposits] == [out["deposit_txid"]]


def test_a_refused_request_leaves_no_deposit_and_frees_its_nonce(tmp_path):
    world = World(refuse=True)
    req = requester(tmp_path, world)
    with pytest.raises(Conflict, match="refused"):
        asyncio.run(req.create_task(NewTask(budget=1000, task_id="a")))
    assert world.deposits == [] and f"POST {MINER}/transactions" not in world.calls
    doc = req.docs.get("tasks", "a")
    assert doc is not None and doc["status"] == "refused" and not doc["submitted"]
    world.refuse = False
    asyncio.run(req.create_task(NewTask(budget=1000, task_id="b")))
    assert [d.nonce for d in world.deposits] == [0]  # the refused request's nonce is used again
