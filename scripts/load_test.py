#!/usr/bin/env python
"""Load test of one local FedCoin network (the services of ``fedcoin demo``) over loopback HTTP.

One network is started (``fedcoin.devnet.local``: 4 miners, a client node with clients of
types 0-9, the FL server and the requester with no default task) on a genesis that also
funds ``--senders`` accounts (``init_testnet(allocations=...)``). An asyncio driver
(``httpx.AsyncClient``, ``--concurrency`` workers, keep-alive) then measures, each phase
for at most ``--duration`` seconds:

``reads``
    GETs against miner1, cycling through ``/chain/head``, ``/balances``, ``/blocks/0`` and
    ``/transactions/pending`` (the mempool is empty then);
``submits``
    ``POST /transactions`` of pre-signed transfers (amount 1 to a sink account) to miner1.
    Each sender uses consecutive nonces from 0 up to ``MAX_NONCE_GAP`` (the mempool's limit
    while nothing is confirmed, since blocks only come with Shapley tasks), interleaved
    over the senders; the phase ends early when every sender's window is used up
    ("exhausted"). ``--senders`` x (``MAX_NONCE_GAP`` + 1) stays below ``MAX_PENDING``;
``tasks``
    the requester's ``POST /tasks`` (``--tasks`` tasks, small budgets, one round each).

Per phase: requests, throughput (req/s over the phase's wall time), p50/p99 latency (ms,
as the driver sees it, client-side queueing included), status counts, and completions per
second. Also: the peak RSS (VmHWM, /proc/<pid>/status) of every service process before
and after, and "nothing lost": every transfer answered 202 is known (pending or
confirmed) on every miner once gossip settled (polled each second until none is missing,
or until the count stopped falling for ``--stall`` seconds, at most ``--settle`` seconds;
the time it took is reported as the propagation lag), and
every task answered 202 by the requester is known to the FL server (``GET /tasks``).
The driver runs on the same machine as the network, so on a small machine it competes
with the services for the CPU; the JSON records the cores and load averages.

Exit status: 0 when no answer was a 5xx or a transport error and nothing was lost, 1
otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import shlex
import socket
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from fedcoin.chain.identity import Identity
from fedcoin.chain.transactions import make_transaction
from fedcoin.devnet.local import LocalNetwork, plan_network
from fedcoin.devnet.testnet import init_testnet
from fedcoin.ledger.mempool import MAX_NONCE_GAP, MAX_PENDING

Json = dict[str, Any]
READ_PATHS = ("/chain/head", "/balances", "/blocks/0", "/transactions/pending")
SENDER_FUNDS = 10**9
TASK_BUDGET = 1_000
MINERS = 4
CLIENT_TYPES = "0-9"
DIFFICULTY = 0.05
# ports a network planned at ``base`` listens on (plan_network: requester, server, client, miners)
PORT_OFFSETS = (0, 1, 2, *(101 + i for i in range(MINERS)))


# --- measurement helpers ---------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 100]) of ``values``; None when empty."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))
    return s[k]


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (kB) of ``pid`` from /proc/<pid>/status; {} when it is gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key + "_kb"] = int(rest.split()[0])
    except OSError:
        pass
    return out


def rss_of(net: LocalNetwork) -> dict[str, dict[str, int]]:
    return {name: {"pid": p.pid, **proc_status(p.pid)} for name, p in net.procs.items()}


def other_benchmarks() -> list[str]:
    """Command lines of known long benchmarks running on this machine (their load skews the numbers)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if "scripts/paper/run.py" in cmd and not cmd.startswith(("bash", "/bin/sh", "sh ")):
            found.append(cmd)
    return found


def machine() -> Json:
    return {
        "cores": os.cpu_count(),
        "loadavg": list(os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "other_benchmarks": other_benchmarks(),
    }


def check_ports_free(base: int, offsets: tuple[int, ...] = PORT_OFFSETS) -> None:
    busy = []
    for off in offsets:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is no obstacle
            try:
                s.bind(("127.0.0.1", base + off))
            except OSError:
                busy.append(base + off)
    if busy:
        raise SystemExit(f"ports in use: {busy}; choose another --base-port")


def print_logs_tail(directory: Path, lines: int = 15) -> None:
    for log in sorted((directory / "logs").glob("*.log")):
        text = log.read_text(errors="replace").splitlines()[-lines:]
        if text:
            print(f"--- {log.name} (last {len(text)} lines)", file=sys.stderr)
            print("\n".join(text), file=sys.stderr)


# --- the driver ------------------------------------------------------------------------------
@dataclass
class Job:
    method: str
    url: str
    body: bytes | None = None
    tag: str = ""  # what the answer is about (a txid, a task id, a path)


@dataclass
class PhaseResult:
    name: str
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    by_tag: dict[str, list[int | str]] = field(default_factory=dict)  # tag -> statuses in order
    per_second: Counter[int] = field(default_factory=Counter)
    exhausted: bool = False
    answers: dict[str, Json] = field(default_factory=dict)  # tag -> the JSON of a 2xx answer (kept when asked)

    def accepted(self, status: int = 202) -> list[str]:
        return [t for t, codes in self.by_tag.items() if status in codes]

    def summary(self) -> Json:
        n = len(self.latencies_ms)
        by_path: dict[str, Counter[str]] = {}
        if self.name == "reads":
            for tag, codes in self.by_tag.items():
                by_path[tag] = Counter(str(c) for c in codes)
        return {
            "requests": n,
            "seconds": round(self.seconds, 3),
            "throughput_rps": round(n / self.seconds, 1) if self.seconds > 0 else 0.0,
            "p50_ms": _r(percentile(self.latencies_ms, 50)),
            "p90_ms": _r(percentile(self.latencies_ms, 90)),
            "p99_ms": _r(percentile(self.latencies_ms, 99)),
            "max_ms": _r(max(self.latencies_ms) if self.latencies_ms else None),
            "status_counts": dict(sorted(self.statuses.items())),
            "server_errors": sum(v for k, v in self.statuses.items() if k.startswith("5")),
            "transport_errors": sum(v for k, v in self.statuses.items() if not k[:1].isdigit()),
            "exhausted": self.exhausted,
            "per_second": [self.per_second.get(i, 0) for i in range(int(self.seconds) + 1)],
            **({"status_by_path": {k: dict(v) for k, v in by_path.items()}} if by_path else {}),
        }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


async def run_phase(
    client: httpx.AsyncClient,
    name: str,
    next_job: Callable[[], Job | None],
    *,
    duration: float,
    concurrency: int,
    keep_answers: bool = False,
) -> PhaseResult:
    """``concurrency`` workers send ``next_job()`` until it is None or ``duration`` seconds passed."""
    res = PhaseResult(name)
    t0 = time.perf_counter()
    deadline = t0 + duration
    headers = {"content-type": "application/json"}

    async def worker() -> None:
        while time.perf_counter() < deadline:
            job = next_job()
            if job is None:
                res.exhausted = True
                return
            start = time.perf_counter()
            code: int | str
            answer: Json | None = None
            try:
                r = await client.request(
                    job.method, job.url, content=job.body, headers=headers if job.body is not None else None
                )
                code = r.status_code
                if keep_answers and 200 <= code < 300:
                    answer = r.json()
            except httpx.HTTPError as exc:
                code = type(exc).__name__
            end = time.perf_counter()
            res.latencies_ms.append((end - start) * 1000)
            res.statuses[str(code)] += 1
            res.by_tag.setdefault(job.tag, []).append(code)
            res.per_second[int(end - t0)] += 1
            if answer is not None:
                res.answers[job.tag] = answer

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    res.seconds = time.perf_counter() - t0
    return res


# --- what the phases send --------------------------------------------------------------------
def sender_identity(i: int) -> Identity:
    return Identity.from_seed(hashlib.sha256(f"fedcoin-load-sender-{i}".encode()).digest())


SINK = Identity.from_seed(hashlib.sha256(b"fedcoin-load-sink").digest()).account


def signed_transfers(senders: list[Identity], per_sender: int) -> deque[tuple[str, bytes, tuple[str, int, str]]]:
    """(txid, JSON body, (sender, nonce, signature)) of every transfer, nonce-major: each sender's
    nonces are consecutive, and consecutive jobs belong to different senders."""
    out: deque[tuple[str, bytes, tuple[str, int, str]]] = deque()
    for nonce in range(per_sender):
        for ident in senders:
            tx = make_transaction(ident, SINK, 1, nonce)
            out.append((tx.txid, json.dumps(tx.to_dict()).encode(), (tx.sender, tx.nonce, tx.signature)))
    return out


def read_jobs(url: str) -> Callable[[], Job | None]:
    i = 0

    def next_job() -> Job:
        nonlocal i
        path = READ_PATHS[i % len(READ_PATHS)]
        i += 1
        return Job("GET", url + path, tag=path)

    return next_job


def submit_jobs(url: str, txs: deque[tuple[str, bytes, tuple[str, int, str]]]) -> Callable[[], Job | None]:
    def next_job() -> Job | None:
        if not txs:
            return None
        txid, body, _ = txs.popleft()
        return Job("POST", url + "/transactions", body, tag=txid)

    return next_job


def task_jobs(url: str, n: int, prefix: str) -> Callable[[], Job | None]:
    i = 0

    def next_job() -> Job | None:
        nonlocal i
        if i >= n:
            return None
        task_id = f"{prefix}-{i:03d}"
        i += 1
        body = json.dumps({"budget": TASK_BUDGET, "rounds": 1, "task_id": task_id}).encode()
        return Job("POST", url + "/tasks", body, tag=task_id)

    return next_job


# --- "nothing lost" --------------------------------------------------------------------------
async def known_keys(client: httpx.AsyncClient, miner: str) -> set[tuple[str, int, str]] | None:
    """(sender, nonce, signature) of every user transaction ``miner`` knows: pending or on its main chain."""
    try:
        pending = (await client.get(f"{miner}/transactions/pending", timeout=60)).json()
        height = (await client.get(f"{miner}/chain/head")).json()["height"]
        txs = list(pending)
        start = 1
        while start <= height:  # GET /blocks pages by at most 100 blocks
            blocks = (await client.get(f"{miner}/blocks", params={"start": start, "end": height}, timeout=60)).json()
            if not blocks:
                break
            for b in blocks:
                txs.extend(b["body"]["transactions"])
            start = blocks[-1]["header"]["height"] + 1
    except (httpx.HTTPError, ValueError, KeyError):
        return None
    return {(t["sender"], t["nonce"], t["signature"]) for t in txs}


async def check_transfers(
    client: httpx.AsyncClient,
    miners: list[str],
    accepted: dict[str, tuple[str, int, str]],
    settle: float,
    stall: float = 10.0,
) -> Json:
    """Poll until every accepted transfer is known on every miner, the number missing stopped falling for
    ``stall`` seconds (gossip gave up on them), or ``settle`` seconds passed."""
    t0 = time.perf_counter()
    want = set(accepted.values())
    missing: dict[str, set[tuple[str, int, str]]] = {m: set(want) for m in miners}
    history: list[tuple[float, int]] = []  # (seconds, missing over all miners) at each poll
    best, progress_at = len(want) * len(miners) + 1, t0
    gave_up: str | None = None
    while True:
        for m in miners:
            if missing[m]:
                keys = await known_keys(client, m)
                if keys is not None:
                    missing[m] -= keys
        now, left = time.perf_counter(), sum(len(v) for v in missing.values())
        history.append((round(now - t0, 1), left))
        if left < best:
            best, progress_at = left, now
        if not left:
            break
        if now - t0 > settle or now - progress_at > stall:
            gave_up = f"after {settle:g} s" if now - t0 > settle else f"nothing arrived for {stall:g} s"
            break
        await asyncio.sleep(1.0)
    waited = time.perf_counter() - t0
    # a second opinion for what is still missing: the miner's own GET /transactions/{txid} (at most 20 each)
    by_key = {k: txid for txid, k in accepted.items()}
    second: dict[str, Json] = {}
    for m, keys in missing.items():
        sample = [by_key[k] for k in list(keys)[:20]]
        codes: Counter[str] = Counter()
        for txid in sample:
            try:
                codes[str((await client.get(f"{m}/transactions/{txid}")).status_code)] += 1
            except httpx.HTTPError as exc:
                codes[type(exc).__name__] += 1
        if sample:
            second[m] = {"asked": len(sample), "answers": dict(codes), "sample": sample[:3]}
    return {
        "accepted": len(accepted),
        "settle_seconds": round(waited, 2),  # until none was missing (the propagation lag), or gave up
        "gave_up": gave_up,
        "missing": {m: len(v) for m, v in missing.items()},
        "missing_history": history,
        "missing_lookup": second,  # GET /transactions/{txid} for a sample of the missing: 404 = unknown there
        "ok": not any(missing.values()),
    }


async def check_tasks(
    client: httpx.AsyncClient, server: str, requester: str, miners: list[str], accepted: dict[str, Json]
) -> Json:
    """Every task the requester answered 202 for is known to the server; its deposit to every miner."""
    server_ids = {d["task_id"] for d in (await client.get(f"{server}/tasks")).json()}
    requester_ids = {d["task_id"] for d in (await client.get(f"{requester}/tasks")).json()}
    missing_server = sorted(set(accepted) - server_ids)
    deposits_unknown: dict[str, int] = {}
    for m in miners:
        n = 0
        for answer in accepted.values():
            txid = answer.get("deposit_txid")
            if txid and (await client.get(f"{m}/transactions/{txid}")).status_code != 200:
                n += 1
        deposits_unknown[m] = n
    return {
        "accepted": len(accepted),
        "missing_on_server": missing_server,
        "missing_on_requester": sorted(set(accepted) - requester_ids),
        "deposits_unknown_per_miner": deposits_unknown,  # informational: the server resends a deposit it misses
        "ok": not missing_server,
    }


# --- the run ---------------------------------------------------------------------------------
async def drive(net: LocalNetwork, args: argparse.Namespace, senders: list[Identity], out: Json) -> None:
    miner = net.url("miner1")
    limits = httpx.Limits(max_connections=args.concurrency + 8, max_keepalive_connections=args.concurrency + 8)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(30.0, connect=5.0)) as client:
        phases: Json = {}
        log("phase reads ...")
        reads = await run_phase(client, "reads", read_jobs(miner), duration=args.duration, concurrency=args.concurrency)
        phases["reads"] = reads.summary()

        t_sign = time.perf_counter()
        txs = signed_transfers(senders, MAX_NONCE_GAP + 1)
        keys = {txid: key for txid, _, key in txs}
        out["signing_seconds"] = round(time.perf_counter() - t_sign, 2)
        log(f"phase submits ({len(txs)} signed transfers from {len(senders)} senders) ...")
        submits = await run_phase(
            client, "submits", submit_jobs(miner, txs), duration=args.duration, concurrency=args.concurrency
        )
        phases["submits"] = submits.summary()
        phases["submits"]["unsent"] = len(txs)
        accepted = {t: keys[t] for t in submits.accepted(202)}
        log(f"checking that the {len(accepted)} accepted transfers reached every miner ...")
        out["lost_transfers"] = await check_transfers(client, net.miner_urls, accepted, args.settle, args.stall)
        t = time.perf_counter()
        r = await client.get(f"{miner}/transactions/pending", timeout=60)
        out["pending_list_full"] = {
            "transactions": len(r.json()),
            "bytes": len(r.content),
            "ms": round((time.perf_counter() - t) * 1000, 1),
        }

        log(f"phase tasks ({args.tasks} POST /tasks to the requester) ...")
        tasks = await run_phase(
            client,
            "tasks",
            task_jobs(net.url("requester"), args.tasks, f"load-{int(time.time())}"),
            duration=args.duration,
            concurrency=min(args.concurrency, args.tasks),
            keep_answers=True,
        )
        phases["tasks"] = tasks.summary()
        accepted_tasks = {t: tasks.answers.get(t, {}) for t in tasks.accepted(202)}
        out["lost_tasks"] = await check_tasks(
            client, net.url("server"), net.url("requester"), net.miner_urls, accepted_tasks
        )
        out["phases"] = phases


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> Json:
    check_ports_free(args.base_port)
    out: Json = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine_start": machine(),
        "config": {
            k: getattr(args, k)
            for k in (
                "duration",
                "concurrency",
                "senders",
                "tasks",
                "settle",
                "stall",
                "base_port",
                "quick",
                "difficulty",
            )
        },
        "limits": {"MAX_NONCE_GAP": MAX_NONCE_GAP, "MAX_PENDING": MAX_PENDING},
    }
    senders = [sender_identity(i) for i in range(args.senders)]
    with contextlib.ExitStack() as stack:
        if args.workdir:
            d = Path(args.workdir)
            d.mkdir(parents=True, exist_ok=True)
        else:
            d = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fedcoin-load-")))
        net_dir = d / "net"
        init_testnet(
            net_dir,
            miners=MINERS,
            initial_difficulty=args.difficulty,
            allocations={s.account: SENDER_FUNDS for s in senders},
        )
        specs = plan_network(
            net_dir,
            miners=MINERS,
            client_types=CLIENT_TYPES,
            base_port=args.base_port,
            default_task=False,
            initial_difficulty=args.difficulty,
        )
        t0 = time.time()
        with LocalNetwork(net_dir, specs) as net:
            try:
                net.start_all()
                net.wait_healthy(timeout=args.startup_timeout)
                out["startup_seconds"] = round(time.time() - t0, 2)
                log(f"network healthy after {out['startup_seconds']} s")
                out["rss_before"] = rss_of(net)
                asyncio.run(drive(net, args, senders, out))
                out["rss_after"] = rss_of(net)
                dead = {n: p.returncode for n, p in net.procs.items() if p.poll() is not None}
                out["services_exited"] = dead
            except BaseException:
                print_logs_tail(net_dir)
                raise
    out["machine_end"] = machine()
    out["wall_seconds"] = round(time.time() - t0, 2)
    phases = out["phases"]
    out["ok"] = bool(
        all(p["server_errors"] == 0 and p["transport_errors"] == 0 for p in phases.values())
        and out["lost_transfers"]["ok"]
        and out["lost_tasks"]["ok"]
        and all(p["throughput_rps"] > 0 for p in phases.values())
        and not out["services_exited"]
    )
    return out


def render(out: Json) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=False)
    t = Table(title="FedCoin load test (loopback, one local network)")
    for col in ("phase", "requests", "req/s", "p50 ms", "p99 ms", "max ms", "statuses"):
        t.add_column(col, justify="left" if col in ("phase", "statuses") else "right")
    for name, p in out["phases"].items():
        t.add_row(
            name + (" (all sent)" if p["exhausted"] else ""),
            str(p["requests"]),
            f"{p['throughput_rps']:.1f}",
            str(p["p50_ms"]),
            str(p["p99_ms"]),
            str(p["max_ms"]),
            " ".join(f"{k}:{v}" for k, v in p["status_counts"].items()),
        )
    console.print(t)
    m = Table(title="peak RSS (VmHWM, MiB) per service")
    for col in ("service", "before", "after", "RSS after"):
        m.add_column(col, justify="right" if col != "service" else "left")
    for name, before in out["rss_before"].items():
        after = out["rss_after"].get(name, {})
        m.add_row(
            name,
            _mib(before.get("VmHWM_kb")),
            _mib(after.get("VmHWM_kb")),
            _mib(after.get("VmRSS_kb")),
        )
    console.print(m)
    lt, lk = out["lost_transfers"], out["lost_tasks"]
    console.print(
        f"transfers accepted {lt['accepted']}, missing per miner {lt['missing']} "
        f"({'gave up ' + lt['gave_up'] if lt['gave_up'] else 'all known'} after {lt['settle_seconds']} s); "
        f"tasks accepted {lk['accepted']}, "
        f"missing on server {lk['missing_on_server']}; full pending list: {out['pending_list_full']}"
    )
    ms, me = out["machine_start"], out["machine_end"]
    console.print(
        f"cores {ms['cores']}, load average {ms['loadavg'][0]:.2f} -> {me['loadavg'][0]:.2f}; "
        f"other benchmarks: {len(ms['other_benchmarks'])}; wall {out['wall_seconds']} s; "
        f"{'OK' if out['ok'] else 'FAILED'}"
    )


def _mib(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:.1f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--duration", type=float, default=None, help="seconds per phase (default 20; --quick 3)")
    p.add_argument("--concurrency", type=int, default=16, help="concurrent requests (default 16)")
    p.add_argument("--base-port", type=int, default=19000, help="first port of the network (uses +0..2, +101..104)")
    p.add_argument("--senders", type=int, default=None, help="funded sender accounts (default 150; --quick 20)")
    p.add_argument("--tasks", type=int, default=None, help="POST /tasks in the tasks phase (default 10; --quick 3)")
    p.add_argument("--settle", type=float, default=120.0, help="at most this long for gossip to settle (default 120)")
    p.add_argument("--stall", type=float, default=10.0, help="give up once no transfer arrived for this long (10)")
    p.add_argument("--difficulty", type=float, default=DIFFICULTY, help="the genesis's D (default 0.05)")
    p.add_argument("--startup-timeout", type=float, default=240.0)
    p.add_argument("--workdir", help="keep the network's files (logs, SQLite) here instead of a temporary folder")
    p.add_argument("--quick", action="store_true", help="a small run (3 s phases, 20 senders, 3 tasks)")
    a = p.parse_args(argv)
    a.duration = a.duration if a.duration is not None else (3.0 if a.quick else 20.0)
    a.senders = a.senders if a.senders is not None else (20 if a.quick else 150)
    a.tasks = a.tasks if a.tasks is not None else (3 if a.quick else 10)
    cap = (MAX_PENDING - 100) // (MAX_NONCE_GAP + 1)
    if not 1 <= a.senders <= cap:
        p.error(f"--senders must be in 1..{cap} (MAX_PENDING {MAX_PENDING}, MAX_NONCE_GAP {MAX_NONCE_GAP})")
    if a.concurrency < 1 or a.duration <= 0 or a.tasks < 1:
        p.error("--concurrency, --duration and --tasks must be positive")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = run(args)
    render(out)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
