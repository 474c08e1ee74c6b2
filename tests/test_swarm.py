"""The swarm stack is derived from docker-compose.yml (fedcoin.devnet.swarm), not kept as a second copy: every
service but the one-shot init, with the same image, environment, networks and health check, keys as Docker
secrets, the genesis as a Docker config, miners pinned by node label, overlay networks. The deployment itself
runs in `make test-swarm` (CI), on a single-node swarm."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedcoin.devnet.swarm import stack_from_compose, write_stack
from fedcoin.errors import InvalidInput

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
NET = Path("/srv/net")


def test_every_service_but_init_keeps_its_definition():
    stack = stack_from_compose(COMPOSE, NET, clients=3)
    assert stack["version"] == "3.8"
    optional = {n for n, svc in COMPOSE["services"].items() if svc.get("profiles")}
    assert optional == {"prometheus"}
    assert set(stack["services"]) == set(COMPOSE["services"]) - {"init"} - optional
    for name, svc in stack["services"].items():
        src = COMPOSE["services"][name]
        assert svc["image"] == src["image"] and svc["healthcheck"] == src["healthcheck"]
        assert svc["networks"] == src["networks"]
        assert not {"build", "depends_on", "restart", "pull_policy"} & set(svc)
        env, src_env = svc["environment"], src["environment"]
        assert {k: v for k, v in env.items() if k != "FEDCOIN_KEY"} == {
            k: v for k, v in src_env.items() if k != "FEDCOIN_KEY"
        }
        assert svc["configs"] == [{"source": "genesis", "target": src_env["FEDCOIN_GENESIS"]}]
        assert all(not str(v).startswith("net:") for v in svc.get("volumes", []))
        assert svc["deploy"]["restart_policy"]["condition"] == "any"
        assert svc["deploy"]["endpoint_mode"] == "dnsrr"  # no virtual IP: IPVS is not on every kernel
    assert stack["services"]["client"]["deploy"]["replicas"] == 3
    assert stack["configs"] == {"genesis": {"file": "/srv/net/genesis.json"}}


def test_keys_are_secrets_and_miners_are_pinned():
    stack = stack_from_compose(COMPOSE, NET)
    keyed = {n for n, s in COMPOSE["services"].items() if "FEDCOIN_KEY" in (s.get("environment") or {})}
    assert keyed == {"miner1", "miner2", "miner3", "miner4", "server", "requester"}
    for name in keyed:
        svc = stack["services"][name]
        key = Path(COMPOSE["services"][name]["environment"]["FEDCOIN_KEY"]).name
        (secret,) = svc["secrets"]
        assert secret == {"source": f"{name}-key", "target": key, "uid": "10001", "gid": "10001", "mode": 0o400}
        assert svc["environment"]["FEDCOIN_KEY"] == f"/run/secrets/{key}"
        assert stack["secrets"][f"{name}-key"] == {"file": f"/srv/net/{key}"}
        assert not any("KEY" in k and v != f"/run/secrets/{key}" for k, v in svc["environment"].items())
    assert "secrets" not in stack["services"]["client"]  # each replica makes its clients' keys in its own volume
    for i in range(1, 5):
        miner = stack["services"][f"miner{i}"]
        assert miner["deploy"]["placement"]["constraints"] == [f"node.labels.fedcoin.miner{i} == true"]
        assert miner["ports"] == [{"target": 8100 + i, "published": 8100 + i, "protocol": "tcp", "mode": "host"}]
        assert miner["volumes"] == [f"miner{i}:/data"]
    assert set(stack["networks"]) == set(COMPOSE["networks"])
    assert all(n == {"driver": "overlay", "attachable": True} for n in stack["networks"].values())
    assert "net" not in stack["volumes"] and {"miner1", "server", "requester"} <= set(stack["volumes"])


def test_the_written_stack_is_yaml_that_reads_back(tmp_path):
    out = tmp_path / "stack.yml"
    stack = write_stack(ROOT / "docker-compose.yml", out, tmp_path / "net")
    assert out.read_text().startswith("# Derived from docker-compose.yml")
    assert yaml.safe_load(out.read_text()) == stack


def test_not_the_testbed_is_refused():
    with pytest.raises(InvalidInput):
        stack_from_compose({"services": {"web": {"image": "x"}}}, NET)
