#!/usr/bin/env python
"""Selfish mining against Proof of Shapley (the paper's Section 5), analytic and by Monte Carlo.

What the paper claims (Section 5, quoted from ``shared/paper/fedcoin-paper.txt``):

    "Observation 1  When the FL server processes FL training model requests sequentially,
    it is not rational for colluders to follow the selfish mining strategy."

    "According to Algorithm 3, each public block winner is paid by the FL server before
    creating a new block containing the block reward payment transactions. When the
    training task is processed one by one, if a selfish miner becomes the winner but does
    not publish this result immedietely, it cannot receive the block rewards. Meanwhile,
    the selfish miner cannot mine the next block without publishing its private block since
    the next SV task must wait for the completion of payment in the current block in the
    setting of sequentially training models."

    "Observation 2  When the FL server processes FL training model requests in parallel,
    and all the miners have the same block propogation delay to the FL server, the expected
    revenue for selfish miner is greater than that for honest miners when the selfish pool
    attracts more then 25% of the total mining power in the blockchain network."

    "If the tasks are published in parallel, a selfish miner can reserve a block and
    continue to mine the next block. The state transation and revene analysis is same as
    that in [Eyal and Sirer, 2018], resulting the condition of the threshold of selfish
    pool's mining power to be 1/4 under the condition of the same propogation delay to the
    FL server."

The model. A selfish pool holds a share ``alpha`` of the network's Shapley-computation
rate; the honest miners hold ``1 - alpha``. Block discovery is a race whose per-miner rate
is proportional to its computation share (a Poisson race, as in Eyal & Sirer, "Majority is
not enough", 2014; see the caveat below). ``gamma`` is the share of a tie that the pool
wins. Time is in units of the mean block interval of the whole network mining at once.

* **parallel** (Bitcoin-like): several Shapley tasks are open at once, so a block can
  always be mined on top of any block, published or not. The pool runs Eyal & Sirer's
  Algorithm 1 (withhold; on an honest block publish one block to match, or everything when
  only one ahead). A tie is decided by the next block: the pool's if the pool finds it,
  otherwise the fraction ``gamma`` of the honest miners that mine on the pool's branch
  decides. Analytic: Eyal & Sirer's closed form (their eq. 8), and the same Markov chain
  solved numerically as a check of the closed form.
* **sequential**: one Shapley task at a time; each block settles the current task, and
  the FL server publishes the next task only after it has paid that block's winner.
  A pool that withholds its block therefore has *no task to mine on*: its private lead
  can never exceed 1 and its computation idles while it waits. The honest miners keep
  mining the same task; when one of them publishes, the pool releases its block and the
  FL server, whose payment and next task decide the fork, accepts the pool's block with
  probability ``gamma`` (under the paper's "same propagation delay" the pool's reactive
  release arrives after the honest block, so gamma is near 0; gamma = 1 is the pool's
  best case). Analytic: per task the pool finds the first solution with probability alpha
  and then wins the tie with probability gamma, so its share of the main chain is
  ``alpha * gamma`` and a task takes ``1 / (1 - alpha)`` time units on average instead
  of 1.

The Monte Carlo is an event simulation of the strategy itself (branch lengths, who mines
on what, which blocks end on the main chain), not of the reward table of the Markov chain:
``--replicates`` independent runs of ``--events`` block discoveries per (mode, gamma,
alpha), a mean relative revenue with a 95% t confidence interval, compared with the
analytic value. The profitability threshold is the alpha at which the pool's relative
revenue exceeds alpha: analytic, by closed form and by bisection, and as observed on the
alpha grid (the first grid alpha from which every simulated CI lies above alpha).

Caveat: the Poisson race is an assumption. PoSap's discovery in this repository is
progress-based (README, Figure 6: ||S - S_bar|| ~ c / sqrt(t), so the time to reach D is
close to deterministic). ``progress_race`` gives, as an approximate sensitivity check, the
share of sequential races that a single pool wins against ``n`` equal honest miners when
each miner's time to D is (c/D)^2 * Q / rate with Q ~ chi2_K / K.

Run: python scripts/selfish_mining.py [--json PATH] [--plot PATH] [--seed N] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__":
    # The Markov-chain solves are small: a multi-threaded BLAS only contends for the cores. Set
    # before numpy loads, and only when run as a script (an importer's environment is its own).
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

MODES = ("sequential", "parallel")
GAMMAS = (0.0, 0.5, 1.0)
#: 0.975 quantiles of Student's t for df = 1..30 (two-sided 95% intervals); beyond, the normal's 1.96.
T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


# --------------------------------------------------------------------------- analytic


def es_revenue(alpha: float, gamma: float) -> float:
    """Eyal & Sirer's relative revenue of a selfish pool (eq. 8 of "Majority is not enough")."""
    a, g = alpha, gamma
    return (a * (1 - a) ** 2 * (4 * a + g * (1 - 2 * a)) - a**3) / (1 - a * (1 + (2 - a) * a))


def es_threshold(gamma: float) -> float:
    """Eyal & Sirer's profitability threshold: selfish mining pays iff alpha > (1 - gamma) / (3 - 2 gamma)."""
    return (1 - gamma) / (3 - 2 * gamma)


def es_markov(alpha: float, gamma: float, states: int = 200) -> dict[str, float]:
    """The Eyal & Sirer chain solved numerically (truncated at ``states`` leads).

    States: 0, 0' (a tie of two published branches), 1, 2, ... Returns the pool's relative
    revenue and the main-chain blocks of the pool and of the others per block discovery.
    """
    a, g = alpha, gamma
    n = states + 2  # index 0 = state 0, 1 = state 0', 1 + k = lead k (k = 1..states)
    p = np.zeros((n, n))
    pool_r = np.zeros(n)  # expected main-chain blocks credited to the pool on leaving a state
    other_r = np.zeros(n)
    p[0, 2] += a  # 0 -> 1
    p[0, 0] += 1 - a  # 0 -> 0, others +1
    other_r[0] = 1 - a
    p[1, 0] = 1.0  # 0' -> 0
    pool_r[1] = a * 2 + (1 - a) * g * 1
    other_r[1] = (1 - a) * g * 1 + (1 - a) * (1 - g) * 2
    for k in range(1, states + 1):
        i = 1 + k
        p[i, min(i + 1, n - 1)] += a
        if k == 1:
            p[i, 1] += 1 - a  # -> 0'
        elif k == 2:
            p[i, 0] += 1 - a  # publish all, pool +2
            pool_r[i] = (1 - a) * 2
        else:
            p[i, i - 1] += 1 - a  # publish one, pool +1
            pool_r[i] = (1 - a) * 1
    # stationary distribution: pi P = pi, sum pi = 1
    m = p.T - np.eye(n)
    m[-1, :] = 1.0
    rhs = np.zeros(n)
    rhs[-1] = 1.0
    pi = np.linalg.solve(m, rhs)
    r_pool = float(pi @ pool_r)
    r_other = float(pi @ other_r)
    return {"revenue": r_pool / (r_pool + r_other), "pool_per_event": r_pool, "others_per_event": r_other}


def sequential_revenue(alpha: float, gamma: float) -> float:
    """Sequential processing: the pool's block is on the main chain only if it found first and wins the tie."""
    return alpha * gamma


def sequential_task_time(alpha: float) -> float:
    """Mean time per task under selfish withholding (1 when everybody mines honestly)."""
    return 1.0 / (1.0 - alpha)


def analytic_revenue(mode: str, alpha: float, gamma: float) -> float:
    return es_revenue(alpha, gamma) if mode == "parallel" else sequential_revenue(alpha, gamma)


def bisect_threshold(f: Callable[[float], float], lo: float = 1e-9, hi: float = 0.5 - 1e-9) -> float | None:
    """The alpha in (lo, hi) where f(alpha) - alpha turns positive, or None if it never does.

    Returns 0 when f is already above alpha at ``lo`` (any alpha > 0 pays) and None when
    f(alpha) <= alpha everywhere on a fine grid (no threshold).
    """
    grid = np.linspace(lo, hi, 2001)
    excess = [f(float(x)) - float(x) for x in grid]
    if excess[0] > 0:
        return 0.0
    above = [i for i, e in enumerate(excess) if e > 1e-12]
    if not above:
        return None
    i = above[0]
    a, b = float(grid[i - 1]), float(grid[i])
    for _ in range(60):
        mid = (a + b) / 2
        if f(mid) - mid > 0:
            b = mid
        else:
            a = mid
    return (a + b) / 2


def analytic_threshold(mode: str, gamma: float) -> float | None:
    """Closed form for parallel (Eyal & Sirer); sequential: alpha * gamma never exceeds alpha."""
    return es_threshold(gamma) if mode == "parallel" else None


# --------------------------------------------------------------------------- Monte Carlo


@dataclass
class RunResult:
    pool_blocks: int  # pool's blocks on the main chain
    honest_blocks: int  # honest blocks on the main chain
    discoveries: int  # blocks found (main chain + orphaned)
    elapsed: float  # time, in units of the whole network's mean block interval
    max_lead: int  # largest private lead the pool ever held

    @property
    def revenue(self) -> float:
        total = self.pool_blocks + self.honest_blocks
        return self.pool_blocks / total if total else 0.0


def simulate_run(
    mode: str, alpha: float, gamma: float, events: int, rng: np.random.Generator, selfish: bool = True
) -> RunResult:
    """One run of at least ``events`` block discoveries; the pool follows Eyal & Sirer's strategy if ``selfish``.

    ``priv``: the pool's blocks above the fork point (published or not); ``pub``: the honest
    blocks on the competing public branch; ``tie``: two published branches of equal length.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}")
    sequential = mode == "sequential"
    u_who: list[float] = []
    u_tie: list[float] = []
    expo: list[float] = []
    pool = honest = priv = pub = max_lead = discoveries = 0
    tie = False
    elapsed = 0.0
    j = 0  # index into the current batch of random numbers
    # Run for ``events`` discoveries, then on until the open fork (if any) is resolved, so that a
    # run is a whole number of regeneration cycles and its end does not bias the share.
    while discoveries < events or priv or pub or tie:
        if j == len(u_who):
            n = events if discoveries == 0 else 1024
            u_who = rng.random(n).tolist()
            u_tie = rng.random(n).tolist()
            expo = rng.standard_exponential(n).tolist()
            j = 0
        who, tie_draw, dt = u_who[j], u_tie[j], expo[j]
        j += 1
        discoveries += 1
        # In sequential mode a pool holding an unpublished block has no task to mine: only the
        # honest miners (rate 1 - alpha) are racing. Otherwise everybody mines (rate 1).
        idle = sequential and priv > pub
        if idle:
            elapsed += dt / (1.0 - alpha)
            pool_found = False
        else:
            elapsed += dt
            pool_found = who < alpha
        if not selfish:
            if pool_found:
                pool += 1
            else:
                honest += 1
            continue
        if pool_found:
            if tie:  # the pool extends its published branch and publishes: it wins the tie
                pool += priv + 1
                priv = pub = 0
                tie = False
            else:
                priv += 1
                max_lead = max(max_lead, priv - pub)
            continue
        # an honest miner found a block
        if tie:
            if tie_draw < gamma:  # found on the pool's branch: the pool's block(s) and this one stay
                pool += priv
                honest += 1
            else:  # found on the honest branch
                honest += pub + 1
            priv = pub = 0
            tie = False
            continue
        lead = priv - pub
        if lead == 0:
            honest += 1
        elif lead == 1:
            pub += 1  # the pool publishes its block: two branches of equal length
            if sequential:
                # the FL server pays one of the two winners and publishes the next task on top of
                # that block, which ends the fork at once
                if tie_draw < gamma:
                    pool += priv
                else:
                    honest += pub
                priv = pub = 0
            else:
                tie = True
        elif lead == 2:  # the pool publishes everything: its longer branch wins
            pool += priv
            priv = pub = 0
        else:  # the pool publishes one more block and stays ahead
            pub += 1
    return RunResult(pool, honest, discoveries, elapsed, max_lead)


def t975(df: int) -> float:
    return T975[df - 1] if 1 <= df <= len(T975) else 1.96


def simulate_point(
    mode: str, alpha: float, gamma: float, events: int, replicates: int, rng: np.random.Generator
) -> dict:
    runs = [simulate_run(mode, alpha, gamma, events, rng) for _ in range(replicates)]
    rev = np.array([r.revenue for r in runs])
    mean = float(rev.mean())
    sd = float(rev.std(ddof=1)) if replicates > 1 else 0.0
    half = t975(replicates - 1) * sd / math.sqrt(replicates) if replicates > 1 else 0.0
    pool_rate = float(np.mean([r.pool_blocks / r.elapsed for r in runs]))
    main_rate = float(np.mean([(r.pool_blocks + r.honest_blocks) / r.elapsed for r in runs]))
    orphaned = float(np.mean([1 - (r.pool_blocks + r.honest_blocks) / r.discoveries for r in runs]))
    return {
        "mean": mean,
        "sd": sd,
        "ci95": [mean - half, mean + half],
        "replicates": replicates,
        "events_per_replicate": events,
        "pool_blocks_per_time": pool_rate,
        "main_chain_blocks_per_time": main_rate,
        "orphaned_fraction": orphaned,
        "max_lead": max(r.max_lead for r in runs),
    }


def simulated_threshold(alphas: Sequence[float], points: Sequence[dict]) -> dict:
    """From the grid: the first alpha from which every simulated CI lies above alpha, and the
    interpolated last upward crossing of the mean (only when the mean stays above alpha after it)."""
    significant = [p["ci95"][0] > a for a, p in zip(alphas, points, strict=True)]
    first_sig = None
    for i in range(len(alphas)):
        if all(significant[i:]):
            first_sig = alphas[i]
            break
    excess = [p["mean"] - a for a, p in zip(alphas, points, strict=True)]
    crossing: float | None = None
    below: float | None = None
    if first_sig is not None:
        if excess[0] > 0 and all(e > 0 for e in excess):
            crossing = None  # above alpha on the whole grid: the threshold is below the first grid alpha
            below = alphas[0]
        else:
            last_nonpos = max(i for i, e in enumerate(excess) if e <= 0)
            if last_nonpos + 1 < len(alphas):
                a0, a1 = alphas[last_nonpos], alphas[last_nonpos + 1]
                e0, e1 = excess[last_nonpos], excess[last_nonpos + 1]
                crossing = a0 + (a1 - a0) * (-e0) / (e1 - e0)
    return {
        "first_significant_alpha": first_sig,
        "mean_crossing_interpolated": crossing,
        "above_alpha_from_first_grid_point": below,
    }


def progress_race(alpha: float, n_honest: int, k_dims: int, trials: int, rng: np.random.Generator) -> float:
    """Share of races a single pool of share ``alpha`` wins against ``n_honest`` equal honest miners
    when each miner's time to reach D is Q / rate, Q ~ chi2_K / K (approximate progress-based PoSap)."""
    rates = np.array([alpha] + [(1 - alpha) / n_honest] * n_honest)
    q = rng.chisquare(k_dims, size=(trials, n_honest + 1)) / k_dims
    winners = np.argmin(q / rates, axis=1)
    return float(np.mean(winners == 0))


# --------------------------------------------------------------------------- output


def fmt(x: float | None, digits: int = 3) -> str:
    return "none" if x is None else f"{x:.{digits}f}"


def print_tables(doc: dict) -> None:
    rows = []
    for mode in MODES:
        for g in doc["params"]["gammas"]:
            th = doc["thresholds"][mode][str(g)]
            sim = th["simulated"]
            if sim["above_alpha_from_first_grid_point"] is not None:
                obs = f"< {sim['above_alpha_from_first_grid_point']:.2f}"
            else:
                obs = fmt(sim["mean_crossing_interpolated"])
            rows.append(
                [
                    mode,
                    f"{g:.1f}",
                    fmt(th["analytic"]),
                    fmt(th["analytic_bisection"]),
                    obs,
                    fmt(sim["first_significant_alpha"], 2),
                    f"{th['agreement']['coverage']:.2f}",
                    f"{th['agreement']['max_abs_diff']:.4f}",
                ]
            )
    head = ["mode", "gamma", "threshold", "bisection", "sim crossing", "sim signif. from", "CI coverage"]
    head.append("max |sim-an|")
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="Selfish mining vs Proof of Shapley: profitability threshold (alpha where revenue > alpha)")
        for h in head:
            table.add_column(h, justify="right")
        for r in rows:
            table.add_row(*r)
        Console(width=140).print(table)
    except ImportError:  # plain fallback
        print(" | ".join(head))
        for r in rows:
            print(" | ".join(r))
    pr = doc["progress_race"]
    print(
        f"progress-based race (approx., K={pr['k_dims']}, {pr['n_honest']} equal honest miners): "
        + ", ".join(f"alpha={a:.2f} wins {s:.2f}" for a, s in zip(pr["alphas"], pr["pool_win_share"], strict=True))
    )


def plot(doc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = doc["params"]["alphas"]
    fine = np.linspace(0.0, 0.5, 201)
    colors = {0.0: "tab:blue", 0.5: "tab:orange", 1.0: "tab:green"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), sharey=True)
    for ax, mode in zip(axes, ("parallel", "sequential"), strict=True):
        ax.plot(fine, fine, "k--", lw=1, zorder=5, label="honest: y = alpha")
        for g in doc["params"]["gammas"]:
            c = colors.get(g)
            curve = [analytic_revenue(mode, float(a), g) for a in fine]
            ax.plot(fine, curve, color=c, lw=1.5, label=f"analytic, γ={g}")
            pts = doc["results"][mode][str(g)]
            mean = np.array([p["mean"] for p in pts])
            lo = np.array([p["ci95"][0] for p in pts])
            hi = np.array([p["ci95"][1] for p in pts])
            ax.errorbar(alphas, mean, yerr=[mean - lo, hi - mean], fmt="o", ms=3, color=c, capsize=2)
            th = doc["thresholds"][mode][str(g)]["analytic"]
            if th is not None and th > 0:
                ax.axvline(th, color=c, lw=0.8, ls=":")
        title = (
            "parallel tasks (Bitcoin-like, Eyal & Sirer)"
            if mode == "parallel"
            else "sequential tasks (next task only after payment; γ=1 lies on y = alpha)"
        )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("pool's share of computation, alpha")
        ax.set_xlim(0, 0.5)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("pool's relative revenue (share of main-chain blocks)")
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle("Selfish mining against PoSap: lines analytic, points Monte Carlo (95% CI); dotted: thresholds")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict:
    t_start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    step = 0.04 if args.quick else 0.02
    alphas = [round(float(x), 4) for x in np.arange(step, 0.5 - 1e-9, step)]
    events = args.events or (5_000 if args.quick else 30_000)
    replicates = args.replicates or (6 if args.quick else 20)
    results: dict[str, dict[str, list[dict]]] = {}
    thresholds: dict[str, dict[str, dict]] = {}
    for mode in MODES:
        results[mode] = {}
        thresholds[mode] = {}
        for g in GAMMAS:
            points = []
            for a in alphas:
                p = simulate_point(mode, a, g, events, replicates, rng)
                p["alpha"] = a
                p["analytic"] = analytic_revenue(mode, a, g)
                if mode == "parallel":
                    p["analytic_markov"] = es_markov(a, g)["revenue"]
                else:
                    p["analytic_pool_blocks_per_time"] = a * g * (1 - a)
                    p["analytic_main_chain_blocks_per_time"] = 1 / sequential_task_time(a)
                p["within_ci"] = bool(p["ci95"][0] <= p["analytic"] <= p["ci95"][1])
                points.append(p)
            results[mode][str(g)] = points
            diffs = [abs(p["mean"] - p["analytic"]) for p in points]
            thresholds[mode][str(g)] = {
                "analytic": analytic_threshold(mode, g),
                "analytic_bisection": bisect_threshold(functools.partial(analytic_revenue, mode, gamma=g)),
                "simulated": simulated_threshold(alphas, points),
                "agreement": {
                    "coverage": float(np.mean([p["within_ci"] for p in points])),
                    "max_abs_diff": max(diffs),
                    "max_markov_vs_closed_form": (
                        max(abs(p["analytic_markov"] - p["analytic"]) for p in points) if mode == "parallel" else None
                    ),
                },
            }
    pr_alphas = [0.1, 0.15, 0.2, 0.22, 0.25, 0.3, 0.35]
    n_honest, k_dims, trials = 4, 100, 4_000 if args.quick else 20_000
    progress = {
        "model": "time to D = Q / rate, Q ~ chi2_K / K; one pool vs n equal honest miners; approximate",
        "n_honest": n_honest,
        "k_dims": k_dims,
        "trials": trials,
        "alphas": pr_alphas,
        "pool_win_share": [progress_race(a, n_honest, k_dims, trials, rng) for a in pr_alphas],
    }
    runtime = time.perf_counter() - t_start
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {
        "meta": {
            "command": shlex.join([Path(sys.executable).name, *sys.argv]),
            "runtime_s": round(runtime, 2),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "platform": platform.platform(),
            "loadavg_at_write": load,
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "params": {
            "seed": args.seed,
            "quick": args.quick,
            "alphas": alphas,
            "gammas": list(GAMMAS),
            "modes": list(MODES),
            "events_per_replicate": events,
            "replicates": replicates,
            "ci": "95%, Student t over replicates",
            "time_unit": "mean block interval of the whole network mining (total rate 1)",
            "sequential_gamma": "probability that the FL server accepts the pool's block in a tie",
            "parallel_gamma": "fraction of honest miners that mine on the pool's branch in a tie",
        },
        "results": results,
        "thresholds": thresholds,
        "progress_race": progress,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--json", type=Path, help="write the results as JSON to this path")
    ap.add_argument("--plot", type=Path, help="write the figure (PNG) to this path")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="coarse grid, short runs (a few seconds)")
    ap.add_argument("--events", type=int, default=None, help="block discoveries per replicate")
    ap.add_argument("--replicates", type=int, default=None, help="independent runs per point")
    args = ap.parse_args(argv)
    doc = run(args)
    print_tables(doc)
    print(f"runtime {doc['meta']['runtime_s']:.1f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
        tmp.replace(args.json)
    if args.plot:
        plot(doc, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
