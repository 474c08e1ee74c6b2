"""The Flower strategy and the client's side of it (see the package docstring).

A round, as Flower's FedAvg runs it, with FedCoin's part marked:

1. ``configure_train`` keeps the round's starting model and tells the clients which Shapley
   task their update is for (``fedcoin-task`` in the train config);
2. each ClientApp trains as usual and adds :func:`receipt_record` to its reply: a
   ``ConfigRecord`` holding its receipt, signed with its FedCoin key (its account is the
   key's; the key stays on the client node);
3. ``aggregate_train`` aggregates as FedAvg does, then hands the replies with their receipts to
   a :class:`~fedcoin.node.payer.RoundPayer`, which publishes the round's Shapley task (signed
   by the server, paid from the requester's deposit) and waits for the block that settles it;
   the round's MetricRecord gains the block height, S̄ and each client's reward, in the order
   of :attr:`FedCoinFedAvg.results` ``[round].clients``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedcoin.api import RoundResult
from fedcoin.chain.identity import Identity
from fedcoin.fl.model import Update
from fedcoin.node.payer import RoundPayer, SignedUpdate, sign_update

log = logging.getLogger("fedcoin.flower")

#: The reply's ConfigRecord that carries a client's signed receipt.
RECEIPT_KEY = "fedcoin"


def update_to_arrays(update: Mapping[str, torch.Tensor]) -> ArrayRecord:
    return ArrayRecord({k: v.detach().cpu() for k, v in update.items()})


def arrays_to_update(arrays: ArrayRecord) -> Update:
    return {k: v.detach().clone().float() for k, v in arrays.to_torch_state_dict().items()}


def receipt_record(
    identity: Identity, config: Mapping[str, Any], update: Mapping[str, torch.Tensor], n: int
) -> ConfigRecord:
    """What a ClientApp adds to its train reply (under :data:`RECEIPT_KEY`): its update's receipt for the
    Shapley task named in the train ``config``, signed with ``identity``, the client's FedCoin key."""
    task = str(config["fedcoin-task"])
    receipt = sign_update(identity, task, int(config["fedcoin-round"]), update, n)
    return ConfigRecord({"account": identity.account, "receipt": receipt})


class FedCoinFedAvg(FedAvg):
    """Flower's FedAvg, every round's clients paid by Shapley value through ``payer``.

    Takes FedAvg's own keyword arguments. Overrides only ``configure_train`` (to name the
    round's Shapley task) and ``aggregate_train`` (to have it settled); results are in
    :attr:`results` and in each round's train metrics (``fedcoin-*`` keys).
    """

    def __init__(self, payer: RoundPayer, **fedavg_kwargs: Any) -> None:
        super().__init__(**fedavg_kwargs)
        self.payer = payer
        self._start: dict[int, Update] = {}

    @property
    def results(self) -> list[RoundResult]:
        return self.payer.results

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        r = server_round - 1
        self._start[server_round] = arrays_to_update(arrays)
        config["fedcoin-task"] = f"{self.payer.task_id}:r{r}"
        config["fedcoin-round"] = r
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None:
            return arrays, metrics
        signed = []
        for msg in replies:
            if msg.has_error():
                continue
            content = msg.content
            record = content.config_records.get(RECEIPT_KEY)
            if record is None:
                log.warning(
                    "round %d: a reply from node %d has no FedCoin receipt", server_round, msg.metadata.src_node_id
                )
                continue
            update = arrays_to_update(content.array_records[self.arrayrecord_key])
            signed.append(SignedUpdate(update=update, receipt=str(record["receipt"])))
        result = self.payer.settle(server_round - 1, signed, self._start.pop(server_round))
        rewards = {p["to"]: int(p["amount"]) for p in result.payments.get("reward", [])}
        metrics = metrics if metrics is not None else MetricRecord()
        metrics["fedcoin-block-height"] = result.block_height
        metrics["fedcoin-shapley"] = [float(x) for x in result.shapley]
        metrics["fedcoin-rewards"] = [rewards.get(c, 0) for c in result.clients]
        for k in ("accuracy", "loss"):
            if k in result.metrics:
                metrics[f"fedcoin-{k}"] = float(result.metrics[k])
        return arrays, metrics
