"""Fault injection on a local-process network (``fedcoin testbed faults --backend local``).

The default suite runs three scenarios end to end on a live local network: a miner killed with
SIGKILL while it mines, and the FL server killed with SIGKILL during its round's training and
during its settlement. Each must end
with every node answering, the task settled, the miners on one head, no confirmed transaction
lost, no client paid twice and the supply conserved. ``make test-faults`` runs every scenario on
the compose testbed (Docker), and ``make test-faults-local`` on local processes.

The invariant checks themselves are shown to fail on a network that breaks them.
"""

from __future__ import annotations

import pytest

from fedcoin.devnet.faults import SCENARIOS, LocalBackend, Unsupported, check_invariants, run_scenario
from fedcoin.devnet.local import LocalNetwork, plan_network
from fedcoin.errors import FedcoinError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

BASE_PORT = 19600


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    specs = plan_network(d, miners=4, base_port=BASE_PORT, default_task=False)
    with LocalNetwork(d, specs) as net:
        net.start_all()
        net.wait_healthy(timeout=180)
        yield net


@pytest.mark.parametrize("scenario", ["kill9-miner", "kill-server", "kill-server-settling"])
def test_the_network_recovers_and_keeps_its_invariants(network, scenario):
    out = run_scenario(LocalBackend(network), network.url("requester"), network.url("server"), scenario)
    print(out.to_dict())
    assert out.status == "passed", out.detail
    assert out.timings["responsive_s"] <= 20.0


def test_a_disconnect_needs_docker(network):
    backend = LocalBackend(network)
    with pytest.raises(Unsupported):
        backend.disconnect("miner1")
    assert set(SCENARIOS) >= {
        "kill9-miner",
        "pause-miner",
        "restart-miner",
        "kill-server",
        "kill-server-settling",
        "kill-during-write",
        "partition",
        "partition-minority",
    }


def test_the_invariant_check_fails_on_a_lost_transaction(network):
    import httpx

    backend = LocalBackend(network)
    with httpx.Client(timeout=10) as http:
        check_invariants(backend, http, set())  # holds on the live network
        with pytest.raises(FedcoinError, match="lost"):
            check_invariants(backend, http, {"ab" * 32})  # a transaction no miner has
