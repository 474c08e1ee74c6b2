"""Attacks on a live local-process network (what `fedcoin demo --serve` runs), over HTTP.

After the requester's default task has settled, an attacker with a fresh key (no funds, no
computation), and a rogue admitted miner that computes nothing, try every attack class of the
threat model against the miners' public API: the lazy copier, the Sybil reporter, the free-block
forker, the double spender and the thread killers. Each attempt must get a 4xx with its reason,
and every honest miner's head, balances and supply must stay as they were; finally a second
task must still be mined and settled, so no miner's PoSap worker was stopped by any input.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from fedcoin.chain.blocks import Block
from fedcoin.chain.genesis import GenesisConfig
from fedcoin.chain.identity import Identity
from fedcoin.chain.reports import make_report
from fedcoin.chain.tasks import make_task
from fedcoin.chain.transactions import make_transaction
from fedcoin.consensus.mining import build_block, seal_block
from fedcoin.devnet.local import LocalNetwork, plan_network
from fedcoin.devnet.watch import wait_for_agreement, wait_for_task
from fedcoin.ledger.chain import Chain

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

BASE_PORT = 18600


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    d = tmp_path_factory.mktemp("attacked")
    specs = plan_network(
        d, miners=4, client_types="0-9", base_port=BASE_PORT, budget=1_000_000, rounds=1, initial_difficulty=0.1
    )
    net = LocalNetwork(d, specs)
    try:
        net.start_all()
        net.wait_healthy(list(net.specs), timeout=180)
        doc = wait_for_task(net.url("server"), "default", timeout=600)
        head = wait_for_agreement(_miners(net), doc["round_results"][-1]["block_height"])
        yield net, d, head
    finally:
        net.stop_all()


def _miners(net: LocalNetwork) -> list[str]:
    return [s.url for s in net.specs.values() if s.role == "miner"]


def _view(net: LocalNetwork) -> list[tuple]:
    """What no attack may change, on every miner."""
    out = []
    with httpx.Client(timeout=10) as http:
        for m in _miners(net):
            head = http.get(f"{m}/chain/head").json()
            bal = http.get(f"{m}/balances").json()
            out.append((head["hash"], head["height"], head["work"], bal["balances"], bal["supply"]))
    return out


def _rejected(r: httpx.Response, reason: str | None = None) -> dict:
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error", "reason", "detail"}, body
    if reason is not None:
        assert body["reason"] == reason, body
    return body


def _block1(net: LocalNetwork) -> Block:
    with httpx.Client(timeout=10) as http:
        return Block.from_dict(http.get(f"{_miners(net)[0]}/blocks/1").json())


def test_lazy_copier_and_fabricated_work_are_rejected(network):
    net, d, _head = network
    before = _view(net)
    honest = _block1(net)
    genesis = GenesisConfig.load(d / "genesis.json")
    base = Chain(genesis)  # the attacker's view: a rival block at height 1 on the same task
    task = honest.body.task
    assert task is not None
    rogue = next(
        Identity.load(d / f"miner{i}.key")
        for i in range(1, 5)
        if Identity.load(d / f"miner{i}.key").account != honest.header.winner
    )
    reports = [r for r in honest.body.reports if r.miner != rogue.account]
    s_bar = honest.header.s_avg
    more = honest.header.iterations + 100  # more work than the honest block: it would win if believed
    with httpx.Client(timeout=30) as http:
        m = _miners(net)[0]
        # 1. the paper's lazy copy: S = S̄ copied from gossip, a claimed iteration count, no work
        lazy = seal_block(base, task=task, winner=rogue, s_winner=s_bar, s_avg=s_bar, iterations=10**9, reports=reports)
        _rejected(http.post(f"{m}/blocks", json=lazy.to_dict()), "bad-work-root")
        # 2. a fresh key copying the same: not an admitted miner
        stranger = Identity.generate()
        free = seal_block(base, task=task, winner=stranger, s_winner=s_bar, s_avg=s_bar, iterations=10**9)
        _rejected(http.post(f"{m}/blocks", json=free.to_dict()), "unknown-miner")
        # 3. a fabricated work log: every leaf S̄ itself (exact mean and efficiency hold), more leaves
        fake = build_block(base, task=task, winner=rogue, leaves=np.tile(s_bar, (more, 1)), reports=reports)
        _rejected(http.post(f"{m}/blocks", json=fake.to_dict()), "bad-leaf")
        for other in _miners(net)[1:]:  # the fraud proof reached the others: they refuse it outright
            deadline = time.time() + 20
            while True:
                r = http.post(f"{other}/blocks", json=fake.to_dict())
                body = _rejected(r)
                if body["reason"] == "fraudulent-block" or time.time() > deadline:
                    break
                time.sleep(0.5)
            assert body["reason"] == "fraudulent-block", body
    assert _view(net) == before


def test_sybil_reports_and_thread_killers_get_4xx(network):
    net, d, _head = network
    before = _view(net)
    honest = _block1(net)
    task = honest.body.task
    assert task is not None
    admitted = Identity.load(d / "miner2.key")
    with httpx.Client(timeout=10) as http:
        m = net.url("miner1")
        stranger = Identity.generate()
        sybil = make_report(
            stranger,
            task_id=task.task_id,
            prev_hash=honest.header.prev_hash,
            shapley=[1.0] * task.n_players,
            iterations=10**6,
        )
        _rejected(http.post(f"{m}/reports", json=sybil.to_dict()))
        greedy = make_report(
            admitted,
            task_id=task.task_id,
            prev_hash=honest.header.prev_hash,
            shapley=[1.0] * task.n_players,
            iterations=10**12,
        )
        assert "allows" in _rejected(http.post(f"{m}/reports", json=greedy.to_dict()))["detail"]
        huge = {**greedy.to_dict(), "iterations": 10**309}
        _rejected(http.post(f"{m}/reports", json=huge))
        _rejected(http.post(f"{m}/reports", json={"miner": admitted.account, "shapley": "x"}))
        _rejected(http.post(f"{m}/fraud-proofs", json={"index": -1}))
        status = http.get(f"{m}/status")
        assert status.status_code == 200, status.text
    assert _view(net) == before


def test_free_blocks_and_double_spends_are_rejected(network):
    net, d, _head = network
    before = _view(net)
    genesis = GenesisConfig.load(d / "genesis.json")
    requester = Identity.load(d / "requester.key")
    with httpx.Client(timeout=10) as http:
        m = net.url("miner3")
        head = http.get(f"{m}/chain/head").json()
        blocks = [Block.from_dict(b) for b in http.get(f"{m}/blocks?start=0&end={head['height']}").json()]
    view = Chain(genesis)
    view.add_chain(blocks[1:])
    forger = Identity.generate()
    own_task = make_task(
        forger,
        task_id="free:r0",
        round=0,
        clients=[forger.account],
        train_price=0,
        sap_price=0,
        published_at=blocks[-1].header.timestamp + 1,
        content_hash="ab" * 32,
        content_uri="http://127.0.0.1:9/none",
    )
    # the requester's funds sent to a merchant in one block, to the attacker in a private one
    nonce = view.nonce(requester.account)
    spend = make_transaction(requester, forger.account, 10**6, nonce)
    free = seal_block(
        view, task=own_task, winner=forger, s_winner=[1.0], s_avg=[1.0], iterations=1, transactions=[spend]
    )
    # a rival to block 1 on the genesis, settling the real task under a fresh key and spending the
    # requester's funds a second time
    first = blocks[1].body.task
    assert first is not None
    rival = seal_block(
        Chain(genesis),
        task=first,
        winner=forger,
        s_winner=[1.0] * first.n_players,
        s_avg=[1.0] * first.n_players,
        iterations=10**9,
        transactions=[make_transaction(requester, forger.account, 10**6, 1)],
    )
    with httpx.Client(timeout=10) as http:
        _rejected(http.post(f"{m}/blocks", json=free.to_dict()), "unknown-server")
        _rejected(http.post(f"{m}/blocks", json=rival.to_dict()), "unknown-miner")
    assert _view(net) == before


def test_network_still_mines_after_the_attacks(network):
    net, d, _head = network
    # runs last in the module: every earlier attack is behind it
    with httpx.Client(timeout=10) as http:
        r = http.post(f"{net.url('requester')}/tasks", json={"budget": 100_000, "rounds": 1, "task_id": "after"})
        assert r.status_code == 202, r.text
    doc = wait_for_task(net.url("server"), "after", timeout=600)
    head = wait_for_agreement(_miners(net), doc["round_results"][-1]["block_height"])
    assert head["height"] >= 2
    with httpx.Client(timeout=10) as http:
        bal = http.get(f"{_miners(net)[0]}/balances").json()
    assert sum(bal["balances"].values()) == bal["supply"]
    assert Path(d / "genesis.json").exists()
