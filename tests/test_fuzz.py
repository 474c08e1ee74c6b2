"""Fuzzing every service against its own OpenAPI schema (schemathesis), in-process over ASGI.

For each service (miner, FL server, FL client node, requester) schemathesis generates requests
from the service's ``/openapi.json`` (valid and invalid bodies, paths and query parameters) for
every operation, a bounded number of examples each (``FEDCOIN_FUZZ_EXAMPLES``, 25 by default).
No answer may be a server error: the only 5xx allowed is 503 ``unavailable``, the documented
answer when a request needs a peer that cannot be reached (every peer here is unreachable).
Every 4xx and that 503 must have the one error shape ``{"error", "reason", "detail"}``.
Afterwards the miner's PoSap worker thread must still be alive: no input crashed a background
loop. Peers are unreachable addresses, so nothing leaves the process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

from fedcoin.devnet.testnet import init_testnet

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

EXAMPLES = int(os.environ.get("FEDCOIN_FUZZ_EXAMPLES", "25"))
NOWHERE = "http://127.0.0.1:9"  # discard port: connections are refused at once
ROLES = ("miner", "server", "client", "requester")


def _env(role: str, net: dict[str, Any], d: Path) -> dict[str, str]:
    common = {
        "FEDCOIN_GENESIS": net["genesis"],
        "FEDCOIN_DATA_DIR": str(d / role),
        "FEDCOIN_MINERS": NOWHERE,
        "FEDCOIN_SERVER_URL": NOWHERE,
        "FEDCOIN_ADVERTISE_URL": f"http://127.0.0.1:80{ROLES.index(role)}",
    }
    extra = {
        "miner": {"FEDCOIN_KEY": net["miner_keys"][0], "FEDCOIN_PEERS": NOWHERE},
        "server": {"FEDCOIN_KEY": net["server_key"]},
        "client": {"FEDCOIN_CLIENT_TYPES": "0-1", "FEDCOIN_SAMPLES_PER_CLIENT": "50"},
        "requester": {"FEDCOIN_KEY": net["requester_key"], "FEDCOIN_DEFAULT_TASK": "off"},
    }[role]
    return {**common, **extra}


def _create(role: str, env: dict[str, str]) -> Any:
    import importlib

    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return importlib.import_module(f"services.{role}.app").create_app()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def apps(tmp_path_factory) -> Iterator[dict[str, Any]]:
    d = tmp_path_factory.mktemp("fuzz")
    net = init_testnet(d / "net", miners=2)
    apps = {role: _create(role, _env(role, net, d)) for role in ROLES}
    host = apps["miner"].state.host  # its PoSap worker runs while the miner is fuzzed
    stop = threading.Event()
    worker = threading.Thread(target=host.node.run, args=(stop,), name="posap", daemon=True)
    worker.start()
    apps["miner"].state.worker = worker
    yield apps
    stop.set()
    worker.join(10)


def _check_shape(response: Any, case: Any) -> None:
    status = response.status_code
    where = f"{case.method} {case.formatted_path} -> {status}: {response.text[:300]}"
    if status >= 400:
        body = response.json()
        assert set(body) == {"error", "reason", "detail"}, where
        assert status < 500 or (status == 503 and body["reason"] == "unavailable"), where


@pytest.mark.parametrize("role", ROLES)
def test_no_input_gets_a_5xx_or_a_bad_error_shape(apps, role):
    app = apps[role]
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list[str] = []
    seen = 0

    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    for operation, mode in [(o.ok(), m) for o in schema.get_all_operations() for m in modes]:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            nonlocal seen
            response = case.call()
            seen += 1
            try:
                _check_shape(response, case)
            except AssertionError as exc:
                failures.append(str(exc)[:400])

        try:
            run()
        except Unsatisfiable:  # no invalid input exists for an operation without parameters or body
            continue
    assert seen > 0
    assert failures == [], "\n".join(failures[:20])
    # no input ended the miner's PoSap worker
    worker = getattr(app.state, "worker", None)
    assert worker is None or worker.is_alive()
