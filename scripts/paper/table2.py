"""Table 2: data quality (EMD) of each client type, next to the paper's values.

``fedcoin.fl.partition.emd`` is the L1 distance between a client's label distribution and
the whole data set's (train + test, "the distribution of the whole MNIST dataset");
the paper's Table 2 is on the per-class scale, i.e. that distance divided by the
number of classes C = 10 (see the ``emd`` docstring).  Both are recorded.
"""

from __future__ import annotations

import numpy as np
from common import NUM_TYPES, PAPER_TABLE2, load_data, partition, style, type_labels

from fedcoin.fl import partition as fl_partition


def compute(seeds: list[int], dataset: str, data_dir: str | None) -> dict:
    data = load_data(dataset, data_dir)
    C = 10
    ref = fl_partition.label_distribution(data["all_labels"], C)
    per_type: list[list[float]] = [[] for _ in range(NUM_TYPES)]
    labels_per_type: list[set] = [set() for _ in range(NUM_TYPES)]
    for seed in seeds:
        part, _ = partition(data, seed)
        y = data["y"].numpy()
        for k, ix in enumerate(part.indices):
            j = int(part.types[k])
            per_type[j].append(fl_partition.emd(fl_partition.label_distribution(y[ix], C), ref))
            labels_per_type[j].add(len(part.label_sets[k]))
    l1 = [float(np.mean(v)) for v in per_type]
    return {
        "paper_emd": PAPER_TABLE2,
        "emd_by_type": [v / C for v in l1],
        "emd_l1_by_type": l1,
        "emd_min_by_type": [float(np.min(v)) / C for v in per_type],
        "emd_max_by_type": [float(np.max(v)) / C for v in per_type],
        "labels_per_client_by_type": [sorted(s) for s in labels_per_type],
        "clients_per_type": [len(v) // len(seeds) for v in per_type],
        "benchmark_distribution": ref.tolist(),
        "scale": "emd_by_type = fedcoin.fl.partition.emd (L1) / C, C = 10 classes: the paper's Table 2 scale",
        "max_abs_difference_to_paper": float(np.max(np.abs(np.array(l1) / C - np.array(PAPER_TABLE2)))),
    }


def plot(doc: dict, path) -> None:
    plt = style()
    fig, (ax, axt) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.3, 1]})
    x = np.arange(NUM_TYPES)
    ours = np.array(doc["emd_by_type"])
    ax.bar(x - 0.2, doc["paper_emd"], 0.4, color="C1", alpha=0.8, label="paper (Table 2)")
    ax.bar(
        x + 0.2,
        ours,
        0.4,
        color="C0",
        alpha=0.8,
        yerr=np.clip([ours - np.array(doc["emd_min_by_type"]), np.array(doc["emd_max_by_type"]) - ours], 0, None),
        capsize=3,
        label="ours: mean over clients and seeds (bar: min-max)",
    )
    ax.set_xticks(x, type_labels())
    ax.set_xlabel("client type (type j holds 10 - j labels)")
    ax.set_ylabel("EMD to the whole data set (L1 / 10)")
    ax.set_title(f"Table 2 - data quality per client type ({doc['dataset']})")
    ax.legend(fontsize=8)
    axt.axis("off")
    rows = [
        [
            f"T{j}",
            f"{doc['paper_emd'][j]:.2f}",
            f"{ours[j]:.4f}",
            f"{doc['emd_l1_by_type'][j]:.3f}",
            str(
                doc["labels_per_client_by_type"][j][0]
                if len(doc["labels_per_client_by_type"][j]) == 1
                else doc["labels_per_client_by_type"][j]
            ),
        ]
        for j in range(NUM_TYPES)
    ]
    tab = axt.table(
        cellText=rows, colLabels=["type", "paper", "ours (L1/10)", "ours L1", "labels"], loc="center", cellLoc="center"
    )
    tab.auto_set_font_size(False)
    tab.set_fontsize(9)
    tab.scale(1, 1.35)
    axt.set_title("side by side")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
