"""Ledger invariants (property-based): conservation, overdraft and replay
protection, tamper detection, reorgs and fork choice by work (smaller tie key on a tie)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fedcoin.chain.state import ChainState, apply_block
from fedcoin.chain.transactions import make_transaction
from fedcoin.consensus.payments import reward_allocation, settlement_transactions
from fedcoin.errors import InvalidBlock, InvalidInput, OrphanBlock, StaleBlock
from fedcoin.ledger.chain import Chain, tie_key

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# (sender user index, recipient user index, amount); amounts up to 1500 overdraw a 1000-unit account
transfer_st = st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(1, 1500)).filter(lambda t: t[0] != t[1])
block_plan_st = st.lists(transfer_st, max_size=4)


def replay(blocks) -> ChainState:
    state = ChainState()
    for b in blocks:
        state = apply_block(state, b)
    return state


def fresh_replay_chain(net, blocks) -> Chain:
    c = Chain(net.genesis())
    for b in blocks[1:]:
        c.add_block(b, now=net.NOW)
    return c


def full_state(chain: Chain):
    s = chain.head_state
    return s.balances, s.nonces, s.settled, getattr(s, "deposits", None)


def assert_rejected(net, chain: Chain, block, reason: str | None = None) -> InvalidBlock:
    before = net.snapshot(chain)
    with pytest.raises(InvalidBlock) as info:
        chain.add_block(block, now=net.NOW)
    if reason is not None:
        assert info.value.reason == reason, str(info.value)
    assert net.snapshot(chain) == before
    return info.value


def signed_transfers(net, chain: Chain, plan):
    """Sign the planned transfers with consecutive nonces (as a wallet would)."""
    nonces = {}
    out = []
    for s, r, amount in plan:
        u = net.users[s]
        n = nonces.get(s, chain.nonce(u.account))
        nonces[s] = n + 1
        out.append(make_transaction(u, net.users[r].account, amount, n))
    return out


def extend(net, chain: Chain, plans, *, prefix: str = "t", winner_offset: int = 0, iterations: int = 10):
    """Build and add one block per plan on ``chain`` (each of ``iterations`` work); returns the blocks."""
    blocks = []
    for _i, plan in enumerate(plans):
        h = chain.height + 1
        task = net.task(f"{prefix}{h}", published_at=net.T0 + 1_000 * h)
        txs = signed_transfers(net, chain, plan)
        b = net.block(chain, task, winner=(h + winner_offset) % 4, txs=txs, iterations=iterations)
        chain.add_block(b, now=net.NOW)
        blocks.append(b)
    return blocks


# --- conservation, overdraft, replay ------------------------------------------------


@SETTINGS
@given(plans=st.lists(block_plan_st, min_size=1, max_size=4))
def test_conservation_no_overdraft_no_replay(net, plans):
    chain = Chain(net.genesis())
    supply = chain.supply
    assert supply == sum(net.genesis().allocations.values())
    model = dict(chain.balances())
    confirmed = []
    for plan in plans:
        h = chain.height + 1
        task = net.task(f"t{h}", published_at=net.T0 + 1_000 * h)
        w = net.miners[h % 4]
        # model the user transfers in plan order; an overdraft is left out of the honest block
        ok, overdrafts, planned = [], [], []
        nonces = {}
        for s, r, amount in plan:
            u = net.users[s]
            n = nonces.get(s, chain.nonce(u.account))
            tx = make_transaction(u, net.users[r].account, amount, n)
            planned.append(tx)
            if model.get(u.account, 0) >= amount:
                nonces[s] = n + 1
                model[u.account] -= amount
                model[net.users[r].account] = model.get(net.users[r].account, 0) + amount
                ok.append(tx)
            else:
                overdrafts.append((len(ok), tx))  # where it would stand among the valid ones
        honest = net.block(chain, task, winner=w, txs=planned)
        assert [t for t in honest.body.transactions if t.kind == "transfer"] == ok  # build_block drops overdrafts
        rest = honest.body.transactions[len(ok) :]
        for pos, bad_tx in overdrafts:
            forced = net.rebody(honest, w, transactions=[*ok[:pos], bad_tx, *ok[pos:], *rest])
            assert_rejected(net, chain, forced, "bad-transaction")
        for old in confirmed[-2:]:  # a transaction confirmed earlier cannot be replayed
            replayed = net.rebody(honest, w, transactions=[old, *honest.body.transactions])
            assert_rejected(net, chain, replayed, "bad-transaction")
        chain.add_block(honest, now=net.NOW)
        confirmed.extend(ok)
        # payments move value from the server to the winner to the clients
        for kind, recipient, amount in settlement_transactions(task, w.account, honest.header.s_avg):
            src = net.server.account if kind == "payout" else w.account
            model[src] -= amount
            model[recipient] = model.get(recipient, 0) + amount
        model = {k: v for k, v in model.items() if v}
        assert chain.balances() == model
        assert sum(chain.balances().values()) == supply
        assert all(v > 0 for v in chain.balances().values())
    assert replay(chain.main_chain()).balances == chain.balances()


def test_same_transaction_in_two_blocks(net, chain):
    tx = make_transaction(net.users[0], net.users[1].account, 10, 0)
    b1 = net.block(chain, txs=[tx])
    chain.add_block(b1, now=net.NOW)
    b2 = net.block(chain, winner=1)
    w = net.winner_of(b2)
    assert_rejected(net, chain, net.rebody(b2, w, transactions=[tx, *b2.body.transactions]), "bad-transaction")
    # and build_block leaves an already-confirmed transaction out
    b2b = net.block(chain, winner=1, txs=[tx])
    assert tx not in b2b.body.transactions
    chain.add_block(b2b, now=net.NOW)
    assert chain.balance(net.users[1].account) == 1010


# --- tamper detection ------------------------------------------------------------------


HEADER_FIELDS = [
    "height",
    "prev_hash",
    "timestamp",
    "winner",
    "s_avg",
    "s_winner",
    "difficulty",
    "merkle_root",
    "task_id",
    "task_hash",
    "iterations",
    "work_root",
    "reports_root",
    "signature",
]
TX_FIELDS = ["sender", "recipient", "amount", "nonce", "kind", "memo", "signature"]
TASK_FIELDS = [
    "task_id",
    "server",
    "round",
    "clients",
    "train_price",
    "sap_price",
    "published_at",
    "aggregation",
    "metric",
    "empty_value",
    "content_hash",
    "content_uri",
]


def other_hex(data, old: str, length: int) -> str:
    new = data.draw(st.text(alphabet="0123456789abcdef", min_size=length, max_size=length))
    assume(new != old)
    return new


def tampered_value(data, net, field: str, old):
    if field in ("prev_hash", "merkle_root", "task_hash", "content_hash", "work_root", "reports_root"):
        return other_hex(data, old, 64)
    if field == "signature":
        if old == "" or data.draw(st.booleans()):
            return other_hex(data, old, 128)
        pos = data.draw(st.integers(0, len(old) - 1))
        return old[:pos] + format(int(old[pos], 16) ^ data.draw(st.integers(1, 15)), "x") + old[pos + 1 :]
    if field in ("winner", "sender", "recipient", "server"):
        choices = [i.account for i in [net.server, net.requester, *net.miners, *net.clients, *net.users]]
        new = data.draw(st.sampled_from(choices))
        assume(new != old)
        return new
    if field in ("s_avg", "s_winner"):
        i = data.draw(st.integers(0, len(old) - 1))
        delta = data.draw(st.sampled_from([1e-12, -1e-9, 0.001, -0.3, 5.0]))
        return [x + delta if k == i else x for k, x in enumerate(old)]
    if field == "clients":
        return list(reversed(old))
    if field in ("difficulty", "empty_value"):
        return old * data.draw(st.sampled_from([0.5, 1 + 1e-12, 2.0])) + (0.0 if old else 1.0)
    if isinstance(old, str):  # task_id, memo, kind, aggregation, metric, content_uri
        if field == "kind":
            new = data.draw(st.sampled_from(["transfer", "deposit", "reward", "payout", "genesis"]))
        else:
            new = data.draw(st.text(alphabet="abcXYZ019-", min_size=1, max_size=8))
        assume(new != old)
        return new
    assert isinstance(old, int), field
    delta = data.draw(st.integers(-3, 3).filter(bool))
    assume(old + delta >= 0 if field != "amount" else old + delta > 0)
    return old + delta


@pytest.fixture(scope="module")
def tamper_env(net):
    """The blocks of a height-2 chain and a valid height-3 block on it (with user txs and rewards)."""
    chain = Chain(net.genesis())
    extend(net, chain, [[(0, 1, 10)], []])
    plan = [(0, 2, 30), (1, 0, 5)]
    pending = signed_transfers(net, chain, plan)
    pending.append(make_transaction(net.requester, net.server.account, 1000, 0, "deposit", "t3"))
    good = net.block(chain, winner=2, txs=pending)
    return TamperEnv((net, chain.main_chain()[1:], good))


class TamperEnv(tuple):
    def __repr__(self) -> str:  # keep hypothesis' falsifying-example report short
        return "<tamper_env: height-2 prefix + valid height-3 block>"


def check_tampered(net, prefix, good, bad):
    """``bad`` differs from ``good`` and must be rejected, leaving a fresh node untouched."""
    assert bad != good
    chain = Chain(net.genesis())
    chain.add_chain(prefix, now=net.NOW)
    before = net.snapshot(chain)
    with pytest.raises(InvalidBlock):
        chain.add_block(bad, now=net.NOW)
    assert net.snapshot(chain) == before


@settings(max_examples=60, deadline=None)
@given(data=st.data(), field=st.sampled_from(HEADER_FIELDS))
def test_any_header_field_tampered(tamper_env, data, field):
    net, prefix, good = tamper_env
    old = getattr(good.header, field)
    bad = net.reheader(good, None, **{field: tampered_value(data, net, field, old)})
    check_tampered(net, prefix, good, bad)


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    field=st.sampled_from(
        [
            "height",
            "prev_hash",
            "merkle_root",
            "task_id",
            "task_hash",
            "difficulty",
            "winner",
            "work_root",
            "reports_root",
        ]
    ),
)
def test_header_tampered_and_resigned(tamper_env, data, field):
    """Even a winner who signs the altered header cannot get these changes accepted."""
    net, prefix, good = tamper_env
    old = getattr(good.header, field)
    new = tampered_value(data, net, field, old)
    signer = net.winner_of(good)
    if field == "winner":
        assume(new in {m.account for m in net.miners})
        signer = next(m for m in net.miners if m.account == new)
    check_tampered(net, prefix, good, net.reheader(good, signer, **{field: new}))


@settings(max_examples=80, deadline=None)
@given(data=st.data(), field=st.sampled_from(TX_FIELDS))
def test_any_transaction_field_tampered(tamper_env, data, field):
    net, prefix, good = tamper_env
    txs = list(good.body.transactions)
    i = data.draw(st.integers(0, len(txs) - 1), label="tx index")
    old = getattr(txs[i], field)
    txs[i] = txs[i].model_copy(update={field: tampered_value(data, net, field, old)})
    check_tampered(net, prefix, good, net.rebody(good, None, transactions=txs, fix_merkle=False))


@settings(max_examples=30, deadline=None)
@given(data=st.data(), field=st.sampled_from(TASK_FIELDS))
def test_any_task_field_tampered(tamper_env, data, field):
    net, prefix, good = tamper_env
    task = good.body.task
    bad_task = task.model_copy(update={field: tampered_value(data, net, field, getattr(task, field))})
    check_tampered(net, prefix, good, net.rebody(good, None, task=bad_task, fix_merkle=False))


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_transaction_order_tampered(tamper_env, data):
    net, prefix, good = tamper_env
    txs = list(good.body.transactions)
    perm = data.draw(st.permutations(range(len(txs))))
    assume(list(perm) != list(range(len(txs))))
    reordered = [txs[k] for k in perm]
    check_tampered(net, prefix, good, net.rebody(good, None, transactions=reordered, fix_merkle=False))


def test_tamper_env_block_is_valid(tamper_env):
    net, prefix, good = tamper_env
    chain = Chain(net.genesis())
    chain.add_chain(prefix, now=net.NOW)
    assert chain.add_block(good, now=net.NOW).status == "extended"  # the untampered block is valid
    assert chain.head_state.total == chain.supply


# --- reorgs ------------------------------------------------------------------------------


@SETTINGS
@given(
    prefix=st.lists(block_plan_st, max_size=2),
    branch_a=st.lists(block_plan_st, min_size=1, max_size=3),
    extra=st.integers(1, 2),
    data=st.data(),
)
def test_reorg_to_longer_branch_matches_replay(net, prefix, branch_a, extra, data):
    branch_b = data.draw(st.lists(block_plan_st, min_size=len(branch_a) + extra, max_size=len(branch_a) + extra))
    base = Chain(net.genesis())
    common = extend(net, base, prefix)

    builder_a = fresh_replay_chain(net, base.main_chain())
    blocks_a = extend(net, builder_a, branch_a, prefix="A", winner_offset=1)
    builder_b = fresh_replay_chain(net, base.main_chain())
    blocks_b = extend(net, builder_b, branch_b, prefix="t", winner_offset=2)
    node = fresh_replay_chain(net, base.main_chain())
    for b in blocks_a:
        node.add_block(b, now=net.NOW)
    assert node.head == blocks_a[-1].hash
    res = node.add_chain(common + blocks_b, now=net.NOW)  # known blocks are skipped
    assert res.status == "reorg" and res.reorg_depth == len(blocks_a)
    assert node.head == blocks_b[-1].hash and node.height == len(common) + len(blocks_b)
    expected = fresh_replay_chain(net, [base.genesis, *common, *blocks_b])
    assert full_state(node) == full_state(expected) == full_state(builder_b)
    assert replay(node.main_chain()).balances == node.balances()
    assert sum(node.balances().values()) == node.supply
    for b in blocks_a:
        assert not node.is_settled(b.body.task)
    # the abandoned branch is still known but does not come back
    assert node.add_chain(blocks_a, now=net.NOW).status == "known"
    assert node.head == blocks_b[-1].hash


def test_reorg_settles_task_of_abandoned_branch(net):
    base = Chain(net.genesis())
    extend(net, base, [[]])
    a = fresh_replay_chain(net, base.main_chain())
    (a2,) = extend(net, a, [[(0, 1, 100)]], prefix="A")
    b = fresh_replay_chain(net, base.main_chain())
    b2 = net.block(b, net.task("t2"), winner=3, txs=[make_transaction(net.users[0], net.users[2].account, 200, 0)])
    b.add_block(b2, now=net.NOW)
    b3 = net.block(b, net.task("A2", published_at=net.T0 + 2_000), winner=0)  # A's task, now on B
    b.add_block(b3, now=net.NOW)
    node = fresh_replay_chain(net, [base.genesis, base.block_at(1), a2])
    assert node.is_settled(a2.body.task)
    node.add_chain([b2, b3], now=net.NOW)
    assert node.head == b3.hash and node.is_settled(b3.body.task) and node.is_settled(b2.body.task)
    assert node.nonce(net.users[0].account) == 1
    assert node.balance(net.users[1].account) == 1000 and node.balance(net.users[2].account) == 1200
    assert full_state(node) == full_state(b)


def test_add_chain_invalid_block_is_all_or_nothing(net):
    base = Chain(net.genesis())
    builder = Chain(net.genesis())
    blocks = extend(net, builder, [[(0, 1, 5)], [(1, 2, 7)], []])
    bad_last = net.reheader(blocks[-1], net.winner_of(blocks[-1]), difficulty=0.5)
    before = net.snapshot(base)
    with pytest.raises(InvalidBlock) as info:
        base.add_chain([*blocks[:-1], bad_last], now=net.NOW)
    assert info.value.reason == "bad-difficulty"
    assert net.snapshot(base) == before
    assert all(b.hash not in base for b in blocks)
    with pytest.raises(OrphanBlock):
        base.add_chain(blocks[1:], now=net.NOW)
    with pytest.raises(InvalidInput):
        base.add_chain([object()], now=net.NOW)
    assert base.add_chain(blocks, now=net.NOW).status == "extended"
    assert full_state(base) == full_state(builder)


# --- fork choice: greatest work, smaller tie key on a tie ---------------------------------


@settings(max_examples=20, deadline=None)
@given(
    plan_a=block_plan_st,
    plan_b=block_plan_st,
    depth=st.integers(1, 2),
    wa=st.integers(0, 3),
    wb=st.integers(0, 3),
    iters=st.tuples(st.sampled_from([9, 10, 11]), st.sampled_from([9, 10, 11])),
)
def test_fork_choice_greatest_work_smaller_tie_key_on_tie(net, plan_a, plan_b, depth, wa, wb, iters):
    """Two branches of equal height: the one of more work wins in either arrival order, whatever the
    tie keys; at equal work the one whose tip has the smaller tie key wins in either arrival order (the
    other is stale when it comes second, replaced when it came first)."""
    base = Chain(net.genesis())
    extend(net, base, [[]])
    branches = []
    for plan, w, tag, it in ((plan_a, wa, "A", iters[0]), (plan_b, wb, "B", iters[1])):
        builder = fresh_replay_chain(net, base.main_chain())
        extend(net, builder, [plan] + [[]] * (depth - 1), prefix=tag, winner_offset=w, iterations=it)
        branches.append(builder.main_chain()[2:])
    tips = [br[-1].hash for br in branches]
    ties = [tie_key(br[-1].header) for br in branches]
    assert tips[0] != tips[1] and ties[0] != ties[1]
    work = [depth * it for it in iters]
    winner = min((0, 1), key=lambda k: (-work[k], ties[k]))  # more work, then the smaller tie key
    for order in ((0, 1), (1, 0)):
        node = fresh_replay_chain(net, base.main_chain())
        for k in order:
            try:
                if depth == 1:
                    node.add_block(branches[k][0], now=net.NOW)
                else:
                    node.add_chain(branches[k], now=net.NOW)
            except StaleBlock:
                assert k != winner and k == order[1]
            else:
                assert node.head == tips[k]
                assert k == winner or k == order[0]
        assert node.head == tips[winner] and node.work == base.work + work[winner]
        assert node.tie == ties[winner]
        expected = fresh_replay_chain(net, [base.genesis, base.block_at(1), *branches[winner]])
        assert full_state(node) == full_state(expected)


def test_reward_payments_follow_header_average(net, chain):
    b = net.block(chain, s_avg=[0.25, 0.5, 0.125], s_winner=[0.25, 0.5, 0.125])
    chain.add_block(b, now=net.NOW)
    alloc = dict(reward_allocation(b.header.s_avg, b.body.task.train_price))
    for i, c in enumerate(net.clients):
        assert chain.balance(c.account) == alloc.get(i, 0)
    assert sum(alloc.values()) == b.body.task.train_price
