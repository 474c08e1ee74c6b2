"""The Docker testbed end to end: docker-compose.yml built FROM the local base image.

Builds ``fedcoin-base:bookworm`` (scripts/build-base-image.sh; skipped when it exists),
brings the compose project up under its own name (``fedcoin-ci``), waits for the
requester's default task, checks consensus, Algorithm 3's payments, the supply and
a miner restart from its volume, and tears everything down with ``down -v``.
Skipped where no Docker engine answers ``docker info``.

Environment: FEDCOIN_CI_PROJECT (fedcoin-ci), FEDCOIN_CI_ROUNDS (2),
FEDCOIN_BASE_IMAGE (fedcoin-base:bookworm).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from fedcoin.chain.blocks import Block
from fedcoin.chain.genesis import GenesisConfig
from fedcoin.consensus.payments import reward_allocation
from fedcoin.devnet.watch import wait_for_task

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[1]
PROJECT = os.environ.get("FEDCOIN_CI_PROJECT", "fedcoin-ci")
ROUNDS = int(os.environ.get("FEDCOIN_CI_ROUNDS", "2"))
BUDGET = 1_000_000
BASE_IMAGE = os.environ.get("FEDCOIN_BASE_IMAGE", "fedcoin-base:bookworm")
SERVER = "http://127.0.0.1:8001"
REQUESTER = "http://127.0.0.1:8000"
MINERS = [f"http://127.0.0.1:{8101 + i}" for i in range(4)]
PORTS = [8000, 8001, 8101, 8102, 8103, 8104]
TASK_DEADLINE = 1200.0
HEALTH_DEADLINE = 600.0


def _docker_engine_problem() -> str | None:
    if shutil.which("docker") is None:
        return "no docker command on this machine"
    try:
        r = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker info failed: {exc}"
    if r.returncode != 0:
        return f"no Docker engine (docker info: {(r.stderr or r.stdout).strip()[:200]})"
    return None


def _compose_command() -> list[str] | None:
    """`docker compose` where the plugin works, else docker-compose (as the Makefile)."""
    r = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if r.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


class ComposeTestbed:
    def __init__(self, compose: list[str], say: Callable[[str], None]) -> None:
        self.base = [*compose, "-p", PROJECT, "-f", str(REPO / "docker-compose.yml")]
        self.env = {
            **os.environ,
            "FEDCOIN_BASE_IMAGE": BASE_IMAGE,
            "FEDCOIN_ROUNDS": str(ROUNDS),
            "FEDCOIN_BUDGET": str(BUDGET),
            "FEDCOIN_DEFAULT_TASK": "on",
        }
        self.say = say
        self.timings: dict[str, float] = {}

    def compose(self, *args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([*self.base, *args], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            out = (r.stdout + r.stderr)[-4000:]
            raise AssertionError(f"{' '.join(self.base + list(args))} exited {r.returncode}:\n{out}")
        return r

    def container(self, service: str) -> str:
        ids = self.compose("ps", "-q", service).stdout.split()
        assert ids, f"no container for {service}"
        return ids[0]

    def health(self) -> dict[str, str]:
        """Container name -> health ('healthy', 'starting', ...) or 'exited/CODE' without a health check."""
        ids = self.compose("ps", "-q").stdout.split()
        if not ids:
            return {}
        fmt = (
            "{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}/{{.State.ExitCode}}{{end}}"
        )
        out = subprocess.run(["docker", "inspect", "-f", fmt, *ids], capture_output=True, text=True, check=True).stdout
        return dict(line.lstrip("/").split(" ", 1) for line in out.splitlines() if line.strip())

    def wait_healthy(self, timeout: float = HEALTH_DEADLINE) -> None:
        deadline = time.time() + timeout
        while True:
            states = self.health()
            waiting = {n: s for n, s in states.items() if s not in ("healthy", "exited/0")}
            if states and not waiting:
                return
            bad = {
                n: s for n, s in waiting.items() if s == "unhealthy" or (s.startswith("exited/") and s != "exited/0")
            }
            if bad or time.time() > deadline:
                raise AssertionError(f"testbed not healthy: {waiting}")
            time.sleep(2)

    def logs(self, tail: int = 60) -> str:
        r = self.compose("logs", "--no-color", f"--tail={tail}", check=False, timeout=120)
        return r.stdout + r.stderr


@pytest.fixture(scope="module")
def testbed(request):
    problem = _docker_engine_problem()
    if problem:
        pytest.skip(problem)
    compose = _compose_command()
    if compose is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capman = request.config.pluginmanager.get_plugin("capturemanager")

    def say(msg: str) -> None:
        """Straight to the terminal, past pytest's capture, so that CI logs show progress and timings."""
        line = f"[compose] {msg}"
        if reporter is None or capman is None:
            print(line, flush=True)
            return
        with capman.global_and_fixture_disabled():
            reporter.write_line(line)

    for port in PORTS:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                pytest.fail(
                    f"127.0.0.1:{port} is in use (a testbed from `make up` still running? `make down` stops it)"
                )

    tb = ComposeTestbed(compose, say)
    failed_before = request.session.testsfailed
    t0 = time.time()
    r = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-base-image.sh")],
        cwd=REPO,
        env=tb.env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert r.returncode == 0, f"build-base-image.sh failed:\n{(r.stdout + r.stderr)[-4000:]}"
    tb.timings["base image"] = time.time() - t0
    say(f"base image {BASE_IMAGE}: {tb.timings['base image']:.1f} s ({r.stdout.strip().splitlines()[-1]})")
    try:
        t0 = time.time()
        tb.compose("build", timeout=1800)
        tb.timings["image build"] = time.time() - t0
        say(f"image build: {tb.timings['image build']:.1f} s")
        t0 = time.time()
        tb.compose("up", "-d", timeout=900)
        tb.wait_healthy()
        tb.timings["up to healthy"] = time.time() - t0
        tb.t_up = time.time()
        say(f"up, all services healthy: {tb.timings['up to healthy']:.1f} s ({', '.join(sorted(tb.health()))})")
        yield tb
    finally:
        if request.session.testsfailed > failed_before:
            say("a test failed; the testbed's last log lines:\n" + tb.logs())
        t0 = time.time()
        tb.compose("down", "-v", "--remove-orphans", check=False, timeout=300)
        say(
            f"down -v: {time.time() - t0:.1f} s; timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in tb.timings.items())
        )


@pytest.fixture(scope="module")
def http():
    with httpx.Client(timeout=15.0) as client:
        yield client


@pytest.fixture(scope="module")
def task_doc(testbed: ComposeTestbed, http: httpx.Client) -> dict:
    """The server's document of the requester's default task, once it is done."""
    last: dict = {}

    def progress(doc: dict | None) -> None:
        if doc is None:
            return
        state = (doc["status"], len(doc["round_results"]))
        if state != last.get("state"):
            last["state"] = state
            testbed.say(
                f"  +{time.time() - testbed.t_up:6.1f} s  default task {doc['status']}, "
                f"{len(doc['round_results'])}/{doc['rounds']} rounds settled"
            )

    doc = wait_for_task(SERVER, "default", timeout=TASK_DEADLINE, on_progress=progress)
    testbed.timings["default task"] = time.time() - testbed.t_up
    testbed.say(f"default task done {testbed.timings['default task']:.1f} s after the testbed was healthy")
    return doc


def test_default_task_done(task_doc: dict) -> None:
    assert task_doc["budget"] == BUDGET and task_doc["rounds"] == ROUNDS
    assert [r["round"] for r in task_doc["round_results"]] == list(range(ROUNDS))
    assert task_doc["model_hash"]


def _heads(http: httpx.Client) -> list[dict | None]:
    out = []
    for m in MINERS:
        try:
            out.append(http.get(f"{m}/chain/head").json())
        except (httpx.HTTPError, ValueError):
            out.append(None)
    return out


def test_miners_agree_on_the_head(testbed: ComposeTestbed, task_doc: dict, http: httpx.Client) -> None:
    last_height = task_doc["round_results"][-1]["block_height"]
    deadline = time.time() + 180
    while True:
        heads = _heads(http)
        if all(heads) and len({h["hash"] for h in heads}) == 1 and heads[0]["height"] >= max(ROUNDS, last_height):
            break
        assert time.time() < deadline, f"miners disagree: {[h and (h['height'], h['hash'][:12]) for h in heads]}"
        time.sleep(1.0)
    testbed.say(f"all {len(MINERS)} miners agree on head {heads[0]['hash'][:16]} at height {heads[0]['height']}")


def test_payments_follow_algorithm_3(testbed: ComposeTestbed, task_doc: dict, http: httpx.Client) -> None:
    """Every round's Shapley task is settled once on the agreed chain, paid exactly as Algorithm 3 says."""
    rows = http.get(f"{MINERS[0]}/chain").json()
    settled = {r["task_id"]: r["height"] for r in rows if r["height"] > 0}
    for res in task_doc["round_results"]:
        stid = res["shapley_task_id"]
        assert [r["task_id"] for r in rows].count(stid) == 1, f"{stid} not settled exactly once: {rows}"
        block = Block.from_dict(http.get(f"{MINERS[0]}/blocks/{settled[stid]}").json())
        task = block.body.task
        assert task.task_id == stid == block.header.task_id
        expected = [(task.clients[i], amount) for i, amount in reward_allocation(block.header.s_avg, task.train_price)]
        rewards = [
            (tx.recipient, tx.amount) for tx in block.body.transactions if tx.kind == "reward" and tx.memo == stid
        ]
        assert rewards == expected
        assert all(tx.sender == block.header.winner for tx in block.body.transactions if tx.kind == "reward")
        assert sum(a for _, a in rewards) == (task.train_price if any(s > 0 for s in block.header.s_avg) else 0)
        payouts = [tx for tx in block.body.transactions if tx.kind == "payout" and tx.memo == stid]
        assert [(tx.recipient, tx.amount) for tx in payouts] == [
            (block.header.winner, task.train_price + task.sap_price)
        ]
        if block.hash != res["block_hash"]:
            # The server records the first block it saw settle the task; a fork resolved later
            # (more work, or equal work and the smaller tie key, wins) can replace it on the agreed chain.
            testbed.say(
                f"note: {stid} settled in {block.hash[:12]} on the agreed chain; the server recorded "
                f"{res['block_hash'][:12]} (replaced by a reorg)"
            )


def test_balances_sum_to_the_genesis_supply(testbed: ComposeTestbed, http: httpx.Client, task_doc: dict) -> None:
    genesis = GenesisConfig.from_dict(
        json.loads(testbed.compose("exec", "-T", "miner1", "cat", "/net/genesis.json").stdout)
    )
    supply = sum(genesis.allocations.values())
    for m in MINERS:
        assert http.get(f"{m}/chain/head").json()["genesis"] == genesis.block().hash
        doc = http.get(f"{m}/balances").json()
        assert sum(doc["balances"].values()) == doc["supply"] == supply
        assert all(v >= 0 for v in doc["balances"].values())
    requester = http.get(f"{REQUESTER}/health").json()["account"]
    assert http.get(f"{MINERS[0]}/balances/{requester}").json()["balance"] == genesis.allocations[requester] - BUDGET


def test_restarted_miner_reloads_its_chain(testbed: ComposeTestbed, http: httpx.Client, task_doc: dict) -> None:
    before = http.get(f"{MINERS[1]}/chain/head").json()
    cid = testbed.container("miner2")
    started = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.StartedAt}}", cid], capture_output=True, text=True, check=True
    ).stdout.strip()
    since = str(int(time.time()))
    t0 = time.time()
    testbed.compose("restart", "miner2", timeout=180)
    assert testbed.container("miner2") == cid, "restart must keep the container (and its volume)"
    deadline = time.time() + HEALTH_DEADLINE
    while True:
        status = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Health.Status}} {{.State.StartedAt}}", cid],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if status[0] == "healthy" and status[1] != started:
            try:
                after = http.get(f"{MINERS[1]}/chain/head").json()
                break
            except (httpx.HTTPError, ValueError):
                pass
        assert time.time() < deadline, f"miner2 not healthy after restart: {status}"
        time.sleep(1.0)
    testbed.say(f"miner2 restarted, healthy again after {time.time() - t0:.1f} s at height {after['height']}")
    assert after == before
    r = subprocess.run(["docker", "logs", "--since", since, cid], capture_output=True, text=True)
    logs = r.stdout + r.stderr
    assert "Application startup complete" in logs
    assert "synced from" not in logs, "the restarted miner re-downloaded its chain instead of reloading its volume"
