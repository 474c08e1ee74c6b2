"""The services' HTTP surface in-process (FastAPI's TestClient): one error shape for every error,
FastAPI's own 404/405/422 included, with the reject reason of a block or transaction."""

from __future__ import annotations

import pytest
from conftest import give_task
from fastapi.testclient import TestClient

from fedcoin.chain.identity import Identity
from fedcoin.chain.reports import make_report
from fedcoin.chain.transactions import make_transaction
from fedcoin.errors import SettingsError
from fedcoin.ledger.chain import Chain, tie_key

USER = Identity.from_seed(b"U" * 32)
SHAPE = {"error", "reason", "detail"}


def error(r, status: int, reason: str) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == SHAPE and isinstance(body["detail"], str), body
    assert body["reason"] == reason, body
    return body


def test_framework_errors_have_the_one_shape(miner):
    error(miner.get("/no/such/route"), 404, "not-found")
    error(miner.put("/blocks"), 405, "method-not-allowed")
    body = error(
        miner.post("/blocks", content=b"not json", headers={"content-type": "application/json"}), 422, "malformed"
    )
    assert body["error"] == "ValidationError"
    error(miner.get("/blocks", params={"start": -1}), 422, "malformed")
    error(miner.get("/blocks/abc"), 422, "malformed")


def test_library_errors_have_the_one_shape_with_their_reason(miner, net):
    error(miner.get("/blocks/99"), 404, "not-found")
    error(miner.get("/tasks/nothing"), 404, "not-found")
    error(miner.get("/balances/not-an-account"), 400, "invalid-input")
    error(miner.post("/blocks", json={"header": {}, "body": {}}), 400, "invalid-input")
    poor = make_transaction(USER, net.users[0].account, 5, 0)
    body = error(miner.post("/transactions", json=poor.to_dict()), 422, "insufficient-balance")
    assert body["error"] == "InvalidTransaction"
    rich = net.users[0]
    forged = {**make_transaction(rich, USER.account, 5, 0).to_dict(), "amount": 6}
    error(miner.post("/transactions", json=forged), 422, "bad-signature")
    error(miner.post("/reports", json={"kind": "posap-report"}), 400, "invalid-input")
    head = miner.get("/chain/head").json()["hash"]
    outsider = make_report(USER, task_id="t1", prev_hash=head, shapley=[0.5, 0.3, 0.2], iterations=5)
    error(miner.post("/reports", json=outsider.to_dict()), 400, "invalid-input")  # not an admitted miner
    peer = make_report(net.miners[1], task_id="t1", prev_hash=head, shapley=[0.5, 0.3, 0.2], iterations=5)
    assert miner.post("/reports", json=peer.to_dict()).status_code == 202
    error(miner.post("/fraud-proofs", json={"index": -1}), 400, "invalid-input")


def test_blocks_are_judged_with_their_reason_and_change_nothing(miner, net, node_env):
    head = miner.get("/chain/head").json()
    # a block on a task the miner does not hold, whose content it cannot fetch, is refused: its work
    # cannot be recomputed
    unheld = net.block(Chain(node_env))
    r = miner.post("/blocks", json=unheld.to_dict())
    assert r.status_code >= 400 and set(r.json()) == SHAPE, r.text
    assert miner.get("/chain/head").json() == head
    t1 = give_task(miner, net, "t1", net.T0 + 1_000)
    t2 = give_task(miner, net, "t2", net.T0 + 2_000)
    elsewhere = Chain(node_env)
    good = net.block(elsewhere, t1)
    tampered = net.reheader(good, None, s_avg=[0.9, 0.05, 0.05])
    error(miner.post("/blocks", json=tampered.to_dict()), 422, "bad-signature")
    # the same task and work (iterations), other winners and S: one rival below good's tie key, one above
    # (S moves by at most 0.0015, within the recomputation tolerance, so every rival's work is honest)
    fresh = Chain(node_env)
    rivals = sorted(
        (
            net.block(fresh, t1, winner=w, s_avg=(0.5, 0.3 - k / 2000, 0.2 + k / 2000))
            for k in range(4)
            for w in (1, 2, 3)
        ),
        key=lambda b: tie_key(b.header),
    )
    below = rivals[0] if tie_key(rivals[0].header) < tie_key(good.header) else None
    above = rivals[-1] if tie_key(rivals[-1].header) > tie_key(good.header) else None
    assert below is not None and above is not None
    elsewhere.add_block(good, now=net.NOW)
    orphan = net.block(elsewhere, t2)
    body = error(miner.post("/blocks", json=orphan.to_dict()), 409, "orphan-block")
    assert body["error"] == "OrphanBlock"
    assert miner.get("/chain/head").json() == head
    # equal work: the block of smaller tie key wins, whichever came first; a larger one is stale
    r = miner.post("/blocks", json=good.to_dict())
    assert r.status_code == 200 and r.json()["status"] == "extended"
    head = miner.get("/chain/head").json()
    assert head["hash"] == good.hash and head["tie"] == tie_key(good.header)
    error(miner.post("/blocks", json=above.to_dict()), 409, "stale-block")
    assert miner.get("/chain/head").json() == head
    r = miner.post("/blocks", json=below.to_dict())
    assert r.status_code == 200 and r.json()["status"] == "reorg" and r.json()["reorg_depth"] == 1, r.text
    head = miner.get("/chain/head").json()
    assert head["hash"] == below.hash and head["work"] == below.header.iterations == good.header.iterations
    assert head["tie"] == tie_key(below.header)
    error(miner.post("/blocks", json=above.to_dict()), 409, "stale-block")
    mutated = below.model_copy(update={"body": below.body.model_copy(update={"transactions": []})})
    error(miner.post("/blocks", json=mutated.to_dict()), 422, "bad-merkle-root")  # not 200 "known"
    assert miner.post("/blocks", json=below.to_dict()).json()["status"] == "known"
    assert miner.post("/blocks", json=good.to_dict()).json()["status"] == "known"  # kept, no longer the head
    assert miner.get("/chain/head").json() == head


def test_a_bad_setting_stops_the_service_before_it_serves(node_env, monkeypatch):
    from services.miner.app import create_app

    monkeypatch.setenv("FEDCOIN_BATCH", "many")
    with pytest.raises(SettingsError, match="FEDCOIN_BATCH"):
        create_app()


def test_requester_validation_errors_have_the_one_shape(node_env, monkeypatch):
    from services.requester.app import create_app

    monkeypatch.setenv("FEDCOIN_DEFAULT_TASK", "off")
    with TestClient(create_app()) as client:
        error(client.post("/tasks", json={"budget": 0}), 422, "malformed")
        error(client.get("/tasks/unknown"), 404, "not-found")
        assert client.get("/health").json()["role"] == "requester"


def test_the_service_docs_list_its_settings_from_the_model(miner):
    from fedcoin.node.settings import MinerSettings, env_name

    description = miner.get("/openapi.json").json()["info"]["description"]
    for name in MinerSettings.model_fields:
        assert description.count(f"{env_name(name)} =") == 1


def test_pending_transactions_come_in_pages(miner, net):
    rich = net.users[0]
    sent = [make_transaction(rich, USER.account, 5 + i, i) for i in range(5)]
    for tx in sent:
        assert miner.post("/transactions", json=tx.to_dict()).status_code == 202
    everything = miner.get("/transactions/pending").json()
    assert [t["nonce"] for t in everything] == [0, 1, 2, 3, 4]
    pages = [miner.get("/transactions/pending", params={"offset": o, "limit": 2}).json() for o in (0, 2, 4, 6)]
    assert [len(p) for p in pages] == [2, 2, 1, 0]
    assert [t for p in pages for t in p] == everything
    error(miner.get("/transactions/pending", params={"limit": 0}), 422, "malformed")
    error(miner.get("/transactions/pending", params={"limit": 10_001}), 422, "malformed")
    error(miner.get("/transactions/pending", params={"offset": -1}), 422, "malformed")
