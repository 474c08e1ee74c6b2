"""Fault injection on a running FedCoin network, with the invariants every node must keep.

A :class:`Backend` applies faults to the nodes of a network: :class:`LocalBackend` to the
processes of a :class:`~fedcoin.devnet.local.LocalNetwork` (signals), :class:`DockerBackend` to
the containers of the compose testbed (the ``docker`` SDK: kill, pause, restart, network
disconnect, a partition of the miners' mesh). A scenario (:data:`SCENARIOS`) starts a one-round
training task, waits until the miners are mining it (the partition splits them first), applies
its fault, ends it, and then checks, like CometBFT's e2e runner, on every node:

- **responsive**: every node answers ``/health`` within :data:`RESPONSIVE_S` (20 s) of the fault
  ending;
- **task**: the task completes (every round settled);
- **converged**: every miner reports the same head (the time it took is measured);
- **nothing lost**: every transaction confirmed before the fault is still confirmed (or back
  in the mempool after a reorg) on every miner;
- **paid once**: no client receives two rewards for one Shapley task on the main chain;
- **supply**: on every miner the balances (escrows included) sum to the genesis supply.

A scenario a backend cannot apply (a network disconnect needs Docker) is reported as
``unsupported``, not as passed.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from fedcoin.errors import FedcoinError

from .local import LocalNetwork

RESPONSIVE_S = 20.0
CONVERGE_S = 60.0
TASK_S = 600.0


class Unsupported(FedcoinError):
    """The backend cannot apply this fault."""


class Backend(Protocol):
    """The nodes of a running network and the faults that can be applied to them."""

    name: str
    unsupported: frozenset[str]  # scenarios this backend cannot apply

    def url(self, node: str) -> str: ...

    @property
    def miners(self) -> list[str]: ...

    @property
    def nodes(self) -> list[str]: ...

    def kill(self, node: str) -> None: ...

    def start(self, node: str) -> None: ...

    def stop(self, node: str) -> None: ...

    def pause(self, node: str) -> None: ...

    def resume(self, node: str) -> None: ...

    def disconnect(self, node: str) -> None: ...

    def reconnect(self, node: str) -> None: ...

    def split(self, nodes: list[str]) -> None: ...

    def join(self, nodes: list[str]) -> None: ...

    def isolate(self, node: str) -> None: ...

    def rejoin(self, node: str) -> None: ...


class LocalBackend:
    """Faults as signals to the processes of a :class:`LocalNetwork`."""

    name = "local"
    unsupported = frozenset({"disconnect-miner", "partition", "partition-minority"})

    def __init__(self, net: LocalNetwork) -> None:
        self.net = net

    def url(self, node: str) -> str:
        return self.net.url(node)

    @property
    def miners(self) -> list[str]:
        return [n for n, s in self.net.specs.items() if s.role == "miner"]

    @property
    def nodes(self) -> list[str]:
        return list(self.net.specs)

    def _signal(self, node: str, sig: int) -> None:
        p = self.net.procs.get(node)
        if p is None or p.poll() is not None:
            raise FedcoinError(f"{node} is not running")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, sig)

    def kill(self, node: str) -> None:
        self._signal(node, signal.SIGKILL)
        self.net.procs.pop(node).wait(timeout=10)

    def start(self, node: str) -> None:
        self.net.start(node)

    def stop(self, node: str) -> None:
        self.net.stop(node)

    def pause(self, node: str) -> None:
        self._signal(node, signal.SIGSTOP)

    def resume(self, node: str) -> None:
        self._signal(node, signal.SIGCONT)

    def disconnect(self, node: str) -> None:
        raise Unsupported("a network disconnect needs the Docker backend")

    def reconnect(self, node: str) -> None:
        raise Unsupported("a network disconnect needs the Docker backend")

    def split(self, nodes: list[str]) -> None:
        raise Unsupported("a partition needs the Docker backend")

    def join(self, nodes: list[str]) -> None:
        raise Unsupported("a partition needs the Docker backend")

    def isolate(self, node: str) -> None:
        raise Unsupported("a partition needs the Docker backend")

    def rejoin(self, node: str) -> None:
        raise Unsupported("a partition needs the Docker backend")


class DockerBackend:
    """Faults applied to the containers of the compose testbed (project ``project``)."""

    name = "docker"
    unsupported: frozenset[str] = frozenset()
    PORTS = {"requester": 8000, "server": 8001, "miner1": 8101, "miner2": 8102, "miner3": 8103, "miner4": 8104}

    def __init__(self, project: str) -> None:
        import docker  # the `testbed` extra

        self.client = docker.from_env()
        self.project = project
        self._detached: dict[str, list[str]] = {}
        self.isolated_at: dict[str, int] = {}  # node -> ms since the epoch it was cut off

    def _container(self, node: str) -> Any:
        found = self.client.containers.list(
            all=True,
            filters={"label": [f"com.docker.compose.project={self.project}", f"com.docker.compose.service={node}"]},
        )
        if not found:
            raise FedcoinError(f"no container for {node} in project {self.project}")
        return found[0]

    def url(self, node: str) -> str:
        return f"http://127.0.0.1:{self.PORTS[node]}"

    @property
    def miners(self) -> list[str]:
        return [n for n in self.PORTS if n.startswith("miner")]

    @property
    def nodes(self) -> list[str]:
        return list(self.PORTS)

    def kill(self, node: str) -> None:
        self._container(node).kill()

    def start(self, node: str) -> None:
        self._container(node).start()

    def stop(self, node: str) -> None:
        self._container(node).stop(timeout=15)

    def pause(self, node: str) -> None:
        self._container(node).pause()

    def resume(self, node: str) -> None:
        self._container(node).unpause()

    def _networks(self, node: str) -> list[Any]:
        container = self._container(node)
        container.reload()
        names = list(container.attrs["NetworkSettings"]["Networks"])
        return [self.client.networks.get(n) for n in names]

    def _mesh(self) -> Any:
        return self.client.networks.get(f"{self.project}_mesh")

    def disconnect(self, node: str) -> None:
        """Take ``node`` off every network it is on (remembered for :meth:`reconnect`)."""
        nets = self._networks(node)
        self._detached[node] = [n.name for n in nets]
        for n in nets:
            n.disconnect(self._container(node))

    def reconnect(self, node: str) -> None:
        for name in self._detached.pop(node, []):
            self.client.networks.get(name).connect(self._container(node), aliases=[node])

    def split(self, nodes: list[str]) -> None:
        """Cut ``nodes`` off the miners' mesh: they still reach the server, no longer the other miners."""
        for node in nodes:
            self._mesh().disconnect(self._container(node))

    def join(self, nodes: list[str]) -> None:
        for node in nodes:
            self._mesh().connect(self._container(node), aliases=[node])

    def _isolation(self, node: str) -> str:
        return f"{self.project}_isolated-{node}"

    def isolate(self, node: str) -> None:
        """Cut ``node`` off every other node but the FL server: it leaves its networks for a
        private one that only it and the server (under their usual names) are on."""
        import docker.errors

        name = self._isolation(node)
        with contextlib.suppress(docker.errors.NotFound):  # left over from an interrupted run
            old = self.client.networks.get(name)
            old.reload()
            for c in old.containers:
                old.disconnect(c, force=True)
            old.remove()
        net = self.client.networks.create(name, driver="bridge", labels={"com.docker.compose.project": self.project})
        net.connect(self._container("server"), aliases=["server"])
        self.disconnect(node)
        net.connect(self._container(node), aliases=[node])
        self.isolated_at[node] = int(time.time() * 1000)

    def rejoin(self, node: str) -> None:
        self.isolated_at.pop(node, None)
        net = self.client.networks.get(self._isolation(node))
        net.disconnect(self._container(node))
        self.reconnect(node)
        net.disconnect(self._container("server"))
        net.remove()


# --- observing the network ---------------------------------------------------------------
def _get(http: httpx.Client, url: str) -> Any | None:
    try:
        r = http.get(url, timeout=5.0)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


def wait_responsive(backend: Backend, http: httpx.Client, within: float = RESPONSIVE_S) -> float:
    """Seconds until every node answers /health; FedcoinError after ``within``."""
    t0 = time.time()
    pending = set(backend.nodes)
    while pending:
        pending = {n for n in pending if _get(http, f"{backend.url(n)}/health") is None}
        if pending and time.time() - t0 > within:
            raise FedcoinError(f"not answering {within:.0f} s after the fault: {sorted(pending)}")
        if pending:
            time.sleep(0.25)
    return time.time() - t0


def wait_converged(backend: Backend, http: httpx.Client, min_height: int, within: float = CONVERGE_S) -> float:
    """Seconds until every miner has the same head at ``min_height`` or above."""
    t0 = time.time()
    while True:
        heads = [_get(http, f"{backend.url(m)}/chain/head") for m in backend.miners]
        if all(heads) and len({h["hash"] for h in heads if h}) == 1 and heads[0] and heads[0]["height"] >= min_height:
            return time.time() - t0
        if time.time() - t0 > within:
            raise FedcoinError(
                f"miners have not converged after {within:.0f} s: {[h and h['hash'][:12] for h in heads]}"
            )
        time.sleep(0.5)


def main_chain(http: httpx.Client, miner_url: str) -> list[dict[str, Any]]:
    head = _get(http, f"{miner_url}/chain/head")
    if head is None:
        raise FedcoinError(f"{miner_url} does not answer")
    blocks: list[dict[str, Any]] = []
    start = 0
    while start <= head["height"]:
        page = _get(http, f"{miner_url}/blocks?start={start}&end={min(start + 99, head['height'])}")
        if not page:
            break
        blocks.extend(page)
        start += len(page)
    return blocks


def confirmed_txids(blocks: list[dict[str, Any]]) -> set[str]:
    from fedcoin.chain.transactions import Transaction

    return {Transaction.from_dict(tx).txid for b in blocks for tx in b["body"]["transactions"]}


def check_invariants(backend: Backend, http: httpx.Client, before: set[str]) -> dict[str, Any]:
    """Nothing lost, paid once, supply conserved, on every miner; raises FedcoinError on a breach."""
    out: dict[str, Any] = {}
    for m in backend.miners:
        url = backend.url(m)
        blocks = main_chain(http, url)
        have = confirmed_txids(blocks)
        pending = {t["txid"] for t in (_get(http, f"{url}/transactions/pending") or [])}
        lost = before - have - pending
        if lost:
            raise FedcoinError(f"{m}: {len(lost)} confirmed transaction(s) lost: {sorted(lost)[:3]}")
        rewards: dict[tuple[str, str], int] = {}
        for b in blocks:
            for tx in b["body"]["transactions"]:
                if tx["kind"] == "reward":
                    key = (tx["memo"], tx["recipient"])
                    rewards[key] = rewards.get(key, 0) + 1
        twice = [k for k, n in rewards.items() if n > 1]
        if twice:
            raise FedcoinError(f"{m}: client paid twice for one task: {twice[:3]}")
        bal = _get(http, f"{url}/balances") or {}
        if sum(bal.get("balances", {}).values()) != bal.get("supply"):
            raise FedcoinError(f"{m}: balances do not sum to the supply")
        out[m] = {"height": len(blocks) - 1, "transactions": len(have)}
    return out


# --- scenarios -------------------------------------------------------------------------------
@dataclass
class Outcome:
    scenario: str
    status: str  # passed | failed | unsupported
    detail: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "status": self.status, "detail": self.detail, "timings": self.timings}


Fault = Callable[[Backend, httpx.Client, random.Random], None]


def _miner_mining(backend: Backend, http: httpx.Client, timeout: float = 120.0) -> str:
    """Wait until some miner is mining; return its name."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for m in backend.miners:
            st = _get(http, f"{backend.url(m)}/status")
            if st and st.get("mining") and st["mining"].get("iterations", 0) > 0:
                return m
        time.sleep(0.2)
    raise FedcoinError("no miner started mining the task")


def _wait_block(backend: Backend, http: httpx.Client, deadline: float) -> None:
    """Wait (until ``deadline``) for the next block: some miner's head rises above where it is now."""
    heads = {m: (_get(http, f"{backend.url(m)}/chain/head") or {"height": 0})["height"] for m in backend.miners}
    while time.time() < deadline:
        now = {m: _get(http, f"{backend.url(m)}/chain/head") for m in backend.miners}
        if any(h and h["height"] > heads[m] for m, h in now.items()):
            return
        time.sleep(0.02)


def kill9_miner(backend: Backend, http: httpx.Client, rng: random.Random) -> None:
    """kill -9 a miner while it mines; start it again 3 s later."""
    victim = _miner_mining(backend, http)
    backend.kill(victim)
    time.sleep(3)
    backend.start(victim)


def pause_miner(backend: Backend, http: httpx.Client, rng: random.Random) -> None:
    """Freeze a mining miner for 10 s (SIGSTOP / docker pause), then let it go on."""
    victim = _miner_mining(backend, http)
    backend.pause(victim)
    time.sleep(10)
    backend.resume(victim)


def restart_miner(backend: Backend, http: httpx.Client, rng: random.Random) -> None:
    """Stop a mining miner gracefully and start it again with its state."""
    victim = _miner_mining(backend, http)
    backend.stop(victim)
    backend.start(victim)


def kill_server_mid_round(backend: Backend, http: httpx.Client, rng: random.Random) -> None:
    """kill -9 the FL server while its round is trained or mined; start it again."""
    deadline = time.time() + 120
    while time.time() < deadline:
        docs = _get(http, f"{backend.url('server')}/tasks") or []
        if any(d["status"] == "training" for d in docs):
            break
        time.sleep(0.2)
    time.sleep(rng.uniform(0.0, 2.0))
    backend.kill("server")
    time.sleep(2)
    backend.start("server")


def kill_server_settling(backend: Backend, http: httpx.Client, rng: random.Random) -> None:
    """kill -9 the FL server while its round is being settled: after it published the Shapley
    task, at a random moment around the block that settles it (before or after the block, before
    the server records the round). On restart the server must pick up its stored pending round,
    find the settlement on chain (or wait for it) and record each payment exactly once."""
    deadline = time.time() + 180
    while time.time() < deadline:  # the round is trained and published
        docs = _get(http, f"{backend.url('server')}/tasks") or []
        full = [_get(http, f"{backend.url('server')}/tasks/{d['task_id']}") for d in docs if d["status"] == "training"]
        if any(d and d.get("pending_round") for d in full):
            break
        time.sleep(0.2)
    else:
        raise FedcoinError("the server never published its round")
    _miner_mining(backend, http)
    if rng.random() >= 0.5:  # half the time while mining, half just after the block
        _wait_block(backend, http, deadline)
    time.sleep(rng.uniform(0.0, 1.0))
    backend.kill("server")
    time.sleep(2)
    backend.start("server")


def kill_during_write(backend: Backend, http: httpx.Client, rng: random.Random) -> None:
    """kill -9 a miner at a random moment around the block write of the task it mines."""
    victim = _miner_mining(backend, http)
    _wait_block(backend, http, time.time() + 120)  # the block is coming: some miner's head moves
    backend.kill(victim)
    time.sleep(1)
    backend.start(victim)


def disconnect_miner(backend: Backend, http: httpx.Client, rng: random.Random) -> None:
    """Take a mining miner off the network for 15 s, then reconnect it."""
    victim = _miner_mining(backend, http)
    backend.disconnect(victim)
    time.sleep(15)
    backend.reconnect(victim)


def partition(backend: Backend, http: httpx.Client, rng: random.Random) -> None:
    """Split the miners into two groups (1-2 and 3-4) that mine the task apart, then rejoin them:
    the lighter fork is abandoned (its transactions go back to the mempool) and payments are
    re-derived from the heavier one."""
    miners = backend.miners
    half = len(miners) // 2
    base = (_get(http, f"{backend.url(miners[0])}/chain/head") or {"height": 0})["height"]
    backend.split(miners[half:])
    deadline = time.time() + 240
    heads: list[Any] = []
    while time.time() < deadline:  # both sides settle the task on their own (or time runs out)
        heads = [_get(http, f"{backend.url(m)}/chain/head") for m in miners]
        if all(h and h["height"] > base for h in heads):
            break
        time.sleep(0.5)
    firsts = []  # each side's block right above the split: different blocks = the sides forked
    for m in (miners[0], miners[half]):
        b = _get(http, f"{backend.url(m)}/blocks/{base + 1}")
        firsts.append(None if b is None else (b["header"]["winner"], b["header"]["timestamp"]))
    backend.join(miners[half:])
    if None in firsts or firsts[0] == firsts[1]:
        raise FedcoinError(f"the two sides did not fork while apart (heads {[h and h['height'] for h in heads]})")


def _lone_miner(backend: Backend) -> str:
    return backend.miners[-1]


def isolate_lone_miner(backend: Backend, http: httpx.Client, rng: random.Random) -> None:
    """Before the task is posted: cut the last miner off every other node but the FL server."""
    backend.isolate(_lone_miner(backend))


def rejoin_lone_miner(backend: Backend, http: httpx.Client, rng: random.Random) -> None:
    backend.rejoin(_lone_miner(backend))


def partition_minority(backend: Backend, http: httpx.Client, rng: random.Random) -> None:
    """One miner is cut off every other node but the FL server (1 against 3) before the task is
    posted (:func:`isolate_lone_miner`), so it never holds another miner's report on the task and
    cannot settle it (too-few-reports): any block it makes while alone settles an older task.
    The majority settles the task; after the rejoin (:func:`rejoin_lone_miner`) every miner
    converges on one head."""
    miners = backend.miners
    lone = _lone_miner(backend)
    cut_ms = getattr(backend, "isolated_at", {}).get(lone)
    if cut_ms is None:
        raise FedcoinError(f"{lone} was not cut off before the task was posted")

    def settled_after_cut(miner: str) -> list[str]:
        """Tasks published after the cut that ``miner``'s main chain settles."""
        head = _get(http, f"{backend.url(miner)}/chain/head")
        if head is None:
            raise FedcoinError(f"{miner} does not answer while one miner is cut off")
        found = []
        for h in range(1, head["height"] + 1):
            task = ((_get(http, f"{backend.url(miner)}/blocks/{h}") or {}).get("body") or {}).get("task") or {}
            if task.get("published_at", 0) > cut_ms:
                found.append(str(task.get("task_id")))
        return found

    deadline = time.time() + 240
    while not settled_after_cut(miners[0]):  # the majority settles the task published after the cut
        if time.time() > deadline:
            raise FedcoinError("the majority did not settle the task while one miner was cut off")
        time.sleep(1.0)
    time.sleep(3)  # time for the lone miner to (wrongly) settle it too
    wrong = settled_after_cut(lone)
    if wrong:
        raise FedcoinError(f"the lone miner settled {wrong}, published after it was cut off, with no peer report")


@dataclass(frozen=True)
class Scenario:
    """A fault applied while a one-round task runs. ``before_task`` runs before the task is
    posted (a cut that must already hold when the server publishes); ``after`` always runs once
    the fault ends or fails (undoing ``before_task``)."""

    fault: Fault
    before_task: Fault | None = None
    after: Fault | None = None


SCENARIOS: dict[str, Scenario] = {
    "kill9-miner": Scenario(kill9_miner),
    "pause-miner": Scenario(pause_miner),
    "restart-miner": Scenario(restart_miner),
    "kill-server": Scenario(kill_server_mid_round),
    "kill-server-settling": Scenario(kill_server_settling),
    "kill-during-write": Scenario(kill_during_write),
    "disconnect-miner": Scenario(disconnect_miner),
    "partition": Scenario(partition),
    "partition-minority": Scenario(partition_minority, before_task=isolate_lone_miner, after=rejoin_lone_miner),
}


def run_scenario(
    backend: Backend, requester_url: str, server_url: str, name: str, *, seed: int = 0, budget: int = 100_000
) -> Outcome:
    """Start a one-round task, apply fault ``name`` while it runs, then check every invariant."""
    scenario = SCENARIOS[name]
    if name in backend.unsupported:
        return Outcome(name, "unsupported", f"the {backend.name} backend cannot apply {name}")
    rng = random.Random(seed)
    task_id = f"fault-{name}-{int(time.time())}"
    out = Outcome(name, "failed")
    with httpx.Client(timeout=15.0) as http:
        try:
            before = confirmed_txids(main_chain(http, backend.url(backend.miners[0])))
            height = (_get(http, f"{backend.url(backend.miners[0])}/chain/head") or {"height": 0})["height"]
            if scenario.before_task is not None:
                scenario.before_task(backend, http, rng)
            try:
                r = http.post(f"{requester_url}/tasks", json={"budget": budget, "rounds": 1, "task_id": task_id})
                if r.status_code != 202:
                    raise FedcoinError(f"task not accepted: {r.status_code} {r.text[:200]}")
                t0 = time.time()
                scenario.fault(backend, http, rng)
                out.timings["fault_s"] = time.time() - t0
            finally:
                if scenario.after is not None:
                    scenario.after(backend, http, rng)
            out.timings["responsive_s"] = wait_responsive(backend, http)
            from .watch import wait_for_task

            t1 = time.time()
            doc = wait_for_task(server_url, task_id, timeout=TASK_S)
            out.timings["task_done_after_fault_s"] = time.time() - t1
            target = max(height + 1, doc["round_results"][-1]["block_height"])
            out.timings["converged_s"] = wait_converged(backend, http, target)
            check_invariants(backend, http, before)
            out.status = "passed"
        except Unsupported as exc:
            out.status, out.detail = "unsupported", str(exc)
        except FedcoinError as exc:
            out.detail = str(exc)[:500]
    return out
