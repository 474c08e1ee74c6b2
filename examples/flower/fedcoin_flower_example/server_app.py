"""The ServerApp: Flower's FedAvg, each round's clients paid by Shapley value on FedCoin.

The run config names the FedCoin side: the FL server's key (admitted in the chain's genesis),
the requester's key (holding the budget V), the miners' URLs and V. Results go to the log and,
when ``fedcoin-out`` is set, to that JSON file.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedcoin.chain.identity import Identity
from fedcoin.fl.model import init_weights
from fedcoin.flower import FedCoinFedAvg, update_to_arrays
from fedcoin.node.payer import RoundPayer
from fedcoin.node.server import load_validation

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run = context.run_config
    rounds, clients = int(run["num-server-rounds"]), int(run["min-clients"])
    X_val, y_val = load_validation(str(run["dataset"]), str(run["data-dir"]) or None, 1000, 0)
    payer = RoundPayer(  # FedCoin: who pays, how much, and which miners settle the rounds
        server=Identity.load(str(run["fedcoin-server-key"])),
        requester=Identity.load(str(run["fedcoin-requester-key"])),
        miners=str(run["fedcoin-miners"]).split(","),
        budget=int(run["fedcoin-budget"]),
        rounds=rounds,
        X_val=X_val,
        y_val=y_val,
    )
    strategy = FedCoinFedAvg(  # FedCoin: instead of FedAvg(...), with FedAvg's own arguments
        payer, fraction_evaluate=0.0, min_train_nodes=clients, min_available_nodes=clients
    )
    t0 = time.time()
    result = strategy.start(grid=grid, initial_arrays=update_to_arrays(init_weights()), num_rounds=rounds)
    seconds = time.time() - t0
    for res in strategy.results:
        rewards = {p["to"]: p["amount"] for p in res.payments.get("reward", [])}
        print(f"round {res.round}: block {res.block_height}, accuracy {res.metrics['accuracy']:.3f}")
        for account, s in zip(res.clients, res.shapley, strict=True):
            print(f"  {account}  Shapley {s:+.4f}  paid {rewards.get(account, 0)}")
    out = str(run.get("fedcoin-out", ""))
    if out:
        doc = {
            "task_id": payer.task_id,
            "seconds": seconds,
            "rounds": [r.model_dump(mode="json") for r in strategy.results],
            "train_metrics": {str(k): dict(v) for k, v in result.train_metrics_clientapp.items()},
        }
        Path(out).write_text(json.dumps(doc, indent=2))
    payer.close()
