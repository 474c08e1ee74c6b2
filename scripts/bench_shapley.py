#!/usr/bin/env python
"""Benchmark the Shapley "hash rate": naive coalition utility vs ShapleyEngine.

Paper setting (FedCoin, Section 6.1): K = 100 clients in 10 quality types
(type j holds 10 - j labels, 600 samples each), the 784-200-10 ReLU MLP, one
FedAvg round of 20 local SGD iterations, 1,000 held-out validation samples
(the first 1,000 test images), utility = minus the validation loss, v(empty) = 0.
Data: Fashion-MNIST from /usr/share/datasets/fashion-mnist by default; the
paper's MNIST with --dataset mnist --data-dir DIR (a directory of IDX files).

Each phase stops at its permutation count or after --budget-s seconds (60 by
default, 10 with --quick), whichever comes first, so the run stays short on a
loaded machine; the counts actually used are printed and written to the JSON.

Phases (all in one process, same data, same permutations where compared):

1. speed: for each of a few random permutations, NaiveUtility.marginals once and
   ShapleyEngine.marginals several times, interleaved (so background load hits
   both alike); perms/s = 1 / median seconds per permutation; the ratio and the
   max |naive - engine| over those permutations.
2. reference: the engine on many permutations (count printed) -> reference
   Shapley vector and the per-client variance of the marginals.
3. convergence: Algorithm 1 on an independent permutation stream with the
   engine and with the truncated engine (same permutations); relative L2 error
   of the running estimate against the reference after every permutation,
   with measured wall time.  1% is far below what a few minutes of sampling can
   resolve here, so time-to-1% is extrapolated with the CLT from the measured
   variance: R_1% = sum_k Var(m_k) / (0.01 ||phi||)^2 permutations (||phi||^2
   de-biased for the reference's own noise); time = R_1% x measured s/perm.
   The naive evaluator produces the same marginals on the same permutations
   (to ~1e-7), so it needs the same R_1%; its time is R_1% x its measured
   s/perm.  Truncation adds a bias, estimated paired on the stream
   permutations; when it is >= 1% the target is unreachable.
4. roofline: bytes the engine must read from memory per permutation (its
   precomputed tensors) vs the memory bandwidth measured here with large torch
   copies -> bandwidth-bound ceiling in perms/s vs achieved.

Run: python scripts/bench_shapley.py [--quick] [--json PATH] [--data-dir DIR] [--dataset NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

from fedcoin.fl import data
from fedcoin.fl import model as fl_model
from fedcoin.fl import partition as fl_partition
from fedcoin.fl import training as fl_training
from fedcoin.valuation.engine import ShapleyEngine
from fedcoin.valuation.naive import NaiveUtility
from fedcoin.valuation.sampling import random_permutations


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts (< 1 minute)")
    ap.add_argument("--json", metavar="PATH", help="write all figures as JSON to PATH")
    ap.add_argument("--dataset", default="fashion-mnist", choices=["fashion-mnist", "mnist"])
    ap.add_argument("--data-dir", default=None, help="directory of IDX files (required for mnist)")
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--types", type=int, default=10)
    ap.add_argument("--samples-per-client", type=int, default=600)
    ap.add_argument("--hidden", type=int, nargs="*", default=[200], help="hidden layer sizes (default 200)")
    ap.add_argument("--iterations", type=int, default=20, help="local SGD iterations per round")
    ap.add_argument("--val", type=int, default=1000, help="validation samples")
    ap.add_argument("--metric", default="neg_loss", choices=["neg_loss", "accuracy"])
    ap.add_argument("--empty-value", default="0", help="v(empty): a number or 'global'")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="engine/naive device (default cpu)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--naive-perms", type=int, default=None, help="permutations timed with the naive evaluator")
    ap.add_argument("--engine-repeats", type=int, default=None, help="engine timings per speed permutation")
    ap.add_argument("--ref-perms", type=int, default=None, help="permutations in the reference estimate")
    ap.add_argument("--run-perms", type=int, default=None, help="permutations in the convergence run")
    ap.add_argument("--trunc-tol", type=float, nargs="+", default=None, help="truncation tolerances")
    ap.add_argument("--target", type=float, default=0.01, help="relative L2 error target (default 0.01)")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="wall-time cap per phase (naive timing, reference, convergence run); the permutation "
        "counts are maxima and the counts actually done are printed (default 60, quick 10)",
    )
    args = ap.parse_args(argv)
    q = args.quick
    defaults = {
        "naive_perms": 2 if q else 6,
        "engine_repeats": 10,
        "ref_perms": 150 if q else 2000,
        "run_perms": 75 if q else 1000,
        "trunc_tol": [1e-3] if q else [1e-4, 1e-3],
        "budget_s": 10.0 if q else 60.0,
    }
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.empty_value != "global":
        args.empty_value = float(args.empty_value)
    return args


def measure_bandwidth(nbytes: int, repeats: int = 5) -> dict:
    """Memory bandwidth from large torch float32 copies and reductions (all threads)."""
    n = nbytes // 4
    src = torch.ones(n, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)  # fault in the pages
    copy, read = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        copy.append(time.perf_counter() - t)
        t = time.perf_counter()
        float(src.sum())
        read.append(time.perf_counter() - t)
    return {
        "buffer_bytes": n * 4,
        "copy_GBps": 2 * n * 4 / statistics.median(copy) / 1e9,  # read + write
        "read_GBps": n * 4 / statistics.median(read) / 1e9,
    }


def setup(args):
    t0 = time.perf_counter()
    ds = data.load_dataset(args.dataset, args.data_dir)
    Xtr, ytr = ds.train_tensors()
    Xte, yte = ds.test_tensors()
    part = fl_partition.partition_by_type(
        ds.train_labels, args.clients, args.types, args.samples_per_client, seed=args.seed
    )
    clients = [(Xtr[ix], ytr[ix]) for ix in part.indices]
    Xv, yv = Xte[: args.val], yte[: args.val]
    g0 = fl_model.init_weights(tuple(args.hidden), seed=args.seed)
    t1 = time.perf_counter()
    hist = fl_training.run_fedavg(
        clients, rounds=1, iterations=args.iterations, seed=args.seed, global_weights=g0, X_val=Xv, y_val=yv
    )
    t2 = time.perf_counter()
    rnd = hist.rounds[0]
    ref = fl_partition.label_distribution(ds.train_labels)
    emd_by_type = {}
    for j in range(args.types):
        members = [k for k in range(args.clients) if part.types[k] == j]
        if members:
            emd_by_type[j] = float(
                np.mean(
                    [
                        fl_partition.emd(fl_partition.label_distribution(ds.train_labels[part.indices[k]]), ref)
                        for k in members
                    ]
                )
            )
    info = {
        "dataset": args.dataset,
        "clients": args.clients,
        "types": args.types,
        "samples_per_client": args.samples_per_client,
        "hidden": list(args.hidden),
        "local_iterations": args.iterations,
        "validation_samples": int(Xv.shape[0]),
        "global_model_after_round": rnd.metrics,
        "emd_by_type": emd_by_type,
        "load_s": t1 - t0,
        "train_s": t2 - t1,
    }
    return rnd.updates, rnd.n_samples, g0, Xv, yv, part, info


def first_time_below(errors: np.ndarray, times: np.ndarray, level: float):
    idx = np.flatnonzero(errors <= level)
    return (int(idx[0]) + 1, float(times[idx[0]])) if idx.size else (None, None)


def fmt_time(s: float | None) -> str:
    if s is None or not np.isfinite(s):
        return "never"
    if s < 120:
        return f"{s:.2f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    res: dict = {"args": dict(vars(args).items())}
    res["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "loadavg_start": os.getloadavg(),
    }
    print(
        f"# bench_shapley  torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs, load avg {os.getloadavg()[0]:.2f}{'  [quick]' if args.quick else ''}"
    )

    bw_bytes = 128 * 2**20 if args.quick else 512 * 2**20
    bw_start = measure_bandwidth(bw_bytes)
    updates, ns, g0, Xv, yv, part, info = setup(args)
    res["setup"] = info
    K = len(updates)
    print(
        f"setup: {args.dataset}, K={K} clients in {args.types} types, MLP 784-"
        f"{'-'.join(map(str, args.hidden))}-10, 1 FedAvg round x {args.iterations} local iterations "
        f"-> global val loss {info['global_model_after_round']['loss']:.4f}, "
        f"acc {info['global_model_after_round']['accuracy']:.3f}; {info['validation_samples']} validation samples"
    )
    emd = info["emd_by_type"]
    print(
        "EMD by type (sum_c |p_k - p|): "
        + ", ".join(f"T{j} {v:.3f}" for j, v in emd.items())
        + "   (/10 -> "
        + ", ".join(f"{v / 10:.3f}" for v in emd.values())
        + ", cf. paper Table 2)"
    )

    common = {"metric": args.metric, "empty_value": args.empty_value, "device": args.device, "global_weights": g0}
    naive = NaiveUtility(updates, ns, Xv, yv, **common)
    t = time.perf_counter()
    engine = ShapleyEngine(updates, ns, Xv, yv, **common)
    build_s = time.perf_counter() - t
    print(
        f"engine build (per-client first-layer pre-activations, {engine.workspace_bytes / 1e6:.1f} MB): "
        f"{build_s:.3f} s; v(N) = {engine.full_value:.6f}, v(empty) = {engine.empty_value:.6f}"
    )

    # ------------------------------------------------------------------ 1. speed
    speed_perms = random_permutations(K, args.naive_perms, seed=args.seed + 1)
    engine.marginals(speed_perms[0])  # warm-up
    naive_t: list[float] = []
    engine_t: list[float] = []
    diffs: list[float] = []
    phase_start = time.perf_counter()
    for p in speed_perms:
        if naive_t and time.perf_counter() - phase_start > args.budget_s:
            break  # at least one permutation, then within the budget
        t = time.perf_counter()
        m_naive = naive.marginals(p)
        naive_t.append(time.perf_counter() - t)
        for _ in range(args.engine_repeats):
            t = time.perf_counter()
            m_engine = engine.marginals(p)
            engine_t.append(time.perf_counter() - t)
        diffs.append(float(np.max(np.abs(m_naive - m_engine))))
    naive_s, engine_s = statistics.median(naive_t), statistics.median(engine_t)
    speed = {
        "naive_perm_per_s": 1 / naive_s,
        "engine_perm_per_s": 1 / engine_s,
        "ratio": naive_s / engine_s,
        "max_abs_diff": max(diffs),
        "naive_s_per_perm": naive_s,
        "engine_s_per_perm": engine_s,
        "speed_permutations": len(naive_t),
        "engine_repeats_per_permutation": args.engine_repeats,
        "engine_build_s": build_s,
    }
    res.update(speed)
    print("\n== speed (same permutations, interleaved; median over repeats) ==")
    print(f"naive : {speed['naive_perm_per_s']:.3f} perm/s ({naive_s:.3f} s/perm, {len(naive_t)} perms)")
    print(f"engine: {speed['engine_perm_per_s']:.2f} perm/s ({engine_s * 1e3:.2f} ms/perm, {len(engine_t)} timings)")
    print(f"ratio : {speed['ratio']:.1f}x   max_abs_diff(marginals) = {speed['max_abs_diff']:.3e}")

    # ------------------------------------------------------------------ 2. reference
    ref_perms = random_permutations(K, args.ref_perms, seed=args.seed + 2)
    t = time.perf_counter()
    ref_list: list[np.ndarray] = []
    for p in ref_perms:
        if len(ref_list) >= 20 and time.perf_counter() - t > args.budget_s:
            break
        ref_list.append(engine.marginals(p))
    ref_m = np.stack(ref_list)
    ref_s = time.perf_counter() - t
    n_ref = len(ref_list)
    phi_ref = ref_m.mean(0)

    # ------------------------------------------------------------------ 3. convergence
    run_perms = random_permutations(K, args.run_perms, seed=args.seed + 3)
    truncs = [ShapleyEngine(updates, ns, Xv, yv, truncation_tol=tol, **common) for tol in args.trunc_tol]
    run_m = np.empty((len(run_perms), K))
    run_t = np.empty(len(run_perms))
    tr_m = [np.empty((len(run_perms), K)) for _ in truncs]
    tr_t = [np.empty(len(run_perms)) for _ in truncs]
    phase_start = time.perf_counter()
    n_run = len(run_perms)
    for i, p in enumerate(run_perms):
        if i >= 10 and time.perf_counter() - phase_start > args.budget_s:
            n_run = i
            break
        t = time.perf_counter()
        run_m[i] = engine.marginals(p)
        run_t[i] = time.perf_counter() - t
        for j, tr in enumerate(truncs):
            t = time.perf_counter()
            tr_m[j][i] = tr.marginals(p)
            tr_t[j][i] = time.perf_counter() - t

    run_m, run_t = run_m[:n_run], run_t[:n_run]
    tr_m = [m[:n_run] for m in tr_m]
    tr_t = [tt[:n_run] for tt in tr_t]
    allm = np.concatenate([ref_m, run_m])  # untruncated samples
    var_sum = float(allm.var(0, ddof=1).sum())
    R_all = allm.shape[0]
    phi_all = allm.mean(0)
    raw_norm2 = float(phi_all @ phi_all)
    # E||phi_hat||^2 = ||phi||^2 + sum Var / R: remove the noise energy, but never
    # below a quarter of the raw value (too few permutations -> flagged unreliable).
    phi_norm2 = max(raw_norm2 - var_sum / R_all, 0.25 * raw_norm2)
    phi_norm = phi_norm2**0.5
    ref_rel_se = (var_sum / n_ref) ** 0.5 / phi_norm
    reliable = (var_sum / R_all) ** 0.5 / phi_norm <= 0.3
    R_target = var_sum / (args.target**2 * phi_norm2)
    ref_norm = float(np.linalg.norm(phi_ref))
    levels = [1.0, 0.5, 0.3, 0.2, 0.1, 0.05, args.target]

    def curve(m, tt):
        est = np.cumsum(m, 0) / np.arange(1, len(m) + 1)[:, None]
        err = np.linalg.norm(est - phi_ref, axis=1) / ref_norm
        return err, np.cumsum(tt)

    eng_err, eng_time = curve(run_m, run_t)
    # Seconds per permutation used for the extrapolation: naive and engine from
    # the interleaved speed phase (same conditions); a truncated engine gets the
    # engine's figure times its cost relative to the engine on the convergence
    # run, where the two alternate permutation by permutation.
    eng_run_s = statistics.median(run_t.tolist())
    eng_s = engine_s
    methods = {}
    methods["naive"] = {
        "s_per_perm": naive_s,
        "perms_to_target": R_target,
        "time_to_target_s": R_target * naive_s,
        "time_to_target_extrapolated": True,
        "note": "same permutations and marginals (to max_abs_diff) as the engine; R x measured s/perm",
    }
    methods["engine"] = {
        "s_per_perm": eng_s,
        "perms_to_target": R_target,
        "time_to_target_s": R_target * eng_s,
        "time_to_target_extrapolated": bool(eng_err[-1] > args.target),
        "measured_final_error_vs_reference": float(eng_err[-1]),
        "measured_levels": {
            str(lv): dict(zip(("perms", "wall_s"), first_time_below(eng_err, eng_time, lv), strict=True))
            for lv in levels
        },
    }
    for tol, m, tt, tr in zip(args.trunc_tol, tr_m, tr_t, truncs, strict=False):
        d = m - run_m  # paired: truncated minus untruncated on the same permutations
        bias = d.mean(0)
        bias_rel = float(np.linalg.norm(bias)) / phi_norm
        bias_rel_se = (float(d.var(0, ddof=1).sum()) / len(d)) ** 0.5 / phi_norm
        var_t = float(m.var(0, ddof=1).sum())
        budget = (args.target * phi_norm) ** 2 - float(bias @ bias)
        R_t = var_t / budget if budget > 0 else float("inf")
        s_t = engine_s * statistics.median(tt.tolist()) / eng_run_s
        err_t, time_t = curve(m, tt)
        methods[f"engine_trunc_{tol:g}"] = {
            "truncation_tol": tol,
            "s_per_perm": s_t,
            "prefixes_evaluated_fraction": tr.evaluations / (K * n_run),
            "bias_rel": bias_rel,
            "bias_rel_se": bias_rel_se,
            "perms_to_target": R_t,
            "time_to_target_s": R_t * s_t if np.isfinite(R_t) else None,
            "time_to_target_extrapolated": True,
            "measured_final_error_vs_reference": float(err_t[-1]),
            "measured_levels": {
                str(lv): dict(zip(("perms", "wall_s"), first_time_below(err_t, time_t, lv), strict=True))
                for lv in levels
            },
        }
    res["convergence"] = {
        "target_rel_l2": args.target,
        "reference_permutations": n_ref,
        "reference_method": "ShapleyEngine (no truncation)",
        "reference_wall_s": ref_s,
        "reference_engine_perm_per_s": n_ref / ref_s,
        "reference_rel_standard_error": ref_rel_se,
        "run_permutations": n_run,
        "sum_marginal_variance": var_sum,
        "phi_norm_debiased": phi_norm,
        "perms_to_target_clt": R_target,
        "estimate_reliable": reliable,
        "methods": methods,
    }
    print(f"\n== time to {args.target:.0%} relative L2 error (Algorithm 1) ==")
    print(
        f"reference: engine, {n_ref} permutations ({ref_s:.1f} s, {n_ref / ref_s:.1f} perm/s); "
        f"its own relative standard error "
        f"is {ref_rel_se:.1%} (sum_k Var(m_k) = {var_sum:.4g}, ||phi|| = {phi_norm:.4g})"
    )
    print(
        f"CLT: R_{args.target:.0%} = sum_k Var(m_k) / ({args.target:g} ||phi||)^2 = {R_target:,.0f} permutations "
        f"(variances from {R_all} engine permutations"
        + ("" if reliable else "; UNRELIABLE: ||phi|| not resolved, use more permutations / a larger --budget-s")
        + ")"
    )
    print(f"measured on an independent run of {n_run} permutations, error vs reference:")
    for name, mt in methods.items():
        if "measured_levels" not in mt:
            continue
        reached = [(float(lv), v) for lv, v in mt["measured_levels"].items() if v["perms"] is not None]
        best = min(reached) if reached else None
        msg = f"  {name:<22} final {mt['measured_final_error_vs_reference']:.1%}" + (
            f"; reached {best[0]:.0%} after {best[1]['perms']} perms in {best[1]['wall_s']:.2f} s" if best else ""
        )
        print(msg)
    print(
        "time to target (extrapolated = R x s/perm; naive and engine s/perm from the interleaved speed phase,"
        " truncated = engine x measured relative cost):"
    )
    for name, mt in methods.items():
        extra = ""
        if "bias_rel" in mt:
            extra = (
                f"  [tol {mt['truncation_tol']:g}: {mt['prefixes_evaluated_fraction']:.0%} of prefixes evaluated, "
                f"bias {mt['bias_rel']:.2%} +- {mt['bias_rel_se']:.2%}"
                + (" >= target: unreachable]" if mt["time_to_target_s"] is None else "]")
            )
        perms_txt = "inf" if not np.isfinite(mt["perms_to_target"]) else f"{mt['perms_to_target']:,.0f}"
        print(
            f"  {name:<22} {mt['s_per_perm'] * 1e3:9.2f} ms/perm x {perms_txt:>12} perms = "
            f"{fmt_time(mt['time_to_target_s'])}{extra}"
        )

    # ------------------------------------------------------------------ 4. roofline
    bw_end = measure_bandwidth(bw_bytes)
    # The hardware ceiling is the better of the two measurements (background
    # load can only lower a measurement).
    bw = max(bw_start, bw_end, key=lambda d: d["read_GBps"])
    bw = {**bw, "read_GBps_start": bw_start["read_GBps"], "read_GBps_end": bw_end["read_GBps"]}
    bpp = engine.workspace_bytes  # every per-client tensor is read once per permutation
    H = [updates[0][f"layers.{i}.weight"].shape[0] for i in range(len(updates[0]) // 2)]
    M = int(Xv.shape[0])
    dims = [updates[0]["layers.0.weight"].shape[1]] + H
    flops = K * M * (2 * dims[1] + sum(2 * a * b for a, b in zip(dims[1:-1], dims[2:], strict=False)))
    ceiling = bw["read_GBps"] * 1e9 / bpp
    res["roofline"] = {
        **bw,
        "engine_bytes_per_perm": bpp,
        "bandwidth_bound_perm_per_s": ceiling,
        "achieved_perm_per_s": 1 / engine_s,
        "achieved_fraction_of_ceiling": (1 / engine_s) / ceiling,
        "engine_flops_per_perm": flops,
        "achieved_GFLOPs": flops / engine_s / 1e9,
    }
    print("\n== memory-bandwidth bound ==")
    print(
        f"measured bandwidth ({bw['buffer_bytes'] / 2**20:.0f} MiB torch buffers, best of start/end of run): "
        f"read {bw['read_GBps']:.1f} GB/s (start {bw['read_GBps_start']:.1f}, end {bw['read_GBps_end']:.1f}), "
        f"copy {bw['copy_GBps']:.1f} GB/s (read+write)"
    )
    print(
        f"engine reads {bpp / 1e6:.1f} MB per permutation (K x M x H1 float32 pre-activations + float64 later layers)"
        f" -> ceiling {ceiling:.0f} perm/s; achieved {1 / engine_s:.1f} perm/s "
        f"({res['roofline']['achieved_fraction_of_ceiling']:.1%} of the ceiling; "
        f"{flops / 1e6:.0f} MFLOP/perm at {flops / engine_s / 1e9:.1f} GFLOP/s)"
    )
    res["machine"]["loadavg_end"] = os.getloadavg()
    print(
        f"load average at end: {os.getloadavg()[0]:.2f} "
        f"(values > {os.cpu_count() or 0} mean other processes competed for the CPUs)"
    )
    print(
        f"\nSUMMARY naive_perm_per_s={res['naive_perm_per_s']:.4f} engine_perm_per_s={res['engine_perm_per_s']:.2f} "
        f"ratio={res['ratio']:.1f} max_abs_diff={res['max_abs_diff']:.2e}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2, default=float)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
