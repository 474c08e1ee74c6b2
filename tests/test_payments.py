"""Tests for fedcoin.consensus.payments: the budget split and the client reward allocation (Algorithm 3)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcoin.chain.transactions import MAX_AMOUNT
from fedcoin.consensus.payments import DEFAULT_RATIO, reward_allocation, split_budget
from fedcoin.errors import InvalidInput

amount_st = st.integers(0, MAX_AMOUNT)


# --- split_budget -------------------------------------------------------------------


def test_default_ratio_is_7_1_2():
    assert DEFAULT_RATIO == (7, 1, 2)
    assert split_budget(1000) == (700, 100, 200)
    assert split_budget(10) == (7, 1, 2)
    assert split_budget(0) == (0, 0, 0)


@pytest.mark.parametrize(
    "budget,expected", [(999, (699, 101, 199)), (1, (0, 1, 0)), (4, (2, 2, 0)), (19, (13, 3, 3)), (84, (58, 10, 16))]
)
def test_remainder_goes_to_comprice(budget, expected):
    assert split_budget(budget) == expected
    assert sum(expected) == budget


@settings(max_examples=200, deadline=None)
@given(budget=amount_st)
def test_split_7_1_2_sums_to_budget(budget):
    train, com, sap = split_budget(budget)
    assert train + com + sap == budget
    assert train == budget * 7 // 10 and sap == budget * 2 // 10
    assert 0 <= com - Fraction(budget, 10) < 2  # the rounding remainder (< 2 units) is the server's


@settings(max_examples=200, deadline=None)
@given(budget=amount_st, ratio=st.tuples(*[st.integers(0, 1000)] * 3).filter(lambda r: sum(r) > 0))
def test_split_any_ratio(budget, ratio):
    train, com, sap = split_budget(budget, ratio)
    total = sum(ratio)
    assert train + com + sap == budget
    assert min(train, com, sap) >= 0
    assert train == math.floor(Fraction(budget * ratio[0], total))
    assert sap == math.floor(Fraction(budget * ratio[2], total))
    assert Fraction(budget * ratio[1], total) <= com < Fraction(budget * ratio[1], total) + 2


@pytest.mark.parametrize(
    "ratio,budget,expected",
    [
        ((1, 0, 0), 77, (77, 0, 0)),
        ((0, 1, 0), 77, (0, 77, 0)),
        ((0, 0, 1), 77, (0, 0, 77)),
        ((1, 1, 1), 10, (3, 4, 3)),
        ((5, 0, 5), 3, (1, 1, 1)),
        ([6, 2, 2], 100, (60, 20, 20)),
    ],
)
def test_other_ratios(ratio, budget, expected):
    assert split_budget(budget, ratio) == expected


@pytest.mark.parametrize(
    "ratio", [(0, 0, 0), (7, 1), (7, 1, 2, 0), (7, -1, 2), (7.0, 1, 2), (True, 1, 2), ("7", 1, 2), ()]
)
def test_bad_ratio(ratio):
    with pytest.raises(InvalidInput):
        split_budget(100, ratio)


@pytest.mark.parametrize("budget", [-1, MAX_AMOUNT + 1, True, 1.5, "100", None])
def test_bad_budget(budget):
    with pytest.raises(InvalidInput):
        split_budget(budget)


# --- reward_allocation ----------------------------------------------------------------


def oracle(shapley, train_price):
    """Largest-remainder apportionment, written independently from the spec."""
    pos = [i for i, s in enumerate(shapley) if s > 0]
    if not pos or train_price == 0:
        return []
    total = sum(Fraction(shapley[i]) for i in pos)
    exact = {i: Fraction(shapley[i]) * train_price / total for i in pos}
    amounts = {i: int(exact[i]) for i in pos}  # floor (all non-negative)
    left = train_price - sum(amounts.values())
    order = sorted(pos, key=lambda i: (amounts[i] - exact[i], i))  # largest fractional part first
    for i in order[:left]:
        amounts[i] += 1
    return [(i, amounts[i]) for i in pos if amounts[i] > 0]


value_st = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1e-300, 5e-324, 1e300, 1.0, 0.1]),
    st.integers(-1000, 1000),
)


@settings(max_examples=300, deadline=None)
@given(shapley=st.lists(value_st, min_size=1, max_size=12), train_price=st.integers(0, 10**15))
def test_reward_allocation_properties(shapley, train_price):
    out = reward_allocation(shapley, train_price)
    indices = [i for i, _ in out]
    assert indices == sorted(set(indices))  # sorted by client index, no duplicates
    assert all(amount > 0 for _, amount in out)
    assert all(shapley[i] > 0 for i in indices)  # nothing to S_i <= 0
    positive = [i for i, s in enumerate(shapley) if s > 0]
    if positive and train_price > 0:
        assert sum(a for _, a in out) == train_price  # exactly TrainPrice
        total = sum(Fraction(shapley[i]) for i in positive)
        got = dict(out)
        for i in positive:  # proportional within one unit
            exact = Fraction(shapley[i]) * train_price / total
            assert abs(got.get(i, 0) - exact) < 1
    else:
        assert out == []
    assert out == oracle(shapley, train_price)
    assert reward_allocation(list(shapley), train_price) == out  # deterministic


def test_deterministic_tie_break_by_lower_index():
    assert reward_allocation([1.0, 1.0, 1.0], 100) == [(0, 34), (1, 33), (2, 33)]
    assert reward_allocation([1.0, 1.0, 1.0], 101) == [(0, 34), (1, 34), (2, 33)]
    assert reward_allocation([2.0, 2.0, 2.0, 2.0], 2) == [(0, 1), (1, 1)]  # zero amounts are not listed
    assert reward_allocation([0.0, 3.0, -1.0, 3.0], 5) == [(1, 3), (3, 2)]


def test_largest_remainder_not_index_when_fractions_differ():
    # shares 0.6, 0.4 of 1 unit: the larger fractional part wins even at the higher index
    assert reward_allocation([2.0, 3.0], 1) == [(1, 1)]
    assert reward_allocation([3.0, 2.0], 1) == [(0, 1)]


def test_exact_fractions_of_doubles():
    assert reward_allocation([0.1, 0.2], 3) == [(0, 1), (1, 2)]  # 0.2 == 2 * 0.1 exactly in binary
    assert reward_allocation([1e-300, 1e-300], 2) == [(0, 1), (1, 1)]


def test_paper_example():
    # Algorithm 3, line 11: p_i = S_i / sum_{S_j > 0} S_j * TrainPrice
    assert reward_allocation([0.5, 0.3, 0.2, -0.4], 700) == [(0, 350), (1, 210), (2, 140)]


@pytest.mark.parametrize("shapley", [[], [0.0], [-1.0, -0.5, 0.0], [-0.0, -5e-324]])
def test_empty_when_none_positive(shapley):
    assert reward_allocation(shapley, 700) == []


def test_zero_train_price():
    assert reward_allocation([1.0, 2.0], 0) == []


@pytest.mark.parametrize("shapley", [[float("nan")], [1.0, float("inf")], [True, 1.0], ["1.0"], [None]])
def test_bad_shapley_values(shapley):
    with pytest.raises(InvalidInput):
        reward_allocation(shapley, 100)


@pytest.mark.parametrize("price", [-1, MAX_AMOUNT + 1, 1.0, True])
def test_bad_train_price(price):
    with pytest.raises(InvalidInput):
        reward_allocation([1.0], price)
