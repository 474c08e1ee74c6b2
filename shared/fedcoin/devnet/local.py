"""A whole FedCoin network as local processes: the embedded default behind ``fedcoin demo``.

:func:`plan_network` lays out the services (ports, state directories, the
``FEDCOIN_*`` settings of each, as in docker-compose) on top of a testnet's
shared files (:func:`fedcoin.devnet.testnet.init_testnet`). :class:`LocalNetwork`
starts them (uvicorn processes on 127.0.0.1), waits for their health checks,
and stops them.

Lifecycle: used as a context manager, a :class:`LocalNetwork` turns SIGTERM
and SIGHUP into an orderly exit (like Ctrl-C), so every service gets SIGTERM
and shuts down gracefully (uvicorn runs the service's shutdown: the miner
stops its worker and closes its SQLite files). Each service is also started
so that the kernel sends it SIGTERM when the process that started it dies
(Linux ``PR_SET_PDEATHSIG``), so even a parent killed with SIGKILL or crashing
leaves no node behind holding its port.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from fedcoin.errors import FedcoinError, InvalidInput
from fedcoin.node.settings import parse_types, service_environment

from .testnet import DEFAULT_DIFFICULTY, DEFAULT_RETARGET_WINDOW, DEFAULT_TARGET_BLOCK_MS, init_testnet


@dataclass
class NodeSpec:
    name: str
    role: str
    port: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def plan_network(
    directory: Path,
    *,
    miners: int = 4,
    client_types: str = "0-9",
    base_port: int = 8000,
    budget: int = 1_000_000,
    rounds: int = 1,
    default_task: bool = True,
    dataset: str = "fashion-mnist",
    dataset_dir: str | None = None,
    extra_env: dict[str, str] | None = None,
    initial_difficulty: float = DEFAULT_DIFFICULTY,
    target_block_ms: int = DEFAULT_TARGET_BLOCK_MS,
    retarget_window: int = DEFAULT_RETARGET_WINDOW,
) -> list[NodeSpec]:
    """Ports: requester base, server base+1, client base+2, miners base+101...; as in docker-compose.

    ``initial_difficulty``, ``target_block_ms`` and ``retarget_window`` go to a new
    network's genesis (:func:`init_testnet`); a huge ``retarget_window`` keeps D fixed.
    """
    if not 1 <= miners <= 64:
        raise InvalidInput("between 1 and 64 miners")
    net = init_testnet(
        directory,
        initial_difficulty=initial_difficulty,
        target_block_ms=target_block_ms,
        retarget_window=retarget_window,
        miners=miners,
    )
    miner_urls = [f"http://127.0.0.1:{base_port + 101 + i}" for i in range(miners)]
    common = {
        "FEDCOIN_GENESIS": net["genesis"],
        "FEDCOIN_MINERS": ",".join(miner_urls),
        "FEDCOIN_DATASET": dataset,
        "FEDCOIN_SERVER_URL": f"http://127.0.0.1:{base_port + 1}",
        **(extra_env or {}),
    }
    if dataset_dir:
        common["FEDCOIN_DATASET_DIR"] = str(dataset_dir)
    specs = [
        NodeSpec(
            f"miner{i + 1}",
            "miner",
            base_port + 101 + i,
            {"FEDCOIN_PEERS": ",".join(miner_urls), "FEDCOIN_KEY": net["miner_keys"][i]},
        )
        for i in range(miners)
    ]
    specs.append(
        NodeSpec(
            "server",
            "server",
            base_port + 1,
            {"FEDCOIN_MIN_CLIENTS": str(len(parse_types(client_types))), "FEDCOIN_KEY": net["server_key"]},
        )
    )
    specs.append(NodeSpec("client", "client", base_port + 2, {"FEDCOIN_CLIENT_TYPES": client_types}))
    specs.append(
        NodeSpec(
            "requester",
            "requester",
            base_port,
            {
                "FEDCOIN_KEY": net["requester_key"],
                "FEDCOIN_DEFAULT_TASK": "on" if default_task else "off",
                "FEDCOIN_BUDGET": str(budget),
                "FEDCOIN_ROUNDS": str(rounds),
            },
        )
    )
    for s in specs:
        s.env = {
            **common,
            **s.env,
            "FEDCOIN_DATA_DIR": str(directory / s.name),
            "FEDCOIN_ADVERTISE_URL": s.url,
            "FEDCOIN_PORT": str(s.port),
        }
    return specs


PR_SET_PDEATHSIG = 1
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask the kernel to SIGTERM this (child) process when its parent dies (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    parent = os.getppid()
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


class Stopped(SystemExit):
    """Raised in the main thread when a stop signal (SIGTERM, SIGHUP) arrives."""


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped(128 + signum)


class LocalNetwork:
    """Start, watch and stop the services of :func:`plan_network` as local processes."""

    def __init__(self, directory: str | Path, specs: list[NodeSpec]) -> None:
        self.directory = Path(directory)
        self.specs = {s.name: s for s in specs}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._old_handlers: dict[int, Any] = {}
        (self.directory / "logs").mkdir(parents=True, exist_ok=True)

    def url(self, name: str) -> str:
        return self.specs[name].url

    @property
    def miner_urls(self) -> list[str]:
        return [s.url for s in self.specs.values() if s.role == "miner"]

    def start(self, name: str) -> None:
        s = self.specs[name]
        env = service_environment({**os.environ, **s.env, "PYTHONUNBUFFERED": "1"})
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            f"services.{s.role}.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(s.port),
            "--log-level",
            "warning",
        ]
        with open(self.directory / "logs" / f"{name}.log", "ab") as log:  # the child keeps its own copy
            self.procs[name] = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def start_all(self, order: list[str] | None = None) -> None:
        for name in order or list(self.specs):
            self.start(name)

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        p = self.procs.pop(name, None)
        if p is not None and p.poll() is None:
            self._terminate(p, sig, timeout)

    @staticmethod
    def _terminate(p: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, sig)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=5)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def wait_healthy(self, names: list[str] | None = None, timeout: float = 120.0) -> None:
        deadline = time.time() + timeout
        pending = list(names or self.specs)
        with httpx.Client(timeout=2.0) as http:
            while pending:
                for name in list(pending):
                    p = self.procs.get(name)
                    if p is not None and p.poll() is not None:
                        raise FedcoinError(
                            f"{name} exited with {p.returncode}; see {self.directory / 'logs' / (name + '.log')}"
                        )
                    try:
                        if http.get(f"{self.url(name)}/health").status_code == 200:
                            pending.remove(name)
                    except httpx.HTTPError:
                        pass
                if pending and time.time() > deadline:
                    raise FedcoinError(f"not healthy after {timeout:.0f} s: {', '.join(pending)}")
                time.sleep(0.3)

    def __enter__(self) -> LocalNetwork:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._old_handlers[sig] = signal.signal(sig, _raise_stopped)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop_all()
        finally:
            for sig, old in self._old_handlers.items():
                signal.signal(sig, old)
            self._old_handlers.clear()
