"""Load and soak of one local network (`scripts/load_test.py`, `scripts/soak.py`), small and fast.

The slow tests start the whole network as local processes (as `fedcoin demo`): a short load
test (every phase a few seconds) must see no 5xx, lose nothing and move some requests; a
3-task soak must settle every task on every miner with supply conserved. The fast tests
cover what the scripts rest on: extra genesis allocations, and their statistics.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from fedcoin.chain.genesis import GenesisConfig
from fedcoin.chain.identity import Identity
from fedcoin.devnet.testnet import init_testnet
from fedcoin.errors import InvalidInput

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
LOAD_PORT = 19600  # uses +0..2 and +101..104
SOAK_PORT = 19800


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses resolve their module by name
    spec.loader.exec_module(mod)
    return mod


load_test = _load("load_test")
soak = _load("soak")


# --- fast --------------------------------------------------------------------------------------
def test_init_testnet_funds_extra_accounts_in_a_new_genesis(tmp_path):
    users = [Identity.from_seed(bytes([40 + i]) * 32).account for i in range(3)]
    out = init_testnet(tmp_path, miners=2, allocations={u: 1_000 + i for i, u in enumerate(users)})
    g = GenesisConfig.load(out["genesis"])
    assert {u: g.allocations[u] for u in users} == {users[0]: 1_000, users[1]: 1_001, users[2]: 1_002}
    assert g.allocations[out["requester"]] == 10**12  # the requester keeps its funds
    # idempotent: the same call reuses the genesis; funded accounts pass the check, others do not
    assert init_testnet(tmp_path, miners=2, allocations={users[0]: 5})["genesis_hash"] == out["genesis_hash"]
    assert init_testnet(tmp_path, miners=2)["genesis_hash"] == out["genesis_hash"]
    stranger = Identity.from_seed(bytes([99]) * 32).account
    with pytest.raises(InvalidInput, match="does not fund"):
        init_testnet(tmp_path, miners=2, allocations={stranger: 1})


def test_init_testnet_allocations_checked(tmp_path):
    with pytest.raises(InvalidInput, match="requester"):
        req = Identity.load_or_create(tmp_path / "a" / "requester.key").account
        init_testnet(tmp_path / "a", allocations={req: 1})
    assert not (tmp_path / "a" / "genesis.json").exists()
    with pytest.raises(Exception, match="allocation"):
        init_testnet(tmp_path / "b", allocations={"not-an-account": 1})
    assert not (tmp_path / "b" / "genesis.json").exists()


def test_statistics_helpers():
    assert load_test.percentile([], 50) is None
    xs = [float(i) for i in range(1, 101)]
    assert load_test.percentile(xs, 50) == 50.0 and load_test.percentile(xs, 99) == 99.0
    assert load_test.percentile(xs, 100) == 100.0 and load_test.percentile([7.0], 99) == 7.0
    assert soak.slope([1.0]) is None
    assert soak.slope([5.0, 5.0, 5.0]) == 0.0
    assert soak.slope([1.0, 3.0, 5.0, 7.0]) == pytest.approx(2.0)


def test_transfers_stay_within_the_mempool_limits():
    from fedcoin.ledger.mempool import MAX_NONCE_GAP

    senders = [load_test.sender_identity(i) for i in range(3)]
    txs = load_test.signed_transfers(senders, MAX_NONCE_GAP + 1)
    assert len(txs) == 3 * (MAX_NONCE_GAP + 1) and len({t[0] for t in txs}) == len(txs)
    keys = [k for _, _, k in txs]
    assert [k[0] for k in keys[:3]] == [s.account for s in senders]  # interleaved over senders
    for s in senders:  # each sender's nonces consecutive from 0, at most the allowed gap ahead
        assert [n for a, n, _ in keys if a == s.account] == list(range(MAX_NONCE_GAP + 1))
    with pytest.raises(SystemExit):
        load_test.parse_args(["--senders", "1000"])


# --- slow: the network as local processes --------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_load_no_5xx_nothing_lost(tmp_path):
    args = load_test.parse_args(
        ["--quick", "--duration", "2", "--senders", "10", "--tasks", "2", "--base-port", str(LOAD_PORT)]
    )
    args.workdir = str(tmp_path)
    out = load_test.run(args)
    for name, phase in out["phases"].items():
        assert phase["server_errors"] == 0 and phase["transport_errors"] == 0, (name, phase["status_counts"])
        assert phase["requests"] > 0 and phase["throughput_rps"] > 0, name
    assert out["phases"]["reads"]["status_counts"] == {"200": out["phases"]["reads"]["requests"]}
    assert out["lost_transfers"]["accepted"] > 0 and out["lost_transfers"]["ok"], out["lost_transfers"]
    assert out["lost_tasks"]["accepted"] == 2 and out["lost_tasks"]["ok"], out["lost_tasks"]
    assert set(out["rss_after"]) == {"miner1", "miner2", "miner3", "miner4", "server", "client", "requester"}
    assert all(v["VmHWM_kb"] > 0 for v in out["rss_after"].values())
    assert not out["services_exited"] and out["ok"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_soak_three_tasks_settle_and_conserve_supply(tmp_path):
    args = soak.parse_args(["--tasks", "3", "--base-port", str(SOAK_PORT), "--workdir", str(tmp_path)])
    out = soak.soak(args)
    rows, checks = out["tasks"], out["summary"]["checks"]
    assert [r["status"] for r in rows] == ["done"] * 3
    assert [r["block_height"] for r in rows] == [1, 2, 3]  # one block per one-round task
    assert checks["all_tasks_done"] and checks["all_settled_on_every_miner"] and checks["miners_agree"]
    assert checks["supply_conserved"] and all(r["conservation"]["ok"] for r in rows)
    assert all(r["rss_kb"][f"miner{k}"] > 0 for r in rows for k in range(1, 5))
    assert out["summary"]["ok"]
