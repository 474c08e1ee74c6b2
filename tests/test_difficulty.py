"""Tests for fedcoin.consensus.difficulty (the retarget rule) and its enforcement by VerifyBlock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcoin.chain.blocks import Block, BlockBody, BlockHeader, reports_merkle_root
from fedcoin.chain.encoding import ZERO_HASH
from fedcoin.chain.genesis import ChainParams
from fedcoin.chain.identity import Identity
from fedcoin.chain.tasks import make_task
from fedcoin.chain.work import empty_root
from fedcoin.consensus.difficulty import is_retarget_height, mining_time_ms, next_difficulty
from fedcoin.errors import InvalidBlock
from fedcoin.ledger.chain import Chain

SERVER = Identity.from_seed(b"\x01" * 32)
CLIENT = Identity.from_seed(b"\x02" * 32).account
TARGET = 1_000


def params(**kw) -> ChainParams:
    base = {
        "initial_difficulty": 1.0,
        "target_block_ms": TARGET,
        "retarget_window": 4,
        "max_adjust": 4.0,
        "min_difficulty": 1e-3,
        "max_difficulty": 100.0,
    }
    base.update(kw)
    return ChainParams(**base)


def fake_block(height: int, difficulty: float, mining_ms: int | None, ts: int) -> Block:
    """A block carrying only what the retarget rule reads."""
    task = None
    if mining_ms is not None:
        task = make_task(
            SERVER,
            task_id=f"t{height}",
            round=0,
            clients=[CLIENT],
            train_price=0,
            sap_price=0,
            published_at=ts - mining_ms,
            content_hash="00" * 32,
        )
    header = BlockHeader(
        height=height,
        prev_hash=ZERO_HASH,
        timestamp=ts,
        winner=ZERO_HASH,
        s_avg=[],
        s_winner=[],
        difficulty=difficulty,
        merkle_root=ZERO_HASH,
        task_id="x",
        task_hash=ZERO_HASH,
        iterations=1,
        work_root=empty_root(),
        reports_root=reports_merkle_root([]),
    )
    return Block(header=header, body=BlockBody(task=task))


def ancestry(times: list[int], difficulty: float = 1.0) -> list[Block]:
    """Genesis plus one block per mining time, all at ``difficulty``."""
    out = [fake_block(0, difficulty, None, 0)]
    ts = 10**6
    for h, t in enumerate(times, start=1):
        ts += 10**6
        out.append(fake_block(h, difficulty, t, ts))
    return out


def test_is_retarget_height():
    p = params(retarget_window=4)
    assert [h for h in range(0, 15) if is_retarget_height(h, p)] == [5, 9, 13]
    p1 = params(retarget_window=1)
    assert [h for h in range(0, 5) if is_retarget_height(h, p1)] == [2, 3, 4]


def test_first_block_uses_initial_difficulty():
    p = params(initial_difficulty=0.5)
    assert next_difficulty(ancestry([], difficulty=7.0), p) == 0.5


@pytest.mark.parametrize("n_blocks", [1, 2, 3, 5, 6, 7])  # next heights 2, 3, 4, 6, 7, 8: not retargets
def test_constant_between_retargets(n_blocks):
    p = params()
    anc = ancestry([50 * TARGET] * n_blocks, difficulty=0.37)  # wildly slow, yet no change
    assert not is_retarget_height(n_blocks + 1, p)
    assert next_difficulty(anc, p) == 0.37


@pytest.mark.parametrize("factor", [1.5, 2.0, 3.99])
def test_up_when_slower_than_target(factor):
    p = params()
    anc = ancestry([int(factor * TARGET)] * 4)
    d = next_difficulty(anc, p)
    assert d > 1.0
    assert d == pytest.approx(factor, rel=1e-3)


@pytest.mark.parametrize("factor", [0.26, 0.5, 0.9])
def test_down_when_faster_than_target(factor):
    p = params()
    d = next_difficulty(ancestry([int(factor * TARGET)] * 4), p)
    assert d < 1.0
    assert d == pytest.approx(factor, rel=1e-3)


def test_on_target_unchanged():
    p = params()
    assert next_difficulty(ancestry([TARGET] * 4), p) == 1.0
    assert next_difficulty(ancestry([500, 1500, 2000, 0 + 1]), p) == pytest.approx(4001 / 4000)


def test_clamped_at_max_adjust():
    p = params()
    assert next_difficulty(ancestry([100 * TARGET] * 4), p) == 4.0
    assert next_difficulty(ancestry([1] * 4), p) == 0.25
    p8 = params(max_adjust=8.0)
    assert next_difficulty(ancestry([100 * TARGET] * 4), p8) == 8.0


def test_clamped_at_min_and_max():
    p = params(min_difficulty=0.5, max_difficulty=2.0)
    assert next_difficulty(ancestry([4 * TARGET] * 4, difficulty=1.5), p) == 2.0
    assert next_difficulty(ancestry([TARGET // 4] * 4, difficulty=0.6), p) == 0.5


def test_only_the_last_window_counts():
    p = params()
    anc = ancestry([1] * 4 + [2 * TARGET] * 4)  # next height 9 is a retarget; heights 5..8 count
    assert next_difficulty(anc, p) == 2.0


def test_mining_time_at_least_one_ms():
    assert mining_time_ms(fake_block(1, 1.0, 0, 5_000)) == 1
    assert mining_time_ms(fake_block(1, 1.0, -50, 5_000)) == 1  # published "after" the block
    assert mining_time_ms(fake_block(1, 1.0, 1234, 5_000)) == 1234
    assert mining_time_ms(fake_block(0, 1.0, None, 5_000)) == 1


@settings(max_examples=100, deadline=None)
@given(
    times=st.lists(st.integers(0, 100 * TARGET), min_size=4, max_size=4),
    d=st.floats(1e-3, 100.0),
    window=st.integers(1, 4),
)
def test_retarget_bounds(times, d, window):
    p = params(retarget_window=window)
    anc = ancestry(times, difficulty=d)
    new = next_difficulty(anc, p)
    if is_retarget_height(len(times) + 1, p):
        assert p.min_difficulty <= new <= p.max_difficulty
        assert min(d / 4, p.min_difficulty) * (1 - 1e-12) <= new <= max(d * 4, p.max_difficulty) * (1 + 1e-12)
        assert new == next_difficulty(anc, p)  # deterministic
    else:
        assert new == d


# --- VerifyBlock enforces the rule ---------------------------------------------------


def mine(net, chain: Chain, mining_ms: int, winner: int = 0):
    h = chain.height + 1
    published = net.T0 + 100_000 * h
    task = net.task(f"t{h}", published_at=published)
    b = net.block(chain, task, winner=winner, timestamp=published + mining_ms)
    chain.add_block(b, now=net.NOW)
    return b


def test_chain_retargets_and_rejects_wrong_difficulty(net):
    p = {"initial_difficulty": 0.01, "target_block_ms": TARGET, "retarget_window": 3, "max_adjust": 4.0}
    chain = Chain(net.genesis(**p))
    for _ in range(3):  # heights 1..3 at twice the target time
        b = mine(net, chain, 2 * TARGET)
        assert b.header.difficulty == 0.01
    assert chain.next_difficulty() == pytest.approx(0.02)  # height 4 is a retarget height
    h4_task = net.task("t4", published_at=net.T0 + 400_000)
    good = net.block(chain, h4_task, winner=1, timestamp=net.T0 + 400_000 + TARGET)
    assert good.header.difficulty == chain.next_difficulty()
    w = net.miners[1]
    for wrong in (0.01, 0.04, 0.02 * (1 + 1e-12)):  # the old D, too far, almost right
        bad = net.reheader(good, w, difficulty=wrong)
        before = net.snapshot(chain)
        with pytest.raises(InvalidBlock) as info:
            chain.add_block(bad, now=net.NOW)
        assert info.value.reason == "bad-difficulty"
        assert net.snapshot(chain) == before
    chain.add_block(good, now=net.NOW)
    # heights 5 and 6 keep D; a block claiming a change there is rejected
    b5 = mine(net, chain, TARGET // 10)
    assert b5.header.difficulty == good.header.difficulty
    b6_task = net.task("t6", published_at=net.T0 + 600_000)
    b6 = net.block(chain, b6_task, winner=2, timestamp=net.T0 + 600_000 + 1)
    with pytest.raises(InvalidBlock) as info:
        chain.add_block(net.reheader(b6, net.miners[2], difficulty=0.01), now=net.NOW)
    assert info.value.reason == "bad-difficulty"
    chain.add_block(b6, now=net.NOW)
    # fast blocks (heights 4..6 took 1000, 100 and 1 ms) make the next D smaller
    assert chain.next_difficulty() == pytest.approx(good.header.difficulty * (1101 / 3000))
    b7 = mine(net, chain, 1)
    assert b7.header.difficulty < good.header.difficulty


def test_larger_difficulty_after_retarget_admits_farther_estimates(net):
    p = {"initial_difficulty": 0.01, "target_block_ms": TARGET, "retarget_window": 1, "max_adjust": 4.0}
    chain = Chain(net.genesis(**p))
    mine(net, chain, 4 * TARGET)
    assert chain.next_difficulty() == pytest.approx(0.04)
    task = net.task("t2", published_at=net.T0 + 200_000)
    far = net.block(
        chain, task, winner=1, s_avg=[0.5, 0.3, 0.2], s_winner=[0.53, 0.3, 0.2], timestamp=net.T0 + 200_000 + TARGET
    )
    assert chain.add_block(far, now=net.NOW).status == "extended"  # 0.03 <= D = 0.04


def test_window_of_one_retargets_every_block():
    p = params(retarget_window=1)
    assert is_retarget_height(2, p)
    assert next_difficulty(ancestry([3 * TARGET]), p) == 3.0  # from block 1 alone
    assert next_difficulty(ancestry([3 * TARGET, TARGET // 2], difficulty=2.0), p) == 1.0  # from block 2 alone
