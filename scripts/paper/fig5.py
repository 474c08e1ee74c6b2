"""Figure 5: test accuracy of a model trained only by the 10 clients of each type.

Per seed, the paper's partition (same seed as Figure 4); for each type j, FedAvg
(``fedcoin.fl.training.run_fedavg``, the FL server's hyperparameters: 20 local iterations,
batch 64, lr 0.1, 784-200-10 MLP) with only the 10 clients of type j, and the same
with all 100 clients as the reference ("the FL model based on the 100 clients").
Accuracy is measured on the whole test split.  ``rounds`` lists the numbers of
FedAvg rounds: 1 is the setting whose updates Figure 4 values; more rounds show the
models closer to convergence.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from common import NUM_TYPES, fedavg, load_data, partition, style, type_labels

from fedcoin.fl import model as fl_model


def accuracy_seed(seed: int, rounds: int, dataset: str, data_dir: str | None) -> dict:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = load_data(dataset, data_dir)
    part, clients = partition(data, seed)
    Xt, yt = data["X_test"], data["y_test"]
    ref = fl_model.evaluate(fedavg(clients, rounds, seed).final_weights, Xt, yt)
    per_type = []
    for j in range(NUM_TYPES):
        sub = [c for c, t in zip(clients, part.types, strict=False) if t == j]
        per_type.append(fl_model.evaluate(fedavg(sub, rounds, seed).final_weights, Xt, yt))
    return {
        "seed": seed,
        "rounds": rounds,
        "fl_reference": ref,
        "by_type": per_type,
        "accuracy_by_type": [m["accuracy"] for m in per_type],
        "fl_reference_accuracy": ref["accuracy"],
        "seconds": time.perf_counter() - t0,
    }


def aggregate(runs: list[dict]) -> dict:
    acc = np.array([r["accuracy_by_type"] for r in runs])
    ref = np.array([r["fl_reference_accuracy"] for r in runs])
    n = len(runs)
    return {
        "rounds": runs[0]["rounds"],
        "accuracy_by_type": acc.mean(0).tolist(),
        "accuracy_by_type_std_across_seeds": acc.std(0, ddof=1).tolist() if n > 1 else [0.0] * NUM_TYPES,
        "fl_reference_accuracy": float(ref.mean()),
        "fl_reference_accuracy_std_across_seeds": float(ref.std(ddof=1)) if n > 1 else 0.0,
        "types_below_reference": [f"T{j}" for j, a in enumerate(acc.mean(0)) if a < ref.mean()],
        "seeds": [r["seed"] for r in runs],
    }


def plot(doc: dict, path) -> None:
    plt = style()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    x = np.arange(NUM_TYPES)
    variants = doc["variants"]
    w = 0.8 / len(variants)
    for i, v in enumerate(variants):
        col = f"C{i}"
        off = (i - (len(variants) - 1) / 2) * w
        yerr = v["accuracy_by_type_std_across_seeds"] if len(v.get("seeds", [])) > 1 else None
        ax.bar(
            x + off,
            v["accuracy_by_type"],
            w,
            yerr=yerr,
            capsize=3,
            color=col,
            alpha=0.7,
            label=f"10 clients of the type only, {v['rounds']} FedAvg round(s)",
        )
        ax.axhline(
            v["fl_reference_accuracy"],
            color=col,
            ls="--",
            lw=1.5,
            label=f"all 100 clients (FL model), {v['rounds']} round(s): {v['fl_reference_accuracy']:.3f}",
        )
    ax.set_xticks(x, type_labels())
    ax.set_ylim(0, 1.22)
    ax.set_yticks(np.arange(0, 1.01, 0.2))
    ax.set_xlabel("client type (T0 = all 10 labels ... T9 = 1 label)")
    ax.set_ylabel(f"test accuracy ({doc['test_size']} test images)")
    n = len(doc["seeds"])
    ax.set_title(
        f"Figure 5 - accuracy of a model trained by one type's 10 clients only\n({doc['dataset']}, "
        f"20 local iterations, {n} seed(s)" + (", error bars: ± std across seeds)" if n > 1 else ")"),
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="upper center", ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
