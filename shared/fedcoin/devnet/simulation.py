"""An in-process PoSap round: several miners, one Shapley task, one block.

This is the protocol without a network: miners take turns running
iterations, "broadcast" their (S, time) report to every other miner every
``gossip_every`` iterations, and the first whose S is within D of its network
average builds the block; every miner then verifies it (Algorithm 2, with its
own local S̄) and appends it. The networked services run the same library
calls over HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fedcoin.chain.blocks import Block
from fedcoin.chain.clock import now_ms
from fedcoin.chain.encoding import sha256_hex
from fedcoin.chain.genesis import ChainParams, GenesisConfig
from fedcoin.chain.identity import Identity
from fedcoin.chain.reports import make_report
from fedcoin.chain.tasks import ShapleyTask, make_task
from fedcoin.chain.transactions import Transaction, make_transaction
from fedcoin.consensus.mining import build_block
from fedcoin.consensus.payments import split_budget
from fedcoin.consensus.posap import MarginalFn, PoSapMiner
from fedcoin.consensus.proofs import WorkVerifier
from fedcoin.errors import InvalidInput
from fedcoin.ledger.chain import Chain


@dataclass
class RaceResult:
    block: Block
    winner_index: int
    iterations: list[int]
    rounds: int


def _constant(fn: MarginalFn) -> Callable[[ShapleyTask], MarginalFn]:
    return lambda _task: fn


def race(
    chains: Sequence[Chain],
    miners: Sequence[Identity],
    task: ShapleyTask,
    marginals: MarginalFn | Sequence[MarginalFn],
    *,
    gossip_every: int = 1,
    max_iterations: int = 100_000,
    transactions: Sequence[Transaction] = (),
    timestamp: int | None = None,
) -> RaceResult:
    """Run PoSap among ``miners`` (one chain each) until a block is accepted by all."""
    if len(chains) != len(miners) or len(miners) < 2:
        raise InvalidInput("race needs at least two miners, each with its own chain")
    if gossip_every < 1:
        raise InvalidInput("gossip_every must be >= 1")
    fns = list(marginals) if isinstance(marginals, Sequence) else [marginals] * len(miners)
    if len(fns) != len(miners):
        raise InvalidInput("one marginal function per miner")
    head = chains[0].head
    if any(c.head != head for c in chains):
        raise InvalidInput("all miners must start from the same head")
    difficulty = chains[0].next_difficulty()
    for chain, fn in zip(chains, fns, strict=True):  # each miner recomputes sampled leaves with its own engine
        if chain.verifier is None:
            chain.verifier = WorkVerifier(_constant(fn))
    states = [
        PoSapMiner(
            miner=m.account,
            task_id=task.task_id,
            prev_hash=head,
            n_players=task.n_players,
            marginals=fn,
            difficulty=difficulty,
            p=chains[0].params.p,
        )
        for m, fn in zip(miners, fns, strict=False)
    ]
    rounds = 0
    while True:
        rounds += 1
        reports = [s.step(gossip_every) for s in states]
        ts = now_ms() if timestamp is None else timestamp
        signed = [
            make_report(
                m, task_id=task.task_id, prev_hash=head, shapley=list(r.shapley), iterations=r.iterations, timestamp=ts
            )
            for m, r in zip(miners, reports, strict=True)
        ]
        for i, s in enumerate(states):
            for j, r in enumerate(signed):
                if i != j:
                    s.receive(miners[j].account, r)
        for i, s in enumerate(states):
            if s.is_winner():
                block = build_block(
                    chains[i],
                    task=task,
                    winner=miners[i],
                    leaves=s.work_log(),
                    reports=s.signed_reports(),
                    transactions=transactions,
                    timestamp=ts,
                )
                for k, chain in enumerate(chains):
                    local = states[k].network_average() if k != i else None
                    chain.add_block(block, local_avg=None if local is None else list(local))
                return RaceResult(block, i, [x.iterations for x in states], rounds)
        if max(s.iterations for s in states) >= max_iterations or all(s.full for s in states):
            most = min(max_iterations, states[0].max_iterations)
            raise InvalidInput(f"no miner won within {most} iterations at D = {difficulty:g}")


def demo_setup(n_clients: int, n_miners: int, budget: int, difficulty: float, published_at: int = 1_000):
    """Identities, genesis, chains and a task for a self-contained simulated round."""
    requester = Identity.from_seed(b"R" * 32)
    server = Identity.from_seed(b"S" * 32)
    miners = [Identity.from_seed(bytes([0x80 + i]) * 32) for i in range(n_miners)]
    clients = [Identity.from_seed(bytes([0x20 + i]) * 32) for i in range(n_clients)]
    genesis = GenesisConfig(
        params=ChainParams(
            initial_difficulty=difficulty,
            min_difficulty=min(1e-9, difficulty),
            servers=[server.account],
            miners=[m.account for m in miners],
        ),
        allocations={requester.account: budget},
    )
    chains = [Chain(genesis) for _ in miners]
    train, _com, sap = split_budget(budget)
    deposit = make_transaction(requester, server.account, budget, 0, "deposit", "sim-task")
    task = make_task(
        server,
        task_id="sim-task:r0",
        round=0,
        clients=[c.account for c in clients],
        train_price=train,
        sap_price=sap,
        published_at=published_at,
        content_hash=sha256_hex(b"simulated quality game"),
        metric="quality-game",
        deposit=deposit.txid,  # paid from the deposit's escrow, which the block itself funds
        budget=budget,
        rounds=1,
        funding=[deposit],
    )
    return requester, server, miners, clients, chains, task, deposit
