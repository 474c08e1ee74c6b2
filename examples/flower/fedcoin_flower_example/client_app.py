"""The ClientApp: one FL client of the paper's quality types (type j holds 10 - j labels).

Plain Flower training; the one FedCoin addition is the receipt, signed with the client's key
(``fedcoin-key`` in the SuperNode's node config), added to the reply.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedcoin.chain.identity import Identity
from fedcoin.fl import data, partition
from fedcoin.fl.training import local_train
from fedcoin.flower import RECEIPT_KEY, arrays_to_update, receipt_record, update_to_arrays

app = ClientApp()


@lru_cache(maxsize=1)
def client_data(pid: int, clients: int, dataset: str, data_dir: str, samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This node's partition: client ``pid`` of ``clients``, one quality type each."""
    ds = data.load_dataset(dataset, data_dir or None)
    X, y = ds.train_tensors()
    part = partition.partition_by_type(ds.train_labels, clients, clients, samples, seed=0)
    ix = part.indices[pid]
    return X[ix], y[ix]


@app.train()
def train(msg: Message, context: Context) -> Message:
    node, run = context.node_config, context.run_config
    X, y = client_data(
        int(node["partition-id"]),
        int(node["num-partitions"]),
        str(run["dataset"]),
        str(run["data-dir"]),
        int(run["samples-per-client"]),
    )
    config = msg.content.config_records["config"]
    start = arrays_to_update(msg.content.array_records["arrays"])
    server_round = config["server-round"]
    assert isinstance(server_round, int)
    seed = int(node["partition-id"]) * 1000 + server_round
    update, n = local_train(start, X, y, iterations=int(run["local-iterations"]), lr=float(run["lr"]), seed=seed)
    key = Identity.load(str(node["fedcoin-key"]))  # FedCoin: the client's own key
    reply = RecordDict(
        {
            "arrays": update_to_arrays(update),
            "metrics": MetricRecord({"num-examples": n}),
            RECEIPT_KEY: receipt_record(key, config, update, n),  # FedCoin: the signed receipt
        }
    )
    return Message(content=reply, reply_to=msg)
