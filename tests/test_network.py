"""Integration: the whole FedCoin network as local processes (what `fedcoin demo` runs).

One module-scoped network (4 miners, 10 clients of types 0..9, server, requester) runs the
requester's default task end to end while one miner is down; the tests then check
agreement, Algorithm 3's payments for the block's S̄, conservation, the restarted miner's
catch-up, and that bad input on every endpoint gets a 4xx with a reason and changes nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from fedcoin.chain.blocks import Block
from fedcoin.chain.identity import Identity
from fedcoin.chain.reports import make_report
from fedcoin.chain.transactions import make_transaction
from fedcoin.consensus.payments import reward_allocation
from fedcoin.devnet.local import LocalNetwork, plan_network
from fedcoin.devnet.watch import wait_for_agreement, wait_for_task
from fedcoin.node.messages import SignedMessage

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

BASE_PORT = 18400


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    d = tmp_path_factory.mktemp("net")
    specs = plan_network(
        d, miners=4, client_types="0-9", base_port=BASE_PORT, budget=1_000_000, rounds=1, initial_difficulty=0.1
    )
    net = LocalNetwork(d, specs)
    try:
        # miner4 stays down while the task runs: an unreachable miner must block nobody
        net.start_all([n for n in net.specs if n != "miner4"])
        net.wait_healthy([n for n in net.specs if n != "miner4"], timeout=180)
        t0 = time.time()
        doc = wait_for_task(net.url("server"), "default", timeout=600)
        print(f"default task done in {time.time() - t0:.1f} s")
        yield net, doc
    finally:
        net.stop_all()


def _get(url: str):
    r = httpx.get(url, timeout=10)
    r.raise_for_status()
    return r.json()


def test_task_settles_and_live_miners_agree(network):
    net, doc = network
    live = [u for n, u in ((n, s.url) for n, s in net.specs.items() if s.role == "miner") if n != "miner4"]
    res = doc["round_results"][0]
    head = wait_for_agreement(live, res["block_height"])
    assert head["height"] >= 1
    assert doc["status"] == "done" and len(doc["round_results"]) == 1


def test_payments_follow_algorithm_3(network):
    net, doc = network
    res = doc["round_results"][0]
    block = Block.from_dict(_get(f"{net.url('miner1')}/blocks/{res['block_height']}"))
    task = block.body.task
    assert task.task_id == "default:r0" and block.header.s_avg == res["shapley"]
    expected = [(task.clients[i], amt) for i, amt in reward_allocation(block.header.s_avg, task.train_price)]
    rewards = [(t.recipient, t.amount) for t in block.body.transactions if t.kind == "reward"]
    assert rewards == expected and rewards
    assert sum(a for _, a in rewards) == task.train_price  # some S_i > 0, so clients get all of TrainPrice
    payout = [t for t in block.body.transactions if t.kind == "payout"]
    assert len(payout) == 1 and payout[0].amount == task.train_price + task.sap_price
    assert payout[0].recipient == block.header.winner and payout[0].sender == doc["deposit_txid"]  # from the escrow
    # the round's ComPrice is released from the escrow to the server; S̄ averages carried, signed reports
    commission = [(t.sender, t.recipient, t.amount) for t in block.body.transactions if t.kind == "commission"]
    assert commission == [(doc["deposit_txid"], task.server, 100_000)] and task.deposit == doc["deposit_txid"]
    assert block.body.reports and all(r.miner != block.header.winner for r in block.body.reports)
    assert block.header.iterations == len(block.body.work.leaves())
    # the deposit that funds the task is confirmed at or before the block that pays
    dep = _get(f"{net.url('miner1')}/transactions/{task.funding[0].txid if task.funding else doc['deposit_txid']}")
    assert dep["status"] == "confirmed" and dep["height"] <= block.height
    # V split 7:1:2 for one round
    assert (task.train_price, task.sap_price) == (700_000, 200_000)


def test_balances_conserved_and_paid(network):
    net, doc = network
    bal = _get(f"{net.url('miner2')}/balances")
    assert sum(bal["balances"].values()) == bal["supply"]
    res = doc["round_results"][0]
    for p in res["payments"]["reward"]:
        got = _get(f"{net.url('miner3')}/balances/{p['to']}")
        assert got["balance"] >= p["amount"] > 0
    server = _get(f"{net.url('server')}/health")["account"]
    assert bal["balances"][server] == 1_000_000 - 700_000 - 200_000  # ComPrice, released from the escrow
    assert bal["balances"].get(doc["deposit_txid"], 0) == 0  # one round: the escrow paid out the whole V


def test_down_miner_restarts_and_catches_up(network):
    net, doc = network
    net.start("miner4")
    net.wait_healthy(["miner4"], timeout=120)
    head = wait_for_agreement(net.miner_urls, doc["round_results"][0]["block_height"], timeout=60)
    # kill -9 and restart: the chain is reloaded from its SQLite file, not from peers
    h4 = _get(f"{net.url('miner4')}/chain/head")
    net.stop("miner4", sig=signal.SIGKILL)
    net.specs["miner4"].env["FEDCOIN_PEERS"] = ""  # no peers this time: the head can only come from disk
    net.start("miner4")
    net.wait_healthy(["miner4"], timeout=120)
    assert _get(f"{net.url('miner4')}/chain/head")["hash"] == h4["hash"] == head["hash"]


def test_bad_input_gets_4xx_and_changes_nothing(network):
    net, doc = network
    m = net.url("miner1")
    before = _get(f"{m}/chain/head")
    bal_before = _get(f"{m}/balances")
    block = _get(f"{m}/blocks/1")
    with httpx.Client(timeout=10) as http:

        def check(r, codes=(400, 401, 404, 409, 422)):
            assert r.status_code in codes, (r.status_code, r.text)
            assert set(r.json()) == {"error", "reason", "detail"}, r.text  # one error shape everywhere
            return r

        check(http.post(f"{m}/blocks", content=b"not json", headers={"content-type": "application/json"}))
        check(http.post(f"{m}/blocks", json={"header": {}, "body": {}}))
        tampered = {**block, "header": {**block["header"], "s_avg": [x + 1.0 for x in block["header"]["s_avg"]]}}
        r = check(http.post(f"{m}/blocks", json=tampered))
        # re-posting a known block (the head's own: it neither wins nor loses the tie-break) is answered "known"
        r = http.post(f"{m}/blocks", json=block)
        assert r.status_code == 200 and r.json()["status"] == "known"
        stranger = Identity.generate()
        tx = make_transaction(stranger, Identity.generate().account, 5, 0)
        r = check(http.post(f"{m}/transactions", json=tx.to_dict()))
        assert r.json()["reason"] == "insufficient-balance"
        forged = {**tx.to_dict(), "amount": 6}
        assert check(http.post(f"{m}/transactions", json=forged)).json()["reason"] == "bad-signature"
        check(http.post(f"{m}/transactions", json={"amount": -1}))
        check(http.get(f"{m}/balances/not-an-account"))
        check(http.get(f"{m}/blocks/999999"))
        check(http.post(f"{m}/reports", json={"kind": "posap-report"}))
        rogue = make_report(stranger, task_id="x", prev_hash=before["hash"], shapley=[0.1, 0.9], iterations=1)
        # a well-formed report of a key the chain does not admit as a miner is refused at the door
        assert check(http.post(f"{m}/reports", json=rogue.to_dict())).json()["reason"] == "invalid-input"
        check(http.post(f"{m}/fraud-proofs", json={"index": 0}))
        check(http.post(f"{m}/tasks", json={"task_id": "t"}))
        s = net.url("server")
        check(http.post(f"{s}/tasks", json={"nope": 1}))
        check(
            http.post(
                f"{s}/tasks", json=SignedMessage.create(stranger, "training-request", {"task_id": "z"}).model_dump()
            )
        )
        check(http.get(f"{s}/tasks/unknown"))
        check(
            http.post(
                f"{s}/clients",
                json=SignedMessage.create(
                    stranger, "client-registration", {"url": "ftp://x", "n_samples": 1, "client_type": 0}
                ).model_dump(),
            )
        )
        check(
            http.post(
                f"{s}/clients",
                json=SignedMessage.create(
                    stranger, "client-registration", {"url": "http://x", "n_samples": 0, "client_type": 0}
                ).model_dump(),
            )
        )
        c = net.url("client")
        order = {
            "task_id": "t:r0",
            "round": 0,
            "client": stranger.account,
            "global_uri": "http://x",
            "global_hash": "0" * 64,
        }
        check(
            http.post(f"{c}/train", json=SignedMessage.create(stranger, "train-order", order).model_dump())
        )  # not the server
        check(http.post(f"{c}/train", json={"kind": "train-order"}))
        rq = net.url("requester")
        check(http.post(f"{rq}/tasks", json={"budget": 0}))
        check(http.post(f"{rq}/tasks", json={"budget": 10**30}))
        # cancelling: a finished task cannot be, an unknown one is not found, a stranger may not
        assert check(http.post(f"{rq}/tasks/default/cancel")).status_code == 409
        assert check(http.post(f"{rq}/tasks/nope/cancel")).status_code == 404
        cancel = SignedMessage.create(stranger, "cancel-request", {"task_id": "default"}).model_dump()
        assert check(http.post(f"{s}/tasks/default/cancel", json=cancel)).status_code == 401
        assert check(http.post(f"{s}/tasks/other/cancel", json=cancel)).status_code == 400
    assert _get(f"{m}/chain/head") == before
    assert _get(f"{m}/balances") == bal_before


def _fedcoin(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The `fedcoin` command, as a user runs it."""
    cmd = [sys.executable, "-m", "fedcoin.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **env}, check=False)


def test_the_cli_submits_a_task_and_reads_what_the_apis_say(network):
    """`fedcoin task submit` follows a new task to its paid round; `task status`, `chain head`, `chain blocks`
    and `balance` print what the services answer (run after the other tests: the chain moves on here)."""
    net, _doc = network
    env = {"FEDCOIN_REQUESTER_URL": net.url("requester"), "FEDCOIN_MINER_URL": net.url("miner2")}
    before = {name: _metrics(net.url(name)) for name in ("miner2", "server", "client", "requester")}
    t0 = time.time()
    r = _fedcoin("task", "submit", "--budget", "500000", "--task-id", "by-cli", "--json", env=env, timeout=400)
    assert r.returncode == 0, r.stderr[-2000:]
    print(f"`fedcoin task submit` returned after {time.time() - t0:.1f} s")
    task = json.loads(r.stdout)
    assert task["task_id"] == "by-cli" and task["server"]["status"] == "done"
    (res,) = task["server"]["round_results"]
    rewards = res["payments"]["reward"]
    assert sum(p["amount"] for p in rewards) == task["server"]["prices"]["train"] == 350_000
    r = _fedcoin("task", "status", "by-cli", "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout) == _get(f"{net.url('requester')}/tasks/by-cli")
    head = wait_for_agreement(net.miner_urls, res["block_height"], timeout=60)
    r = _fedcoin("chain", "head", "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["hash"] == head["hash"]
    r = _fedcoin("chain", "blocks", "--start", str(res["block_height"]), "--json", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)[0]["header"]["task_id"] == "by-cli:r0"
    paid = rewards[0]["to"]
    r = _fedcoin("balance", paid, "--json", "--node", net.url("miner3"), env=env)
    assert (
        r.returncode == 0 and json.loads(r.stdout)["balance"] == _get(f"{net.url('miner3')}/balances/{paid}")["balance"]
    )
    r = _fedcoin("task", "status", "nope", env=env)
    assert r.returncode == 2 and "unknown task" in r.stdout
    # the counters moved as the block was mined, on every kind of node
    after = {name: _metrics(net.url(name)) for name in before}
    m0, m1 = before["miner2"], after["miner2"]
    assert m1["fedcoin_chain_height"] >= m0["fedcoin_chain_height"] + 1

    def appended(m: dict[str, float]) -> float:  # received, synced or mined: every block that moved the head
        outcomes = ("extended", "reorg", "sync-extended", "sync-reorg", "mined")
        return sum(v for k, v in m.items() if any(f'outcome="{o}"' in k for o in outcomes))

    assert appended(m1) >= appended(m0) + 1
    assert m1["fedcoin_posap_iterations_total"] > m0["fedcoin_posap_iterations_total"]
    assert m1["fedcoin_block_verify_seconds_count"] >= m0["fedcoin_block_verify_seconds_count"]
    assert after["server"]['fedcoin_tasks{status="done"}'] == before["server"]['fedcoin_tasks{status="done"}'] + 1
    assert after["server"]['fedcoin_round_phase_seconds_count{phase="settle"}'] > before["server"].get(
        'fedcoin_round_phase_seconds_count{phase="settle"}', 0
    )
    assert (
        after["client"]["fedcoin_client_train_seconds_count"] > before["client"]["fedcoin_client_train_seconds_count"]
    )
    assert after["requester"]["fedcoin_requester_tasks"] == before["requester"]["fedcoin_requester_tasks"] + 1
    assert any(k.startswith("fedcoin_http_requests_total{") for k in after["requester"])


def _metrics(url: str) -> dict[str, float]:
    """A service's /metrics as ``{'name{label="v",...}': value}``."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out
