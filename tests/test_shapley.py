"""Tests for fedcoin.valuation: exact and permutation-sampled Shapley values."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcoin.errors import FedcoinError, InvalidInput
from fedcoin.valuation.exact import exact_shapley
from fedcoin.valuation.games import additive_game as known_additive
from fedcoin.valuation.games import quality_game, symmetric_game, unanimity_game
from fedcoin.valuation.sampling import (
    CoalitionGame,
    RunningMean,
    marginals_for_permutation,
    permutation_shapley,
    relative_l2_error,
)

# ---------------------------------------------------------------------------
# helpers: games and an independent brute-force reference
# ---------------------------------------------------------------------------


def brute_force_shapley(n, utility):
    """Average marginal vector over all n! orderings (exact rational if utility is)."""
    totals = [0] * n
    count = 0
    for order in itertools.permutations(range(n)):
        prefix = set()
        previous = utility(frozenset())
        for player in order:
            prefix.add(player)
            current = utility(frozenset(prefix))
            totals[player] += current - previous
            previous = current
        count += 1
    return [t / count for t in totals]


def additive_game(weights, base=0.0):
    return lambda s: base + sum(weights[i] for i in s)


def voting_game(quota, weights):
    return lambda s: 1 if sum(weights[i] for i in s) >= quota else 0


def glove_game(left, right):
    return lambda s: min(len(s & left), len(s & right))


def table_game(table):
    """Game whose value for the coalition with bitmask m is table[m]."""
    return lambda s: table[sum(1 << i for i in s)]


class CountingUtility:
    def __init__(self, utility):
        self.utility = utility
        self.calls = []

    def __call__(self, coalition):
        assert isinstance(coalition, frozenset)
        self.calls.append(coalition)
        return self.utility(coalition)


def sampling_std_bound(n, utility):
    """sqrt(sum_i Var(marginal_i) / 1) for a uniformly random permutation.

    The marginal of player i is v(S+i) - v(S) where S (the players before i)
    has size s with probability 1/n and is uniform among such sets; so its
    second moment is an exact finite sum over coalitions. The L2 error of the
    m-permutation mean then has RMS sqrt(sum_i Var_i / m).
    """
    phi = exact_shapley(n, utility)
    total_var = 0.0
    for i in range(n):
        others = [j for j in range(n) if j != i]
        second = 0.0
        for size in range(n):
            for s in itertools.combinations(others, size):
                s = frozenset(s)
                d = utility(s | {i}) - utility(s)
                second += d * d / (n * math.comb(n - 1, size))
        total_var += second - phi[i] ** 2
    return math.sqrt(total_var)


# Closed-form games: (n, utility, expected phi, max |marginal range| for sampling bound).
CLOSED_FORM = {
    "additive": (4, additive_game([1.5, -2.0, 0.25, 4.0]), [1.5, -2.0, 0.25, 4.0], None),
    "symmetric": (5, lambda s: len(s) ** 2, [5.0] * 5, 9.0),  # v(N)/n = 25/5
    "dummy": (3, additive_game([2.0, 3.0, 0.0]), [2.0, 3.0, 0.0], None),
    "glove": (3, glove_game({0}, {1, 2}), [2 / 3, 1 / 6, 1 / 6], 1.0),
    "vote_51_50_49_1": (3, voting_game(51, [50, 49, 1]), [2 / 3, 1 / 6, 1 / 6], 1.0),
    "vote_4_3_2_1_1": (4, voting_game(4, [3, 2, 1, 1]), [1 / 2, 1 / 6, 1 / 6, 1 / 6], 1.0),
}


# ---------------------------------------------------------------------------
# closed-form games
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CLOSED_FORM))
def test_hand_computed_values_agree_with_brute_force(name):
    n, utility, expected, _ = CLOSED_FORM[name]
    assert brute_force_shapley(n, utility) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name", sorted(CLOSED_FORM))
def test_exact_shapley_closed_form(name):
    n, utility, expected, _ = CLOSED_FORM[name]
    phi = exact_shapley(n, utility)
    assert isinstance(phi, list) and len(phi) == n
    assert all(type(x) is float for x in phi)
    assert phi == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("name", sorted(CLOSED_FORM))
def test_permutation_shapley_closed_form(name):
    n, utility, expected, marginal_range = CLOSED_FORM[name]
    m = 4000
    phi = permutation_shapley(CoalitionGame(n, utility), m, seed=12345)
    # Additive/dummy games: every marginal vector equals the weights exactly. Otherwise each
    # coordinate is a mean of m i.i.d. marginals lying in an interval of width `marginal_range`,
    # so its std is <= range / (2 sqrt m); allow 5 sigma.
    tol = 1e-9 if marginal_range is None else 5 * marginal_range / (2 * math.sqrt(m))
    assert phi == pytest.approx(expected, abs=tol)


@pytest.mark.parametrize(
    "game",
    [
        known_additive([1.5, -2.0, 0.25, 4.0], base=3.0),
        symmetric_game(5, lambda k: k**2 + 1.0),
        unanimity_game(4, {0, 2}),
        unanimity_game(3, {1}),
    ],
    ids=["additive", "symmetric", "unanimity-2-of-4", "dictator"],
)
def test_library_games_carry_their_true_values(game):
    assert brute_force_shapley(game.n_players, game.utility) == pytest.approx(game.shapley, abs=1e-12)
    assert exact_shapley(game.n_players, game.utility) == pytest.approx(game.shapley, abs=1e-12)
    m = 2000
    estimate = permutation_shapley(CoalitionGame(game.n_players, game.utility), m, seed=7)
    # each coordinate is a mean of m marginals within [min, max] of the game's marginals: 5 sigma at most
    n = game.n_players
    coalitions = [frozenset(c) for k in range(n + 1) for c in itertools.combinations(range(n), k)]
    marginals = [game.utility(c | {i}) - game.utility(c) for c in coalitions for i in range(n) if i not in c]
    tol = 5 * (max(marginals) - min(marginals) + 1e-12) / (2 * math.sqrt(m))
    assert estimate == pytest.approx(game.shapley, abs=max(tol, 1e-9))


def test_library_games_reject_bad_definitions():
    with pytest.raises(InvalidInput):
        unanimity_game(3, {3})
    with pytest.raises(InvalidInput):
        unanimity_game(3, set())
    with pytest.raises(InvalidInput):
        known_additive([])


def test_quality_game_rewards_good_players_and_punishes_bad_ones():
    v = quality_game([1.0, 0.0, -1.0])
    phi = exact_shapley(3, v)
    assert v(frozenset()) == 0.0 and phi[0] > 0 > phi[2]


def test_symmetric_players_get_equal_shares_of_grand_coalition():
    values = [0.0, 1.0, 3.0, 7.0, 8.0, 20.0]  # v(S) depends on |S| only
    phi = exact_shapley(5, lambda s: values[len(s)])
    assert phi == pytest.approx([20.0 / 5] * 5, abs=1e-9)


@pytest.mark.parametrize("n_permutations", [1, 2, 7])
def test_additive_game_is_exact_for_any_permutation_count(n_permutations):
    weights = [0.3, -1.7, 2.9, 5.0, 0.0]
    phi = permutation_shapley(CoalitionGame(5, additive_game(weights, base=1.25)), n_permutations, seed=3)
    assert phi == pytest.approx(weights, abs=1e-12)


def test_null_player_gets_exactly_zero_in_every_sample():
    # player 3 never changes the value, whatever the coalition
    def game(s):
        return float(len(s - {3}) ** 1.5) + (2.0 if 0 in s and 1 in s else 0.0)

    assert exact_shapley(4, game)[3] == pytest.approx(0.0, abs=1e-12)
    for seed in range(5):
        assert permutation_shapley(CoalitionGame(4, game), 3, seed=seed)[3] == 0.0


def test_exact_shapley_single_player():
    assert exact_shapley(1, lambda s: 7.0 if s else 2.0) == [5.0]
    assert permutation_shapley(CoalitionGame(1, lambda s: 7.0 if s else 2.0), 3, seed=0).tolist() == [5.0]


def test_exact_shapley_larger_n_is_fast_and_correct():
    rng = np.random.default_rng(7)
    n = 16
    w = rng.normal(size=n)
    counter = CountingUtility(lambda s: float(sum(w[i] for i in s)) + 3.0)
    phi = exact_shapley(n, counter)
    assert len(counter.calls) == 2**n
    assert phi == pytest.approx(list(w), abs=1e-9)


def test_exact_shapley_matches_exact_rational_computation():
    # rational-valued random game: compare against brute force in Fractions
    rng = np.random.default_rng(11)
    n = 5
    table = [Fraction(int(x), 7) for x in rng.integers(-50, 50, size=2**n)]
    expected = brute_force_shapley(n, table_game(table))
    phi = exact_shapley(n, table_game(table))
    assert phi == pytest.approx([float(x) for x in expected], abs=1e-12)


# ---------------------------------------------------------------------------
# random games (hypothesis): exact == brute force, efficiency
# ---------------------------------------------------------------------------

value = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)


@st.composite
def random_games(draw, max_n=6):
    n = draw(st.integers(min_value=1, max_value=max_n))
    table = draw(st.lists(value, min_size=2**n, max_size=2**n))
    return n, table


@settings(max_examples=40, deadline=None)
@given(random_games())
def test_exact_matches_brute_force_on_random_games(game):
    n, table = game
    utility = table_game(table)
    expected = brute_force_shapley(n, utility)
    phi = exact_shapley(n, utility)
    assert phi == pytest.approx(expected, abs=1e-9, rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(random_games())
def test_exact_efficiency_on_random_games(game):
    n, table = game
    phi = exact_shapley(n, table_game(table))
    assert math.fsum(phi) == pytest.approx(table[-1] - table[0], abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    random_games(max_n=8),
    st.integers(min_value=1, max_value=30),
    st.integers(min_value=0, max_value=2**32),
)
def test_permutation_efficiency_holds_for_any_permutation_count(game, m, seed):
    n, table = game
    phi = permutation_shapley(CoalitionGame(n, table_game(table)), m, seed=seed)
    assert len(phi) == n
    assert math.fsum(phi) == pytest.approx(table[-1] - table[0], abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(random_games(), st.randoms(use_true_random=False))
def test_marginals_telescope(game, rnd):
    n, table = game
    order = list(range(n))
    rnd.shuffle(order)
    utility = table_game(table)
    marginals = marginals_for_permutation(order, utility, table[0])
    assert marginals.shape == (n,)
    assert math.fsum(marginals) == pytest.approx(table[-1] - table[0], abs=1e-9)
    # marginal of the i-th player is v(first i+1) - v(first i)
    for i, player in enumerate(order):
        expected = utility(frozenset(order[: i + 1])) - utility(frozenset(order[:i]))
        assert marginals[player] == pytest.approx(expected, abs=1e-12)


def test_nonzero_empty_value_efficiency_exact_and_sampled():
    def game(s):
        return 10.0 + len(s) ** 2 + (5.0 if {0, 2} <= s else 0.0)

    grand = game(frozenset(range(4)))
    assert math.fsum(exact_shapley(4, game)) == pytest.approx(grand - 10.0, abs=1e-9)
    for m in (1, 5, 50):
        assert math.fsum(permutation_shapley(CoalitionGame(4, game), m, seed=m)) == pytest.approx(
            grand - 10.0, abs=1e-9
        )


# ---------------------------------------------------------------------------
# convergence
# ---------------------------------------------------------------------------


def _random_eight_player_game():
    rng = np.random.default_rng(2024)
    n = 8
    w = rng.uniform(0.5, 2.0, size=n)
    noise = rng.uniform(-0.2, 0.2, size=2**n)
    noise[0] = 0.0

    def utility(s):
        return math.sqrt(sum(w[i] for i in s)) + noise[sum(1 << i for i in s)]

    return n, utility


def test_permutation_error_decreases_with_more_permutations():
    n, utility = _random_eight_player_game()
    reference = exact_shapley(n, utility)
    seeds = range(5)

    def errors(m):
        return [relative_l2_error(permutation_shapley(CoalitionGame(n, utility), m, seed=s), reference) for s in seeds]

    small, large = errors(10), errors(1000)
    assert np.median(large) < np.median(small) / 3  # ~sqrt(100)=10x expected
    # Bound at m=1000: RMS L2 error is sigma/sqrt(m) with sigma computed exactly
    # from the game; allow 4x that (each seed), relative to ||phi||.
    sigma = sampling_std_bound(n, utility)
    bound = 4 * sigma / math.sqrt(1000) / float(np.linalg.norm(reference))
    assert bound < 0.1  # the bound itself is meaningful for this game
    assert max(large) < bound


# ---------------------------------------------------------------------------
# determinism and call counts
# ---------------------------------------------------------------------------


def test_same_seed_same_result_different_seed_different_result():
    n, utility = _random_eight_player_game()
    a = permutation_shapley(CoalitionGame(n, utility), 20, seed=99)
    b = permutation_shapley(CoalitionGame(n, utility), 20, seed=99)
    c = permutation_shapley(CoalitionGame(n, utility), 20, seed=100)
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()


@pytest.mark.parametrize("n", [1, 3, 6, 10])
def test_exact_calls_utility_once_per_coalition(n):
    counter = CountingUtility(lambda s: len(s) ** 0.5)
    exact_shapley(n, counter)
    assert len(counter.calls) == 2**n
    assert len(set(counter.calls)) == 2**n
    assert frozenset() in counter.calls
    assert all(c <= frozenset(range(n)) for c in counter.calls)


def test_permutation_call_count_mirrors_miner_cost():
    n, m = 6, 25
    counter = CountingUtility(lambda s: len(s) ** 0.5)
    permutation_shapley(CoalitionGame(n, counter), m, seed=1)
    assert len(counter.calls) == 1 + n * m
    assert counter.calls.count(frozenset()) == 1
    assert counter.calls.count(frozenset(range(n))) == m


def test_permutation_cache_gives_same_result_with_fewer_calls():
    n, utility = _random_eight_player_game()
    plain = CountingUtility(utility)
    cached = CountingUtility(utility)
    a = permutation_shapley(CoalitionGame(n, plain), 200, seed=5)
    b = permutation_shapley(CoalitionGame(n, cached, cache=True), 200, seed=5)
    assert a.tolist() == b.tolist()
    assert len(set(cached.calls)) == len(cached.calls) <= 2**n
    assert len(cached.calls) < len(plain.calls) == 1 + n * 200


def test_permutations_come_from_default_rng():
    n, m, seed = 5, 4, 77
    counter = CountingUtility(lambda s: 0.0)
    permutation_shapley(CoalitionGame(n, counter), m, seed=seed)
    rng = np.random.default_rng(seed)
    calls = iter(counter.calls[1:])
    for _ in range(m):
        order = rng.permutation(n).tolist()
        for i in range(n):
            assert next(calls) == frozenset(order[: i + 1])


# ---------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------


def test_running_mean_matches_numpy_mean():
    rng = np.random.default_rng(0)
    data = rng.normal(loc=1e6, scale=3.0, size=(500, 4))
    rm = RunningMean()
    assert rm.count == 0
    for row in data:
        rm.update(row)
    assert rm.count == 500
    assert rm.mean == pytest.approx(data.mean(axis=0), rel=1e-12)
    snapshot = rm.mean
    snapshot[:] = 0.0  # mutating the copy must not affect the accumulator
    assert rm.mean == pytest.approx(data.mean(axis=0), rel=1e-12)


def test_running_mean_follows_paper_recurrence():
    rm = RunningMean(3)
    assert list(rm.mean) == [0.0, 0.0, 0.0]
    s = np.zeros(3)
    for t, x in enumerate([[1, 2, 3], [4, 0, -2], [10, 10, 10]]):
        s = (s * t + np.array(x, dtype=float)) / (t + 1)
        rm.update(x)
        assert rm.mean == pytest.approx(s, abs=1e-12)


@pytest.mark.parametrize("bad", [[1.0, 2.0], [1.0, 2.0, 3.0, 4.0], [1.0, float("nan"), 2.0], [[1, 2, 3]], "abc"])
def test_running_mean_rejects_bad_vectors_without_changing_state(bad):
    rm = RunningMean(3)
    rm.update([1.0, 1.0, 1.0])
    with pytest.raises(InvalidInput):
        rm.update(bad)
    assert rm.count == 1
    assert list(rm.mean) == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("size", [0, -1, 2.5, True])
def test_running_mean_rejects_bad_size(size):
    with pytest.raises(InvalidInput):
        RunningMean(size)


def test_relative_l2_error():
    assert relative_l2_error([3.0, 4.0], [3.0, 4.0]) == 0.0
    assert relative_l2_error([3.0, 5.0], [3.0, 4.0]) == pytest.approx(1 / 5)
    assert relative_l2_error(np.array([1.0, 0.0]), [0.0, 0.0]) == pytest.approx(1.0)
    assert relative_l2_error([3.0, 4.0], [0.0, 0.0]) == pytest.approx(5.0)
    with pytest.raises(InvalidInput):
        relative_l2_error([1.0], [1.0, 2.0])
    with pytest.raises(InvalidInput):
        relative_l2_error([float("inf")], [1.0])


def test_marginals_for_permutation_values():
    game = voting_game(4, [3, 2, 1, 1])
    # order B, C, A, D: A brings the sum from 3 to 6 -> A pivotal
    marginals = marginals_for_permutation([1, 2, 0, 3], game, game(frozenset()))
    assert list(marginals) == [1.0, 0.0, 0.0, 0.0]
    marginals = marginals_for_permutation(np.array([0, 2, 3, 1]), game, 0)
    assert list(marginals) == [0.0, 0.0, 1.0, 0.0]  # 3, then 4 -> C pivotal


# ---------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------


def ok_game(s):
    return float(len(s))


@pytest.mark.parametrize("n", [0, -3, 2.0, "3", None, True, 21, 64])
def test_exact_rejects_bad_n_players(n):
    with pytest.raises(InvalidInput) as info:
        exact_shapley(n, ok_game)
    assert isinstance(info.value, ValueError) and isinstance(info.value, FedcoinError)


def test_exact_rejects_21_players_before_calling_utility():
    counter = CountingUtility(ok_game)
    with pytest.raises(InvalidInput, match="20"):
        exact_shapley(21, counter)
    assert counter.calls == []


def test_numpy_int_player_count_accepted():
    assert exact_shapley(np.int64(2), ok_game) == pytest.approx([1.0, 1.0])
    assert permutation_shapley(CoalitionGame(np.int32(2), ok_game), np.int64(3), seed=np.uint8(1)).tolist() == [
        1.0,
        1.0,
    ]


@pytest.mark.parametrize("fn", ["exact", "perm"])
@pytest.mark.parametrize("utility", [None, 3, "v"])
def test_rejects_non_callable_utility(fn, utility):
    with pytest.raises(InvalidInput, match="callable"):
        if fn == "exact":
            exact_shapley(3, utility)
        else:
            permutation_shapley(CoalitionGame(3, utility), 5, seed=0)


@pytest.mark.parametrize("fn", ["exact", "perm"])
@pytest.mark.parametrize(
    "bad_value",
    [float("nan"), float("inf"), -float("inf"), "1.0", None, [1.0], True, 10**400],
    ids=["nan", "inf", "-inf", "str", "None", "list", "bool", "huge-int"],
)
def test_rejects_bad_utility_values_naming_the_coalition(fn, bad_value):
    def game(s):
        return bad_value if s == frozenset({0, 1}) else 1.0

    with pytest.raises(InvalidInput, match=r"\[0, 1\]"):
        if fn == "exact":
            exact_shapley(3, game)
        else:
            # cover enough permutations that {0, 1} shows up as a prefix
            permutation_shapley(CoalitionGame(3, game), 50, seed=0)


def test_utility_numpy_and_fraction_values_accepted():
    def game(s):
        return np.float32(len(s)) if 0 in s else Fraction(len(s), 2)

    phi = exact_shapley(2, game)
    assert math.fsum(phi) == pytest.approx(2.0)


@pytest.mark.parametrize("m", [0, -1, 1.5, "10", None, False])
def test_permutation_rejects_bad_n_permutations(m):
    with pytest.raises(InvalidInput):
        permutation_shapley(CoalitionGame(3, ok_game), m)


@pytest.mark.parametrize("n", [0, -1, 3.0, True, None])
def test_permutation_rejects_bad_n_players(n):
    with pytest.raises(InvalidInput):
        permutation_shapley(CoalitionGame(n, ok_game), 5)


@pytest.mark.parametrize("seed", [1.5, "1", -1, True, [1, 2], np.random.default_rng(0)])
def test_permutation_rejects_bad_seed(seed):
    with pytest.raises(InvalidInput):
        permutation_shapley(CoalitionGame(3, ok_game), 5, seed=seed)


def test_permutation_rejects_non_bool_cache():
    with pytest.raises(InvalidInput):
        permutation_shapley(CoalitionGame(3, ok_game, cache="yes"), 5, seed=0)


@pytest.mark.parametrize(
    "perm",
    [
        [],
        [0, 0, 1],
        [0, 1, 3],
        [1, 2, 3],
        [-1, 0, 1],
        [0, 1.0, 2],
        [True, False],
        "012",
        np.array([[0, 1], [1, 0]]),
        None,
        3,
    ],
)
def test_marginals_rejects_bad_permutations(perm):
    with pytest.raises(InvalidInput):
        marginals_for_permutation(perm, ok_game, 0.0)


@pytest.mark.parametrize("v_empty", [float("nan"), "0", None, float("inf")])
def test_marginals_rejects_bad_v_empty(v_empty):
    with pytest.raises(InvalidInput):
        marginals_for_permutation([0, 1], ok_game, v_empty)


def test_marginals_rejects_non_callable_utility():
    with pytest.raises(InvalidInput):
        marginals_for_permutation([0, 1], "not a game", 0.0)
