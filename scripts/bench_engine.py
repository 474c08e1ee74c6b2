#!/usr/bin/env python
"""How close the Shapley engine comes to this machine's limits, and what the sampler buys.

One process, the paper's round (K = 100 clients of 10 quality types, MLP 784-200-10, one FedAvg
round, 1,000 validation images; ``--metric accuracy`` by default, as in the paper's Figure 4):

1. **Bounds**, measured in this run: memory read bandwidth from a NumPy copy of a 512 MiB array
   (a copy reads every byte once and writes it once: ``read GB/s = bytes / seconds``; the
   read-plus-write rate is twice that), and the float32 matrix-product rate of the engine's own
   product shape (``torch.baddbmm``, 4 prefixes x (10 x 200) @ (200 x 1,000)). A permutation
   must stream the per-client first-layer pre-activations once (``workspace_bytes``, 81.6 MB at
   K = 100), which gives the **bandwidth bound** in permutations per second, and must do
   2·K·M·(Σ later-layer in·out) multiply-adds, which gives the **compute bound**.
2. **Engine speed** at each ``--threads`` count: median seconds per permutation over
   ``--perms`` permutations, as a fraction of both bounds measured at the same thread count.
3. **Same marginals**: the largest |engine − naive| marginal over ``--naive-perms`` permutations
   (the naive evaluator builds each prefix's FedAvg model and runs it).
4. **Sampler variance** (``--variance-perms`` permutations per sampler, same engine): the summed
   per-client variance of the estimate after one cycle of K permutations, uniform vs stratified
   (``fedcoin.consensus.posap.derive_permutation``), from ``--variance-cycles`` independent
   cycles each; their ratio is the factor by which the stratified sampler cuts the permutations
   needed for a given error.

Run: python scripts/bench_engine.py --dataset mnist --data-dir ../shared/data/mnist --json PATH
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
from bench_shapley import setup  # the paper round, shared with bench_shapley.py

from fedcoin.consensus.posap import derive_permutation
from fedcoin.valuation.engine import ShapleyEngine
from fedcoin.valuation.naive import NaiveUtility


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "mnist"])
    ap.add_argument("--data-dir", default=None, help="directory of IDX files (required for mnist)")
    ap.add_argument("--metric", default="accuracy", choices=["neg_loss", "accuracy"])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--perms", type=int, default=30, help="timed permutations per thread count")
    ap.add_argument("--naive-perms", type=int, default=3)
    ap.add_argument("--variance-cycles", type=int, default=12, help="independent K-permutation cycles per sampler")
    ap.add_argument("--quick", action="store_true", help="small counts (about a minute)")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    # what bench_shapley.setup reads
    a.clients, a.types, a.samples_per_client, a.hidden, a.iterations, a.val = 100, 10, 600, [200], 20, 1000
    if a.quick:
        a.perms, a.naive_perms, a.variance_cycles = 8, 1, 3
    return a


def read_bandwidth(nbytes: int = 512 * 2**20, repeats: int = 5) -> float:
    """Bytes read per second by a NumPy copy of a large float32 array (median of ``repeats``)."""
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t)
    return src.nbytes / statistics.median(times)


def matmul_rate(out: int, hidden: int, M: int, chunk: int = 4, repeats: int = 20) -> float:
    """Multiply-add FLOP/s of the engine's batched product shape (float32)."""
    W = torch.randn(chunk, out, hidden)
    h = torch.randn(chunk, M, hidden).transpose(1, 2)
    b = torch.randn(chunk, out, 1)
    torch.baddbmm(b, W, h)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.baddbmm(b, W, h)
        times.append(time.perf_counter() - t)
    return 2 * chunk * out * hidden * M / statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_grad_enabled(False)
    updates, ns, g0, Xv, yv, _part, info = setup(args)
    common = {"metric": args.metric, "empty_value": 0.0, "device": "cpu", "global_weights": g0}
    engine = ShapleyEngine(updates, ns, Xv, yv, **common)
    K, M = len(updates), int(Xv.shape[0])
    flops = engine.flop_per_permutation
    hidden, classes = args.hidden[-1], 10  # the engine's product: (classes x hidden) @ (hidden x M)
    res: dict = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()},
        "torch": torch.__version__,
        "setup": {**info, "metric": args.metric},
        "workspace_bytes": engine.workspace_bytes,
        "flop_per_permutation": flops,
        "threads": {},
    }
    print(
        f"# bench_engine: K={K}, M={M}, metric {args.metric}; a permutation streams "
        f"{engine.workspace_bytes / 1e6:.1f} MB and does {flops / 1e6:.0f} MFLOP"
    )
    rng = np.random.default_rng(args.seed)
    perms = [rng.permutation(K) for _ in range(args.perms)]
    for threads in args.threads:
        torch.set_num_threads(threads)
        engine.marginals(perms[0])
        times = []
        for p in perms:
            t = time.perf_counter()
            engine.marginals(p)
            times.append(time.perf_counter() - t)
        s = statistics.median(times)
        bw = read_bandwidth()
        fl = matmul_rate(classes, hidden, M)
        bw_bound, fl_bound = bw / engine.workspace_bytes, fl / flops
        row = {
            "perm_per_s": 1 / s,
            "ms_per_perm": s * 1e3,
            "read_GBps": bw / 1e9,
            "copy_read_plus_write_GBps": 2 * bw / 1e9,
            "bandwidth_bound_perm_per_s": bw_bound,
            "fraction_of_bandwidth_bound": (1 / s) / bw_bound,
            "fraction_of_read_plus_write_bound": (1 / s) / (2 * bw_bound),
            "matmul_GFLOPs": fl / 1e9,
            "compute_bound_perm_per_s": fl_bound,
            "fraction_of_compute_bound": (1 / s) / fl_bound,
        }
        res["threads"][str(threads)] = row
        print(
            f"{threads} thread(s): {row['perm_per_s']:.1f} perm/s ({row['ms_per_perm']:.1f} ms); read "
            f"{row['read_GBps']:.1f} GB/s -> bound {bw_bound:.0f} perm/s: {row['fraction_of_bandwidth_bound']:.0%} "
            f"({row['fraction_of_read_plus_write_bound']:.0%} of the read+write figure); matmul "
            f"{row['matmul_GFLOPs']:.0f} GFLOP/s -> bound {fl_bound:.0f} perm/s: {row['fraction_of_compute_bound']:.0%}"
        )
    torch.set_num_threads(max(args.threads))

    naive = NaiveUtility(updates, ns, Xv, yv, **common)
    diff = max(float(np.max(np.abs(naive.marginals(p) - engine.marginals(p)))) for p in perms[: args.naive_perms])
    res["max_abs_marginal_diff_vs_naive"] = diff
    print(f"max |engine - naive| marginal over {args.naive_perms} permutation(s): {diff:.2e}")

    prev = "00" * 32
    var: dict[str, float] = {}
    means: dict[str, list[np.ndarray]] = {}
    t0 = time.perf_counter()
    for sampler in ("uniform", "stratified"):
        cycle_means = []
        for c in range(args.variance_cycles):
            task = f"variance-{c}"
            ms = [engine.marginals(derive_permutation(prev, task, "bench", i, K, sampler=sampler)) for i in range(K)]
            cycle_means.append(np.mean(ms, axis=0))
        means[sampler] = cycle_means
        var[sampler] = float(np.var(np.stack(cycle_means), axis=0, ddof=1).sum())
    res["variance_after_one_cycle"] = {
        **var,
        "ratio_stratified_to_uniform": var["stratified"] / var["uniform"],
        "cycles_per_sampler": args.variance_cycles,
        "seconds": time.perf_counter() - t0,
    }
    print(
        f"summed variance of a one-cycle ({K}-permutation) estimate over {args.variance_cycles} cycles: uniform "
        f"{var['uniform']:.3e}, stratified {var['stratified']:.3e} (ratio {var['stratified'] / var['uniform']:.2f})"
    )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
