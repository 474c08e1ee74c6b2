"""Invalid-block tests in the style of Bitcoin Core's functional tests.

Every test crafts one defect (re-signing where needed so that exactly the rule
under test fires), asserts the exact ``InvalidBlock.reason`` and that the
chain's head, height, balances, nonces, settled tasks and store are unchanged;
most then show the untampered block is accepted, so the rejection was caused
by the defect and nothing else.
"""

from __future__ import annotations

import base64
import zlib

import numpy as np
import pytest

from fedcoin.chain.blocks import BlockBody
from fedcoin.chain.reports import ShapleyReport
from fedcoin.chain.tasks import ShapleyTask
from fedcoin.chain.transactions import MINT_ACCOUNT, Transaction, make_transaction
from fedcoin.chain.work import WorkLog
from fedcoin.consensus.mining import build_block, seal_block
from fedcoin.consensus.posap import PoSapMiner, derive_permutation
from fedcoin.consensus.proofs import FraudProof, WorkVerifier
from fedcoin.consensus.rules import verify_block
from fedcoin.errors import InvalidBlock, InvalidInput, OrphanBlock, StaleBlock
from fedcoin.ledger.chain import Chain, tie_key
from fedcoin.valuation.sampling import CoalitionGame


def resign_tx(tx: Transaction, signer, **updates) -> Transaction:
    t = tx.model_copy(update=updates)
    return t.model_copy(update={"signature": signer.sign(t.signing_payload())})


def flip_hex(s: str, pos: int = 5) -> str:
    return s[:pos] + format(int(s[pos], 16) ^ 1, "x") + s[pos + 1 :]


def resign_report(r: ShapleyReport, signer, **updates) -> ShapleyReport:
    r = r.model_copy(update=updates)
    return r.model_copy(update={"signature": signer.sign(r.signing_payload())})


@pytest.fixture
def env(net, tmp_path):
    """A stored chain at height 3 and a valid candidate block at height 4."""
    chain = Chain.open(tmp_path / "chain.db", net.genesis())
    u0, u1, u2 = net.users
    first = make_transaction(u0, u1.account, 100, 0)
    for k in range(3):
        txs = [first] if k == 0 else []
        chain.add_block(net.block(chain, winner=k % 4, txs=txs), now=net.NOW)
    assert chain.height == 3
    pending = [
        make_transaction(u0, u2.account, 50, 1),
        make_transaction(net.requester, net.server.account, 5_000, 0, "deposit", "t4"),
    ]
    good = net.block(chain, winner=1, txs=pending)
    assert len(good.body.transactions) == 2 + 1 + 3
    yield net, chain, good, first
    chain.close()


def reject(net, chain: Chain, block, reason: str, **kw) -> InvalidBlock:
    kw.setdefault("now", net.NOW)
    before = net.snapshot(chain)
    supply = chain.head_state.total
    with pytest.raises(InvalidBlock) as info:
        chain.add_block(block, **kw)
    assert info.value.reason == reason, str(info.value)
    assert net.snapshot(chain) == before
    assert chain.head_state.total == supply == chain.supply
    assert block.hash not in chain
    return info.value


def accept(net, chain: Chain, block, **kw) -> None:
    kw.setdefault("now", net.NOW)
    res = chain.add_block(block, **kw)
    assert res.status == "extended" and chain.head == block.hash
    assert chain.head_state.total == chain.supply


def test_candidate_is_valid(env):
    net, chain, good, _ = env
    w = net.winner_of(good)
    before = chain.balance(w.account)
    accept(net, chain, good)
    assert chain.height == 4
    assert chain.balance(w.account) == before + 900 - 700
    assert chain.is_settled(good.body.task)
    assert chain.store.head == good.hash


# --- structure --------------------------------------------------------------------


@pytest.mark.parametrize("height", [3, 5, 0, 100])
def test_bad_height(env, height):
    net, chain, good, _ = env
    bad = net.reheader(good, net.winner_of(good), height=height)
    reject(net, chain, bad, "bad-height")
    accept(net, chain, good)


def test_orphan_block_unknown_parent(env):
    net, chain, good, _ = env
    bad = net.reheader(good, net.winner_of(good), prev_hash="ee" * 32)
    err = reject(net, chain, bad, "orphan-block")
    assert isinstance(err, OrphanBlock)
    with pytest.raises(OrphanBlock):
        chain.add_chain([bad], now=net.NOW)
    accept(net, chain, good)


def test_bad_parent_in_add_chain(env):
    net, chain, good, _ = env
    sibling = net.block(chain, winner=2)  # also a child of the head, not of `good`
    before = net.snapshot(chain)
    with pytest.raises(InvalidBlock) as info:
        chain.add_chain([good, sibling], now=net.NOW)
    assert info.value.reason == "bad-parent"
    assert net.snapshot(chain) == before
    assert good.hash not in chain


def test_bad_parent_in_verify_block(env):
    net, chain, good, _ = env
    ancestors = chain.main_chain()[:-1]  # ends with the grandparent
    with pytest.raises(InvalidBlock) as info:
        verify_block(good, ancestors, chain.head_state, chain.params, now=net.NOW)
    assert info.value.reason == "bad-parent"


def test_missing_task(env):
    net, chain, good, _ = env
    bad = good.model_copy(update={"body": BlockBody(task=None, transactions=good.body.transactions)})
    reject(net, chain, bad, "missing-task")
    accept(net, chain, good)


def test_task_hash_mismatch(env):
    net, chain, good, _ = env
    other = net.task("t4", published_at=good.body.task.published_at, train_price=701)
    assert other.task_id == good.header.task_id and other.task_hash != good.header.task_hash
    reject(net, chain, net.rebody(good, net.winner_of(good), task=other), "task-mismatch")
    accept(net, chain, good)


def test_task_id_mismatch(env):
    net, chain, good, _ = env
    reject(net, chain, net.reheader(good, net.winner_of(good), task_id="t999"), "task-mismatch")


def test_task_signed_by_someone_else(env):
    net, chain, good, _ = env
    task = good.body.task
    forged = task.model_copy(update={"signature": net.miners[1].sign(task.signing_payload())})
    assert forged.task_hash == task.task_hash  # header still matches; only the signature is wrong
    reject(net, chain, net.rebody(good, None, task=forged, fix_merkle=False), "bad-task-signature")
    unsigned = task.model_copy(update={"signature": ""})
    reject(net, chain, net.rebody(good, None, task=unsigned, fix_merkle=False), "bad-task-signature")
    accept(net, chain, good)


@pytest.mark.parametrize(
    "field,value", [("s_avg", [0.5, 0.5]), ("s_winner", [0.5, 0.3, 0.2, 0.0]), ("s_avg", []), ("s_winner", [1.0])]
)
def test_shapley_vector_length_mismatch(env, field, value):
    net, chain, good, _ = env
    reject(net, chain, net.reheader(good, net.winner_of(good), **{field: value}), "bad-shapley-length")
    accept(net, chain, good)


def test_task_id_with_trailing_newline_rejected():
    # TASK_ID_RE documents "1-128 characters of A-Z a-z 0-9 . _ : -"; "\n" is none of them.
    with pytest.raises(InvalidInput):
        ShapleyTask.from_dict(
            {
                "task_id": "t1\n",
                "server": "aa" * 32,
                "round": 0,
                "clients": ["bb" * 32],
                "train_price": 1,
                "sap_price": 1,
                "published_at": 0,
                "content_hash": "cc" * 32,
            }
        )


@pytest.mark.parametrize("iterations", [0])
def test_bad_iterations(env, iterations):
    net, chain, good, _ = env
    reject(net, chain, net.reheader(good, net.winner_of(good), iterations=iterations), "bad-iterations")
    accept(net, chain, good)


def test_bad_merkle_root_header(env):
    net, chain, good, _ = env
    reject(net, chain, net.reheader(good, net.winner_of(good), merkle_root="11" * 32), "bad-merkle-root")
    accept(net, chain, good)


def test_bad_merkle_root_body_changed(env):
    net, chain, good, _ = env
    txs = good.body.transactions
    reject(net, chain, net.rebody(good, None, transactions=txs[1:], fix_merkle=False), "bad-merkle-root")
    reject(
        net, chain, net.rebody(good, None, transactions=[txs[1], txs[0], *txs[2:]], fix_merkle=False), "bad-merkle-root"
    )
    accept(net, chain, good)


# --- signature and difficulty --------------------------------------------------------


def test_signed_by_another_key(env):
    net, chain, good, _ = env
    other = net.miners[3]
    assert other.account != good.header.winner
    reject(net, chain, net.reheader(good, other), "bad-signature")
    accept(net, chain, good)


@pytest.mark.parametrize("pos", [0, 63, 64, 127])
def test_signature_bytes_flipped(env, pos):
    net, chain, good, _ = env
    bad = net.reheader(good, None, signature=flip_hex(good.header.signature, pos))
    assert bad.hash == good.hash  # the hash does not cover the signature
    reject(net, chain, bad, "bad-signature")
    reject(net, chain, net.reheader(good, None, signature=""), "bad-signature")
    accept(net, chain, good)


def test_winner_changed_without_its_key(env):
    net, chain, good, _ = env
    reject(net, chain, net.reheader(good, None, winner=net.miners[3].account), "bad-signature")


@pytest.mark.parametrize("difficulty", [0.02, 0.01 * (1 + 1e-15), 1.0, 1e-9])
def test_bad_difficulty(env, difficulty):
    net, chain, good, _ = env
    assert good.header.difficulty == chain.next_difficulty() == 0.01
    reject(net, chain, net.reheader(good, net.winner_of(good), difficulty=difficulty), "bad-difficulty")
    accept(net, chain, good)


# --- timestamps -------------------------------------------------------------------


def test_timestamp_before_task_publication(env):
    net, chain, good, _ = env
    published = good.body.task.published_at
    reject(net, chain, net.reheader(good, net.winner_of(good), timestamp=published - 1), "time-before-task")
    accept(net, chain, net.reheader(good, net.winner_of(good), timestamp=published))


def median_time_past(chain: Chain) -> int:
    ts = sorted(b.header.timestamp for b in chain.main_chain())
    return ts[(len(ts) - 1) // 2]  # median_low (the chain is shorter than median_time_window)


def test_timestamp_not_after_median_time_past(env):
    net, chain, good, _ = env
    mtp = median_time_past(chain)
    assert mtp < chain.head_block.header.timestamp
    old_task = net.task("t4", published_at=net.T0)
    w = net.winner_of(good)
    base = net.rebody(good, w, task=old_task, fix_merkle=False)
    base = net.reheader(base, w, task_hash=old_task.task_hash)
    reject(net, chain, net.reheader(base, w, timestamp=mtp), "time-too-old")
    reject(net, chain, net.reheader(base, w, timestamp=mtp - 1), "time-too-old")
    # after the median but before its parent: the median is satisfied, but no report on this parent
    # can be dated before the block (reports start when the parent exists)
    reject(net, chain, net.reheader(base, w, timestamp=mtp + 1), "bad-report")


def test_median_time_past_boundary_without_reports(net):
    """With ``min_reports = 0`` nothing but the median bounds a timestamp from below: mtp + 1 is valid."""
    chain = Chain(net.genesis(min_reports=0))
    for k in range(3):
        chain.add_block(net.block(chain, winner=k), now=net.NOW)
    mtp = median_time_past(chain)
    old_task = net.task("t4", published_at=net.T0)
    w = net.miners[1]
    leaves = np.tile([0.5, 0.3, 0.2], (10, 1))
    base = build_block(chain, task=old_task, winner=w, leaves=leaves, timestamp=net.T0)  # raised to mtp + 1
    assert base.header.timestamp == mtp + 1 < chain.head_block.header.timestamp and base.body.reports == []
    reject(net, chain, net.reheader(base, w, timestamp=mtp), "time-too-old")
    reject(net, chain, net.reheader(base, w, timestamp=mtp - 1), "time-too-old")
    accept(net, chain, base)


def test_timestamp_far_future(env):
    net, chain, good, _ = env
    limit = net.NOW + chain.params.max_future_ms
    w = net.winner_of(good)
    reject(net, chain, net.reheader(good, w, timestamp=limit + 1), "time-too-new", now=net.NOW)
    accept(net, chain, net.reheader(good, w, timestamp=limit), now=net.NOW)


def test_timestamp_far_future_against_wall_clock(env):
    net, chain, good, _ = env
    bad = net.reheader(good, net.winner_of(good), timestamp=10**15)  # year ~33658
    before = net.snapshot(chain)
    with pytest.raises(InvalidBlock) as info:
        chain.add_block(bad)  # now defaults to the wall clock
    assert info.value.reason == "time-too-new" and info.value.category == "local"
    assert net.snapshot(chain) == before


# --- Algorithm 2 conditions ----------------------------------------------------------


def test_shapley_far_from_average(env):
    net, chain, good, _ = env
    user = settlement(good)[0]
    # S_winner is its work log's mean and S̄ the weighted mean with the carried report: both honest
    bad = net.block(chain, winner=1, txs=user, s_winner=[0.52, 0.3, 0.2])  # distance 0.02 > D = 0.01
    assert bad.header.s_avg == pytest.approx(good.header.s_avg)
    reject(net, chain, bad, "shapley-far-from-average")
    close = net.block(chain, winner=1, txs=user, s_winner=[0.505, 0.3, 0.2])
    accept(net, chain, close)


def test_shapley_far_from_local(env):
    net, chain, good, _ = env
    reject(net, chain, good, "shapley-far-from-local", local_avg=[0.5, 0.3, 0.22])
    reject(net, chain, good, "shapley-far-from-local", local_avg=[0.4, 0.4, 0.2])
    with pytest.raises(InvalidInput):
        chain.add_block(good, local_avg=[0.5, 0.3], now=net.NOW)
    accept(net, chain, good, local_avg=[0.505, 0.3, 0.2])


def test_distance_boundary_is_inclusive(net):
    chain = Chain(net.genesis(initial_difficulty=0.25))
    w = net.miners[0]
    exactly = net.block(chain, winner=w, s_avg=[0.5, 0.25, 0.25], s_winner=[0.75, 0.25, 0.25])
    beyond = net.block(chain, winner=w, s_avg=[0.5, 0.25, 0.25], s_winner=[0.75 + 2**-20, 0.25, 0.25])
    assert exactly.header.s_avg == beyond.header.s_avg == [0.5, 0.25, 0.25]
    reject(net, chain, beyond, "shapley-far-from-average")
    reject(net, chain, exactly, "shapley-far-from-local", local_avg=[1.0 + 2**-20, 0.25, 0.25])
    accept(net, chain, exactly, local_avg=[1.0, 0.25, 0.25])  # both distances exactly D


def test_task_already_settled(env):
    net, chain, good, _ = env
    accept(net, chain, good)
    again = net.block(chain, good.body.task, winner=2)  # same task, later block
    reject(net, chain, again, "task-already-settled")
    old = chain.block_at(1).body.task
    head_ts = chain.head_block.header.timestamp  # reports on the head are dated from its timestamp on
    reject(net, chain, net.block(chain, old, winner=3, timestamp=head_ts), "task-already-settled")


# --- Algorithm 3: payout and rewards -------------------------------------------------


def settlement(block):
    """(user txs, payout, rewards) of a block built by build_block."""
    txs = block.body.transactions
    i = next(k for k, t in enumerate(txs) if t.kind == "payout")
    return txs[:i], txs[i], txs[i + 1 :]


def test_reward_wrong_amount(env):
    net, chain, good, _ = env
    w = net.winner_of(good)
    user, payout, rewards = settlement(good)
    for delta in (+1, -1):
        bad_r = [resign_tx(rewards[0], w, amount=rewards[0].amount + delta), *rewards[1:]]
        reject(net, chain, net.rebody(good, w, transactions=[*user, payout, *bad_r]), "bad-rewards")
    accept(net, chain, good)


def test_payout_wrong_amount_sender_memo_nonce(env):
    net, chain, good, _ = env
    w = net.winner_of(good)
    user, payout, rewards = settlement(good)
    for upd in (
        {"amount": payout.amount + 1},
        {"amount": payout.amount - 1},
        {"sender": net.requester.account},
        {"recipient": net.miners[3].account},
        {"memo": "t1"},
        {"nonce": 1},
    ):
        bad_p = payout.model_copy(update=upd)
        reject(net, chain, net.rebody(good, w, transactions=[*user, bad_p, *rewards]), "bad-rewards")
    accept(net, chain, good)


def test_missing_reward(env):
    net, chain, good, _ = env
    w = net.winner_of(good)
    user, payout, rewards = settlement(good)
    reject(net, chain, net.rebody(good, w, transactions=[*user, payout, *rewards[:-1]]), "bad-rewards")
    reject(net, chain, net.rebody(good, w, transactions=[*user, payout, rewards[0], rewards[2]]), "bad-rewards")
    reject(net, chain, net.rebody(good, w, transactions=[*user, *rewards]), "bad-rewards")  # no payout
    reject(net, chain, net.rebody(good, w, transactions=[]), "bad-rewards")
    accept(net, chain, good)


@pytest.mark.parametrize("s_avg", [(0.6, 0.4, 0.0), (0.6, 0.5, -0.1)])
def test_reward_to_non_positive_client(env, s_avg):
    net, chain, _, _ = env
    good = net.block(chain, winner=1, s_avg=s_avg)
    w = net.winner_of(good)
    user, payout, rewards = settlement(good)
    assert [r.recipient for r in rewards] == [net.clients[0].account, net.clients[1].account]
    extra = make_transaction(w, net.clients[2].account, 1, rewards[-1].nonce + 1, "reward", "t4")
    reject(net, chain, net.rebody(good, w, transactions=[*user, payout, *rewards, extra]), "bad-rewards")
    # moving one unit from client 1 to client 2 keeps the total but breaks the rule
    moved = [
        rewards[0],
        resign_tx(rewards[1], w, amount=rewards[1].amount - 1),
        make_transaction(w, net.clients[2].account, 1, rewards[1].nonce + 1, "reward", "t4"),
    ]
    reject(net, chain, net.rebody(good, w, transactions=[*user, payout, *moved]), "bad-rewards")
    c2 = chain.balance(net.clients[2].account)
    accept(net, chain, good)
    assert chain.balance(net.clients[2].account) == c2  # nothing paid to S_i <= 0


def test_no_positive_shapley_no_rewards(env):
    net, chain, _, _ = env
    good = net.block(chain, winner=1, s_avg=(0.0, -0.1, 0.0))
    w = net.winner_of(good)
    user, payout, rewards = settlement(good)
    assert rewards == [] and payout.amount == 900
    r = make_transaction(w, net.clients[0].account, 700, chain.nonce(w.account), "reward", "t4")
    reject(net, chain, net.rebody(good, w, transactions=[*user, payout, r]), "bad-rewards")
    before = chain.balance(w.account)
    accept(net, chain, good)
    assert chain.balance(w.account) == before + 900


def test_extra_payout(env):
    net, chain, good, _ = env
    w = net.winner_of(good)
    user, payout, rewards = settlement(good)
    reject(net, chain, net.rebody(good, w, transactions=[*user, payout, payout, *rewards]), "bad-rewards")
    reject(net, chain, net.rebody(good, w, transactions=[payout, *user, payout, *rewards]), "bad-rewards")
    reject(net, chain, net.rebody(good, w, transactions=[*user, payout, *rewards, payout]), "bad-rewards")
    accept(net, chain, good)


def test_rewards_reordered(env):
    net, chain, good, _ = env
    w = net.winner_of(good)
    user, payout, rewards = settlement(good)
    n0 = rewards[0].nonce
    swapped = [resign_tx(rewards[1], w, nonce=n0), resign_tx(rewards[0], w, nonce=n0 + 1), rewards[2]]
    reject(net, chain, net.rebody(good, w, transactions=[*user, payout, *swapped]), "bad-rewards")
    reject(net, chain, net.rebody(good, w, transactions=[*user, *rewards, payout]), "bad-rewards")
    accept(net, chain, good)


def test_reward_not_from_winner(env):
    net, chain, good, _ = env
    w = net.winner_of(good)
    user, payout, rewards = settlement(good)
    other = net.miners[3]
    forged = [make_transaction(other, r.recipient, r.amount, i, "reward", r.memo) for i, r in enumerate(rewards)]
    reject(net, chain, net.rebody(good, w, transactions=[*user, payout, *forged]), "bad-rewards")
    wrong_memo = [resign_tx(rewards[0], w, memo="t1"), *rewards[1:]]
    reject(net, chain, net.rebody(good, w, transactions=[*user, payout, *wrong_memo]), "bad-rewards")


def test_reward_kind_in_user_section(env):
    net, chain, good, _ = env
    w = net.winner_of(good)
    u = net.users[1]
    sneaky = make_transaction(u, net.users[2].account, 5, chain.nonce(u.account), "reward", "t4")
    reject(net, chain, net.rebody(good, w, transactions=[sneaky, *good.body.transactions]), "bad-rewards")


def test_genesis_kind_in_body(env):
    # fedcoin.errors: "bad-rewards ... or a payout/reward/genesis transaction stands elsewhere"
    net, chain, good, _ = env
    w = net.winner_of(good)
    mint = Transaction(sender=MINT_ACCOUNT, recipient=w.account, amount=10**6, nonce=0, kind="genesis")
    reject(net, chain, net.rebody(good, w, transactions=[mint, *good.body.transactions]), "bad-rewards")
    accept(net, chain, good)
    assert chain.head_state.total == chain.supply


# --- bad transactions ---------------------------------------------------------------


def test_replayed_nonce(env):
    net, chain, good, first = env
    assert chain.block_at(1).body.transactions[0] == first
    w = net.winner_of(good)
    reject(net, chain, net.rebody(good, w, transactions=[first, *good.body.transactions]), "bad-transaction")
    # the same transaction twice in one block
    t = good.body.transactions[0]
    reject(net, chain, net.rebody(good, w, transactions=[t, *good.body.transactions]), "bad-transaction")
    accept(net, chain, good)


def test_nonce_gap(env):
    net, chain, good, _ = env
    u = net.users[1]
    t = make_transaction(u, net.users[2].account, 5, chain.nonce(u.account) + 1)
    reject(
        net, chain, net.rebody(good, net.winner_of(good), transactions=[t, *good.body.transactions]), "bad-transaction"
    )


def test_overdraft(env):
    net, chain, good, _ = env
    w = net.winner_of(good)
    u = net.users[2]
    bal = chain.balance(u.account)
    t = make_transaction(u, net.users[1].account, bal + 1, chain.nonce(u.account))
    reject(net, chain, net.rebody(good, w, transactions=[t, *good.body.transactions]), "bad-transaction")
    exact = make_transaction(u, net.users[1].account, bal, chain.nonce(u.account))
    accept(net, chain, net.rebody(good, w, transactions=[exact, *good.body.transactions]))
    assert chain.balance(u.account) == 50  # emptied, then paid 50 by the block's next transfer


def test_server_cannot_pay_payout(net):
    # a server without funds cannot settle: the payout overdraws it
    poor = net.ident(99)
    chain = Chain(net.genesis(servers=[net.server.account, poor.account]))  # admitted, only unfunded
    task = net.task("t1", server=poor)
    user_tx = [make_transaction(net.users[0], net.users[1].account, 1, 0)]
    with pytest.raises(InvalidBlock, match="insufficient-balance") as info:
        net.block(chain, task, txs=user_tx)
    assert info.value.reason == "bad-transaction"
    ok = net.block(chain, net.task("t1", server=net.server), txs=user_tx)
    w = net.winner_of(ok)
    payout = Transaction(sender=poor.account, recipient=w.account, amount=900, nonce=0, kind="payout", memo="t1")
    bad = net.rebody(ok, None, task=task, fix_merkle=False)
    txs = list(bad.body.transactions)
    txs[1] = payout
    bad = net.rebody(bad, w, transactions=txs)
    bad = net.reheader(bad, w, task_hash=task.task_hash)
    reject(net, chain, bad, "bad-transaction")


def test_bad_tx_signature(env):
    net, chain, good, _ = env
    w = net.winner_of(good)
    txs = list(good.body.transactions)
    txs[0] = txs[0].model_copy(update={"signature": flip_hex(txs[0].signature, 3)})
    bad = net.rebody(good, None, transactions=txs, fix_merkle=False)
    assert bad.hash == good.hash  # the header is untouched ...
    reject(net, chain, bad, "bad-merkle-root")  # ... but its Merkle root commits to every signature
    reject(net, chain, net.rebody(good, w, transactions=txs), "bad-transaction")  # re-committed and re-signed
    txs = list(good.body.transactions)
    user, payout, rewards = settlement(good)
    i = len(user) + 1
    txs[i] = txs[i].model_copy(update={"signature": net.miners[3].sign(txs[i].signing_payload())})
    reject(net, chain, net.rebody(good, w, transactions=txs), "bad-transaction")  # reward signed by another key
    accept(net, chain, good)


def test_self_transfer(env):
    net, chain, good, _ = env
    u = net.users[1]
    t = make_transaction(u, u.account, 5, chain.nonce(u.account))
    reject(
        net, chain, net.rebody(good, net.winner_of(good), transactions=[t, *good.body.transactions]), "bad-transaction"
    )


def test_payout_carries_no_signature(env):
    # transactions.py: a payout "carries no signature of its own". The Merkle leaves
    # cover signatures, so a signature added in transit breaks the Merkle root; a winner
    # who commits to one anyway gets bad-rewards.
    net, chain, good, _ = env
    w = net.winner_of(good)
    user, payout, rewards = settlement(good)
    marked = payout.model_copy(update={"signature": "ab" * 64})
    assert marked.txid == payout.txid and marked.wtxid != payout.wtxid
    bad = net.rebody(good, None, transactions=[*user, marked, *rewards], fix_merkle=False)
    assert bad.hash == good.hash and bad.body != good.body
    reject(net, chain, bad, "bad-merkle-root")
    reject(net, chain, net.rebody(good, w, transactions=[*user, marked, *rewards]), "bad-rewards")


# --- condition 3: stale blocks ---------------------------------------------------------


def equal_work_rivals(net, chain: Chain, good):
    """``good`` and rivals of equal work at its height (other winners), sorted by tie key."""
    rivals = [good, *(net.block(chain, winner=w) for w in (0, 2, 3))]
    assert all(b.header.iterations == good.header.iterations for b in rivals)  # equal work
    assert len({tie_key(b.header) for b in rivals}) == len(rivals)
    return sorted(rivals, key=lambda b: tie_key(b.header))


@pytest.mark.parametrize("first", ["smaller-key", "larger-key"])
def test_stale_block_equal_work_smaller_tie_key_wins(env, first):
    net, chain, good, _ = env
    small, large, later = equal_work_rivals(net, chain, good)[:3]
    if first == "smaller-key":
        accept(net, chain, small)
    else:
        accept(net, chain, large)
        res = chain.add_block(small, now=net.NOW)  # equal work, smaller key: it takes over
        assert res.status == "reorg" and res.reorg_depth == 1 and res.abandoned == (large,)
        assert chain.store.head == small.hash
    assert chain.head == small.hash and chain.tie == tie_key(small.header)
    assert chain.is_settled(small.body.task)
    if first == "smaller-key":
        err = reject(net, chain, large, "stale-block")  # whatever the hash order
        assert isinstance(err, StaleBlock)
        with pytest.raises(StaleBlock):
            chain.add_chain([large], now=net.NOW)
    else:
        assert chain.add_block(large, now=net.NOW).status == "known" and chain.head == small.hash
    reject(net, chain, later, "stale-block")  # a later rival above the head's key, in either order
    assert chain.head == small.hash


def test_stale_block_equal_work_larger_tie_key_after_head(env):
    """Every later equal-work block whose key is above the head's is stale, whatever its hash."""
    net, chain, good, _ = env
    ranked = equal_work_rivals(net, chain, good)
    accept(net, chain, ranked[0])
    for late in ranked[1:]:
        assert tie_key(late.header) > chain.tie
        reject(net, chain, late, "stale-block")
        with pytest.raises(StaleBlock):
            chain.add_chain([late], now=net.NOW)
    assert chain.head == ranked[0].hash


def test_resigning_with_another_timestamp_keeps_the_tie_key(env):
    """The producer cannot grind the tie key: another timestamp changes the block's hash, not its key."""
    net, chain, good, _ = env
    small, large = equal_work_rivals(net, chain, good)[:2]
    accept(net, chain, small)
    w = net.winner_of(large)
    for dt in (1, 2, 3, 50):
        again = net.reheader(large, w, timestamp=large.header.timestamp + dt)
        assert again.hash != large.hash and tie_key(again.header) == tie_key(large.header)
        reject(net, chain, again, "stale-block")
    assert chain.head == small.hash


def rivals_around(net, chain: Chain, key: str, iterations: int) -> list:
    """Rivals of ``iterations`` leaves (other winners and S) with tie keys below and above ``key``:
    as many as it takes to have one on each side, whatever the chain's genesis."""
    out = []
    for k in range(100):
        for w in (0, 2, 3):
            out.append(net.block(chain, winner=w, iterations=iterations, s_avg=(0.5, 0.3 - k / 1000, 0.2 + k / 1000)))
        keys = [tie_key(b.header) for b in out]
        if min(keys) < key < max(keys):
            return out
    raise AssertionError("no rivals on both sides of the key")


@pytest.mark.parametrize("heavier_key", ["smaller", "larger"])
def test_more_work_at_equal_height_wins(env, heavier_key):
    """More work beats the head whatever the tie keys; less work is stale whatever the tie keys."""
    net, chain, good, _ = env
    key = tie_key(good.header)
    heavy = rivals_around(net, chain, key, 11)
    light = rivals_around(net, chain, key, 9)
    pick = (lambda b: tie_key(b.header) < key) if heavier_key == "smaller" else (lambda b: tie_key(b.header) > key)
    heavier = next(b for b in heavy if pick(b))
    accept(net, chain, good)
    work = chain.work
    for lighter in light:  # below and above the head's key alike
        reject(net, chain, lighter, "stale-block")
    assert any(tie_key(b.header) < key for b in light) and any(tie_key(b.header) > key for b in light)
    res = chain.add_block(heavier, now=net.NOW)
    assert res.status == "reorg" and res.reorg_depth == 1 and res.abandoned == (good,)
    assert chain.head == heavier.hash and chain.height == 4 and chain.work == work + 1
    assert chain.tie == tie_key(heavier.header)
    assert chain.is_settled(heavier.body.task)
    assert chain.nonce(net.users[0].account) == 1  # the transfer pending in `good` left with it


def test_stale_block_lower_height(env):
    net, chain, good, _ = env
    accept(net, chain, good)
    parent = chain.block_at(2)
    # a valid block on an older parent, at height 3 while the head is at 4
    side = Chain(net.genesis())
    side.add_chain(chain.main_chain()[1:3], now=net.NOW)
    assert side.head == parent.hash
    old = net.block(side, winner=3)
    side.add_block(old, now=net.NOW)  # valid for a node that is behind
    reject(net, chain, old, "stale-block")
    with pytest.raises(StaleBlock):
        chain.add_chain([old], now=net.NOW)
    assert chain.head == good.hash


def test_known_block_is_idempotent(env):
    net, chain, good, _ = env
    accept(net, chain, good)
    before = net.snapshot(chain)
    assert chain.add_block(good, now=net.NOW).status == "known"
    assert net.snapshot(chain) == before


def test_a_mutated_copy_of_a_known_block_is_rejected_not_known(env):
    """Bitcoin Core's 'mutated block': the header hash is known, the bytes are not the block's."""
    net, chain, good, _ = env
    accept(net, chain, good)
    txs = good.body.transactions
    fewer = good.model_copy(update={"body": good.body.model_copy(update={"transactions": txs[:-1]})})
    other_task = net.task("t9", published_at=good.body.task.published_at)
    swapped = good.model_copy(update={"body": good.body.model_copy(update={"task": other_task})})
    no_task = good.model_copy(update={"body": good.body.model_copy(update={"task": None})})
    resigned = net.reheader(good, net.miners[3])  # same header hash, someone else's signature
    no_reports = good.model_copy(update={"body": good.body.model_copy(update={"reports": []})})
    leaves = good.body.work.leaves().copy()
    leaves[0, 0] += 1e-9
    other_work = good.model_copy(update={"body": good.body.model_copy(update={"work": WorkLog.from_leaves(leaves, 3)})})
    for mutated, reason in (
        (fewer, "bad-merkle-root"),
        (no_reports, "bad-merkle-root"),
        (other_work, "bad-work-root"),
        (swapped, "task-mismatch"),
        (no_task, "missing-task"),
        (resigned, "bad-signature"),
    ):
        assert mutated.hash == good.hash
        before = net.snapshot(chain)
        for add in (lambda b: chain.add_block(b, now=net.NOW), lambda b: chain.add_chain([b], now=net.NOW)):
            with pytest.raises(InvalidBlock) as info:
                add(mutated)
            assert info.value.reason == reason
        assert net.snapshot(chain) == before and chain.get(good.hash) == good


# --- task funding (deposits embedded in the task) ---------------------------------------


def funded_task(net, chain, task_id="t4", amount=5_000):
    dep = make_transaction(
        net.requester, net.server.account, amount, chain.nonce(net.requester.account), "deposit", task_id
    )
    h = chain.height + 1
    return net.task(task_id, published_at=net.T0 + 1_000 * h, funding=[dep]), dep


def test_funding_deposit_is_mined_with_the_task(env):
    net, chain, _, _ = env
    task, dep = funded_task(net, chain)
    blk = net.block(chain, task, winner=1)  # build_block puts the deposit in the body
    assert blk.body.transactions[0] == dep
    server_before = chain.balance(net.server.account)
    accept(net, chain, blk)
    # the deposit is held in escrow (not the server's to spend); this task names no deposit,
    # so the server pays it from its own balance
    assert chain.balance(net.server.account) == server_before - 900
    assert chain.head_state.escrow(dep.txid) == 5_000
    assert chain.head_state.deposits[dep.txid] == (net.requester.account, net.server.account, 5_000)


# --- a requester's budget: escrow and the division contract's prices -----------------------


def budget_task(net, chain, dep, *, round=0, rounds=2, budget=None, ratio=(7, 1, 2), task_id=None, **over):
    """Round ``round`` of the deposit ``dep``'s budget, at the contract's prices unless overridden."""
    from fedcoin.consensus.payments import round_prices

    v = dep.amount if budget is None else budget
    train, _com, sap = round_prices(v, ratio, rounds, min(round, rounds - 1))
    fields = {"train_price": train, "sap_price": sap, **over}
    h = chain.height + 1
    return net.task(
        task_id or f"b{h}",
        published_at=net.T0 + 1_000 * h,
        round=round,
        deposit=dep.txid,
        budget=v,
        rounds=rounds,
        ratio=list(ratio),
        **fields,
    )


def test_deposit_pays_each_round_at_the_contract_prices_from_escrow(env):
    net, chain, _, _ = env
    dep = make_transaction(
        net.requester, net.server.account, 10_001, chain.nonce(net.requester.account), "deposit", "job"
    )
    server_before = chain.balance(net.server.account)
    r0 = budget_task(net, chain, dep, round=0, funding=[dep])
    assert (r0.train_price, r0.sap_price) == (3_500, 1_000)  # 7:1:2 of 10,001 = 7000/1001/2000, halved
    b0 = net.block(chain, r0, winner=1)
    kinds = [t.kind for t in b0.body.transactions]
    assert kinds[:3] == ["deposit", "payout", "commission"]
    accept(net, chain, b0)
    assert chain.head_state.escrow(dep.txid) == 10_001 - 4_500 - 500
    assert chain.balance(net.server.account) == server_before + 500  # ComPrice of round 0
    r1 = budget_task(net, chain, dep, round=1)
    assert (r1.train_price, r1.sap_price) == (
        3_500,
        1_000,
    )  # ComPrice 1,001 splits 500 + 501: the last round gets the remainder
    accept(net, chain, net.block(chain, r1, winner=2))
    assert chain.head_state.escrow(dep.txid) == 0  # the rounds together pay exactly V
    assert chain.balance(net.server.account) == server_before + 500 + 501
    assert chain.head_state.total == chain.supply
    # the same round under another task id is the same settlement, and the escrow is spent anyway
    again = budget_task(net, chain, dep, round=1, task_id="again")
    assert again.settlement_key == r1.settlement_key and chain.is_settled(again)
    with pytest.raises(InvalidBlock) as info:
        net.block(chain, budget_task(net, chain, dep, round=0, task_id="over", rounds=1, budget=10_001))
    assert info.value.reason == "bad-transaction"  # the escrow is spent


def test_prices_that_ignore_the_deposit_are_rejected(env):
    net, chain, _, _ = env
    dep = make_transaction(
        net.requester, net.server.account, 10_000, chain.nonce(net.requester.account), "deposit", "job"
    )
    accept(net, chain, net.block(chain, winner=0, txs=[dep]))
    honest = budget_task(net, chain, dep)
    steep = budget_task(net, chain, dep, train_price=honest.train_price + 1_000)
    reject(net, chain, net.block(chain, steep, winner=1), "bad-prices")
    skewed = budget_task(net, chain, dep, sap_price=honest.sap_price + 500)
    reject(net, chain, net.block(chain, skewed, winner=1), "bad-prices")
    reject(net, chain, net.block(chain, budget_task(net, chain, dep, budget=20_000)), "bad-prices")  # not its V
    # the prices of a 9:0:1 split, under the 7:1:2 the deposit's contract names
    skim = budget_task(net, chain, dep, ratio=(9, 0, 1))
    reject(
        net, chain, net.block(chain, budget_task(net, chain, dep, train_price=skim.train_price), winner=1), "bad-prices"
    )
    late = budget_task(net, chain, dep, round=2)  # a third round of a two-round budget
    reject(net, chain, net.block(chain, late, winner=1), "bad-prices")
    accept(net, chain, net.block(chain, honest, winner=1))


def test_deposit_for_another_server_or_unconfirmed_cannot_pay(env):
    net, chain, _, _ = env
    other = net.ident(41)
    dep = make_transaction(net.requester, other.account, 10_000, chain.nonce(net.requester.account), "deposit", "job")
    accept(net, chain, net.block(chain, winner=0, txs=[dep]))
    # the admitted server names a deposit made out to someone else
    reject(net, chain, net.block(chain, budget_task(net, chain, dep), winner=1), "bad-prices")
    # a deposit the body does not carry and the branch never confirmed cannot pay
    ghost = make_transaction(net.users[0], net.server.account, 500, 1, "deposit", "ghost")
    funded = net.block(chain, budget_task(net, chain, ghost, funding=[ghost]), winner=1)
    assert funded.body.transactions[0] == ghost
    w = net.winner_of(funded)
    reject(net, chain, net.rebody(funded, w, transactions=funded.body.transactions[1:]), "unfunded-task")
    # escrow is no one's balance: the server cannot spend a deposit made out to it
    mine = make_transaction(
        net.requester, net.server.account, 1_000, chain.nonce(net.requester.account), "deposit", "x"
    )
    accept(net, chain, net.block(chain, winner=2, txs=[mine]))
    assert chain.head_state.escrow(mine.txid) == 1_000


def test_unfunded_task(env):
    net, chain, _, _ = env
    task, dep = funded_task(net, chain)
    blk = net.block(chain, task, winner=1)
    w = net.winner_of(blk)
    reject(net, chain, net.rebody(blk, w, transactions=blk.body.transactions[1:]), "unfunded-task")
    accept(net, chain, blk)


def test_funding_confirmed_earlier_on_branch(env):
    net, chain, _, _ = env
    task, dep = funded_task(net, chain, "t5")
    first = net.block(chain, winner=1, txs=[dep])
    accept(net, chain, first)
    blk = net.block(chain, task, winner=2, txs=[dep])  # not repeated
    assert dep not in blk.body.transactions
    accept(net, chain, blk)
    assert chain.balance(net.requester.account) == 50_000 - 5_000


def test_funding_must_be_deposits(net):
    t = make_transaction(net.requester, net.server.account, 5, 0, "transfer")
    with pytest.raises(InvalidInput):
        net.task("t1", funding=[t])


# --- verifiable work: the work log and S_winner -----------------------------------------


def craft(net, chain: Chain, good, *, leaves=None, reports=None, task=None, winner=None):
    """``good`` rebuilt by build_block with its work log, reports, task or winner replaced:
    S_winner, S̄, the roots and the signature follow, so only the replaced part can be wrong."""
    return build_block(
        chain,
        task=good.body.task if task is None else task,
        winner=net.winner_of(good) if winner is None else winner,
        leaves=good.body.work.leaves() if leaves is None else leaves,
        reports=good.body.reports if reports is None else reports,
        transactions=settlement(good)[0],
        timestamp=good.header.timestamp,
    )


def seal(net, chain: Chain, good, **header):
    """``good`` re-sealed with explicit header values (and work log/reports): what an attacker claims."""
    h = good.header
    args = {
        "task": good.body.task,
        "winner": net.winner_of(good),
        "s_winner": h.s_winner,
        "s_avg": h.s_avg,
        "iterations": h.iterations,
        "work": good.body.work,
        "reports": good.body.reports,
        "transactions": settlement(good)[0],
        "timestamp": h.timestamp,
    }
    args.update(header)
    return seal_block(chain, **args)


def test_crafting_helpers_rebuild_the_candidate(env):
    net, chain, good, _ = env
    assert craft(net, chain, good) == good and seal(net, chain, good) == good
    assert good.header.iterations == 10 and good.body.work.leaves().shape == (10, 3)
    assert len(good.body.reports) == 1 and good.body.reports[0].miner == net.miners[2].account


def test_bad_work_root_log_tampered(env):
    net, chain, good, _ = env
    leaves = good.body.work.leaves().copy()
    leaves[3, 0] += 1e-9  # one value of one leaf; the header still commits to the old log
    for work in (
        WorkLog.from_leaves(leaves, 3),
        WorkLog.from_leaves(leaves[:-1], 3),  # a leaf dropped
        WorkLog.from_leaves(leaves[::-1], 3),  # leaves reordered: leaf t is bound to its index
        WorkLog(n_players=3, leaves_b64="not base64!"),
        WorkLog(n_players=3, leaves_b64="AAAAAAAAAAAAAAAAAAAAAA=="),  # 16 bytes: not whole 3-value leaves
    ):
        bad = good.model_copy(update={"body": good.body.model_copy(update={"work": work})})
        assert bad.hash == good.hash
        reject(net, chain, bad, "bad-work-root")
    reject(net, chain, net.reheader(good, net.winner_of(good), work_root="11" * 32), "bad-work-root")
    accept(net, chain, good)


def test_the_work_log_encoding_is_not_part_of_the_block(env):
    """A node may re-encode a log (raw or deflated): same hash, same root, still valid."""
    net, chain, good, _ = env
    assert good.body.work.encoding == "deflate"
    raw = WorkLog.from_leaves(good.body.work.leaves(), 3, encoding="raw")
    copy = good.model_copy(update={"body": good.body.model_copy(update={"work": raw})})
    assert copy.hash == good.hash and raw.root() == good.header.work_root
    accept(net, chain, copy)


def test_a_forged_header_is_refused_before_its_work_log_is_decoded(env):
    """A deflate bomb (a few KiB that inflate to the 128 MiB limit) under a header the named winner did
    not sign costs the node a signature check, not the decoding."""
    net, chain, good, _ = env
    deflater = zlib.compressobj(9)
    data = b"".join(deflater.compress(bytes(1 << 20)) for _ in range(127)) + deflater.flush()
    bomb = WorkLog(n_players=3, encoding="deflate", leaves_b64=base64.b64encode(data).decode())
    forged = net.reheader(good, net.miners[3])  # signed by another admitted miner's key
    forged = forged.model_copy(update={"body": forged.body.model_copy(update={"work": bomb})})
    reject(net, chain, forged, "bad-signature")
    assert forged.body.work._decoded is None  # never decoded
    accept(net, chain, good)


@pytest.mark.parametrize("claimed", [9, 11, 10**9])
def test_bad_work_root_leaf_count_is_not_iterations(env, claimed):
    net, chain, good, _ = env
    reject(net, chain, net.reheader(good, net.winner_of(good), iterations=claimed), "bad-work-root")
    accept(net, chain, good)


def test_bad_work_root_log_longer_than_claimed(env):
    net, chain, good, _ = env
    eleven = WorkLog.from_leaves(np.tile(good.header.s_winner, (11, 1)), 3)  # committed to, but 11 leaves
    reject(net, chain, seal(net, chain, good, work=eleven), "bad-work-root")
    accept(net, chain, good)


def test_bad_work_root_missing_or_misshapen_log(env):
    net, chain, good, _ = env
    missing = seal(net, chain, good, work=None)  # work_root = the empty root, which matches
    assert missing.body.work is None
    reject(net, chain, missing, "bad-work-root")
    wide = WorkLog.from_leaves(np.tile([0.5, 0.3, 0.2, 0.0], (10, 1)), 4)  # four values per leaf, three clients
    reject(net, chain, seal(net, chain, good, work=wide), "bad-work-root")
    accept(net, chain, good)


def test_bad_work_mean_s_winner_not_the_mean(env):
    net, chain, good, _ = env
    w = net.winner_of(good)
    s = good.header.s_winner
    one_ulp = [float(np.nextafter(s[0], 1.0)), *s[1:]]
    reject(net, chain, net.reheader(good, w, s_winner=one_ulp), "bad-work-mean")
    # the mean is the exactly rounded one (fsum, then one division), not numpy's pairwise mean
    numpy_mean = good.body.work.leaves().mean(axis=0).tolist()
    assert numpy_mean != s
    reject(net, chain, seal(net, chain, good, s_winner=numpy_mean), "bad-work-mean")
    # a winner that claims another S than its work log's (close to S̄, so condition 1 would pass)
    reject(net, chain, seal(net, chain, good, s_winner=[0.501, 0.3, 0.199]), "bad-work-mean")
    accept(net, chain, good)


def test_bad_work_mean_leaf_breaks_efficiency(env):
    net, chain, good, _ = env
    tol = chain.params.work_tolerance
    leaves = good.body.work.leaves().copy()
    leaves[3, 0] += 5 * tol  # leaf 3 sums to v(N) − v(∅) + 5·tol; S_winner is still the exact mean
    bad = craft(net, chain, good, leaves=leaves)
    assert bad.header.s_winner == bad.body.work.mean()
    reject(net, chain, bad, "bad-work-mean")
    within = good.body.work.leaves().copy()
    within[3, 0] += 0.75 * tol  # float32-sized disagreement is tolerated
    accept(net, chain, craft(net, chain, good, leaves=within))


# --- the reports S̄ averages ------------------------------------------------------------


def carried(good) -> ShapleyReport:
    return good.body.reports[0]


def report_start(chain: Chain, good) -> int:
    """When reports on ``good``'s task and parent can start: both exist."""
    return max(good.body.task.published_at, chain.head_block.header.timestamp)


def test_bad_report_not_from_another_admitted_miner(env):
    net, chain, good, _ = env
    r = carried(good)
    task = good.body.task
    stranger = net.report(chain, task, net.users[0], r.shapley, r.iterations, r.timestamp)
    itself = net.report(chain, task, net.winner_of(good), r.shapley, r.iterations, r.timestamp)
    twice = net.report(chain, task, 2, [0.49, 0.31, 0.2], 5, r.timestamp)
    assert twice.miner == r.miner
    for reports in ([stranger], [itself], [r, itself], [r, twice], [twice, r]):
        reject(net, chain, craft(net, chain, good, reports=reports), "bad-report")
    other = net.report(chain, task, 3, [0.49, 0.31, 0.2], 5, r.timestamp)
    accept(net, chain, craft(net, chain, good, reports=[r, other]))  # two miners, one report each


def test_bad_report_on_another_parent_or_task(env):
    net, chain, good, _ = env
    r = carried(good)
    m = net.miners[2]
    for upd in ({"prev_hash": chain.block_at(2).hash}, {"prev_hash": good.hash}, {"task_id": "t3"}, {"task_id": "t9"}):
        reject(net, chain, craft(net, chain, good, reports=[resign_report(r, m, **upd)]), "bad-report")
    # a report with the wrong number of values (S̄ cannot be averaged with it: sealed as claimed)
    short = resign_report(r, m, shapley=[0.5, 0.5])
    reject(net, chain, seal(net, chain, good, reports=[short]), "bad-report")
    accept(net, chain, good)


def test_bad_report_dated_outside_task_and_block(env):
    net, chain, good, _ = env
    r, m = carried(good), net.miners[2]
    start, block_ts = report_start(chain, good), good.header.timestamp
    assert r.timestamp == start < block_ts
    for ts in (start - 1, block_ts + 1, net.NOW):
        reject(net, chain, craft(net, chain, good, reports=[resign_report(r, m, timestamp=ts)]), "bad-report")
    accept(net, chain, craft(net, chain, good, reports=[resign_report(r, m, timestamp=block_ts)]))  # inclusive


@pytest.mark.parametrize("late", [False, True])
def test_bad_report_claims_more_iterations_than_the_rate_allows(env, late):
    net, chain, good, _ = env
    r, m = carried(good), net.miners[2]
    start = report_start(chain, good)
    ts = good.header.timestamp if late else start
    rate = chain.params.max_report_rate
    cap = int(rate * (ts - start + 1000) / 1000)  # iterations/s since task and parent both exist, +1 s slack
    assert cap == (7_500 if late else 5_000)
    too_many = resign_report(r, m, timestamp=ts, iterations=cap + 1)
    reject(net, chain, craft(net, chain, good, reports=[too_many]), "bad-report")
    accept(net, chain, craft(net, chain, good, reports=[resign_report(r, m, timestamp=ts, iterations=cap)]))


def test_bad_report_rate_counts_from_the_parent_not_the_task(env):
    """Iterations run before the parent existed were run on another prev_hash: they do not count."""
    net, chain, good, _ = env
    m = net.miners[2]
    old_task = net.task("t4", published_at=net.T0 + 100)  # published long before the head
    parent_ts = chain.head_block.header.timestamp
    ts = good.header.timestamp
    since_task = int(chain.params.max_report_rate * (ts - old_task.published_at + 1000) / 1000)
    since_parent = int(chain.params.max_report_rate * (ts - parent_ts + 1000) / 1000)
    assert since_task > since_parent
    for claim, ok in ((since_task, False), (since_parent, True)):
        r = net.report(chain, old_task, m, [0.5, 0.3, 0.2], claim, ts)
        blk = craft(net, chain, good, task=old_task, reports=[r])
        if ok:
            accept(net, chain, blk)
        else:
            reject(net, chain, blk, "bad-report")


def test_bad_report_signature(env):
    net, chain, good, _ = env
    r = carried(good)
    for sig in (flip_hex(r.signature, 0), flip_hex(r.signature, 100), "", net.miners[3].sign(r.signing_payload())):
        forged = r.model_copy(update={"signature": sig})
        assert forged.hash == r.hash  # the reports root does not cover signatures: the rule must check them
        bad = craft(net, chain, good, reports=[forged])
        assert bad.header.reports_root == good.header.reports_root
        reject(net, chain, bad, "bad-report")
    # the shapley values changed after signing (what a winner would do to steer S̄)
    steered = r.model_copy(update={"shapley": [0.6, 0.2, 0.2]})
    reject(net, chain, craft(net, chain, good, reports=[steered]), "bad-report")
    accept(net, chain, good)


def test_too_few_reports(env):
    net, chain, good, _ = env
    alone = craft(net, chain, good, reports=[])
    assert alone.header.s_avg == alone.header.s_winner  # S̄ of its own S alone: condition 1 holds trivially
    reject(net, chain, alone, "too-few-reports")
    accept(net, chain, good)


def test_too_few_reports_min_reports_two(net):
    chain = Chain(net.genesis(min_reports=2))
    one = net.block(chain, winner=0)
    reject(net, chain, one, "too-few-reports")
    task, r = one.body.task, carried(one)
    second = net.report(chain, task, 3, r.shapley, r.iterations, r.timestamp)
    accept(net, chain, craft(net, chain, one, reports=[r, second]))


def test_bad_average(env):
    net, chain, good, _ = env
    w = net.winner_of(good)
    s_avg = good.header.s_avg
    reject(net, chain, net.reheader(good, w, s_avg=[float(np.nextafter(s_avg[0], 1.0)), *s_avg[1:]]), "bad-average")
    # S̄ must be the iteration-weighted mean of S_winner and the carried reports, not whatever the header says
    r = resign_report(carried(good), net.miners[2], shapley=[0.496, 0.304, 0.2], iterations=30)
    honest = craft(net, chain, good, reports=[r])
    s_w = honest.header.s_winner
    expected = [(10 * a + 30 * b) / 40 for a, b in zip(s_w, r.shapley, strict=True)]
    assert honest.header.s_avg == pytest.approx(expected)
    ignoring = seal(net, chain, honest, reports=[r], s_avg=s_w)  # the report carried, not averaged
    unweighted = seal(net, chain, honest, reports=[r], s_avg=[(a + b) / 2 for a, b in zip(s_w, r.shapley, strict=True)])
    for bad in (ignoring, unweighted):
        reject(net, chain, bad, "bad-average")
    accept(net, chain, honest)


def test_bad_merkle_root_reports(env):
    net, chain, good, _ = env
    r = carried(good)
    later = resign_report(r, net.miners[2], timestamp=r.timestamp + 1)  # valid itself, but not committed to
    for reports in ([], [later], [r, r]):
        bad = good.model_copy(update={"body": good.body.model_copy(update={"reports": reports})})
        assert bad.hash == good.hash
        reject(net, chain, bad, "bad-merkle-root")
    reject(net, chain, net.reheader(good, net.winner_of(good), reports_root="11" * 32), "bad-merkle-root")
    accept(net, chain, good)


# --- admission ------------------------------------------------------------------------------


def test_unknown_server(env):
    net, chain, good, _ = env
    # the requester is funded and signs the task itself: valid in every other respect
    task = net.task("t4", published_at=good.body.task.published_at, server=net.requester)
    assert task.server not in chain.params.servers
    reject(net, chain, craft(net, chain, good, task=task), "unknown-server")
    accept(net, chain, good)


def test_unknown_server_admitted_is_accepted(net):
    chain = Chain(net.genesis(servers=[net.server.account, net.requester.account]))
    accept(net, chain, net.block(chain, net.task("t1", server=net.requester)))


@pytest.mark.parametrize("who", ["user", "stranger"])
def test_unknown_miner(env, who):
    net, chain, good, _ = env
    w = net.users[0] if who == "user" else net.ident(77)
    assert w.account not in chain.params.miners
    reject(net, chain, craft(net, chain, good, winner=w), "unknown-miner")
    accept(net, chain, good)


def test_unknown_miner_not_on_a_shorter_admission_list(net):
    chain = Chain(net.genesis(miners=[m.account for m in net.miners[:3]]))
    reject(net, chain, net.block(chain, winner=3), "unknown-miner")
    accept(net, chain, net.block(chain, winner=1))  # its reporter, miner 2, is admitted


# --- consensus = "paper": Algorithm 2 as published ------------------------------------------


def unbacked_claim(net, chain: Chain, winner=None):
    """A block claiming 10^9 iterations with no work log and no reports (S̄ = S_winner, as it likes)."""
    task = net.task("t1")
    s = [0.5, 0.3, 0.2]
    return seal_block(
        chain,
        task=task,
        winner=net.miners[0] if winner is None else winner,
        s_winner=s,
        s_avg=s,
        iterations=10**9,
        work=None,
        timestamp=task.published_at + 500,
    )


def test_paper_consensus_accepts_an_unbacked_work_claim(net):
    paper = Chain(net.genesis(consensus="paper"))
    claim = unbacked_claim(net, paper)
    accept(net, paper, claim)
    assert paper.work == 1  # fork choice counts blocks under paper, as condition 3 does
    anyone = Chain(net.genesis(consensus="paper"))
    accept(net, anyone, unbacked_claim(net, anyone, winner=net.ident(77)))  # no admission either
    verified = Chain(net.genesis())
    reject(net, verified, unbacked_claim(net, verified), "bad-work-root")


# --- sampled recomputation and fraud proofs ------------------------------------------------

VALUES = [0.5, 0.3, 0.2]


def additive_game(task: ShapleyTask):
    """An additive game: every permutation's marginal vector is the clients' values."""
    return lambda perm: np.array(VALUES)


def fabricated_block(net, chain: Chain, winner: int = 1):
    """Leaf 7 is not its permutation's marginal vector, but it sums alike (check_work cannot tell)."""
    leaves = np.tile(VALUES, (10, 1))
    leaves[7] = [0.45, 0.35, 0.2]
    task = net.task(f"t{chain.height + 1}", published_at=net.T0 + 1_000 * (chain.height + 1))
    r = net.report(chain, task, winner + 1, VALUES, 10, task.published_at)
    return build_block(
        chain, task=task, winner=net.miners[winner], leaves=leaves, reports=[r], timestamp=task.published_at + 500
    )


def test_bad_leaf_and_fraud_proof(net, tmp_path):
    g = net.genesis()
    checker = Chain(g, verifier=WorkVerifier(additive_game))  # recomputes up to 16 leaves: all 10 here
    trusting = Chain.open(tmp_path / "c.db", g, verifier=WorkVerifier(additive_game, samples=0))
    b1 = net.block(trusting, winner=0, s_avg=VALUES)
    for c in (checker, trusting):
        accept(net, c, b1)
    bad = fabricated_block(net, trusting)
    err = reject(net, checker, bad, "bad-leaf")
    proof = err.proof
    assert proof.block_hash == bad.hash and proof.index == 7 and proof.leaf == [0.45, 0.35, 0.2]
    # a node that sampled no leaf accepts it and a block built on it
    accept(net, trusting, bad)
    child = net.block(trusting, winner=2, s_avg=VALUES)
    accept(net, trusting, child)
    # a "proof" about an honest leaf convinces nobody and changes nothing
    honest_leaf = FraudProof(header=bad.header, task=bad.body.task, index=0, leaf=VALUES, path=bad.body.work.path(0))
    before = net.snapshot(trusting)
    with pytest.raises(InvalidInput):
        trusting.apply_fraud_proof(honest_leaf)
    assert net.snapshot(trusting) == before
    # the real proof condemns the block and its descendant
    res = trusting.apply_fraud_proof(proof)
    assert res.status == "reorg" and res.abandoned == (bad, child) and trusting.head == b1.hash
    assert trusting.is_condemned(bad.hash) and bad.hash not in trusting and child.hash not in trusting
    assert trusting.apply_fraud_proof(proof).status == "known"
    for blk in (bad, child):
        reject(net, trusting, blk, "fraudulent-block")
    with pytest.raises(InvalidBlock) as info:
        trusting.add_chain([bad, child], now=net.NOW)
    assert info.value.reason == "fraudulent-block"
    trusting.close()
    reopened = Chain.open(tmp_path / "c.db", g, verifier=WorkVerifier(additive_game, samples=0))
    assert reopened.head == b1.hash and reopened.is_condemned(bad.hash)
    reject(net, reopened, bad, "fraudulent-block")
    # the checker takes the honest block instead
    accept(net, checker, net.block(checker, winner=1, s_avg=VALUES))
    reopened.close()


# --- the chain's permutation sampler ----------------------------------------------------------

SQUARE = CoalitionGame(3, lambda s: sum(VALUES[i] for i in s) ** 2)  # marginals depend on the order


def square_game(task: ShapleyTask):
    return SQUARE.marginals


def mined_block(net, chain: Chain, sampler: str, iterations: int = 12, winner: int = 1):
    """An honest block on ``chain``'s head whose work log PoSapMiner computed with ``sampler``
    (whatever the chain's); a peer reports the same S, so S̄ = S_winner."""
    task = net.task(f"t{chain.height + 1}", published_at=net.T0 + 1_000 * (chain.height + 1))
    w = net.miners[winner]
    m = PoSapMiner(
        miner=w.account,
        task_id=task.task_id,
        prev_hash=chain.head,
        n_players=task.n_players,
        marginals=SQUARE.marginals,
        difficulty=1.0,
        sampler=sampler,
    )
    m.step(iterations)
    r = net.report(chain, task, winner + 1, m.exact_shapley(), iterations, task.published_at)
    return build_block(chain, task=task, winner=w, leaves=m.leaves(), reports=[r], timestamp=task.published_at + 500)


@pytest.mark.parametrize("sampler", ["paired", "stratified", "uniform"])
def test_work_is_verified_with_the_chains_sampler(net, sampler):
    """A block mined with the chain's sampler passes recomputation; one mined with another sampler
    (honest marginals, but of permutations the chain does not assign) is a bad leaf."""
    chain = Chain(net.genesis(sampler=sampler), verifier=WorkVerifier(square_game))
    assert chain.params.sampler == sampler
    for other in {"paired", "stratified", "uniform"} - {sampler}:
        reject(net, chain, mined_block(net, chain, other), "bad-leaf")
    good = mined_block(net, chain, sampler)
    accept(net, chain, good)
    assert chain.verifier.recomputed >= 12


def test_uniform_leaves_claiming_paired_params_are_a_bad_leaf(net):
    g = net.genesis()
    assert g.params.sampler == "paired"  # the default
    checker = Chain(g, verifier=WorkVerifier(square_game))
    bad = mined_block(net, checker, "uniform")
    err = reject(net, checker, bad, "bad-leaf")
    proof = err.proof
    h, t = bad.header, proof.index
    assert derive_permutation(h.prev_hash, h.task_id, h.winner, t, 3, sampler="uniform") != derive_permutation(
        h.prev_hash, h.task_id, h.winner, t, 3, sampler="paired"
    )
    # the proof convinces any node that re-derives with the chain's sampler, and no node that re-derives
    # with the sampler the leaves were computed with
    WorkVerifier(square_game, samples=0).check_proof(proof, g.params)
    with pytest.raises(InvalidInput):
        WorkVerifier(square_game, samples=0).check_proof(proof, g.params.model_copy(update={"sampler": "uniform"}))
    trusting = Chain(g, verifier=WorkVerifier(square_game, samples=0))
    accept(net, trusting, bad)
    assert trusting.apply_fraud_proof(proof).status == "reorg" and trusting.is_condemned(bad.hash)
    # the same work done with the chain's sampler is accepted
    accept(net, checker, mined_block(net, checker, "paired"))


def test_paper_consensus_mines_with_its_sampler_but_verifies_nothing(net):
    paper = Chain(net.genesis(consensus="paper", sampler="uniform"), verifier=WorkVerifier(square_game))
    accept(net, paper, mined_block(net, paper, "stratified"))
    assert paper.verifier.recomputed == 0


def test_a_full_mempool_still_makes_a_block_of_at_most_the_limit(net):
    """More pending transactions than a block holds: the block takes what fits with its settlement
    (a body over the limit could not exist, and would stall every miner)."""
    from fedcoin.chain.blocks import MAX_TRANSACTIONS

    chain = Chain(net.genesis())
    pending = [make_transaction(net.requester, net.users[0].account, 1, n) for n in range(MAX_TRANSACTIONS + 5)]
    block = net.block(chain, txs=pending)
    assert len(block.body.transactions) == MAX_TRANSACTIONS
    assert [t.kind for t in block.body.transactions[-4:]] == ["payout", "reward", "reward", "reward"]
    chain.add_block(block, now=net.NOW)
    assert chain.nonce(net.requester.account) == MAX_TRANSACTIONS - 4
