"""A whole FedCoin network as local processes: the embedded default behind ``fedcoin demo``.

:func:`init_testnet` writes what every node of a new network shares: the
requester's key (funded at genesis) and ``genesis.json``. :class:`LocalNetwork`
starts the services (uvicorn processes on 127.0.0.1), waits for their health
checks, and stops them. The same environment variables configure the services
in docker-compose.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .blocks import ChainParams, GenesisConfig
from .errors import FedcoinError, InvalidInput
from .identity import Identity

DEFAULT_REQUESTER_FUNDS = 10**12


def init_testnet(directory: str | Path, *, initial_difficulty: float = 5e-2, funds: int = DEFAULT_REQUESTER_FUNDS,
                 chain_id: str = "fedcoin-testnet", target_block_ms: int = 30_000, retarget_window: int = 10) -> dict:
    """Create (or reuse) ``requester.key`` and ``genesis.json`` in ``directory``; idempotent."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    key = d / "requester.key"
    genesis_path = d / "genesis.json"
    requester = Identity.load_or_create(key)
    if genesis_path.exists():
        genesis = GenesisConfig.from_dict(json.loads(genesis_path.read_text()))
        if requester.account not in genesis.allocations:
            raise InvalidInput(f"{genesis_path} does not fund {key}")
    else:
        genesis = GenesisConfig(
            params=ChainParams(chain_id=chain_id, initial_difficulty=initial_difficulty, target_block_ms=target_block_ms,
                               retarget_window=retarget_window),
            allocations={requester.account: funds},
            timestamp=int(time.time() * 1000),
        )
        tmp = genesis_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(genesis.model_dump(), indent=2))
        tmp.replace(genesis_path)
    return {"genesis": str(genesis_path), "requester_key": str(key), "requester": requester.account,
            "genesis_hash": genesis.block().hash}


def parse_types(spec: str) -> list[int]:
    """Client quality types from "0-9", "0,3,5" or "0-9,0-9" (one logical client per entry)."""
    out: list[int] = []
    try:
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part:
                a, b = part.split("-", 1)
                out.extend(range(int(a), int(b) + 1))
            else:
                out.append(int(part))
    except ValueError as exc:
        raise InvalidInput(f"client types must look like 0-9 or 0,3,5, got {spec!r}") from exc
    if not out or any(t < 0 for t in out):
        raise InvalidInput(f"client types must list non-negative types, got {spec!r}")
    return out


@dataclass
class NodeSpec:
    name: str
    role: str
    port: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def plan_network(directory: Path, *, miners: int = 4, client_types: str = "0-9", base_port: int = 8000,
                 budget: int = 1_000_000, rounds: int = 1, default_task: bool = True, dataset: str = "fashion-mnist",
                 dataset_dir: str | None = None, extra_env: dict[str, str] | None = None,
                 initial_difficulty: float = 5e-2, target_block_ms: int = 30_000,
                 retarget_window: int = 10) -> list[NodeSpec]:
    """Ports: requester base, server base+1, client base+2, miners base+101...; as in docker-compose.

    ``initial_difficulty``, ``target_block_ms`` and ``retarget_window`` go to a new
    network's genesis (:func:`init_testnet`); a huge ``retarget_window`` keeps D fixed.
    """
    if not 1 <= miners <= 64:
        raise InvalidInput("between 1 and 64 miners")
    net = init_testnet(directory, initial_difficulty=initial_difficulty, target_block_ms=target_block_ms,
                       retarget_window=retarget_window)
    miner_urls = [f"http://127.0.0.1:{base_port + 101 + i}" for i in range(miners)]
    common = {"FEDCOIN_GENESIS": net["genesis"], "FEDCOIN_MINERS": ",".join(miner_urls), "FEDCOIN_DATASET": dataset,
              "FEDCOIN_SERVER_URL": f"http://127.0.0.1:{base_port + 1}", **(extra_env or {})}
    if dataset_dir:
        common["FEDCOIN_DATASET_DIR"] = str(dataset_dir)
    specs = [NodeSpec(f"miner{i + 1}", "miner", base_port + 101 + i, {"FEDCOIN_PEERS": ",".join(miner_urls)}) for i in range(miners)]
    specs.append(NodeSpec("server", "server", base_port + 1, {"FEDCOIN_MIN_CLIENTS": str(len(parse_types(client_types)))}))
    specs.append(NodeSpec("client", "client", base_port + 2, {"FEDCOIN_CLIENT_TYPES": client_types}))
    specs.append(NodeSpec("requester", "requester", base_port, {
        "FEDCOIN_KEY": net["requester_key"], "FEDCOIN_DEFAULT_TASK": "on" if default_task else "off",
        "FEDCOIN_BUDGET": str(budget), "FEDCOIN_ROUNDS": str(rounds)}))
    for s in specs:
        s.env = {**common, **s.env, "FEDCOIN_DATA_DIR": str(directory / s.name), "FEDCOIN_ADVERTISE_URL": s.url,
                 "FEDCOIN_PORT": str(s.port)}
    return specs


class LocalNetwork:
    """Start, watch and stop the services of :func:`plan_network` as local processes."""

    def __init__(self, directory: str | Path, specs: list[NodeSpec]) -> None:
        self.directory = Path(directory)
        self.specs = {s.name: s for s in specs}
        self.procs: dict[str, subprocess.Popen] = {}
        (self.directory / "logs").mkdir(parents=True, exist_ok=True)

    def url(self, name: str) -> str:
        return self.specs[name].url

    @property
    def miner_urls(self) -> list[str]:
        return [s.url for s in self.specs.values() if s.role == "miner"]

    def start(self, name: str) -> None:
        s = self.specs[name]
        log = open(self.directory / "logs" / f"{name}.log", "ab")
        env = {**os.environ, **s.env, "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "uvicorn", f"services.{s.role}.app:create_app", "--factory",
               "--host", "127.0.0.1", "--port", str(s.port), "--log-level", "warning"]
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def start_all(self, order: list[str] | None = None) -> None:
        for name in order or list(self.specs):
            self.start(name)

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        p = self.procs.pop(name, None)
        if p is None or p.poll() is not None:
            return
        with _suppress():
            os.killpg(p.pid, sig)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with _suppress():
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
                        raise FedcoinError(f"{name} exited with {p.returncode}; see {self.directory / 'logs' / (name + '.log')}")
                    try:
                        if http.get(f"{self.url(name)}/health").status_code == 200:
                            pending.remove(name)
                    except httpx.HTTPError:
                        pass
                if pending and time.time() > deadline:
                    raise FedcoinError(f"not healthy after {timeout:.0f} s: {', '.join(pending)}")
                time.sleep(0.3)

    def __enter__(self) -> "LocalNetwork":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, et, ev, tb) -> bool:  # noqa: ANN001
        return et is not None and issubclass(et, (ProcessLookupError, PermissionError))


def wait_for_task(server_url: str, task_id: str, timeout: float = 600.0, on_progress=None) -> dict:  # noqa: ANN001
    """Poll the FL server until ``task_id`` is done (or failed); return its document."""
    deadline = time.time() + timeout
    with httpx.Client(timeout=5.0) as http:
        while True:
            doc = None
            try:
                r = http.get(f"{server_url}/tasks/{task_id}")
                if r.status_code == 200:
                    doc = r.json()
            except httpx.HTTPError:
                pass
            if on_progress is not None:
                on_progress(doc)
            if doc is not None and doc["status"] == "done":
                return doc
            if doc is not None and doc["status"] == "failed":
                raise FedcoinError(f"task {task_id} failed: {doc.get('error')}")
            if time.time() > deadline:
                raise FedcoinError(f"task {task_id} not done after {timeout:.0f} s (status {doc and doc['status']})")
            time.sleep(0.5)


def wait_for_agreement(miner_urls: list[str], min_height: int, timeout: float = 60.0) -> dict:
    """Wait until every miner reports the same head at ``min_height`` or above."""
    deadline = time.time() + timeout
    with httpx.Client(timeout=5.0) as http:
        while True:
            heads = {}
            for u in miner_urls:
                try:
                    heads[u] = http.get(f"{u}/chain/head").json()
                except (httpx.HTTPError, ValueError):
                    heads[u] = None
            hashes = {h["hash"] for h in heads.values() if h}
            if len(hashes) == 1 and all(heads.values()) and next(iter(heads.values()))["height"] >= min_height:
                return next(iter(heads.values()))
            if time.time() > deadline:
                raise FedcoinError(f"miners disagree on the head after {timeout:.0f} s: {heads}")
            time.sleep(0.5)
