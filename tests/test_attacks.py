"""Attacks on Proof of Shapley and what the verified consensus answers to each.

Every block here is mined on a real cooperative game whose Shapley values are
known (:func:`square_game`): honest leaves are the game's marginal vectors of
the permutations :func:`~fedcoin.consensus.posap.derive_permutation` assigns to
the winner, and every chain checks sampled leaves with a
:class:`~fedcoin.consensus.proofs.WorkVerifier` that recomputes them on the
same game. Each attack asserts the exact reject reason and that the honest
chain's head, balances, nonces, settled tasks, store and supply are unchanged.

1. lazy copy (S̄ copied from another miner's report instead of computed),
2. a fabricated fraction f of the work log, and fraud-proof convergence,
3. Sybil and inflated reports steering S̄,
4. free blocks (non-admitted servers and miners), private forks, task-id squatting,
5. fork choice by verified work, the smaller tie key on ties (also across restarts; it cannot be
   ground by re-signing),
6. a work-based reorg reports the blocks (and so the transactions) it abandons.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Sequence

import numpy as np
import pytest

from fedcoin.chain.blocks import Block
from fedcoin.chain.genesis import ChainParams
from fedcoin.chain.identity import Identity
from fedcoin.chain.reports import ShapleyReport, make_report
from fedcoin.chain.state import ChainState, apply_block
from fedcoin.chain.tasks import ShapleyTask
from fedcoin.chain.transactions import make_transaction
from fedcoin.chain.work import WorkLog, work_mean
from fedcoin.consensus.mining import build_block, seal_block
from fedcoin.consensus.posap import PoSapMiner, derive_permutation, p_distance
from fedcoin.consensus.proofs import BadLeaf, FraudProof, WorkVerifier
from fedcoin.errors import InvalidBlock, InvalidInput
from fedcoin.ledger.chain import Chain, tie_key
from fedcoin.valuation.games import KnownGame
from fedcoin.valuation.sampling import CoalitionGame

# --- the game every task's content maps to -------------------------------------------------


def square_game(weights: Sequence[float]) -> KnownGame:
    """``v(S) = (Σ_{i∈S} w_i)²``. Player i joining S adds ``w_i² + 2·w_i·w(S)``, and a random
    predecessor set has expected weight ``(W − w_i)/2``, so ``φ_i = w_i·W`` (W = Σ w).
    Marginals depend on the order (unlike an additive game), so a copied S̄ is not a leaf."""
    w = tuple(float(x) for x in weights)
    total = sum(w)
    return KnownGame(len(w), lambda s: sum(w[i] for i in s) ** 2, tuple(x * total for x in w))


KNOWN = square_game((0.5, 0.3, 0.2))  # three players: the three clients of conftest's Net
GAME = CoalitionGame(KNOWN.n_players, KNOWN.utility)
D = 0.5  # difficulty: loose enough that honest blocks of a few dozen leaves meet condition 1
N = 24  # leaves of an honest work log


def marginals_for(task: ShapleyTask):
    """The task's content → its marginal function (every task here values the same game)."""
    assert task.n_players == KNOWN.n_players
    return GAME.marginals


def seed_ident(i: int) -> Identity:
    """A deterministic key none of conftest's Net identities has."""
    return Identity.from_seed(hashlib.sha256(f"test-attacks/{i}".encode()).digest())


def verifier(seed: int = 90, samples: int = 16) -> WorkVerifier:
    """A work verifier keyed by a fixed identity, so which leaves it samples is reproducible."""
    return WorkVerifier(marginals_for, samples=samples, identity=seed_ident(seed))


SAMPLER = ChainParams().sampler  # every chain here keeps the default sampler


def honest_leaves(head: str, task: ShapleyTask, miner: str, n: int) -> np.ndarray:
    """Leaf t = the marginals of the permutation derived from (head, task, miner, t) with the chain's sampler."""
    return np.stack(
        [
            GAME.marginals(derive_permutation(head, task.task_id, miner, t, task.n_players, sampler=SAMPLER))
            for t in range(n)
        ]
    )


class View:
    """A ChainView over a branch no node checks: what an attacker (or a competing miner) builds on."""

    def __init__(self, blocks: Sequence[Block], params: ChainParams) -> None:
        self.blocks = list(blocks)
        self.params = params
        self._state = ChainState()
        for b in self.blocks:
            self._state = apply_block(self._state, b, check_signatures=False)

    @classmethod
    def of(cls, chain: Chain, height: int | None = None) -> View:
        """The main chain of ``chain`` up to ``height`` (its head by default)."""
        blocks = chain.main_chain()
        return cls(blocks if height is None else blocks[: height + 1], chain.params)

    @property
    def head(self) -> str:
        return self.blocks[-1].hash

    @property
    def height(self) -> int:
        return self.blocks[-1].header.height

    @property
    def head_state(self) -> ChainState:
        return self._state.copy()

    def tail(self, tip: str | None = None) -> list[Block]:
        return self.blocks[-max(self.params.retarget_window, self.params.median_time_window) :]

    def extend(self, block: Block) -> Block:
        self._state = apply_block(self._state, block)
        self.blocks.append(block)
        return block


def start_of(view, task: ShapleyTask) -> int:
    """When work on ``task`` from ``view``'s head can start: the task and the parent both exist."""
    return max(task.published_at, view.tail()[-1].header.timestamp)


def peer_report(view, task: ShapleyTask, peer: Identity, n: int = N, **over) -> ShapleyReport:
    """``peer``'s honest signed report after ``n`` iterations on ``task`` from ``view``'s head."""
    fields = {
        "task_id": task.task_id,
        "prev_hash": view.head,
        "shapley": work_mean(honest_leaves(view.head, task, peer.account, n)),
        "iterations": n,
        "timestamp": start_of(view, task) + 500,
    }
    fields.update(over)
    return make_report(peer, **fields)


def mine(
    view,
    task: ShapleyTask,
    winner: Identity,
    peer: Identity | None = None,
    *,
    n: int = N,
    leaves: np.ndarray | None = None,
    reports: Sequence[ShapleyReport] | None = None,
    txs=(),
) -> Block:
    """``winner``'s block on ``view``'s head from its work log (honest unless ``leaves`` is given),
    carrying ``peer``'s honest report (or ``reports``)."""
    if leaves is None:
        leaves = honest_leaves(view.head, task, winner.account, n)
    if reports is None:
        reports = [] if peer is None else [peer_report(view, task, peer)]
    return build_block(
        view,
        task=task,
        winner=winner,
        leaves=leaves,
        reports=reports,
        transactions=list(txs),
        timestamp=start_of(view, task) + 1_000,
    )


def short_log_block(view, task: ShapleyTask, copier: Identity, report: ShapleyReport) -> Block:
    """A lazy copier's block: S̄ copied from ``report``, a token log of 3 honest leaves,
    and a header claiming a billion iterations."""
    leaves = honest_leaves(view.head, task, copier.account, 3)
    s = work_mean(leaves)
    return seal_block(
        view,
        task=task,
        winner=copier,
        s_winner=s,
        s_avg=report.shapley,
        iterations=10**9,
        work=WorkLog.from_leaves(leaves, task.n_players),
        reports=[report],
        timestamp=start_of(view, task) + 1_000,
    )


def rejected(net, chain: Chain, reason: str, call, block: Block | None = None) -> InvalidBlock:
    """``call()`` raises InvalidBlock with ``reason`` and leaves ``chain`` exactly as it was."""
    before = net.snapshot(chain)
    work = chain.work
    with pytest.raises(InvalidBlock) as info:
        call()
    assert info.value.reason == reason, str(info.value)
    assert net.snapshot(chain) == before
    assert chain.work == work
    assert chain.head_state.total == chain.supply
    if block is not None:
        assert block.hash not in chain
    return info.value


def accepted(net, chain: Chain, block: Block, status: str = "extended"):
    res = chain.add_block(block, now=net.NOW)
    assert res.status == status and chain.head == block.hash
    assert chain.head_state.total == chain.supply
    return res


def verified_genesis(net, **params):
    params.setdefault("initial_difficulty", D)
    return net.genesis(**params)


# --- 1. lazy copy -----------------------------------------------------------------------


def test_lazy_copy_is_accepted_by_the_paper_rules(net):
    """The paper's hole: S̄ copied from a peer's report, s_winner = s_avg = S̄, a billion claimed
    iterations and no work at all satisfy Algorithm 2 (condition 1 holds at distance 0)."""
    chain = Chain(verified_genesis(net, consensus="paper"), verifier=verifier())
    task = net.task("t1")
    honest, copier = net.miners[0], net.miners[2]
    h = PoSapMiner(
        miner=honest.account,
        task_id=task.task_id,
        prev_hash=chain.head,
        n_players=task.n_players,
        marginals=GAME.marginals,
        difficulty=D,
    )
    h.step(N)
    report = make_report(
        honest,
        task_id=task.task_id,
        prev_hash=chain.head,
        shapley=h.exact_shapley(),
        iterations=N,
        timestamp=task.published_at + 500,
    )
    s_bar = report.shapley
    lazy = seal_block(
        chain,
        task=task,
        winner=copier,
        s_winner=s_bar,
        s_avg=s_bar,
        iterations=10**9,
        timestamp=task.published_at + 600,
    )
    before = chain.balance(copier.account)
    accepted(net, chain, lazy)
    assert chain.work == 1  # under "paper" a block counts 1 whatever it claims
    assert chain.balance(copier.account) > before  # the copier collected the payout (minus client rewards)
    assert chain.is_settled(task)


def test_lazy_copy_is_rejected_by_verified_consensus(net):
    g = verified_genesis(net)
    chain = Chain(g, verifier=verifier())
    task = net.task("t1")
    honest, peer, copier = net.miners[0], net.miners[1], net.miners[2]

    # the honest miner does real work (PoSapMiner derives the same permutations as the chain)
    h = PoSapMiner(
        miner=honest.account,
        task_id=task.task_id,
        prev_hash=chain.head,
        n_players=task.n_players,
        marginals=GAME.marginals,
        difficulty=D,
    )
    h.step(N)
    assert np.array_equal(h.leaves(), honest_leaves(chain.head, task, honest.account, N))
    assert p_distance(h.exact_shapley(), KNOWN.shapley) < 0.2  # a fair estimate of the known Shapley values
    report = peer_report(chain, task, honest)
    assert report.shapley == h.exact_shapley()
    s_bar = report.shapley

    # (b) the paper's lazy block: no work log behind a claimed billion iterations
    lazy = seal_block(
        chain,
        task=task,
        winner=copier,
        s_winner=s_bar,
        s_avg=s_bar,
        iterations=10**9,
        reports=[report],
        timestamp=start_of(chain, task) + 1_000,
    )
    rejected(net, chain, "bad-work-root", lambda: chain.add_block(lazy, now=net.NOW), lazy)
    # ... nor a token log of 3 leaves behind the same claim
    short = short_log_block(chain, task, copier, report)
    rejected(net, chain, "bad-work-root", lambda: chain.add_block(short, now=net.NOW), short)

    # (c) a fabricated log of N copies of S̄: the root, count, mean, efficiency and reports all check,
    # but every leaf is wrong, so the WorkVerifier catches it and hands over a fraud proof
    fake = mine(chain, task, copier, leaves=np.tile(np.array(s_bar), (N, 1)), reports=[report])
    assert fake.header.s_winner == work_mean(np.tile(np.array(s_bar), (N, 1)))
    exc = rejected(net, chain, "bad-leaf", lambda: chain.add_block(fake, now=net.NOW), fake)
    assert isinstance(exc, BadLeaf) and isinstance(exc.proof, FraudProof)
    proof = exc.proof
    assert proof.block_hash == fake.hash and 0 <= proof.index < N
    assert proof.leaf == list(s_bar)
    verifier(seed=91).check_proof(proof, g.params)  # any other node is convinced by one recomputation
    # the rules alone cannot tell: a node without a work verifier accepts the fabricated log
    blind = Chain(g)
    accepted(net, blind, fake)

    # (d) replaying the honest miner's own log under the copier's name: its permutations are the
    # honest miner's, not the copier's, so sampled leaves do not recompute
    replay = mine(chain, task, copier, leaves=h.leaves(), reports=[report])
    exc = rejected(net, chain, "bad-leaf", lambda: chain.add_block(replay, now=net.NOW), replay)
    assert isinstance(exc, BadLeaf)

    # control: the honest miner's own block, with another miner's report, is accepted
    block = mine(chain, task, honest, peer)
    accepted(net, chain, block)
    assert chain.work == N and chain.is_settled(task)


def test_work_verifier_rejects_a_log_shorter_than_its_claim(net):
    """LIBRARY BUG (fails until fixed): ``WorkVerifier.verify`` samples indices in
    ``range(header.iterations)`` and reads ``leaves[t]`` without checking that the log holds
    ``iterations`` leaves (shared/fedcoin/consensus/proofs.py, ``WorkVerifier.verify``, after
    ``leaves = work.leaves()``). Chain runs it after VerifyBlock, which rejects such a block with
    ``bad-work-root`` first, but ``MinerNode._precheck_work`` (shared/fedcoin/node/miner.py) runs
    it *before* VerifyBlock, so a lazy copier's block (3 leaves, 10**9 claimed) raises a bare
    numpy ``IndexError`` out of ``MinerNode.receive_block``/``add_chain`` instead of a clean
    rejection. Expected: ``InvalidBlock(bad-work-root)``, as ``verify`` already raises for a
    block with no work log."""
    g = verified_genesis(net)
    chain = Chain(g)
    task = net.task("t1")
    report = peer_report(chain, task, net.miners[0])
    short = short_log_block(chain, task, net.miners[2], report)
    with pytest.raises(InvalidBlock) as info:
        verifier().verify(short, g.params)
    assert info.value.reason == "bad-work-root"


# --- 2. a fabricated fraction of the work log, fraud proofs -------------------------------


def fabricate(leaves: np.ndarray, count: int) -> tuple[np.ndarray, list[int]]:
    """Replace ``count`` leaves (spread over the log) by the marginals of one fixed permutation:
    plausible values that still sum to v(N) − v(∅), so only recomputation tells them apart. The
    permutation is the one whose marginals lie closest to the mean, so the fabricated leaves are
    never among the most influential ones every verifier checks: only the secret samples find them."""
    mean = leaves.mean(axis=0)
    perms = [list(p) for p in itertools.permutations(range(3))]
    fake = min((np.asarray(GAME.marginals(p)) for p in perms), key=lambda m: float(((m - mean) ** 2).sum()))
    wrong = [t for t in range(len(leaves)) if np.max(np.abs(leaves[t] - fake)) > 1e-2]
    bad = wrong[:: max(1, len(wrong) // count)][:count]
    out = leaves.copy()
    out[bad] = fake
    return out, bad


def test_fabricated_fraction_and_fraud_proof_convergence(net, tmp_path):
    g = verified_genesis(net)
    params = g.params
    m0, m1, m2, m3 = net.miners
    n, f_count, samples = 40, 4, 4

    # block 1: honest, accepted everywhere
    a = Chain.open(tmp_path / "a.db", g, verifier=verifier(seed=200, samples=samples))
    b1 = mine(a, net.task("t1", published_at=net.T0 + 1_000), m0, m1)
    accepted(net, a, b1)
    after_b1 = net.snapshot(a)

    # block 2: m1 fabricates 4 of its 40 leaves (f = 0.1); everything checkable without the game passes
    t2 = net.task("t2", published_at=net.T0 + 5_000)
    leaves, bad = fabricate(honest_leaves(a.head, t2, m1.account, n), f_count)
    assert len(bad) == f_count
    b2 = mine(a, t2, m1, m2, leaves=leaves)

    # every verifier checks the samples // 2 leaves farthest from S (none fabricated here); whether
    # it catches them depends on the other leaves its secret picks: 1 − C(n−t−4, k−t)/C(n−t, k−t)
    picks = {s: set(verifier(s, samples).indices(b2)) for s in range(300, 600)}
    targeted = set.intersection(*picks.values())
    assert len(targeted) >= samples // 2 and not targeted & set(bad)
    catch = [s for s, idx in picks.items() if idx & set(bad)]
    miss = [s for s in picks if s not in catch]
    t = samples // 2
    expected = 1 - math.comb(n - t - f_count, samples - t) / math.comb(n - t, samples - t)
    assert abs(len(catch) / len(picks) - expected) < 0.1
    assert all(len(idx) == samples for idx in picks.values())
    with pytest.raises(BadLeaf) as info:
        verifier(catch[0], samples).verify(b2, params)
    assert info.value.reason == "bad-leaf" and info.value.proof.index in bad
    verifier(miss[0], samples).verify(b2, params)  # an unlucky sample passes it

    # chain A samples leaves that miss; it accepts b2 and a block on top of it
    a.close()
    lucky = miss[0]
    a = Chain.open(tmp_path / "a.db", g, verifier=verifier(lucky, samples))
    assert a.head == b1.hash
    accepted(net, a, b2)
    b3 = mine(a, net.task("t3", published_at=net.T0 + 9_000), m2, m3)
    accepted(net, a, b3)
    assert a.height == 3 and a.balances() != after_b1[2]

    # chain B samples a bad leaf and rejects b2 with a fraud proof
    b = Chain(g, verifier=verifier(catch[0], samples))
    accepted(net, b, b1)
    exc = rejected(net, b, "bad-leaf", lambda: b.add_block(b2, now=net.NOW), b2)
    proof = exc.proof
    assert proof.block_hash == b2.hash and proof.index in bad

    # forged proofs change nothing: an honest leaf (right path) recomputes fine ...
    good = next(t for t in range(n) if t not in bad)
    work = b2.body.work
    honest_proof = FraudProof(header=b2.header, task=t2, index=good, leaf=leaves[good].tolist(), path=work.path(good))
    # ... a fabricated leaf with another leaf's path is not in the log, nor is an altered leaf,
    # nor a proof whose header was tampered with (no longer signed by its winner)
    forged = [
        honest_proof,
        proof.model_copy(update={"path": work.path(good)}),
        proof.model_copy(update={"index": good}),
        proof.model_copy(update={"leaf": [x + 0.25 for x in proof.leaf]}),
        proof.model_copy(update={"header": b2.header.model_copy(update={"iterations": n + 1})}),
        proof.model_copy(update={"task": net.task("t9")}),
    ]
    before = net.snapshot(a)
    for bogus in forged:
        with pytest.raises(InvalidInput):
            a.apply_fraud_proof(bogus)
        assert net.snapshot(a) == before and not a.is_condemned(b2.hash)

    # the real proof convinces A: b2 and b3 leave, the head and balances go back to b1's
    res = a.apply_fraud_proof(proof)
    assert res.status == "reorg" and res.head == b1.hash and res.reorg_depth == 2
    assert [blk.hash for blk in res.abandoned] == [b2.hash, b3.hash]
    assert net.snapshot(a) == after_b1
    assert a.head_state.total == a.supply and a.work == N
    assert a.is_condemned(b2.hash)
    rejected(net, a, "fraudulent-block", lambda: a.add_block(b2, now=net.NOW), b2)
    rejected(net, a, "fraudulent-block", lambda: a.add_block(b3, now=net.NOW), b3)
    rejected(net, a, "fraudulent-block", lambda: a.add_chain([b2, b3], now=net.NOW), b2)
    assert a.apply_fraud_proof(proof).status == "known"

    # re-signing the same fabricated log with another timestamp gives a new hash (and fresh samples
    # at every verifier), but the proof condemned the log itself: the copy is refused unsampled
    again = build_block(
        a,
        task=t2,
        winner=m1,
        leaves=leaves,
        reports=b2.body.reports,
        timestamp=b2.header.timestamp + 1,
    )
    assert again.hash != b2.hash and again.header.work_root == b2.header.work_root
    rejected(net, a, "fraudulent-block", lambda: a.add_block(again, now=net.NOW), again)
    assert a.apply_fraud_proof(proof.model_copy(update={"header": again.header})).status == "known"

    # B records the proof too (it never held b2): both now refuse it for the same reason
    assert b.apply_fraud_proof(proof).status == "known" and b.is_condemned(b2.hash)
    rejected(net, b, "fraudulent-block", lambda: b.add_block(b2, now=net.NOW), b2)

    # the condemnation is durable: reopened with the same lucky sampler, A still refuses b2
    a.close()
    a = Chain.open(tmp_path / "a.db", g, verifier=verifier(lucky, samples))
    assert net.snapshot(a) == after_b1 and a.is_condemned(b2.hash)
    rejected(net, a, "fraudulent-block", lambda: a.add_block(b2, now=net.NOW), b2)
    rejected(net, a, "fraudulent-block", lambda: a.add_block(b3, now=net.NOW), b3)

    # task t2 is unsettled again; an honest block for it converges both nodes on one head
    assert not a.is_settled(t2)
    honest2 = mine(a, t2, m1, m2, n=n)
    accepted(net, a, honest2)
    accepted(net, b, honest2)
    assert a.head == b.head and a.balances() == b.balances()
    a.close()


# --- 3. Sybil reports ---------------------------------------------------------------------


def test_sybil_and_inflated_reports(net):
    chain = Chain(verified_genesis(net), verifier=verifier())
    task = net.task("t1")
    winner, peer, other = net.miners[0], net.miners[1], net.miners[2]
    sybil = seed_ident(70)
    leaves = honest_leaves(chain.head, task, winner.account, N)
    good = peer_report(chain, task, peer)

    def block_with(reports):
        return mine(chain, task, winner, leaves=leaves, reports=reports)

    impostor = make_report(
        sybil, task_id=task.task_id, prev_hash=chain.head, shapley=good.shapley, iterations=N, timestamp=good.timestamp
    ).model_copy(update={"miner": other.account})  # claims to be an admitted miner, signed by the Sybil
    cases = {
        "non-admitted key": [peer_report(chain, task, sybil)],
        "admitted name, Sybil signature": [impostor],
        "the winner's own report": [peer_report(chain, task, winner)],
        "one miner twice": [good, peer_report(chain, task, peer, n=N - 1)],
        "10**12 iterations": [peer_report(chain, task, peer, iterations=10**12)],
        "another parent": [peer_report(chain, task, peer, prev_hash="ab" * 32)],
        "dated after the block": [peer_report(chain, task, peer, timestamp=start_of(chain, task) + 5_000)],
    }
    for name, reports in cases.items():
        blk = block_with(reports)
        exc = rejected(net, chain, "bad-report", lambda blk=blk: chain.add_block(blk, now=net.NOW), blk)
        assert exc.reason == "bad-report", name

    # S̄ steered to a target of the winner's choosing (within D of its S, so condition 1 would hold)
    s_winner = work_mean(leaves)
    target = [s_winner[0] + 0.05, s_winner[1] - 0.05, s_winner[2]]
    assert p_distance(s_winner, target) <= D
    steered = seal_block(
        chain,
        task=task,
        winner=winner,
        s_winner=s_winner,
        s_avg=target,
        iterations=N,
        work=WorkLog.from_leaves(leaves, task.n_players),
        reports=[good],
        timestamp=start_of(chain, task) + 1_000,
    )
    rejected(net, chain, "bad-average", lambda: chain.add_block(steered, now=net.NOW), steered)

    # no report at all: S̄ would be the winner's own S
    alone = block_with([])
    rejected(net, chain, "too-few-reports", lambda: chain.add_block(alone, now=net.NOW), alone)

    # control: the same work log with the peer's honest report is accepted
    accepted(net, chain, block_with([good]))


# --- 4. free blocks ------------------------------------------------------------------------


def test_non_admitted_server_and_miner(net):
    chain = Chain(verified_genesis(net), verifier=verifier())
    m0, m1 = net.miners[0], net.miners[1]
    fresh_server, fresh_miner = seed_ident(71), seed_ident(72)

    own_task = net.task("t1", server=fresh_server, train_price=0, sap_price=0)
    blk = mine(chain, own_task, m0, m1)
    rejected(net, chain, "unknown-server", lambda: chain.add_block(blk, now=net.NOW), blk)

    task = net.task("t1")  # the admitted server's task, public once published
    blk = mine(chain, task, fresh_miner, m1)
    rejected(net, chain, "unknown-miner", lambda: chain.add_block(blk, now=net.NOW), blk)

    accepted(net, chain, mine(chain, task, m0, m1))


def test_private_fork_of_free_blocks_is_rejected_whole(net):
    g = verified_genesis(net)
    chain = Chain(g, verifier=verifier())
    m0, m1 = net.miners[0], net.miners[1]
    fresh_server, fresh_miner, sybil = seed_ident(73), seed_ident(74), seed_ident(75)

    # the honest chain: one block that paid the server's clients
    t1 = net.task("t1", published_at=net.T0 + 1_000)
    accepted(net, chain, mine(chain, t1, m0, m1, n=20))
    assert all(chain.balance(c.account) > 0 for c in net.clients)
    before, work = net.snapshot(chain), chain.work

    def fork(tasks, first=None):
        """Blocks from genesis by the attacker's own key, 30 leaves each (more work than the head)."""
        view = View.of(chain, 0)
        blocks = [] if first is None else [view.extend(first)]
        for t in tasks:
            blocks.append(view.extend(mine(view, t, fresh_miner, sybil, n=30)))
        assert sum(b.header.iterations for b in blocks) > work
        return blocks

    # self-made tasks signed by the attacker's server key
    own = [net.task(f"own{k}", server=fresh_server, train_price=0, sap_price=0) for k in range(3)]
    blocks = fork(own)
    rejected(net, chain, "unknown-server", lambda: chain.add_chain(blocks, now=net.NOW))
    assert not any(b.hash in chain for b in blocks)

    # the admitted server's real tasks (public once published) mined under a fresh key
    real = [t1, *(net.task(f"t{k}", published_at=net.T0 + 1_000 * k) for k in (2, 3))]
    blocks = fork(real)
    rejected(net, chain, "unknown-miner", lambda: chain.add_chain(blocks, now=net.NOW))

    # a valid first block (admitted miner, more work than the head on its own) does not carry the rest
    first = mine(View.of(chain, 0), net.task("t2", published_at=net.T0 + 2_000), m1, m0, n=30)
    blocks = fork(real[2:], first=first)
    rejected(net, chain, "unknown-miner", lambda: chain.add_chain(blocks, now=net.NOW))
    assert not any(b.hash in chain for b in blocks)
    chain.verify(first, now=net.NOW)  # alone it would have been accepted
    assert net.snapshot(chain) == before and chain.work == work


def test_task_id_reused_by_another_server_does_not_block_settlement(net):
    second = net.requester  # admitted as a second FL server (funded at genesis)
    chain = Chain(verified_genesis(net, servers=[net.server.account, second.account]), verifier=verifier())
    m0, m1, m2 = net.miners[:3]
    squat = net.task("t1", server=second, published_at=net.T0 + 1_000)
    mine_task = net.task("t1", published_at=net.T0 + 2_000)
    assert squat.task_id == mine_task.task_id and squat.settlement_key != mine_task.settlement_key

    accepted(net, chain, mine(chain, squat, m0, m1))
    assert chain.is_settled(squat) and not chain.is_settled(mine_task)
    accepted(net, chain, mine(chain, mine_task, m1, m2))
    assert chain.is_settled(squat) and chain.is_settled(mine_task)

    again = mine(chain, mine_task, m2, m0)
    rejected(net, chain, "task-already-settled", lambda: chain.add_block(again, now=net.NOW), again)


# --- 5./6. fork choice by work, reorgs ---------------------------------------------------------


def test_more_work_beats_more_blocks_and_reorg_reports_abandoned(net, tmp_path):
    g = verified_genesis(net)
    path = tmp_path / "chain.db"
    chain = Chain.open(path, g, verifier=verifier())
    m0, m1, m2, m3 = net.miners
    u0, u1 = net.users[0], net.users[1]
    t1 = net.task("t1", published_at=net.T0 + 1_000)
    t2 = net.task("t2", published_at=net.T0 + 2_000)
    t3 = net.task("t3", published_at=net.T0 + 3_000)

    # a long branch with little work: two blocks of 8 leaves (one carries a user transfer)
    transfer = make_transaction(u0, u1.account, 100, 0)
    long_view = View.of(chain)
    l1 = long_view.extend(mine(long_view, t1, m0, m1, n=8, txs=[transfer]))
    l2 = long_view.extend(mine(long_view, t2, m2, m3, n=8))
    accepted(net, chain, l1)
    accepted(net, chain, l2)
    assert chain.height == 2 and chain.work == 16 and chain.balance(u1.account) == 1_100

    # a shorter branch with more verified work: one block of 24 leaves settling t1
    s1 = mine(View.of(chain, 0), t1, m1, m2, n=24)
    res = accepted(net, chain, s1, status="reorg")
    assert chain.height == 1 and chain.work == 24
    assert res.reorg_depth == 2 and [b.hash for b in res.abandoned] == [l1.hash, l2.hash]
    assert transfer in res.abandoned[0].body.transactions  # what a node returns to its mempool
    assert chain.balance(u1.account) == 1_000 and chain.nonce(u0.account) == 0  # the transfer is undone
    assert not chain.is_settled(t2) and chain.head_state.total == chain.supply

    # the long branch grows by one more block but still has less work (22 < 24): stale
    l3 = long_view.extend(mine(long_view, t3, m3, m0, n=6))
    rejected(net, chain, "stale-block", lambda: chain.add_block(l3, now=net.NOW), l3)

    # after a restart the head is still the branch of most work, and more work still wins
    chain.close()
    chain = Chain.open(path, g, verifier=verifier())
    assert chain.head == s1.hash and chain.work == 24
    rejected(net, chain, "stale-block", lambda: chain.add_block(l3, now=net.NOW), l3)
    long_view.blocks.pop()
    long_view = View(long_view.blocks, g.params)
    l3 = long_view.extend(mine(long_view, t3, m3, m0, n=10))  # 26 > 24
    res = accepted(net, chain, l3, status="reorg")
    assert [b.hash for b in res.abandoned] == [s1.hash] and chain.height == 3 and chain.work == 26
    assert chain.balance(u1.account) == 1_100
    chain.close()


def stale_everywhere(net, chain: Chain, blocks: Sequence[Block]) -> None:
    """Each of ``blocks`` (equal work to the head, a larger tie key) is refused with stale-block, alone
    or as a branch."""
    for blk in blocks:
        assert tie_key(blk.header) > chain.tie
        rejected(net, chain, "stale-block", lambda blk=blk: chain.add_block(blk, now=net.NOW), blk)
        rejected(net, chain, "stale-block", lambda blk=blk: chain.add_chain([blk], now=net.NOW), blk)


def resigned(view, block: Block, task: ShapleyTask, winner: Identity, leaves: np.ndarray, dt: int) -> Block:
    """``block``'s work log and reports sealed again by its winner with the timestamp moved by ``dt``."""
    return build_block(
        view,
        task=task,
        winner=winner,
        leaves=leaves,
        reports=block.body.reports,
        timestamp=block.header.timestamp + dt,
    )


def test_equal_work_smaller_tie_key_wins_across_restarts(net, tmp_path):
    g = verified_genesis(net)
    task = net.task("t1")
    root = View.of(Chain(g), 0)
    x = mine(root, task, net.miners[0], net.miners[1], n=20)
    y = mine(root, task, net.miners[1], net.miners[2], n=20)
    z = mine(root, task, net.miners[2], net.miners[3], n=20)  # a third contender, also work 20
    assert len({x.hash, y.hash, z.hash}) == 3
    lo, mid, hi = sorted([x, y, z], key=lambda b: tie_key(b.header))
    assert tie_key(lo.header) < tie_key(mid.header) < tie_key(hi.header)

    # whatever order they arrive in, every node ends on the tip of smallest tie key: a contender
    # below the head's key replaces it (a reorg at equal work), one above is stale; restarts keep it
    for n_order, order in enumerate(itertools.permutations([x, y, z])):
        path = tmp_path / f"order{n_order}.db"
        chain = Chain.open(path, g, verifier=verifier())
        seen: list[Block] = []
        for blk in order:
            if not seen:
                accepted(net, chain, blk)
            elif tie_key(blk.header) < chain.tie:
                res = accepted(net, chain, blk, status="reorg")
                assert res.reorg_depth == 1 and res.abandoned[0].hash in {b.hash for b in seen}
            else:
                stale_everywhere(net, chain, [blk])
                continue
            seen.append(blk)
        assert chain.head == lo.hash and chain.work == 20 and chain.tie == tie_key(lo.header)
        chain.close()
        chain = Chain.open(path, g, verifier=verifier())
        assert chain.head == lo.hash and chain.work == 20 and chain.tie == tie_key(lo.header)
        for blk in seen:  # once accepted, stored: known, and the head stays
            assert chain.add_block(blk, now=net.NOW).status == "known" and chain.head == lo.hash
        stale_everywhere(net, chain, [b for b in (mid, hi) if b not in seen])
        chain.close()

    # the tie key cannot be ground: re-signing hi's work log with other timestamps gives new hashes
    # (some of them below lo's) but the same tie key, and each copy is still stale
    leaves = honest_leaves(root.head, task, hi.header.winner, 20)
    copies: list[Block] = []
    for dt in range(1, 65):  # re-sign until some copies hash below lo (about one in four does)
        copies.append(resigned(root, hi, task, net.winner_of(hi), leaves, dt))
        if len(copies) >= 8 and any(c.hash < lo.hash for c in copies):
            break
    assert len({hi.hash, *(c.hash for c in copies)}) == 1 + len(copies)
    assert all(tie_key(c.header) == tie_key(hi.header) and c.header.work_root == hi.header.work_root for c in copies)
    assert any(c.hash < lo.hash for c in copies)  # a hash order would have let one of them win
    chain = Chain(g, verifier=verifier())
    accepted(net, chain, lo)
    stale_everywhere(net, chain, copies)
    # and lo's own re-signed copy keeps lo's key: an equal key does not beat the head either
    lo_copy = resigned(root, lo, task, net.winner_of(lo), honest_leaves(root.head, task, lo.header.winner, 20), 1)
    assert lo_copy.hash != lo.hash and tie_key(lo_copy.header) == chain.tie
    rejected(net, chain, "stale-block", lambda: chain.add_block(lo_copy, now=net.NOW), lo_copy)


def test_one_wild_leaf_is_checked_by_every_verifier(net):
    """Honest work plus one leaf pushed far (its sum kept, so efficiency holds) to steer S: the leaf
    farthest from S is among the leaves every verifier recomputes, whatever its secret."""
    g = verified_genesis(net)
    chain = Chain(g)
    task = net.task("t1")
    leaves = honest_leaves(chain.head, task, net.miners[1].account, N)
    leaves[N // 2] += np.array([2.0, -2.0, 0.0])
    wild = mine(chain, task, net.miners[1], net.miners[2], leaves=leaves)
    for seed in range(20):
        with pytest.raises(BadLeaf) as info:
            verifier(seed, samples=2).verify(wild, g.params)
        assert info.value.proof.index == N // 2
