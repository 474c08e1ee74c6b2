"""fedcoin.client against the services in-process (FastAPI's TestClient is an httpx.Client), and against
canned answers (httpx.MockTransport): typed answers, the services' errors as typed exceptions, answers
that are not the documented model, and the `fedcoin` commands built on it."""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import give_task
from typer.testing import CliRunner

from fedcoin import cli
from fedcoin.api import ChainHead, MinerStatus, RequesterTask, TransactionStatus
from fedcoin.chain.blocks import Block
from fedcoin.chain.identity import Identity
from fedcoin.chain.transactions import make_transaction
from fedcoin.client import MinerClient, RequesterClient, ServerClient, error_from_response
from fedcoin.errors import (
    Conflict,
    InvalidBlock,
    InvalidInput,
    InvalidSignature,
    InvalidTransaction,
    NotFound,
    OrphanBlock,
    Reason,
    Unavailable,
)

SERVER_TASK = {
    "task_id": "t",
    "status": "training",
    "budget": 1000,
    "rounds": 2,
    "requester": "r" * 64,
    "ratio": [7, 1, 2],
    "prices": {"train": 700, "com": 100, "sap": 200},
    "deposit_txid": "d" * 64,
    "submitted_at": 1.0,
    "round_results": [],
}


@pytest.fixture
def api(miner) -> MinerClient:
    return MinerClient("http://testserver", client=miner)


def mock(handler) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler))


def test_reads_are_typed_models_equal_to_the_raw_answers(api, miner, net):
    assert api.health().role == "miner"
    head = api.head()
    assert isinstance(head, ChainHead) and head.height == 0 and head.model_dump() == miner.get("/chain/head").json()
    status = api.status()
    assert isinstance(status, MinerStatus) and status.head == head.hash and status.mining is None
    (genesis,) = api.blocks()
    assert isinstance(genesis, Block) and genesis.hash == head.hash == api.block(0).hash
    assert api.block_by_hash(head.hash).height == 0
    assert [s.hash for s in api.chain()] == [head.hash]
    user = net.users[0].account
    bal = api.balance(user)
    assert (bal.balance, bal.nonce) == (1_000, 0)
    assert api.balances().balances[user] == 1_000
    assert api.tasks() == [] and api.pending() == []


def test_a_transfer_is_signed_with_the_next_nonce_and_pending(api, net):
    a, b = net.users[0], net.users[1]
    first = api.transfer(a, b.account, 10, "one")
    second = api.transfer(a, b.account, 20)  # the first is pending: the next nonce is past it
    assert (first.nonce, second.nonce) == (0, 1) and first.sender == a.account
    status = api.transaction(second.txid)
    assert isinstance(status, TransactionStatus) and status.status == "pending" and status.transaction == second
    assert {tx.txid for tx in api.pending()} == {first.txid, second.txid}
    assert api.next_nonce(a.account) == 2


def test_the_services_errors_come_back_typed(api, net, miner):
    with pytest.raises(NotFound, match="HTTP 404"):
        api.block(7)
    with pytest.raises(NotFound):
        api.transaction("ab" * 32)
    with pytest.raises(InvalidInput):
        api.balance("not-an-account")  # refused before it leaves
    broke = Identity.from_seed(b"B" * 32)
    tx = make_transaction(broke, net.users[0].account, 5, 0)
    with pytest.raises(InvalidTransaction) as caught:
        api.submit_transaction(tx)
    assert caught.value.reason == Reason.INSUFFICIENT_BALANCE
    task = give_task(miner, net, "t1", net.T0 + 1_000)
    assert api.task(task.task_id).settled is False
    with pytest.raises(NotFound):
        api.task("nope")
    assert api.balances().balances.get(broke.account, 0) == 0  # nothing changed


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (404, {"error": "NotFound", "reason": "not-found", "detail": "x"}, NotFound),
        (409, {"error": "Conflict", "reason": "conflict", "detail": "x"}, Conflict),
        (401, {"error": "InvalidSignature", "reason": "invalid-signature", "detail": "x"}, InvalidSignature),
        (422, {"error": "ValidationError", "reason": "malformed", "detail": "x"}, InvalidInput),
        (400, None, InvalidInput),
        (503, {"error": "Unavailable", "reason": "unavailable", "detail": "busy"}, Unavailable),
        (500, None, Unavailable),
    ],
)
def test_error_mapping(status, body, kind):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body) if body is not None else httpx.Response(status, text="oops")

    with MinerClient("http://node", client=mock(handler)) as c, pytest.raises(kind, match=f"HTTP {status}"):
        c.head()


def test_reject_reasons_survive_the_trip():
    def answer(status, error, reason):
        r = httpx.Response(
            status,
            json={"error": error, "reason": reason, "detail": "far from S̄"},
            request=httpx.Request("POST", "http://node/blocks"),
        )
        return error_from_response(r)

    exc = answer(422, "InvalidBlock", "shapley-far-from-average")
    assert isinstance(exc, InvalidBlock) and exc.reason == Reason.SHAPLEY_FAR_FROM_AVERAGE
    assert "far from S̄" in str(exc)
    assert isinstance(answer(409, "OrphanBlock", "orphan-block"), OrphanBlock)
    assert answer(409, "StaleBlock", "stale-block").reason == Reason.STALE_BLOCK
    assert type(answer(422, "InvalidBlock", "no-such-reason")) is InvalidInput


def test_answers_that_are_not_the_model_and_unreachable_nodes_are_unavailable():
    c = MinerClient("http://node", client=mock(lambda req: httpx.Response(200, json={"height": "tall"})))
    with pytest.raises(Unavailable, match="not a ChainHead"):
        c.head()
    c = MinerClient("http://node", client=mock(lambda req: httpx.Response(200, text="<html>")))
    with pytest.raises(Unavailable, match="not JSON"):
        c.head()
    c = MinerClient("http://node", client=mock(lambda req: httpx.Response(200, json=[{"not": "a block"}])))
    with pytest.raises(Unavailable, match="not a block"):
        c.blocks()
    with MinerClient("http://127.0.0.1:9", timeout=2) as dead, pytest.raises(Unavailable, match="ConnectError"):
        dead.head()
    with pytest.raises(InvalidInput):
        MinerClient("ftp://node")


def test_requester_submit_checks_the_spec_and_wait_follows_the_task():
    seen: list[str] = []
    statuses = iter(["queued", "training", "training", "done"])

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        if request.method == "POST":
            assert json.loads(request.content) == {"budget": 1000, "rounds": 2, "task_id": "t", "ratio": [7, 1, 2]}
            return httpx.Response(202, json={"task_id": "t", "deposit_txid": "d" * 64, "server": "queued"})
        doc = {**SERVER_TASK, "status": next(statuses)}
        return httpx.Response(
            200, json={"task_id": "t", "budget": 1000, "rounds": 2, "deposit_txid": "d", "server": doc}
        )

    c = RequesterClient("http://req", client=mock(handler))
    with pytest.raises(InvalidInput):
        c.submit(0)
    assert seen == []  # refused before it left
    assert c.submit(1000, 2, "t").task_id == "t"
    updates: list[str] = []
    final = c.wait("t", poll=0, on_update=lambda t: updates.append(t.server.status))
    assert isinstance(final, RequesterTask) and final.server.final
    assert updates == ["queued", "training", "training", "done"]
    stuck = RequesterClient(
        "http://req",
        client=mock(
            lambda req: httpx.Response(
                200, json={"task_id": "t", "budget": 1, "rounds": 1, "deposit_txid": "d", "server": SERVER_TASK}
            )
        ),
    )
    with pytest.raises(Unavailable, match="still training"):
        stuck.wait("t", timeout=0.05, poll=0.01)


def test_server_client_parses_task_records():
    c = ServerClient("http://srv", client=mock(lambda req: httpx.Response(200, json=SERVER_TASK)))
    t = c.task("t")
    assert t.status == "training" and not t.final and t.prices["train"] == 700


# --- the commands ------------------------------------------------------------------------------------
@pytest.fixture
def cli_on(miner, monkeypatch):
    """The `fedcoin` commands, their clients talking to the in-process miner."""
    monkeypatch.setattr(cli, "MinerClient", lambda url: MinerClient(url, client=miner))
    return CliRunner()


def test_cli_reads_as_json_and_tables(cli_on, api, net, tmp_path):
    r = cli_on.invoke(cli.app, ["chain", "head", "--json", "--node", "http://testserver"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == api.head().model_dump(mode="json")
    r = cli_on.invoke(cli.app, ["chain", "blocks", "--json"])
    assert r.exit_code == 0 and [b["header"]["height"] for b in json.loads(r.output)] == [0]
    r = cli_on.invoke(cli.app, ["chain", "blocks"])
    assert r.exit_code == 0 and "height" in r.output and api.head().hash[:16] in r.output
    user = net.users[0]
    r = cli_on.invoke(cli.app, ["balance", user.account, "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["balance"] == 1_000
    user.save(tmp_path / "u.key")
    r = cli_on.invoke(cli.app, ["balance", str(tmp_path / "u.key")])  # a key file stands for its account
    assert r.exit_code == 0 and "1000" in r.output


def test_cli_transfer_and_its_errors(cli_on, api, net, tmp_path):
    sender, recipient = net.users[0], net.users[1]
    sender.save(tmp_path / "s.key")
    args = ["transfer", "--key", str(tmp_path / "s.key"), "--to", recipient.account]
    r = cli_on.invoke(cli.app, [*args, "--amount", "25", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["status"] == "pending" and out["transaction"]["amount"] == 25
    assert out["transaction"]["sender"] == sender.account
    r = cli_on.invoke(cli.app, [*args, "--amount", "5000"])  # more than it has
    assert r.exit_code == 2 and "insufficient-balance" in r.output
    r = cli_on.invoke(cli.app, ["balance", "nobody"])
    assert r.exit_code == 2 and "error" in r.output
    r = cli_on.invoke(cli.app, [*args, "--amount", "1", "--wait", "0.5"])  # no miner mines here: not confirmed
    assert r.exit_code == 1 and "pending" in r.output
