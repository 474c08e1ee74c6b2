"""Shared settings and helpers of the paper reproduction (``scripts/paper/run.py``).

The experiment setting is the paper's (Section 6.1) *as the services run it*: the
FL hyperparameters are read from the services' own settings models
(:class:`fedcoin.node.settings.ServerSettings` and ``ClientSettings``), so the
in-process items (Table 2, Figures 4 and 5) and the networked item (Figure 6)
train and value the same model on the same kind of data. Only v(∅) differs from
the services' default: the paper's 0.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fedcoin.chain.genesis import ChainParams
from fedcoin.fl import partition as fl_partition
from fedcoin.fl import training as fl_training
from fedcoin.fl.data import load_dataset
from fedcoin.node.server import load_validation
from fedcoin.node.settings import ClientSettings, ServerSettings, default

# --- the paper's setting (Section 6.1) -------------------------------------------
NUM_CLIENTS = 100  # "100 FL clients"
NUM_TYPES = default(ClientSettings, "num_types")  # "10 groups of 10 clients each"
SAMPLES_PER_CLIENT = default(ClientSettings, "samples_per_client")
LOCAL_ITERATIONS = default(ServerSettings, "local_iterations")  # "trains the model for 20 iterations"
P_NORM = ChainParams().p  # "We set p = 2"
MINERS = 4  # ">= 4 miners"
# --- the FL server's defaults ---------------------------------------------------------
HIDDEN = default(ServerSettings, "hidden")
LR = default(ServerSettings, "lr")
BATCH_SIZE = default(ServerSettings, "batch_size")
VAL_SIZE = default(ServerSettings, "val_size")
VAL_SEED = default(ServerSettings, "val_seed")
EMPTY_VALUE = 0.0  # v(empty) = 0, as in the paper (the services default to "global")

PAPER_TABLE2 = [0.0, 0.02, 0.04, 0.06, 0.08, 0.10, 0.12, 0.14, 0.16, 0.18]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


_DATA_CACHE: dict = {}


def load_data(dataset: str, data_dir: str | None) -> dict:
    """Train/test tensors and the FL server's validation set (with the server's own loader)."""
    key = (dataset, data_dir)
    if key not in _DATA_CACHE:
        ds = load_dataset(dataset, data_dir)
        X, y = ds.train_tensors()
        Xt, yt = ds.test_tensors()
        X_val, y_val = load_validation(dataset, data_dir, VAL_SIZE, VAL_SEED)
        _DATA_CACHE[key] = {
            "name": ds.name,
            "X": X,
            "y": y,
            "X_test": Xt,
            "y_test": yt,
            "X_val": X_val,
            "y_val": y_val,
            "all_labels": np.concatenate([ds.train_labels, ds.test_labels]),
        }
    return _DATA_CACHE[key]


def partition(data: dict, seed: int) -> tuple[fl_partition.ClientPartition, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The paper's partition: K=100 clients, type j holds 10-j labels, 600 samples each."""
    part = fl_partition.partition_by_type(data["y"].numpy(), NUM_CLIENTS, NUM_TYPES, SAMPLES_PER_CLIENT, seed=seed)
    clients = []
    for ix in part.indices:
        t = torch.from_numpy(ix)
        clients.append((data["X"][t].contiguous(), data["y"][t].contiguous()))
    return part, clients


def fedavg(clients, rounds: int, seed: int, data: dict | None = None) -> fl_training.FedAvgHistory:
    """``fedcoin.fl.run_fedavg`` with the FL server's hyperparameters."""
    kw = {}
    if data is not None:
        kw = {"X_val": data["X_val"], "y_val": data["y_val"]}
    return fl_training.run_fedavg(
        clients,
        rounds=rounds,
        hidden=HIDDEN,
        iterations=LOCAL_ITERATIONS,
        batch_size=BATCH_SIZE,
        lr=LR,
        seed=seed,
        **kw,
    )


def by_type(values, types, num_types: int = NUM_TYPES) -> list[list[float]]:
    values = np.asarray(values, dtype=np.float64)
    types = np.asarray(types)
    return [values[types == j].tolist() for j in range(num_types)]


def machine() -> dict:
    load = None
    with contextlib.suppress(OSError):
        load = list(os.getloadavg())
    return {
        "cpu_count": os.cpu_count(),
        "sched_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "loadavg_at_write": load,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "gpu": torch.cuda.is_available(),
    }


def command_line() -> str:
    return shlex.join([Path(sys.executable).name, *sys.argv])


def write_json(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    tmp.replace(path)


def style():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "figure.dpi": 110,
            "savefig.dpi": 110,
            "font.size": 10,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.titlesize": 11,
        }
    )
    return plt


def type_labels() -> list[str]:
    return [f"T{j}" for j in range(NUM_TYPES)]
