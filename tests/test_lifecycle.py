"""Lifecycle of a local-process network: no node outlives the process that started it.

A driver process starts two miners with :class:`fedcoin.devnet.local.LocalNetwork` (as
``fedcoin demo`` does) and waits. Stopping the driver with SIGTERM or SIGHUP must stop every
miner gracefully (the driver exits 128 + signal), and killing the driver with SIGKILL, which
runs no cleanup at all, must still end every miner (the kernel signals them when their parent
dies). Afterwards no miner process is left and every port is free again.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[1]
DRIVER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from fedcoin.devnet.local import LocalNetwork, plan_network

    d, base = Path(sys.argv[1]), int(sys.argv[2])
    specs = plan_network(d, miners=2, base_port=base, default_task=False)
    with LocalNetwork(d, specs) as net:
        net.start_all(["miner1", "miner2"])
        net.wait_healthy(["miner1", "miner2"], timeout=120)
        pids = {name: p.pid for name, p in net.procs.items()}
        (d / "pids.json").write_text(json.dumps({"pids": pids, "ports": [net.specs[n].port for n in pids]}))
        while True:
            time.sleep(3600)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its new parent) counts as gone
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _start_driver(tmp_path: Path, base: int) -> tuple[subprocess.Popen[bytes], dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path), str(base)], cwd=ROOT, env=env)
    deadline = time.time() + 150
    info = tmp_path / "pids.json"
    while not info.exists():
        assert driver.poll() is None, f"driver exited with {driver.returncode}"
        assert time.time() < deadline, "the miners did not come up"
        time.sleep(0.3)
    time.sleep(0.2)
    return driver, json.loads(info.read_text())


def _wait_gone(pids: list[int], ports: list[int], within: float) -> float:
    t0 = time.time()
    while any(_alive(p) for p in pids) or not all(_port_free(p) for p in ports):
        assert time.time() - t0 < within, f"still running after {within} s: {[p for p in pids if _alive(p)]}"
        time.sleep(0.1)
    return time.time() - t0


@pytest.mark.parametrize(
    ("sig", "base"),
    [(signal.SIGTERM, 18700), (signal.SIGHUP, 18720), (signal.SIGKILL, 18740)],
    ids=["sigterm", "sighup", "sigkill"],
)
def test_no_node_outlives_the_demo_process(tmp_path, sig, base):
    driver, info = _start_driver(tmp_path, base)
    pids = list(info["pids"].values())
    assert all(_alive(p) for p in pids)
    for pid in pids:  # every node runs with its malloc arenas capped (fedcoin.node.settings.SERVICE_ENV)
        assert b"MALLOC_ARENA_MAX=2" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    driver.send_signal(sig)
    code = driver.wait(timeout=60)
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 128 + sig)
    took = _wait_gone(pids, info["ports"], within=30)
    print(f"{signal.Signals(sig).name}: every miner gone {took:.2f} s after the driver exited")
    # a graceful stop closes the SQLite files cleanly: the WAL is checkpointed into the database
    if sig != signal.SIGKILL:
        for name in info["pids"]:
            assert not (tmp_path / name / "chain.sqlite-wal").exists() or (
                (tmp_path / name / "chain.sqlite-wal").stat().st_size == 0
            )
