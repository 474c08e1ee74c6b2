#!/usr/bin/env python3
"""Reproduce the FedCoin paper's Section 6 (Table 2, Figures 4, 5, 6) from the running system.

    python scripts/paper/run.py                      # full run, Fashion-MNIST (offline default)
    python scripts/paper/run.py --dataset mnist --data-dir DIR    # the paper's dataset
    python scripts/paper/run.py --quick --out /tmp/r # the CI path (< 5 minutes)
    python scripts/paper/run.py --only fig4,fig5 --seeds 5

Setting (paper, Section 6.1): 100 clients in 10 types (10 per type, type j holds
10 - j labels), FedAvg with 20 local iterations, p = 2, 4 miners.  Every item uses
the library code the services run (``fedcoin.fl``, ``fedcoin.fl.content``,
``fedcoin.valuation.engine.ShapleyEngine``, ``fedcoin.consensus.posap``, ``fedcoin.devnet.simulation.race``,
``fedcoin.ledger``) and Figure 6 runs the services themselves
(``fedcoin.devnet.local.LocalNetwork``).  Output: one JSON and one PNG per item under
``--out`` (default ``docs/results``); each JSON records the command line, the
data set, the seeds, the timings and the machine.

Figure 6 runs first and alone, so that nothing else of this script competes with
the miners for the CPU; Figures 4 and 5 then run their seeds in ``--workers``
processes (one torch thread each).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import common  # this script's directory is first on sys.path (and so on its workers')
from common import log

ITEMS = ("table2", "fig4", "fig5", "fig6")
FILES = {
    "table2": "table2_emd",
    "fig4": "fig4_shapley_by_type",
    "fig5": "fig5_accuracy_by_type",
    "fig6": "fig6_block_time",
}

# Per mode: seeds, Figure 4 (metric, D, max iterations per miner; secondary metric and D),
# Figure 5 (FedAvg rounds), Figure 6 ((D, repetitions = blocks, cap in seconds per block, cap in iterations), ...).
PRESETS: dict[str, dict[str, Any]] = {
    "full": {
        "seeds": 3,
        "fig4": {
            "metric": "accuracy",
            "difficulty": 2e-2,
            "max_iterations": 50_000,
            "secondary": {"metric": "neg_loss", "difficulty": 0.13},
        },
        "fig5_rounds": [1, 10],
        "fig6_metric": "accuracy",
        # D = 1e-3 gets up to 67 minutes (a block's deflated work log holds ~98,000 iterations of this round);
        # 1e-4 .. 1e-6 are out of reach here (see the README): a short cap each, recorded as lower bounds.
        "fig6": [
            (1e-1, 3, 300, None),
            (1e-2, 3, 1200, None),
            (1e-3, 1, 4000, None),
            (1e-4, 1, 90, None),
            (1e-5, 1, 90, None),
            (1e-6, 1, 90, None),
        ],
    },
    "quick": {
        "seeds": 1,
        "fig4": {"metric": "accuracy", "difficulty": 5e-2, "max_iterations": 5_000, "secondary": None},
        "fig5_rounds": [1],
        "fig6_metric": "accuracy",
        "fig6": [(1e-1, 1, 120, None), (1e-3, 1, 15, None)],
    },
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="the CI path: 1 seed, 2 difficulties, small caps (< 5 min)")
    p.add_argument("--dataset", choices=("fashion-mnist", "mnist"), default="fashion-mnist")
    p.add_argument(
        "--data-dir",
        default=None,
        help="directory of the IDX files (mnist: required unless torchvision can download it)",
    )
    p.add_argument("--out", default="docs/results", help="output directory (default: docs/results)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (0..N-1) for Table 2, Figures 4 and 5")
    p.add_argument("--only", default=",".join(ITEMS), help="comma list of items: table2,fig4,fig5,fig6")
    p.add_argument("--workers", type=int, default=None, help="processes for Figures 4/5 (default: min(2, cores))")
    p.add_argument("--base-port", type=int, default=23700, help="first port of the Figure 6 networks")
    p.add_argument("--workdir", default=None, help="state of the Figure 6 networks (default: a temporary directory)")
    p.add_argument("--keep-workdir", action="store_true", help="keep the networks' logs after a successful run")
    p.add_argument(
        "--fig6-difficulty",
        type=float,
        nargs="+",
        default=None,
        metavar="D",
        help="re-run only these Figure 6 difficulties and merge them into the existing JSON of --out",
    )
    p.add_argument("--fig6-cap-seconds", type=float, default=None, help="per-block cap for --fig6-difficulty runs")
    p.add_argument(
        "--replot",
        action="store_true",
        help="only redraw the PNGs of --out from its JSONs (recomputing Figure 6's fit); no experiment",
    )
    args = p.parse_args(argv)
    args.only = [x.strip() for x in args.only.split(",") if x.strip()]
    bad = [x for x in args.only if x not in ITEMS]
    if bad:
        p.error(f"unknown item(s) {bad}; choose from {ITEMS}")
    if args.seeds is not None and args.seeds < 1:
        p.error("--seeds must be >= 1")
    return args


def resolve_data_dir(dataset: str, data_dir: str | None) -> str | None:
    """The directory every part (and every service) reads; mnist without one is fetched by torchvision."""
    from fedcoin.fl.data import DatasetNotFound, load_dataset

    if data_dir is not None:
        return str(Path(data_dir).resolve())
    if dataset == "fashion-mnist":
        return None  # fedcoin.fl.data.FASHION_MNIST_DIR, the services' default too
    cache = Path.home() / ".cache" / "fedcoin" / "mnist"
    try:
        load_dataset("mnist", cache, download=True, max_train=1, max_test=1)
    except (DatasetNotFound, OSError, RuntimeError) as exc:
        raise SystemExit(
            f"MNIST not found and not downloadable ({exc}); pass --data-dir DIR with the IDX files"
        ) from exc
    return str(cache)


def meta(args, seeds, started: float, seconds: float, extra: dict | None = None) -> dict:
    return {
        "command": common.command_line(),
        "cwd": os.getcwd(),
        "dataset": args.dataset,
        "data_dir": args.data_dir,
        "seeds": seeds,
        "quick": args.quick,
        "item_seconds": round(seconds, 1),
        "run_started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": common.machine(),
        "setting": {
            "clients": common.NUM_CLIENTS,
            "types": common.NUM_TYPES,
            "samples_per_client": common.SAMPLES_PER_CLIENT,
            "local_iterations": common.LOCAL_ITERATIONS,
            "lr": common.LR,
            "batch_size": common.BATCH_SIZE,
            "hidden": list(common.HIDDEN),
            "validation_size": common.VAL_SIZE,
            "p": common.P_NORM,
            "miners": common.MINERS,
            "empty_value": common.EMPTY_VALUE,
            "aggregation": "fedavg",
        },
        **(extra or {}),
    }


# --------------------------------------------------------------------------- items


def do_fig6(args, preset, out: Path, workdir: Path, started: float) -> dict:
    import fig6

    t0 = time.time()
    metric = preset["fig6_metric"]
    log(f"Figure 6: engine benchmark ({metric}, K=100, M=1000, 1 thread)")
    rate = fig6.engine_rate(args.dataset, args.data_dir, metric, seconds=4.0 if args.quick else 10.0)
    log(f"  {rate['permutations_per_second_1_thread']:.1f} permutations/s on one thread")
    plan = list(preset["fig6"])
    if args.fig6_difficulty:
        known = {row[0]: row for row in plan}
        plan = [known.get(D, (D, 1, 900, None)) for D in args.fig6_difficulty]
        if args.fig6_cap_seconds:
            plan = [(D, reps, args.fig6_cap_seconds, cap_its) for D, reps, _cap, cap_its in plan]
    records = []
    for D, reps, cap, cap_its in plan:
        log(
            f"Figure 6: D = {D:g}: fresh network, {reps} block(s), cap {cap} s"
            + (f" or {cap_its} iterations" if cap_its else "")
            + " per block"
        )
        rec = fig6.run_difficulty(
            D,
            reps=reps,
            cap_s=cap,
            cap_iterations=cap_its,
            workdir=workdir,
            base_port=args.base_port,
            dataset=args.dataset,
            data_dir=args.data_dir,
            metric=metric,
        )
        rec["command"] = common.command_line()  # a merged JSON keeps each record's own provenance
        rec["run_started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        its = [r["iterations"] for r in rec["runs"] if not r["censored"]]
        log(f"  D = {D:g}: blocks at {its} iterations, {rec['censored']} censored; {rec['wall_seconds']:.0f} s")
        records.append(rec)
    previous = out / f"{FILES['fig6']}.json"
    if args.fig6_difficulty and previous.exists():  # merge: the other difficulties keep their earlier runs
        redone = {rec["difficulty"] for rec in records}
        kept = [rec for rec in json.loads(previous.read_text())["records"] if rec["difficulty"] not in redone]
        records = sorted(kept + records, key=lambda rec: -rec["difficulty"])
    doc = {
        "item": "fig6",
        "dataset": args.dataset,
        "metric": metric,
        "empty_value": common.EMPTY_VALUE,
        "miners": common.MINERS,
        "clients": common.NUM_CLIENTS,
        "p": common.P_NORM,
        "path": "networked: fedcoin.devnet.local.LocalNetwork (miner, server, client, requester services as local "
        "processes); one fresh network per D; iterations = block header 'iterations'; seconds = block "
        "timestamp - task published_at",
        "records": records,
        "engine_rate": rate,
        "paper": {
            "plateau_iterations": fig6.PAPER_PLATEAU,
            "text": "block generation time increases with difficulty; for D < 1e-3 it converges at about "
            "2,500 Shapley calculation iterations (Section 6.3)",
        },
    }
    fig6.finalize(doc)
    doc["meta"] = meta(args, None, started, time.time() - t0)
    common.write_json(out / f"{FILES['fig6']}.json", doc)
    fig6.plot(doc, out / f"{FILES['fig6']}.png")
    log(f"Figure 6 written ({time.time() - t0:.0f} s)")
    return doc


def do_table2(args, seeds, out: Path, started: float) -> None:
    import table2

    t0 = time.time()
    doc = {"item": "table2", "dataset": args.dataset, **table2.compute(seeds, args.dataset, args.data_dir)}
    doc["meta"] = meta(args, seeds, started, time.time() - t0)
    common.write_json(out / f"{FILES['table2']}.json", doc)
    table2.plot(doc, out / f"{FILES['table2']}.png")
    log("Table 2 written: EMD " + ", ".join(f"{v:.4f}" for v in doc["emd_by_type"]))


def run_jobs(jobs: list, workers: int) -> list:
    """Run ``(fn, args)`` jobs, in a spawn process pool when ``workers > 1``; results in job order."""
    if workers <= 1:
        return [fn(*a) for fn, a in jobs]
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futs = [pool.submit(fn, *a) for fn, a in jobs]
        return [f.result() for f in futs]


def do_fig45(args, preset, seeds, out: Path, started: float, workers: int) -> None:
    import fig4
    import fig5

    t0 = time.time()
    jobs: list[tuple[Callable[..., dict[str, Any]], tuple[Any, ...]]] = []
    tags: list[tuple[str, Any]] = []
    if "fig5" in args.only:
        for R in sorted(preset["fig5_rounds"], reverse=True):  # longest jobs first
            for s in seeds:
                jobs.append((fig5.accuracy_seed, (s, R, args.dataset, args.data_dir)))
                tags.append(("fig5", R))
    if "fig4" in args.only:
        f4 = preset["fig4"]
        races = [("primary", f4["metric"], f4["difficulty"])]
        if f4.get("secondary"):
            races.append(("secondary", f4["secondary"]["metric"], f4["secondary"]["difficulty"]))
        for kind, metric, D in races:
            for s in seeds:
                jobs.append((fig4.shapley_seed, (s, metric, D, args.dataset, args.data_dir, f4["max_iterations"])))
                tags.append(("fig4", kind))
    log(f"Figures 4/5: {len(jobs)} jobs on {workers} worker process(es)")
    results = run_jobs(jobs, workers)
    elapsed = time.time() - t0
    if "fig5" in args.only:
        variants = []
        for R in preset["fig5_rounds"]:
            runs = [r for (k, v), r in zip(tags, results, strict=False) if k == "fig5" and v == R]
            variants.append({**fig5.aggregate(runs), "runs": runs})
        main = variants[0]
        data = common.load_data(args.dataset, args.data_dir)
        doc = {
            "item": "fig5",
            "dataset": args.dataset,
            "accuracy_by_type": main["accuracy_by_type"],
            "fl_reference_accuracy": main["fl_reference_accuracy"],
            "rounds": main["rounds"],
            "variants": variants,
            "test_size": int(data["X_test"].shape[0]),
            "seeds": seeds,
            "paper": {
                "text": "the model accuracy based on data from clients with negative Shapley values is "
                "lower than the accuracy of the FL model based on the 100 clients (Section 6.3)"
            },
        }
        doc["meta"] = meta(args, seeds, started, elapsed, {"note": "item_seconds: Figures 4 and 5 ran together"})
        common.write_json(out / f"{FILES['fig5']}.json", doc)
        fig5.plot(doc, out / f"{FILES['fig5']}.png")
        for v in variants:
            log(
                f"Figure 5 ({v['rounds']} round(s)): accuracy "
                + ", ".join(f"{a:.3f}" for a in v["accuracy_by_type"])
                + f"; 100-client FL {v['fl_reference_accuracy']:.3f}"
            )
    if "fig4" in args.only:
        f4 = preset["fig4"]
        prim = [r for (k, v), r in zip(tags, results, strict=False) if k == "fig4" and v == "primary"]
        doc = {
            "item": "fig4",
            "dataset": args.dataset,
            **fig4.aggregate(prim),
            "metric": f4["metric"],
            "difficulty": f4["difficulty"],
            "empty_value": common.EMPTY_VALUE,
            "runs": prim,
            "path": "in-process PoSap: fedcoin.devnet.simulation.race with 4 PoSapMiners on the round's real task "
            "content (pack/unpack_task_content + engine_for, as the miner service), block built by "
            "fedcoin.consensus.mining.build_block and verified by every miner's chain",
            "paper": {
                "sign_pattern": "+++++-----",
                "text": "T0 highest, decreasing from T1 to T9; T0-T4 positive, T5-T9 negative",
            },
        }
        if f4.get("secondary"):
            sec = [r for (k, v), r in zip(tags, results, strict=False) if k == "fig4" and v == "secondary"]
            doc["secondary"] = {
                "metric": f4["secondary"]["metric"],
                "difficulty": f4["secondary"]["difficulty"],
                "aggregate": fig4.aggregate(sec),
                "runs": sec,
            }
        net_blocks = network_blocks(out, args.dataset, f4["metric"])
        doc["network_blocks"] = net_blocks
        doc["meta"] = meta(args, seeds, started, elapsed, {"note": "item_seconds: Figures 4 and 5 ran together"})
        common.write_json(out / f"{FILES['fig4']}.json", doc)
        fig4.plot(doc, out / f"{FILES['fig4']}.png", net_blocks)
        if doc["mean_shapley_by_type"]:
            log(
                "Figure 4: mean Shapley by type "
                + ", ".join(f"{v:+.5f}" for v in doc["mean_shapley_by_type"])
                + f" (sign pattern {doc['sign_pattern']})"
            )
    log(f"Figures 4/5 written ({elapsed:.0f} s)")


def network_blocks(out: Path, dataset: str, metric: str) -> list[dict]:
    """Round-0 blocks of the Figure 6 networks (same setting as Figure 4) with D <= 1e-2, for the overlay."""
    path = out / f"{FILES['fig6']}.json"
    if not path.exists():
        return []
    import json

    doc = json.loads(path.read_text())
    if doc.get("dataset") != dataset or doc.get("metric") != metric:
        return []
    found = []
    for rec in doc["records"]:
        for r in rec["runs"]:
            if not r["censored"] and r["round"] == 0 and rec["difficulty"] <= 1e-2 + 1e-15:
                found.append(
                    {
                        "difficulty": rec["difficulty"],
                        "iterations": r["iterations"],
                        "mean_shapley_by_type": r["mean_shapley_by_type"],
                    }
                )
    return found


# --------------------------------------------------------------------------- main


def replot(args) -> int:
    """Redraw the figures from the JSONs in --out; the measured data are left as they are."""
    import json

    import fig4
    import fig5
    import fig6
    import table2

    out = Path(args.out).resolve()
    for item in args.only:
        path = out / f"{FILES[item]}.json"
        if not path.exists():
            log(f"{path} missing; skipped")
            continue
        doc = json.loads(path.read_text())
        png = out / f"{FILES[item]}.png"
        if item == "fig6":
            fig6.finalize(doc)
            doc["meta"]["replotted"] = {
                "command": common.command_line(),
                "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "note": "fit/predictions recomputed from the recorded runs",
            }
            common.write_json(path, doc)
            fig6.plot(doc, png)
        elif item == "fig4":
            fig4.plot(doc, png, doc.get("network_blocks"))
        elif item == "fig5":
            fig5.plot(doc, png)
        else:
            table2.plot(doc, png)
        log(f"redrew {png}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.replot:
        return replot(args)
    started = time.time()

    def _terminate(signum: int, frame: FrameType | None) -> None:  # stop the networks' processes on SIGTERM too
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _terminate)
    preset: dict[str, Any] = PRESETS["quick" if args.quick else "full"]
    seeds = list(range(args.seeds if args.seeds is not None else preset["seeds"]))
    args.data_dir = resolve_data_dir(args.dataset, args.data_dir)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    workers = args.workers if args.workers is not None else max(1, min(2, os.cpu_count() or 1))
    log(
        f"paper reproduction: {args.dataset}, items {args.only}, seeds {seeds}, {'quick' if args.quick else 'full'}"
        f" run, {os.cpu_count()} cores, output {out}"
    )
    own_workdir = args.workdir is None
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="fedcoin-paper-")).resolve()
    ok = False
    try:
        if "fig6" in args.only:
            do_fig6(args, preset, out, workdir, started)
        if "table2" in args.only:
            do_table2(args, seeds, out, started)
        if "fig4" in args.only or "fig5" in args.only:
            do_fig45(args, preset, seeds, out, started, workers)
        ok = True
    finally:
        if ok and own_workdir and not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        elif "fig6" in args.only:
            log(f"networks' logs kept in {workdir}")
    log(f"done in {time.time() - started:.0f} s ({(time.time() - started) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
