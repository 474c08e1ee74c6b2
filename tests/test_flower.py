"""Integration: the Flower example (examples/flower) on Flower's deployment runtime — flower-superlink and
ten flower-supernode processes on loopback, `flwr run` — with its clients paid on a local FedCoin network
(fedcoin.flower.demo, what `make flower-demo` runs), one round."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcoin.consensus.payments import split_budget

pytest.importorskip("flwr", reason="the flower extra (make setup installs it)")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
APP = Path(__file__).resolve().parents[1] / "examples" / "flower"


def test_a_flower_round_pays_the_flower_clients_by_shapley_value(tmp_path):
    from fedcoin.flower.demo import run_flower_demo

    out = run_flower_demo(APP, tmp_path, clients=10, rounds=1, budget=1_000_000, base_port=18800)
    print(f"flwr run {out['flwr_run_seconds']:.1f} s, total {out['total_seconds']:.1f} s")
    (res,) = out["rounds"]
    accounts = out["accounts"]  # client i holds 10 - i labels
    assert sorted(res["clients"]) == sorted(accounts)  # every Flower client's update was paid for, as its own
    rewards = {p["to"]: p["amount"] for p in res["payments"]["reward"]}
    assert set(rewards) <= set(accounts) and rewards
    assert sum(rewards.values()) == split_budget(1_000_000)[0] == 700_000  # all of TrainPrice, to the clients
    assert out["balances"] == {a: rewards.get(a, 0) for a in accounts}  # on chain, as the block says
    shapley = dict(zip(res["clients"], res["shapley"], strict=True))
    assert shapley[accounts[0]] > shapley[accounts[9]]  # all labels above one label
    assert rewards.get(accounts[0], 0) > rewards.get(accounts[9], 0)
    metrics = out["train_metrics"]["1"]  # the round's Flower metrics carry the block's S̄ and rewards
    assert metrics["fedcoin-block-height"] == res["block_height"]
    assert metrics["fedcoin-shapley"] == res["shapley"]
    assert metrics["fedcoin-rewards"] == [rewards.get(c, 0) for c in res["clients"]]
    assert 0.1 < res["metrics"]["accuracy"] <= 1.0
