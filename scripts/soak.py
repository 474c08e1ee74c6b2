#!/usr/bin/env python
"""Soak test: one local FedCoin network runs many one-round training tasks in a row; does memory grow?

One network (``fedcoin.devnet.local``: 4 miners, a client node with clients of types 0-9,
the FL server, the requester with no default task) runs ``--tasks`` consecutive one-round
tasks: the requester's ``POST /tasks``, then wait until the FL server reports the task
done and every miner agrees on the head that settles it, then the next. After each task
the RSS (VmRSS, /proc/<pid>/status) of every service process is recorded together with
the task's wall time (POST to agreement) and a conservation check on miner1
(sum of balances == supply == the genesis's allocations).

The verdict: for every miner, the least-squares slope of RSS over the second half of the
tasks (MiB per task; the first half lets caches, the SQLite page cache and torch's
allocator warm up). The run fails (exit 1) when a miner's slope exceeds ``--max-slope``
(1.0 MiB/task by default: 50 MiB over 50 tasks for a process of about 600 MiB), when a
task does not settle, when the miners disagree or when supply is not conserved.
``--max-minutes`` stops early (after the task in progress) and says so in the JSON.

The difficulty is fixed (``--retarget-window`` 10,000 blocks) so that tasks stay short
and alike: with the genesis's default window the retarget would move D toward
``target_block_ms`` (30 s) after 10 blocks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from load_test import MINERS, check_ports_free, log, machine, proc_status  # the load test's helpers

from fedcoin.chain.genesis import GenesisConfig
from fedcoin.devnet.local import LocalNetwork, plan_network
from fedcoin.devnet.watch import wait_for_agreement, wait_for_task
from fedcoin.errors import FedcoinError

Json = dict[str, Any]
MIB = 1024.0  # kB per MiB


def slope(ys: list[float]) -> float | None:
    """Least-squares slope of ``ys`` against 0, 1, 2, ...; None with fewer than 2 points."""
    n = len(ys)
    if n < 2:
        return None
    mx = (n - 1) / 2
    my = sum(ys) / n
    sxx = sum((i - mx) ** 2 for i in range(n))
    return sum((i - mx) * (y - my) for i, y in enumerate(ys)) / sxx


def conservation(bal: Json, genesis_total: int) -> Json:
    total = sum(bal["balances"].values())
    return {
        "height": bal["height"],
        "sum_balances": total,
        "supply": bal["supply"],
        "ok": total == bal["supply"] == genesis_total,
    }


def run_one(http: httpx.Client, net: LocalNetwork, task_id: str, args: argparse.Namespace) -> Json:
    t0 = time.time()
    r = http.post(
        f"{net.url('requester')}/tasks", json={"budget": args.budget, "rounds": 1, "task_id": task_id}, timeout=60
    )
    if r.status_code != 202:
        raise FedcoinError(f"requester refused {task_id}: {r.status_code} {r.text[:300]}")
    doc = wait_for_task(net.url("server"), task_id, timeout=args.task_timeout)
    done = time.time()
    height = doc["round_results"][-1]["block_height"]
    head = wait_for_agreement(net.miner_urls, height, timeout=120)
    return {
        "task_id": task_id,
        "status": doc["status"],
        "block_height": height,
        "head_height": head["height"],
        "seconds": round(time.time() - t0, 2),
        "seconds_to_done": round(done - t0, 2),
    }


def soak(args: argparse.Namespace) -> Json:
    check_ports_free(args.base_port)
    out: Json = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine_start": machine(),
        "config": {
            k: getattr(args, k)
            for k in ("tasks", "difficulty", "retarget_window", "budget", "max_slope", "max_minutes", "base_port")
        },
        "tasks": [],
    }
    with contextlib.ExitStack() as stack:
        if args.workdir:
            d = Path(args.workdir)
            d.mkdir(parents=True, exist_ok=True)
        else:
            d = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fedcoin-soak-")))
        net_dir = d / "net"
        specs = plan_network(
            net_dir,
            miners=MINERS,
            client_types="0-9",
            base_port=args.base_port,
            default_task=False,
            initial_difficulty=args.difficulty,
            retarget_window=args.retarget_window,
        )
        genesis_total = sum(GenesisConfig.load(net_dir / "genesis.json").allocations.values())
        t0 = time.time()
        with LocalNetwork(net_dir, specs) as net, httpx.Client(timeout=30) as http:
            try:
                net.start_all()
                net.wait_healthy(timeout=args.startup_timeout)
                out["startup_seconds"] = round(time.time() - t0, 2)
                log(f"network healthy after {out['startup_seconds']} s")
                out["rss_start"] = {n: proc_status(p.pid) for n, p in net.procs.items()}
                t_first = time.time()
                prefix = f"soak-{int(t_first)}"
                for i in range(args.tasks):
                    if args.max_minutes and time.time() - t_first > args.max_minutes * 60:
                        out["stopped_early"] = f"--max-minutes {args.max_minutes} reached after {i} tasks"
                        log(out["stopped_early"])
                        break
                    row = run_one(http, net, f"{prefix}-{i:03d}", args)
                    row["rss_kb"] = {n: proc_status(p.pid).get("VmRSS_kb") for n, p in net.procs.items()}
                    row["conservation"] = conservation(http.get(f"{net.miner_urls[0]}/balances").json(), genesis_total)
                    out["tasks"].append(row)
                    miners_mib = [round(row["rss_kb"][f"miner{k + 1}"] / MIB) for k in range(MINERS)]
                    log(
                        f"task {i + 1}/{args.tasks}: {row['seconds']:.1f} s, height {row['head_height']}, "
                        f"miners' RSS {miners_mib} MiB"
                    )
                out["tasks_seconds"] = round(time.time() - t_first, 2)
                # the end state on every miner: same head, every task settled, supply conserved
                finals = []
                for u in net.miner_urls:
                    bal = http.get(f"{u}/balances").json()
                    settled = [
                        bool((http.get(f"{u}/tasks/{row['task_id']}:r0").json() or {}).get("settled"))
                        for row in out["tasks"]
                    ]
                    finals.append(
                        {
                            "miner": u,
                            "head": bal["head"],
                            "conservation": conservation(bal, genesis_total),
                            "tasks_settled": sum(settled),
                        }
                    )
                out["final"] = finals
                out["rss_end"] = {n: proc_status(p.pid) for n, p in net.procs.items()}
                out["services_exited"] = {n: p.returncode for n, p in net.procs.items() if p.poll() is not None}
            except BaseException:
                for log_file in sorted((net_dir / "logs").glob("*.log")):
                    tail = log_file.read_text(errors="replace").splitlines()[-15:]
                    print(f"--- {log_file.name}\n" + "\n".join(tail), file=sys.stderr)
                raise
    out["machine_end"] = machine()
    out["wall_seconds"] = round(time.time() - t0, 2)
    out["summary"] = summarize(out, args.max_slope)
    return out


def summarize(out: Json, max_slope: float) -> Json:
    rows = out["tasks"]
    n = len(rows)
    names = list(out["rss_start"])
    half = rows[n // 2 :]
    per_service: Json = {}
    for name in names:
        series = [r["rss_kb"][name] / MIB for r in rows if r["rss_kb"].get(name) is not None]
        if not series:
            continue
        s = slope(series[n // 2 :])
        per_service[name] = {
            "start_mib": round(out["rss_start"][name].get("VmRSS_kb", 0) / MIB, 1),
            "first_mib": round(series[0], 1),
            "last_mib": round(series[-1], 1),
            "max_mib": round(max(series), 1),
            "slope_mib_per_task_second_half": None if s is None else round(s, 4),
            "peak_hwm_mib": round(out["rss_end"].get(name, {}).get("VmHWM_kb", 0) / MIB, 1),
        }
    secs = [r["seconds"] for r in rows]
    secs_slope = slope(secs[n // 2 :])
    miner_slopes = [v["slope_mib_per_task_second_half"] for k, v in per_service.items() if k.startswith("miner")]
    heads = {f["head"] for f in out["final"]}
    checks = {
        "all_tasks_done": n > 0 and all(r["status"] == "done" for r in rows),
        "all_settled_on_every_miner": all(f["tasks_settled"] == n for f in out["final"]),
        "miners_agree": len(heads) == 1,
        "supply_conserved": all(r["conservation"]["ok"] for r in rows)
        and all(f["conservation"]["ok"] for f in out["final"]),
        "miner_slopes_below_threshold": all(s is not None and s <= max_slope for s in miner_slopes)
        if n >= 4
        else None,  # too few tasks for a fit
        "no_service_exited": not out["services_exited"],
    }
    return {
        "tasks_run": n,
        "task_seconds": {
            "first": secs[0] if secs else None,
            "last": secs[-1] if secs else None,
            "mean": round(sum(secs) / n, 2) if n else None,
            "max": max(secs) if secs else None,
            "min": min(secs) if secs else None,
            "slope_per_task_second_half": None if secs_slope is None else round(secs_slope, 4),
        },
        "second_half_tasks": len(half),
        "max_slope_mib_per_task": max_slope,
        "rss": per_service,
        "checks": checks,
        "ok": all(v is not False for v in checks.values()),
    }


def render(out: Json) -> None:
    from rich.console import Console
    from rich.table import Table

    s = out["summary"]
    t = Table(title=f"soak: {s['tasks_run']} one-round tasks, RSS per service (MiB)")
    for col in ("service", "start", "after task 1", "last", "max", "slope 2nd half (MiB/task)", "VmHWM"):
        t.add_column(col, justify="left" if col == "service" else "right")
    for name, v in s["rss"].items():
        t.add_row(
            name,
            f"{v['start_mib']:.1f}",
            f"{v['first_mib']:.1f}",
            f"{v['last_mib']:.1f}",
            f"{v['max_mib']:.1f}",
            str(v["slope_mib_per_task_second_half"]),
            f"{v['peak_hwm_mib']:.1f}",
        )
    console = Console()
    console.print(t)
    ts = s["task_seconds"]
    console.print(
        f"task wall time (s): first {ts['first']}, last {ts['last']}, mean {ts['mean']}, min {ts['min']}, "
        f"max {ts['max']}; checks {s['checks']}; threshold {s['max_slope_mib_per_task']} MiB/task; "
        f"{'OK' if s['ok'] else 'FAILED'}" + (f"; {out['stopped_early']}" if out.get("stopped_early") else "")
    )


def plot(out: Json, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = out["tasks"]
    xs = list(range(1, len(rows) + 1))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for name in out["rss_start"]:
        ys = [r["rss_kb"].get(name, 0) / MIB for r in rows]
        ax1.plot(xs, ys, marker=".", label=name)
    ax1.set_ylabel("VmRSS (MiB)")
    ax1.legend(fontsize="small", ncol=4)
    ax1.set_title("FedCoin soak: RSS after each one-round task")
    ax2.plot(xs, [r["seconds"] for r in rows], marker=".", color="black")
    ax2.set_xlabel("task")
    ax2.set_ylabel("task wall time (s)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=50, help="consecutive one-round tasks (default 50)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--plot", type=Path, help="a PNG of RSS and wall time per task (matplotlib)")
    p.add_argument("--difficulty", type=float, default=0.05, help="the genesis's D (default 0.05, as the demo)")
    p.add_argument("--retarget-window", type=int, default=10_000, help="blocks per retarget (10,000: D stays fixed)")
    p.add_argument("--budget", type=int, default=1_000_000, help="V of each task (default 1,000,000)")
    p.add_argument("--max-slope", type=float, default=1.0, help="failing RSS slope, MiB/task (default 1.0)")
    p.add_argument("--max-minutes", type=float, default=None, help="start no new task after this many minutes")
    p.add_argument("--task-timeout", type=float, default=600.0, help="seconds one task may take")
    p.add_argument("--base-port", type=int, default=19200, help="first port of the network (uses +0..2, +101..104)")
    p.add_argument("--startup-timeout", type=float, default=240.0)
    p.add_argument("--workdir", help="keep the network's files (logs, SQLite) here instead of a temporary folder")
    a = p.parse_args(argv)
    if a.tasks < 1 or a.budget < 10 or a.max_slope < 0:
        p.error("--tasks >= 1, --budget >= 10 and --max-slope >= 0 please")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = soak(args)
    render(out)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.plot and out["tasks"]:
        plot(out, args.plot)
        print(f"wrote {args.plot}")
    return 0 if out["summary"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
