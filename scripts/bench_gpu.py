#!/usr/bin/env python
"""The Shapley engine on a GPU: its speed against the GPU's memory-bandwidth bound, and CPU/GPU agreement.

One process, the paper's round as in ``bench_engine.py`` (K = 100 clients of 10 quality types, MLP
784-200-10, one FedAvg round of 20 local iterations, 1,000 validation images, accuracy utility):

1. **Bound**, measured in this run: the GPU's read bandwidth from a device-to-device copy of a 1 GiB
   float32 tensor (``read B/s = bytes / seconds``; the copy also writes as much, so the read-plus-write
   rate is twice that). A permutation must read the engine's per-client tensors once
   (``workspace_bytes``, 81.6 MB at K = 100), which gives the **bandwidth bound** in permutations/s.
2. **Engine speed** on the GPU for each ``--chunks`` size, with the first layer's running sums taken
   by one addition per prefix (``scan=False``) and by gather-and-scan (``scan=True``, the CUDA
   default): median seconds per permutation over ``--perms`` permutations. ``marginals`` returns a
   host array, so every timing includes the synchronisation and the copy back. The CPU engine on all
   cores runs the same permutations, for the GPU/CPU ratio. Then ``marginals_many`` for each
   ``--batches`` size: that many permutations valued in one pass over all their prefixes.
3. **Miner throughput**: a PoSap miner (``PoSapMiner.step`` of ``--gossip-every`` iterations, as a
   node with ``FEDCOIN_BATCH`` set to it runs them; the chain's default sampler, whose permutations
   are derived on the CPU from SHA-256 streams) on the GPU engine's default ``marginal_fn`` (batched)
   for ``--mine-s`` seconds: iterations per second, and how much of it is deriving permutations.
4. **Agreement**: for both metrics, the CPU and GPU engines on ``--agree-perms`` paired-sampler
   permutations: the largest |CPU − GPU| marginal and how many leaf values differ at all, against
   the chain's ``work_tolerance`` (a verifier on a CPU must accept a GPU miner's work); and the naive
   CPU utility against the GPU engine on ``--naive-perms`` permutations.
5. **Blocks** (``--race-d``): for each difficulty D, a whole PoSap race of ``--race-miners`` miners
   on the paper's round in this one process (:func:`fedcoin.devnet.simulation.race`: the miners take
   turns on the one GPU, gossip signed reports every ``--gossip-every`` iterations, the winner builds
   the block and every miner verifies it, spot checks included): the winner's iterations, the
   iterations of all miners together and the seconds to the block. Since the miners share the GPU, a
   network of one GPU per miner would take about 1/``--race-miners`` of that time.

Needs a CUDA device (exits 2 without one, saying so). Run:
python scripts/bench_gpu.py --dataset mnist --data-dir DIR --json PATH
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from bench_shapley import setup  # the paper round, shared with bench_shapley.py and bench_engine.py

from fedcoin.chain.genesis import ChainParams
from fedcoin.chain.work import max_iterations as work_capacity
from fedcoin.consensus.posap import PoSapMiner, derive_permutation
from fedcoin.devnet.simulation import demo_setup, race
from fedcoin.errors import InvalidInput
from fedcoin.valuation.engine import ShapleyEngine
from fedcoin.valuation.naive import NaiveUtility

PREV, TASK = "00" * 32, "bench-gpu"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "mnist"])
    ap.add_argument("--data-dir", default=None, help="directory of IDX files (required for mnist)")
    ap.add_argument("--metric", default="accuracy", choices=["neg_loss", "accuracy"])
    ap.add_argument("--device", default="cuda", help="torch device to measure (cuda, cuda:1, ...)")
    ap.add_argument("--chunks", type=int, nargs="+", default=[32, 100], help="chunk sizes to time")
    ap.add_argument("--batches", type=int, nargs="+", default=[4, 16, 32], help="marginals_many batch sizes")
    ap.add_argument("--perms", type=int, default=192, help="timed permutations per configuration")
    ap.add_argument("--cpu-perms", type=int, default=30, help="timed permutations on the CPU")
    ap.add_argument("--mine-s", type=float, default=20.0, help="seconds of PoSap mining on the GPU")
    ap.add_argument("--agree-perms", type=int, default=200, help="permutations compared CPU vs GPU per metric")
    ap.add_argument("--naive-perms", type=int, default=2)
    ap.add_argument("--race-d", type=float, nargs="*", default=[1e-2, 2e-3], help="difficulties to race at")
    ap.add_argument("--race-miners", type=int, default=4)
    ap.add_argument("--gossip-every", type=int, default=64, help="iterations between a miner's reports")
    ap.add_argument(
        "--race-max-iterations",
        type=int,
        default=None,
        help="per miner; the race fails past it (default: the most a block's work log holds, less one gossip period)",
    )
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    # what bench_shapley.setup reads
    a.clients, a.types, a.samples_per_client, a.hidden, a.iterations, a.val = 100, 10, 600, [200], 20, 1000
    return a


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_read_bandwidth(device: torch.device, nbytes: int = 2**30, repeats: int = 10) -> float:
    """Bytes read per second by a device-to-device copy of a large float32 tensor (median)."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - t)
    del src, dst
    return nbytes / statistics.median(times)


def median_seconds(engine: ShapleyEngine, perms: list[np.ndarray]) -> float:
    engine.marginals(perms[0])
    engine.marginals(perms[1 % len(perms)])
    times = []
    for p in perms:
        t = time.perf_counter()
        engine.marginals(p)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def speed_row(s: float, s_cpu: float, bound: float, config: dict) -> dict:
    """One engine configuration's speed (``s`` seconds per permutation) against the bound and the CPU."""
    return {
        **config,
        "perm_per_s": 1 / s,
        "ms_per_perm": s * 1e3,
        "fraction_of_bandwidth_bound": (1 / s) / bound,
        "fraction_of_read_plus_write_bound": (1 / s) / (2 * bound),
        "speedup_vs_cpu": s_cpu / s,
    }


def speed_text(s: float, s_cpu: float, bound: float) -> str:
    return (
        f"{1 / s:8,.0f} perm/s ({s * 1e3:.3f} ms): {(1 / s) / bound:.1%} of the bandwidth bound, "
        f"{s_cpu / s:.1f}x the CPU"
    )


def agreement(cpu: ShapleyEngine, gpu: ShapleyEngine, perms: list[list[int]], tolerance: float) -> dict:
    ref = np.stack([cpu.marginals(p) for p in perms])
    batched = float(np.max(np.abs(gpu.marginals_many(perms) - ref)))
    diffs = np.abs(np.stack([gpu.marginals(p) for p in perms]) - ref)
    return {
        "max_abs_diff_batched": batched,
        "permutations": len(perms),
        "leaf_values": int(diffs.size),
        "max_abs_diff": float(diffs.max()),
        "values_that_differ": int(np.count_nonzero(diffs > 1e-9)),
        "values_over_work_tolerance": int(np.count_nonzero(diffs > tolerance)),
        "work_tolerance": tolerance,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here; nothing measured")
        return 2
    torch.set_grad_enabled(False)
    torch.set_num_threads(os.cpu_count() or 1)
    t_start = time.perf_counter()
    updates, ns, g0, Xv, yv, _part, info = setup(args)
    common = {"empty_value": 0.0, "global_weights": g0}
    cpu = ShapleyEngine(updates, ns, Xv, yv, metric=args.metric, device="cpu", **common)
    K = len(updates)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    res: dict = {
        "device": name,
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "setup": {**info, "metric": args.metric},
        "workspace_bytes": cpu.workspace_bytes,
        "gpu": {},
    }
    bw = copy_read_bandwidth(device)
    bound = bw / cpu.workspace_bytes
    res.update(read_GBps=bw / 1e9, copy_read_plus_write_GBps=2 * bw / 1e9, bandwidth_bound_perm_per_s=bound)
    print(
        f"# bench_gpu on {name}, torch {torch.__version__}: K={K}, M={int(Xv.shape[0])}, metric {args.metric}; "
        f"a permutation reads {cpu.workspace_bytes / 1e6:.1f} MB; copy reads {bw / 1e9:.0f} GB/s "
        f"({2 * bw / 1e9:.0f} GB/s read+write) -> bound {bound:,.0f} perm/s"
    )
    rng = np.random.default_rng(args.seed)
    perms = [rng.permutation(K) for _ in range(args.perms)]

    s_cpu = median_seconds(cpu, perms[: args.cpu_perms])
    res["cpu"] = {"perm_per_s": 1 / s_cpu, "ms_per_perm": s_cpu * 1e3}
    print(f"CPU engine, {torch.get_num_threads()} threads: {1 / s_cpu:,.1f} perm/s ({s_cpu * 1e3:.1f} ms)")

    best: tuple[float, dict] | None = None
    for chunk in args.chunks:
        for scan in (False, True):
            gpu = ShapleyEngine(updates, ns, Xv, yv, metric=args.metric, device=device, chunk_size=chunk, scan=scan)
            s = median_seconds(gpu, perms)
            config = {"chunk_size": chunk, "scan": scan}
            res["gpu"][f"chunk{chunk}-{'scan' if scan else 'loop'}"] = speed_row(s, s_cpu, bound, config)
            if best is None or s < best[0]:
                best = (s, config)
            print(f"GPU engine, chunk {chunk:3d}, {'scan' if scan else 'loop'}: {speed_text(s, s_cpu, bound)}")
            del gpu
    assert best is not None
    for batch in args.batches:
        gpu = ShapleyEngine(updates, ns, Xv, yv, metric=args.metric, device=device, batch_size=batch)
        gpu.batch_bytes = batch * gpu.workspace_bytes + 1
        n = max(batch, len(perms) // batch * batch)
        gpu.marginals_many(perms[:batch])
        times = []
        for _ in range(3):
            t = time.perf_counter()
            gpu.marginals_many(perms[:n])
            times.append((time.perf_counter() - t) / n)
        s = statistics.median(times)
        res["gpu"][f"batch{batch}"] = speed_row(s, s_cpu, bound, {"batch_size": batch})
        if s < best[0]:
            best = (s, {"batch_size": batch})
        print(f"GPU engine, batches of {batch:3d}: {speed_text(s, s_cpu, bound)}")
        del gpu
    default = ShapleyEngine(updates, ns, Xv, yv, metric=args.metric, device=device)
    res["gpu_default"] = {"chunk_size": default.chunk_size, "scan": default.scan, "batch_size": default.batch_size}
    res["gpu_best"] = {**best[1], "perm_per_s": 1 / best[0], "fraction_of_bandwidth_bound": (1 / best[0]) / bound}

    sampler = ChainParams().sampler
    miner = PoSapMiner(
        miner="bench", task_id=TASK, prev_hash=PREV, n_players=K, marginals=default.marginal_fn, difficulty=1e-3
    )
    miner.step(args.gossip_every)
    t0, n0 = time.perf_counter(), miner.iterations
    while time.perf_counter() - t0 < args.mine_s:
        miner.step(args.gossip_every)
    mine_s = time.perf_counter() - t0
    its = (miner.iterations - n0) / mine_s
    t1 = time.perf_counter()
    n_derive = 2000
    for i in range(n_derive):
        derive_permutation(PREV, TASK, "other", i, K, sampler=sampler)
    derive_s = (time.perf_counter() - t1) / n_derive
    res["miner"] = {
        "sampler": sampler,
        "iterations_per_step": args.gossip_every,
        "iterations": miner.iterations - n0,
        "seconds": mine_s,
        "iterations_per_s": its,
        "derive_permutation_ms": derive_s * 1e3,
        "derive_fraction_of_iteration": derive_s * its,
    }
    print(
        f"PoSap miner on the GPU engine ({sampler} sampler): {its:,.0f} iterations/s over {mine_s:.0f} s; "
        f"deriving a permutation takes {derive_s * 1e3:.3f} ms ({derive_s * its:.0%} of an iteration)"
    )
    del miner

    tolerance = ChainParams().work_tolerance
    agree_perms = [derive_permutation(PREV, TASK, "agree", i, K, sampler=sampler) for i in range(args.agree_perms)]
    res["agreement"] = {}
    for metric in ("accuracy", "neg_loss"):
        c = cpu if metric == args.metric else ShapleyEngine(updates, ns, Xv, yv, metric=metric, device="cpu", **common)
        g = ShapleyEngine(updates, ns, Xv, yv, metric=metric, device=device)
        res["agreement"][metric] = a = agreement(c, g, agree_perms, tolerance)
        print(
            f"CPU vs GPU, {metric}: max |diff| {a['max_abs_diff']:.2e} over {a['leaf_values']:,} leaf values; "
            f"{a['values_that_differ']} differ, {a['values_over_work_tolerance']} over work_tolerance {tolerance:g}; "
            f"batched: max |diff| {a['max_abs_diff_batched']:.2e}"
        )
    naive = NaiveUtility(updates, ns, Xv, yv, metric=args.metric, device="cpu", **common)
    nd = max(float(np.max(np.abs(naive.marginals(p) - default.marginals(p)))) for p in perms[: args.naive_perms])
    res["max_abs_marginal_diff_naive_cpu_vs_gpu"] = nd
    print(f"naive (CPU) vs GPU engine over {args.naive_perms} permutation(s): max |diff| {nd:.2e}")
    res["races"] = []
    cap = work_capacity(K)  # leaves a block's decoded work log can carry (the deflated size may bind first)
    limit = args.race_max_iterations or cap - args.gossip_every
    res["work_log_cap_iterations"] = cap
    for d in args.race_d:
        _r, _s, miner_ids, _c, chains, task, _dep = demo_setup(K, args.race_miners, 1_000_000, d)
        t0 = time.perf_counter()
        try:
            out = race(
                chains,
                miner_ids,
                task,
                default.marginal_fn,
                gossip_every=args.gossip_every,
                max_iterations=limit,
            )
        except InvalidInput as exc:
            res["races"].append({"difficulty": d, "error": str(exc), "seconds": time.perf_counter() - t0})
            print(f"race at D={d:g}: {exc}")
            continue
        row = {
            "difficulty": d,
            "winner_iterations": out.block.header.iterations,
            "all_iterations": sum(out.iterations),
            "seconds": time.perf_counter() - t0,
            "accepted_by_all": all(c.head == out.block.hash for c in chains),
            "block_json_bytes": len(out.block.to_json()),
            "work_log_decoded_bytes": int(out.block.body.work.leaves().nbytes) if out.block.body.work else 0,
        }
        res["races"].append(row)
        print(
            f"race at D={d:g}, {args.race_miners} miners on one GPU: block after {row['seconds']:.1f} s; winner "
            f"{row['winner_iterations']:,} iterations, all miners {row['all_iterations']:,}; "
            f"accepted by every miner: {row['accepted_by_all']}; "
            f"block {row['block_json_bytes'] / 2**20:.1f} MiB of JSON "
            f"(work log {row['work_log_decoded_bytes'] / 2**20:.1f} MiB decoded)"
        )
    res["seconds"] = time.perf_counter() - t_start
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
