"""Figure 6: block generation time vs mining difficulty, by real mining among >= 4 miners.

For every difficulty D a *fresh* FedCoin network runs as local processes
(``fedcoin.devnet.local.plan_network`` + ``LocalNetwork``, the services of ``fedcoin demo``):
4 miners, the FL server, one client node hosting the paper's 100 clients (10 of each
type) and the requester.  D is the genesis ``initial_difficulty``; a retarget window
of 10,000 blocks keeps it fixed.  The requester's default task has ``reps`` FedAvg
rounds, so the network mines ``reps`` blocks, one per round (repetitions).

Per block we read from the chain itself: the winner's iteration count (header
``iterations``) and the block generation time in seconds (header ``timestamp`` minus
the task's signed ``published_at``).  While the miners race we poll every miner's
``GET /status`` (its iterations and its current distance ||S - S_bar||_2) to record
the convergence trajectories.  A round that is not settled within ``cap_s`` seconds
is *censored*: the network is stopped and the run is recorded as "not reached
within N iterations / X seconds" (a lower bound), never as a value.
"""

from __future__ import annotations

import math
import shutil
import socket
import statistics
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from common import EMPTY_VALUE, MINERS, NUM_CLIENTS, NUM_TYPES, by_type, fedavg, load_data, log, partition, style

from fedcoin.chain.blocks import Block
from fedcoin.chain.encoding import sha256_hex
from fedcoin.consensus.posap import derive_permutation
from fedcoin.devnet.local import LocalNetwork, plan_network
from fedcoin.devnet.watch import wait_for_agreement
from fedcoin.errors import FedcoinError
from fedcoin.fl.content import pack_task_content, unpack_task_content
from fedcoin.valuation.engine import engine_for

PAPER_PLATEAU = 2500  # Section 6.3: "converges at about 2,500 Shapley calculation iterations" for D < 1e-3


# --------------------------------------------------------------------------- engine rate


def engine_rate(dataset: str, data_dir: str | None, metric: str, seconds: float = 8.0, seed: int = 0) -> dict:
    """Permutations per second of the miners' Shapley engine on this machine (1 torch thread).

    The same construction as the miner service: a real round's task content, packed and
    unpacked (``fedcoin.fl.content``), ``engine_for``, then ``engine.marginals`` on
    PoSap-derived permutations, single-threaded as the miners run (FEDCOIN_TORCH_THREADS=1).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = load_data(dataset, data_dir)
        _, clients = partition(data, seed)
        r = fedavg(clients, 1, seed).rounds[0]
        content = pack_task_content(r.updates, r.n_samples, data["X_val"], data["y_val"], r.global_before)
        t = time.perf_counter()
        engine = engine_for(
            unpack_task_content(content, sha256_hex(content), NUM_CLIENTS),
            metric=metric,
            empty_value=EMPTY_VALUE,
            device="cpu",
        )
        build = time.perf_counter() - t
        n = 0
        t = time.perf_counter()
        while time.perf_counter() - t < seconds or n < 5:
            engine.marginals(derive_permutation("00" * 32, "bench", "bench", n, NUM_CLIENTS))
            n += 1
        rate = n / (time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
    return {
        "permutations_per_second_1_thread": rate,
        "permutations_timed": n,
        "engine_build_seconds": build,
        "content_bytes": len(content),
        "K": NUM_CLIENTS,
        "M": int(data["X_val"].shape[0]),
        "metric": metric,
    }


# --------------------------------------------------------------------------- one network


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_base_port(base: int, miners: int = MINERS) -> int:
    for k in range(40):
        b = base + 250 * k
        if b + 101 + miners >= 65535:
            break
        if all(_port_free(p) for p in [b, b + 1, b + 2, *range(b + 101, b + 101 + miners)]):
            return b
    raise FedcoinError(f"no free block of ports from {base}")


def _get(http: httpx.Client, url: str):
    try:
        r = http.get(url)
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    try:
        return r.json()
    except ValueError:
        return None


def _thin(points: list, n: int = 150) -> list:
    if len(points) <= n:
        return points
    idx = np.unique(np.linspace(0, len(points) - 1, n).round().astype(int))
    return [points[i] for i in idx]


def run_difficulty(
    D: float,
    *,
    reps: int,
    cap_s: float,
    workdir: Path,
    base_port: int,
    dataset: str,
    data_dir: str | None,
    metric: str,
    cap_iterations: int | None = None,
    startup_timeout: float = 420.0,
    poll_s: float = 1.0,
) -> dict:
    """Start a fresh network at difficulty D and let it mine ``reps`` blocks; stop it.

    A round not settled within ``cap_s`` seconds of its publication, or once some miner
    has run ``cap_iterations`` iterations on it, is censored and ends the run.
    """
    x = -math.log10(D)
    d = workdir / f"net-x{x:.2f}"
    if d.exists():
        shutil.rmtree(d)
    port = pick_base_port(base_port)
    types_spec = ",".join([f"0-{NUM_TYPES - 1}"] * (NUM_CLIENTS // NUM_TYPES))  # 100 clients, 10 per type
    specs = plan_network(
        d,
        miners=MINERS,
        client_types=types_spec,
        base_port=port,
        budget=1_000_000,
        rounds=reps,
        dataset=dataset,
        dataset_dir=data_dir,
        initial_difficulty=D,
        retarget_window=10_000,
        extra_env={
            "FEDCOIN_METRIC": metric,
            "FEDCOIN_EMPTY_VALUE": repr(EMPTY_VALUE),
            "FEDCOIN_MIN_CLIENTS": str(NUM_CLIENTS),
            "FEDCOIN_CLIENT_WAIT": "600",
            "FEDCOIN_SETTLE_TIMEOUT": str(int(cap_s + 3600)),
        },
    )
    t0 = time.time()
    out: dict = {
        "difficulty": D,
        "x": x,
        "reps": reps,
        "cap_seconds": cap_s,
        "cap_iterations": cap_iterations,
        "base_port": port,
        "runs": [],
    }
    trajectories: dict[str, dict[int, list]] = {}
    last_status: dict[str, dict[int, dict]] = {}
    censored = None
    with LocalNetwork(d, specs) as net:
        net.start_all()
        net.wait_healthy(timeout=startup_timeout)
        out["startup_seconds"] = time.time() - t0
        server, miners = net.url("server"), net.miner_urls
        with httpx.Client(timeout=5.0) as http:
            accounts = [(_get(http, f"{u}/health") or {}).get("account") for u in miners]
            while True:
                doc = _get(http, f"{server}/tasks/default")
                if doc is not None and doc["status"] == "done":
                    break
                if doc is not None and doc["status"] == "failed":
                    raise FedcoinError(f"D={D:g}: task failed: {doc.get('error')}; logs in {d / 'logs'}")
                pending = doc.get("pending_round") if doc else None
                if pending is not None and len(doc["round_results"]) <= pending["round"]:
                    task = pending["task"]
                    stid, pub = task["task_id"], task["published_at"] / 1000.0
                    traj = trajectories.setdefault(stid, {})
                    for i, u in enumerate(miners):
                        st = _get(http, f"{u}/status")
                        m = (st or {}).get("mining")
                        if m and m.get("task_id") == stid:
                            last_status.setdefault(stid, {})[i] = m
                            # a miner may win only once it has heard from a peer (min_peers = 1); before
                            # that its S_bar is its own S and the distance is 0
                            if m.get("distance") is not None and m["iterations"] > 0 and m.get("peers", 0) >= 1:
                                traj.setdefault(i, []).append(
                                    (round(time.time() - pub, 2), m["iterations"], m["distance"])
                                )
                    seen = last_status.get(stid, {})
                    top = max((v["iterations"] for v in seen.values()), default=0)
                    if time.time() - pub > cap_s or (cap_iterations is not None and top >= cap_iterations):
                        its = [seen[i]["iterations"] if i in seen else 0 for i in range(len(miners))]
                        dists = [p[2] for pts in traj.values() for p in pts]
                        censored = {
                            "round": pending["round"],
                            "task_id": stid,
                            "censored": True,
                            "seconds": time.time() - pub,
                            "iterations": max(its),
                            "miner_iterations": its,
                            "min_distance_seen": min(dists) if dists else None,
                            "last_distances": [
                                seen[i].get("distance") if i in seen else None for i in range(len(miners))
                            ],
                        }
                        log(
                            f"  D={D:g}: round {pending['round']} censored after {censored['seconds']:.0f} s, "
                            f"{max(its)} iterations, closest distance {censored['min_distance_seen']}"
                        )
                        break
                if time.time() - t0 > startup_timeout + reps * (cap_s + 300):
                    raise FedcoinError(f"D={D:g}: network made no progress; logs in {d / 'logs'}")
                time.sleep(poll_s)
            blocks = _get(http, f"{miners[0]}/blocks?start=1&end=1000") or []
            clients = _get(http, f"{net.url('client')}/clients") or []
        ctype = {c["account"]: c["client_type"] for c in clients}
        agreed = None
        if blocks:
            try:
                head = wait_for_agreement(miners, len(blocks), timeout=30)
                agreed = head["hash"] == Block.from_dict(blocks[-1]).hash
            except FedcoinError:
                agreed = False
        out["all_miners_agree"] = agreed
    out["wall_seconds"] = time.time() - t0
    for b in blocks:
        h, task = b["header"], b["body"]["task"]
        stid = h["task_id"]
        seen = last_status.get(stid, {})
        types = [ctype.get(a, -1) for a in task["clients"]]
        run = {
            "round": task["round"],
            "task_id": stid,
            "censored": False,
            "height": h["height"],
            "iterations": h["iterations"],
            "seconds": (h["timestamp"] - task["published_at"]) / 1000.0,
            "difficulty": h["difficulty"],
            "winner": accounts.index(h["winner"]) if h["winner"] in accounts else None,
            "miner_iterations_last_seen": [seen[i]["iterations"] if i in seen else None for i in range(len(miners))],
            "n_clients": len(task["clients"]),
            "metric": task["metric"],
            "mean_shapley_by_type": [float(np.mean(v)) if v else None for v in by_type(h["s_avg"], types)],
        }
        out["runs"].append(run)
    if censored is not None:
        out["runs"].append(censored)
    out["trajectories"] = {stid: {str(i): _thin(pts) for i, pts in t.items()} for stid, t in trajectories.items()}
    done = [r for r in out["runs"] if not r["censored"]]
    cens = [r for r in out["runs"] if r["censored"]]
    out["completed"] = len(done)
    out["censored"] = len(cens)
    out["median_iterations"] = statistics.median(r["iterations"] for r in done) if done else None
    out["median_seconds"] = statistics.median(r["seconds"] for r in done) if done else None
    out["lower_bound_iterations"] = max(r["iterations"] for r in cens) if cens else None
    out["lower_bound_seconds"] = max(r["seconds"] for r in cens) if cens else None
    for child in d.iterdir():  # keep only the services' logs (node state holds ~70 MB of task content per round)
        if child.name != "logs":
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
    return out


# --------------------------------------------------------------------------- analysis


def fit_constant(records: list[dict], min_iterations: int = 16) -> dict:
    """Fit ||S - S_bar||_2 ~ c / sqrt(t) to every polled (iterations, distance) point.

    ``first_passage_ratio`` calibrates "the first of 4 miners to get within D" against
    the typical distance, on the blocks of the smallest D that was reached (at larger D
    the win is decided by who received the task first, not by convergence).
    """
    cs, ts, ds = [], [], []
    for rec in records:
        for traj in rec.get("trajectories", {}).values():
            for pts in traj.values():
                for _, t, dist in pts:
                    if t >= min_iterations and dist and dist > 0:
                        cs.append(dist * math.sqrt(t))
                        ts.append(t)
                        ds.append(dist)
    if len(cs) < 3:
        return {"c": None, "points": len(cs)}
    slope = float(np.polyfit(np.log(ts), np.log(ds), 1)[0]) if len(set(ts)) > 2 else None
    c = float(np.median(cs))
    reached = [rec for rec in records if rec.get("completed")]
    ratio, calib = None, None
    if reached:
        calib = min(rec["difficulty"] for rec in reached)
        its = [
            r["iterations"] for rec in reached if rec["difficulty"] == calib for r in rec["runs"] if not r["censored"]
        ]
        ratio = float(np.median(its)) / (c / calib) ** 2
    return {
        "c": c,
        "points": len(cs),
        "free_slope_loglog": slope,
        "first_passage_ratio": ratio,
        "calibrated_on_difficulty": calib,
        "law": "typical distance ~ c / sqrt(iterations); iterations to reach D ~ ratio * (c / D)^2",
    }


def predicted_iterations(fit: dict, D: float) -> float | None:
    if not fit.get("c"):
        return None
    return (fit.get("first_passage_ratio") or 1.0) * (fit["c"] / D) ** 2


def miner_rate(records: list[dict]) -> float | None:
    """Median iterations per second of one networked miner while racing (from the polled trajectories)."""
    rates = []
    for rec in records:
        for traj in rec.get("trajectories", {}).values():
            for pts in traj.values():
                if len(pts) >= 3 and pts[-1][0] > pts[0][0]:
                    rates.append((pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0]))
    return float(statistics.median(rates)) if rates else None


def finalize(doc: dict) -> dict:
    """Derived analysis of the raw records: the c/sqrt(t) fit, the miners' rate, predictions per D."""
    recs = doc["records"]
    doc["fit"] = fit = fit_constant(recs)
    doc["network_rate_per_miner"] = rate = miner_rate(recs)
    for rec in recs:
        pi = predicted_iterations(fit, rec["difficulty"])
        rec["predicted_iterations"] = pi
        rec["predicted_seconds"] = pi / rate if pi and rate else None
    return doc


def human_seconds(sec: float) -> str:
    for unit, size in (("y", 365.25 * 86400), ("d", 86400), ("h", 3600), ("min", 60)):
        if sec >= size:
            return f"{sec / size:.2g} {unit}"
    return f"{sec:.2g} s"


# --------------------------------------------------------------------------- plot


def fmt_d(D: float) -> str:
    x = -math.log10(D)
    return f"1e-{x:.0f}" if abs(x - round(x)) < 1e-9 else f"{D:.2g}"


def plot(doc: dict, path: Path) -> None:
    plt = style()
    recs = doc["records"]
    fit = doc["fit"]
    rate = doc.get("network_rate_per_miner")
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.6))
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(recs), 2)))
    xs_all = [r["x"] for r in recs]
    xgrid = np.linspace(min(xs_all) - 0.1, max(xs_all) + 0.1, 100)
    for ax, key, unit in ((axes[0], "iterations", "Shapley iterations of the winner"), (axes[1], "seconds", "seconds")):
        mx: list[float] = []
        my: list[float] = []
        for rec in recs:
            done = [r[key] for r in rec["runs"] if not r["censored"]]
            cens = [r[key] for r in rec["runs"] if r["censored"]]
            jitter = np.linspace(-0.06, 0.06, len(done)) if len(done) > 1 else [0.0] * len(done)
            ax.scatter(
                np.array([rec["x"]] * len(done)) + jitter,
                done,
                color="C0",
                alpha=0.6,
                s=22,
                zorder=3,
                label="block (one repetition)" if rec is recs[0] or not mx else None,
            )
            if done:
                mx.append(rec["x"])
                my.append(float(np.median(done)))
            if cens:
                ax.scatter(
                    [rec["x"]] * len(cens),
                    cens,
                    marker="^",
                    s=80,
                    facecolors="none",
                    edgecolors="C3",
                    zorder=4,
                    label="not reached within (lower bound)",
                )
                for c in cens:
                    ax.annotate(
                        "", xy=(rec["x"], c * 4), xytext=(rec["x"], c), arrowprops={"arrowstyle": "->", "color": "C3"}
                    )
                pred = rec.get("predicted_iterations" if key == "iterations" else "predicted_seconds")
                if pred:
                    ax.scatter(
                        [rec["x"]], [pred], marker="x", color="0.35", zorder=4, label="predicted (fit), not measured"
                    )
                    text = f"{pred:.1e}" if key == "iterations" else human_seconds(pred)
                    ax.annotate(
                        text,
                        (rec["x"], pred),
                        textcoords="offset points",
                        xytext=(-8, 6),
                        ha="right",
                        fontsize=8,
                        color="0.3",
                    )
        ax.plot(mx, my, "o-", color="C0", lw=2, label="median of the blocks")
        if fit.get("c"):
            pred = np.array([predicted_iterations(fit, 10**-x) for x in xgrid])
            pred = np.where(pred < 1, np.nan, pred)
            if key == "seconds":
                pred = pred / rate if rate else None
            if pred is not None:
                ax.plot(
                    xgrid,
                    pred,
                    ":",
                    color="gray",
                    label=r"$\propto D^{-2}$: fit $\|S-\bar S\|_2 \approx c/\sqrt{t}$"
                    + ("" if key == "iterations" else f", {rate:.1f} it/s per miner"),
                )
        if key == "iterations":
            ax.axhline(PAPER_PLATEAU, color="C1", ls="--", label="paper: plateau ~2,500 (Sec. 6.3)")
        ax.set_yscale("log")
        ax.set_xlabel(r"$-\log_{10} D$")
        ax.set_ylabel(unit)
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles, strict=False))
        ax.legend(uniq.values(), uniq.keys(), fontsize=8, loc="upper left")
    axes[0].set_title("Block generation time in Shapley iterations")
    axes[1].set_title(
        f"Block generation time in seconds ({doc['meta']['machine']['cpu_count']} cores, {doc['miners']} miners)"
    )
    ax = axes[2]
    for rec, col in zip(recs, colors, strict=False):
        first = True
        for _stid, traj in rec.get("trajectories", {}).items():
            for pts in traj.values():
                if pts:
                    t = [p[1] for p in pts]
                    dist = [p[2] for p in pts]
                    ax.plot(
                        t,
                        dist,
                        "-",
                        color=col,
                        alpha=0.5,
                        lw=1,
                        label=f"D = {fmt_d(rec['difficulty'])}" if first else None,
                    )
                    first = False
        ax.axhline(rec["difficulty"], color=col, ls="--", lw=0.8)
    if fit.get("c"):
        tt = np.logspace(0, 6, 50)
        ax.plot(tt, fit["c"] / np.sqrt(tt), "k:", label=f"c/sqrt(t), c = {fit['c']:.2f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(min(r["difficulty"] for r in recs) / 3, 3)
    ax.set_xlim(1, 1e6)
    ax.set_xlabel("iterations of a miner (t)")
    ax.set_ylabel(r"$\|S - \bar S\|_2$ (polled GET /status)")
    ax.set_title("Why: a miner's distance to the network average (dashed: D)")
    ax.legend(fontsize=7, loc="lower left", ncol=2)
    fig.suptitle(
        f"Figure 6 - block generation time vs difficulty: {doc['miners']} networked miners, "
        f"K={doc['clients']} clients, {doc['dataset']}, metric {doc['metric']}, p=2",
        fontsize=12,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
