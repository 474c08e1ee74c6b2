"""What ``fedcoin demo`` does once the network is up: follow the requester's default task to the
end and collect what it produced (the chain, S̄ and payments per client, balances)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from .local import LocalNetwork
from .watch import wait_for_agreement, wait_for_task

Doc = dict[str, Any]


@dataclass
class DemoOutcome:
    task: Doc  # the FL server's task document, every round settled
    head: Doc  # the head every miner agrees on
    chain: list[Doc]  # one row per main-chain block
    balances: Doc  # a miner's /balances
    client_types: dict[str, int]  # account -> quality type
    seconds: float
    shapley: list[Doc] = field(default_factory=list)  # one row per (round, client), best type first

    def summary(self, net: LocalNetwork) -> Doc:
        """The ``--json`` summary."""
        doc = self.task
        return {
            "miners": net.miner_urls,
            "server": net.url("server"),
            "requester": net.url("requester"),
            "client_node": net.url("client"),
            "head": self.head,
            "task": {k: doc[k] for k in ("task_id", "budget", "rounds", "prices", "status")},
            "rounds": doc["round_results"],
            "shapley": self.shapley,
            "payments": {r["round"]: r["payments"] for r in doc["round_results"]},
            "balances": self.balances["balances"],
            "supply": self.balances["supply"],
            "client_types": self.client_types,
            "seconds": self.seconds,
        }


def shapley_rows(task: Doc, client_types: dict[str, int]) -> list[Doc]:
    """Each round's S̄ and payment per client, ordered by client type."""
    out = []
    for res in task["round_results"]:
        paid = {p["to"]: p["amount"] for p in res["payments"].get("reward", [])}
        order = sorted(range(len(res["clients"])), key=lambda i: client_types.get(res["clients"][i], 99))
        for i in order:
            acct = res["clients"][i]
            out.append(
                {
                    "round": res["round"],
                    "client": acct,
                    "type": client_types.get(acct),
                    "shapley": res["shapley"][i],
                    "paid": paid.get(acct, 0),
                }
            )
    return out


def follow_default_task(
    net: LocalNetwork, *, started: float, timeout: float, on_progress: Callable[[Doc | None], None] | None = None
) -> DemoOutcome:
    """Wait for the default task and the miners' agreement, then read the results from the network."""
    task = wait_for_task(net.url("server"), "default", timeout=timeout, on_progress=on_progress)
    head = wait_for_agreement(net.miner_urls, task["round_results"][-1]["block_height"])
    with httpx.Client(timeout=10) as http:
        chain = http.get(f"{net.miner_urls[0]}/chain").json()
        balances = http.get(f"{net.miner_urls[0]}/balances").json()
        clients = http.get(f"{net.url('client')}/clients").json()
    types = {c["account"]: c["client_type"] for c in clients}
    return DemoOutcome(task, head, chain, balances, types, time.time() - started, shapley_rows(task, types))
