"""Figure 4: Shapley value per client type, estimated by PoSap mining among 4 miners.

Per seed (the seed draws the data partition, the initial model and the clients'
minibatches): the paper's 100 clients (10 per type) run one FedAvg round of 20
local iterations (``fedcoin.fl.training.run_fedavg`` with the FL server's hyperparameters),
the round is packed into task content exactly as the FL server does
(``fedcoin.fl.content.pack_task_content``), unpacked and turned into the miners'
utility engine exactly as the miner service does (``unpack_task_content`` +
``engine_for``), and 4 real ``PoSapMiner``s race on it with
``fedcoin.devnet.simulation.race``: hash-derived permutations, gossip of (S, iterations),
the first miner within D of its network average builds the block
(``fedcoin.consensus.mining.build_block``) and every miner's chain verifies it
(Algorithm 2, with its own local S_bar).  The value reported for each client is
the block's averaged S_bar (the one Algorithm 3 pays with).
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
import torch
from common import (
    EMPTY_VALUE,
    MINERS,
    NUM_CLIENTS,
    NUM_TYPES,
    P_NORM,
    by_type,
    fedavg,
    load_data,
    partition,
    style,
    type_labels,
)

from fedcoin.chain.clock import now_ms
from fedcoin.chain.encoding import sha256_hex
from fedcoin.chain.genesis import ChainParams, GenesisConfig
from fedcoin.chain.identity import Identity
from fedcoin.chain.tasks import make_task
from fedcoin.chain.transactions import make_transaction
from fedcoin.consensus.payments import split_budget
from fedcoin.devnet.simulation import race
from fedcoin.errors import InvalidInput
from fedcoin.fl.content import pack_task_content, unpack_task_content
from fedcoin.ledger.chain import Chain
from fedcoin.valuation.engine import engine_for

BUDGET = 1_000_000


def _ident(tag: str) -> Identity:
    return Identity.from_seed(hashlib.sha256(f"fedcoin-paper/{tag}".encode()).digest())


def shapley_seed(
    seed: int,
    metric: str,
    difficulty: float,
    dataset: str,
    data_dir: str | None,
    max_iterations: int = 50_000,
    gossip_every: int = 4,
) -> dict:
    torch.set_num_threads(1)  # as the miner service (FEDCOIN_TORCH_THREADS=1)
    t0 = time.perf_counter()
    data = load_data(dataset, data_dir)
    part, clients = partition(data, seed)
    rnd = fedavg(clients, 1, seed, data).rounds[0]
    t_train = time.perf_counter() - t0
    content = pack_task_content(rnd.updates, rnd.n_samples, data["X_val"], data["y_val"], rnd.global_before)
    chash = sha256_hex(content)
    engine = engine_for(
        unpack_task_content(content, chash, NUM_CLIENTS), metric=metric, empty_value=EMPTY_VALUE, device="cpu"
    )

    requester, server = _ident("requester"), _ident("server")
    miners = [_ident(f"miner{i}") for i in range(MINERS)]
    client_ids = [_ident(f"client{k}") for k in range(NUM_CLIENTS)]
    start = now_ms()
    genesis = GenesisConfig(
        params=ChainParams(
            chain_id="fedcoin-paper-fig4",
            p=P_NORM,
            initial_difficulty=difficulty,
            retarget_window=10_000,
            servers=[server.account],
            miners=[m.account for m in miners],
        ),
        allocations={requester.account: BUDGET},
        timestamp=start - 1_000,
    )
    chains = [Chain(genesis) for _ in miners]
    train, _com, sap = split_budget(BUDGET)
    task_id = f"fig4-seed{seed}"
    deposit = make_transaction(requester, server.account, BUDGET, 0, "deposit", task_id)
    task = make_task(
        server,
        task_id=f"{task_id}:r0",
        round=0,
        clients=[c.account for c in client_ids],
        train_price=train,
        sap_price=sap,
        published_at=start,
        metric=metric,
        empty_value=EMPTY_VALUE,
        content_hash=chash,
        funding=[deposit],
        deposit=deposit.txid,  # the deposit is escrowed: the task names it, and its escrow pays the round
        budget=BUDGET,
        rounds=1,
    )
    t1 = time.perf_counter()
    out = {
        "seed": seed,
        "metric": metric,
        "difficulty": difficulty,
        "types": part.types.tolist(),
        "label_sets": [list(s) for s in part.label_sets],
        "fl_validation": rnd.metrics,
        "v_full": engine.full_value,
        "v_empty": engine.empty_value,
        "train_seconds": t_train,
    }
    try:
        res = race(chains, miners, task, engine.marginals, gossip_every=gossip_every, max_iterations=max_iterations)
    except InvalidInput as exc:  # no winner within max_iterations: censored, reported as such
        out.update(censored=True, error=str(exc), race_seconds=time.perf_counter() - t1)
        return out
    block = res.block
    s_avg = list(block.header.s_avg)
    out.update(
        censored=False,
        race_seconds=time.perf_counter() - t1,
        shapley=s_avg,
        s_winner=list(block.header.s_winner),
        winner_index=res.winner_index,
        winner_iterations=block.header.iterations,
        miner_iterations=res.iterations,
        total_permutations=int(sum(res.iterations)),
        all_chains_accept=all(c.head == block.hash for c in chains),
        block_hash=block.hash,
        rewarded_clients=sum(1 for t in block.body.transactions if t.kind == "reward"),
        sum_shapley=float(sum(s_avg)),
        mean_by_type=[float(np.mean(v)) for v in by_type(s_avg, part.types)],
        std_by_type=[float(np.std(v)) for v in by_type(s_avg, part.types)],
    )
    out["permutations_per_second"] = out["total_permutations"] / out["race_seconds"]
    return out


def aggregate(runs: list[dict]) -> dict:
    ok = [r for r in runs if not r.get("censored")]
    if not ok:
        return {"mean_shapley_by_type": None}
    per_seed = np.array([r["mean_by_type"] for r in ok])  # (seeds, T)
    clients: list[list[float]] = [[] for _ in range(NUM_TYPES)]
    for r in ok:
        for j, vals in enumerate(by_type(r["shapley"], r["types"])):
            clients[j].extend(vals)
    return {
        "mean_shapley_by_type": per_seed.mean(0).tolist(),
        "std_across_seeds_by_type": per_seed.std(0, ddof=1).tolist() if len(ok) > 1 else [0.0] * NUM_TYPES,
        "std_across_clients_by_type": np.mean([r["std_by_type"] for r in ok], axis=0).tolist(),
        "min_client_by_type": [float(min(v)) for v in clients],
        "max_client_by_type": [float(max(v)) for v in clients],
        "sign_pattern": "".join("+" if m > 0 else "-" for m in per_seed.mean(0)),
        "positive_types": [f"T{j}" for j, m in enumerate(per_seed.mean(0)) if m > 0],
        "spearman_type_vs_shapley": _spearman(list(range(NUM_TYPES)), per_seed.mean(0).tolist()),
        "seeds_ok": [r["seed"] for r in ok],
        "seeds_censored": [r["seed"] for r in runs if r.get("censored")],
    }


def _spearman(a, b) -> float:
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def plot(doc: dict, path, network_blocks: list[dict] | None = None) -> None:
    plt = style()
    panels = [("primary", doc)] + ([("secondary", doc["secondary"])] if doc.get("secondary") else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(7.2 * len(panels), 4.8), squeeze=False)
    x = np.arange(NUM_TYPES)
    for ax, (kind, d) in zip(axes[0], panels, strict=False):
        agg = d if kind == "primary" else d["aggregate"]
        runs = d["runs"]
        mean = np.array(agg["mean_shapley_by_type"])
        colors = ["C2" if m > 0 else "C3" for m in mean]
        ax.bar(x, mean, color=colors, alpha=0.55, width=0.7, label="mean over clients and seeds")
        if len(agg.get("seeds_ok", [])) > 1:
            ax.errorbar(
                x,
                mean,
                yerr=agg["std_across_seeds_by_type"],
                fmt="none",
                ecolor="k",
                capsize=4,
                lw=1.5,
                label="± std across seeds (of the type mean)",
            )
        rng = np.random.default_rng(0)
        first = True
        for r in runs:
            if r.get("censored"):
                continue
            t = np.asarray(r["types"])
            ax.scatter(
                t + rng.uniform(-0.25, 0.25, t.size),
                r["shapley"],
                s=6,
                color="0.3",
                alpha=0.45,
                label="single clients (all seeds)" if first else None,
                zorder=3,
            )
            first = False
        if kind == "primary" and network_blocks:
            for i, b in enumerate(network_blocks):
                ax.plot(
                    x,
                    b["mean_shapley_by_type"],
                    "D--",
                    ms=5,
                    lw=1,
                    color="C4",
                    alpha=0.85,
                    label="networked miners (Fig. 6 runs), round-0 blocks" if i == 0 else None,
                    zorder=4,
                )
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(x, type_labels())
        ax.set_xlabel("client type (T0 = all 10 labels ... T9 = 1 label)")
        ax.set_ylabel("Shapley value (block's averaged S̄)")
        seeds = len([r for r in runs if not r.get("censored")])
        its = np.median([r["total_permutations"] for r in runs if not r.get("censored")])
        ax.set_title(
            f"{'' if kind == 'primary' else 'secondary: '}metric {d['metric']}, v(∅)=0, D={d['difficulty']:g}: "
            f"{seeds} seed(s), ~{its:.0f} permutations/block",
            fontsize=10,
        )
        ax.legend(fontsize=8, loc="lower left")
    fig.suptitle(
        f"Figure 4 - Shapley value per client type, by PoSap among {MINERS} miners\n"
        f"K={NUM_CLIENTS} clients, 1 FedAvg round of 20 local iterations, {doc['dataset']}; "
        f"paper: T0-T4 > 0 > T5-T9",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
