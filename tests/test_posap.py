"""Tests for fedcoin.consensus.posap: permutation derivation, the PoSap miner and an end-to-end round."""

from __future__ import annotations

import base64
import hashlib
import itertools
import math
import typing

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcoin.chain.encoding import tagged
from fedcoin.chain.genesis import ChainParams
from fedcoin.chain.reports import make_report
from fedcoin.chain.transactions import make_transaction
from fedcoin.chain.work import MAX_WORK_VALUES, WorkLog
from fedcoin.chain.work import max_iterations as work_capacity
from fedcoin.consensus.mining import build_block
from fedcoin.consensus.payments import reward_allocation
from fedcoin.consensus.posap import (
    SAMPLERS,
    PoSapMiner,
    Report,
    average_reports,
    cycle_order,
    derive_permutation,
    p_distance,
    pair_cycle,
)
from fedcoin.consensus.proofs import WorkVerifier
from fedcoin.errors import InvalidInput
from fedcoin.ledger.chain import Chain
from fedcoin.valuation.exact import exact_shapley
from fedcoin.valuation.games import quality_game
from fedcoin.valuation.sampling import CoalitionGame, marginals_for_permutation

PREV = "ab" * 32
MINER = "cd" * 32


# --- derive_permutation ---------------------------------------------------------------


def reference_words(seed):
    """The word stream of ``seed`` as the posap module docstring specifies it."""
    k = 0
    while True:
        block = hashlib.sha256(seed + k.to_bytes(8, "big")).digest()
        for i in range(4):
            yield int.from_bytes(block[8 * i : 8 * i + 8], "big")
        k += 1


def reference_shuffle(stream, xs):
    def uniform(m):
        while True:
            w = next(stream)
            if w < 2**64 - (2**64 % m):
                return w % m

    xs = list(xs)
    for i in range(len(xs) - 1, 0, -1):
        j = uniform(i + 1)
        xs[i], xs[j] = xs[j], xs[i]
    return xs


def reference_seed(domain, prev_hash, task_id, miner, number):
    return hashlib.sha256(tagged(domain, [prev_hash, task_id, miner, number])).digest()


def reference_permutation(prev_hash, task_id, miner, iteration, n):
    """The uniform derivation exactly as the posap module docstring specifies it."""
    seed = reference_seed("fedcoin/posap-seed/v1", prev_hash, task_id, miner, iteration)
    return reference_shuffle(reference_words(seed), range(n))


def reference_stratified(prev_hash, task_id, miner, iteration, n):
    """The stratified derivation exactly as the posap module docstring specifies it."""
    if n == 1:
        return [0]
    cycle, slot = divmod(iteration, n)
    sigma = reference_shuffle(
        reference_words(reference_seed("fedcoin/posap-cycle/v1", prev_hash, task_id, miner, cycle)), range(n)
    )
    first, last = sigma[slot], sigma[(slot + 1) % n]
    rest = [p for p in range(n) if p not in (first, last)]
    seed = reference_seed("fedcoin/posap-seed/v1", prev_hash, task_id, miner, iteration)
    return [first, *reference_shuffle(reference_words(seed), rest), last]


def reference_paired(prev_hash, task_id, miner, iteration, n):
    """The paired derivation exactly as the posap module docstring specifies it."""
    if n == 1:
        return [0]
    cycle, u = divmod(iteration, n * (n - 1))
    block, slot = divmod(u, n)
    words = reference_words(reference_seed("fedcoin/posap-pairs/v1", prev_hash, task_id, miner, cycle))
    sigma = reference_shuffle(words, range(n))
    rho = reference_shuffle(words, range(1, n))  # the same word stream goes on
    first, second = sigma[slot], sigma[(slot + rho[block]) % n]
    rest = [p for p in range(n) if p not in (first, second)]
    seed = reference_seed("fedcoin/posap-seed/v1", prev_hash, task_id, miner, iteration)
    return [first, second, *reference_shuffle(reference_words(seed), rest)]


REFERENCES = {"uniform": reference_permutation, "stratified": reference_stratified, "paired": reference_paired}


@pytest.mark.parametrize("sampler", SAMPLERS)
@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(1, 40),
    iteration=st.integers(0, 2**40),
    task=st.text(max_size=12),
    prev=st.binary(min_size=32, max_size=32),
)
def test_permutation_is_valid_deterministic_and_matches_spec(sampler, n, iteration, task, prev):
    p = derive_permutation(prev.hex(), task, MINER, iteration, n, sampler=sampler)
    assert sorted(p) == list(range(n))
    assert derive_permutation(prev.hex(), task, MINER, iteration, n, sampler=sampler) == p
    assert p == REFERENCES[sampler](prev.hex(), task, MINER, iteration, n)


def test_known_vector_is_stable():
    # pins the derivation: a change would make honest miners' permutations irreproducible
    assert derive_permutation("00" * 32, "t", "11" * 32, 0, 10) == reference_permutation(
        "00" * 32, "t", "11" * 32, 0, 10
    )
    assert derive_permutation(PREV, "task", MINER, 0, 1) == [0]


@pytest.mark.parametrize("change", ["miner", "iteration", "prev_hash", "task"])
def test_permutation_differs_by_input(change):
    n = 12  # 12! permutations: a collision would be astronomically unlikely
    args = {"prev_hash": PREV, "task_id": "task", "miner": MINER, "iteration": 7}
    alt = dict(args)
    alt.update(
        {
            "miner": {"miner": "ef" * 32},
            "iteration": {"iteration": 8},
            "prev_hash": {"prev_hash": "ac" * 32},
            "task": {"task_id": "task2"},
        }[change]
    )
    assert alt != args
    base = derive_permutation(n=n, **args)
    assert derive_permutation(n=n, **alt) != base
    # and across many iterations the sequences are not the same
    seq = [tuple(derive_permutation(PREV, "task", MINER, t, 6)) for t in range(30)]
    assert len(set(seq)) > 15


def test_permutation_roughly_uniform():
    counts = dict.fromkeys(itertools.permutations(range(3)), 0)
    trials = 3000
    for t in range(trials):
        counts[tuple(derive_permutation(PREV, "uniform", MINER, t, 3))] += 1
    expected = trials / 6
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 20.5  # 5 degrees of freedom, p = 0.001
    # position of each player is uniform too
    firsts = [0, 0, 0]
    for p, c in counts.items():
        firsts[p[0]] += c
    assert all(abs(f - trials / 3) < 150 for f in firsts)


@pytest.mark.parametrize(
    "kw",
    [
        {"n": 0},
        {"n": True},
        {"n": 2.0},
        {"prev_hash": "AB" * 32},
        {"prev_hash": "ab"},
        {"iteration": -1},
        {"iteration": True},
        {"task_id": 5},
        {"miner": None},
    ],
)
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_permutation_bad_input(kw, sampler):
    args = {"prev_hash": PREV, "task_id": "t", "miner": MINER, "iteration": 0, "n": 3, "sampler": sampler}
    args.update(kw)
    with pytest.raises(InvalidInput):
        derive_permutation(**args)


@pytest.mark.parametrize("sampler", ["sobol", "", None, "Stratified"])
def test_unknown_sampler_rejected(sampler):
    with pytest.raises(InvalidInput):
        derive_permutation(PREV, "t", MINER, 0, 3, sampler=sampler)


@pytest.mark.parametrize(
    "kw", [{"n": 0}, {"n": True}, {"cycle": -1}, {"cycle": 1.0}, {"prev_hash": "ab"}, {"miner": 3}]
)
def test_cycle_order_bad_input(kw):
    args = {"prev_hash": PREV, "task_id": "t", "miner": MINER, "cycle": 0, "n": 3}
    args.update(kw)
    with pytest.raises(InvalidInput):
        cycle_order(**args)


# --- the stratified sampler ---------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(1, 40),
    iteration=st.integers(0, 2**40),
    task=st.text(max_size=12),
    prev=st.binary(min_size=32, max_size=32),
)
def test_stratified_first_and_last_come_from_the_cycle_order(n, iteration, task, prev):
    p = derive_permutation(prev.hex(), task, MINER, iteration, n, sampler="stratified")
    sigma = cycle_order(prev.hex(), task, MINER, iteration // n, n)
    assert p[0] == sigma[iteration % n] and p[-1] == sigma[(iteration + 1) % n]


def test_stratified_small_n():
    assert [derive_permutation(PREV, "t", MINER, t, 1, sampler="stratified") for t in range(3)] == [[0]] * 3
    for c in range(5):
        sigma = cycle_order(PREV, "t", MINER, c, 2)
        assert derive_permutation(PREV, "t", MINER, 2 * c, 2, sampler="stratified") == sigma
        assert derive_permutation(PREV, "t", MINER, 2 * c + 1, 2, sampler="stratified") == sigma[::-1]


def test_uniform_is_the_default_of_derive_permutation_and_differs_from_stratified():
    uniform = [derive_permutation(PREV, "t", MINER, t, 12) for t in range(24)]
    assert uniform == [derive_permutation(PREV, "t", MINER, t, 12, sampler="uniform") for t in range(24)]
    stratified = [derive_permutation(PREV, "t", MINER, t, 12, sampler="stratified") for t in range(24)]
    assert all(u != s for u, s in zip(uniform, stratified, strict=True))


def test_cycle_seed_is_a_separate_hash_domain():
    # were σ_c seeded like iteration c, it would be iteration c's uniform permutation
    for c in range(8):
        assert cycle_order(PREV, "t", MINER, c, 12) != derive_permutation(PREV, "t", MINER, c, 12)
    assert len({tuple(cycle_order(PREV, "t", MINER, c, 12)) for c in range(8)}) == 8


@pytest.mark.parametrize("change", ["miner", "prev_hash", "task"])
def test_stratified_differs_by_input(change):
    n = 12
    args = {"prev_hash": PREV, "task_id": "task", "miner": MINER}
    alt = dict(args)
    alt.update(
        {"miner": {"miner": "ef" * 32}, "prev_hash": {"prev_hash": "ac" * 32}, "task": {"task_id": "task2"}}[change]
    )
    for t in (0, 5, 13, 40):  # several slots and cycles
        a = derive_permutation(iteration=t, n=n, sampler="stratified", **args)
        b = derive_permutation(iteration=t, n=n, sampler="stratified", **alt)
        assert a != b
    assert cycle_order(cycle=0, n=n, **args) != cycle_order(cycle=0, n=n, **alt)


@pytest.mark.parametrize("n", [2, 3, 5, 8, 13])
def test_stratified_cycle_puts_every_player_first_once_and_last_once(n):
    for c in range(4):
        perms = [derive_permutation(PREV, "t", MINER, c * n + j, n, sampler="stratified") for j in range(n)]
        assert all(sorted(p) == list(range(n)) for p in perms)
        assert sorted(p[0] for p in perms) == list(range(n))
        assert sorted(p[-1] for p in perms) == list(range(n))
        assert all(p[0] != p[-1] for p in perms)
        assert [p[0] for p in perms] == cycle_order(PREV, "t", MINER, c, n)
    # a uniform cycle has repeated first players (for n = 8 with overwhelming probability)
    if n == 8:
        assert len({derive_permutation(PREV, "t", MINER, j, n)[0] for j in range(n)}) < n


def permutation_counts(sampler, n, cycle):
    """How often each permutation of n players comes up over whole cycles (about 200 times each)."""
    counts = dict.fromkeys(itertools.permutations(range(n)), 0)
    trials = 200 * len(counts)
    trials -= trials % cycle
    for t in range(trials):
        counts[tuple(derive_permutation(PREV, sampler, MINER, t, n, sampler=sampler))] += 1
    return counts, trials


@pytest.mark.parametrize(("n", "bound"), [(3, 20.5), (4, 49.7)])  # 5 and 23 degrees of freedom, p = 0.001
def test_stratified_roughly_uniform(n, bound):
    """Each permutation on its own is uniform: over whole cycles every permutation of n players is as
    frequent as any other (n = 4 also checks the shuffle of the middle)."""
    counts, trials = permutation_counts("stratified", n, cycle=n)
    expected = trials / len(counts)
    assert sum((c - expected) ** 2 / expected for c in counts.values()) < bound
    # the ordered (first, last) pairs are uniform too
    pairs: dict[tuple[int, int], int] = {}
    for p, c in counts.items():
        pairs[p[0], p[-1]] = pairs.get((p[0], p[-1]), 0) + c
    assert len(pairs) == n * (n - 1)
    expected_pair = trials / (n * (n - 1))
    assert sum((c - expected_pair) ** 2 / expected_pair for c in pairs.values()) < bound


def test_stratified_estimate_is_unbiased_with_lower_variance():
    """On a game with strongly diminishing returns (a player's marginal is largest in first place,
    smallest in last), the mean of one cycle of n stratified permutations is an unbiased estimate of
    the exact Shapley values with a much smaller mean squared error than n uniform permutations."""
    n, seeds = 8, 400
    utility = quality_game([2.0, 1.5, 1.2, 1.0, 0.8, 0.6, 0.4, 0.2])
    exact = np.array(exact_shapley(n, utility))
    game = CoalitionGame(n, utility, cache=True)
    estimates = {
        sampler: np.array(
            [
                np.mean(
                    [
                        game.marginals(derive_permutation(PREV, f"task-{k}", MINER, t, n, sampler=sampler))
                        for t in range(n)
                    ],
                    axis=0,
                )
                for k in range(seeds)
            ]
        )
        for sampler in SAMPLERS
    }
    mse = {sampler: float(((est - exact) ** 2).sum(axis=1).mean()) for sampler, est in estimates.items()}
    assert mse["stratified"] < 0.5 * mse["uniform"]  # about 0.22 measured
    for est in estimates.values():
        assert np.allclose(est.sum(axis=1), utility(frozenset(range(n))), rtol=0, atol=1e-12)  # efficiency
        standard_error = est.std(axis=0, ddof=1) / math.sqrt(seeds)
        assert np.all(np.abs(est.mean(axis=0) - exact) < 4 * standard_error)  # unbiased


# --- the paired sampler -------------------------------------------------------------------


def test_paired_is_the_chain_default():
    assert ChainParams().sampler == "paired"
    assert [derive_permutation(PREV, "t", MINER, t, 1, sampler="paired") for t in range(3)] == [[0]] * 3
    for t in range(6):  # n = 2: the two orders alternate
        assert derive_permutation(PREV, "t", MINER, t, 2, sampler="paired") in ([0, 1], [1, 0])
    assert {tuple(derive_permutation(PREV, "t", MINER, t, 2, sampler="paired")) for t in (0, 1)} == {(0, 1), (1, 0)}


@pytest.mark.parametrize("n", [3, 5, 8, 13])
def test_paired_blocks_and_cycles(n):
    """Every block of n iterations puts each player first once and second once; every cycle of
    n(n-1) iterations puts each ordered pair first and second once."""
    for c in range(2):
        perms = [
            derive_permutation(PREV, "t", MINER, c * n * (n - 1) + u, n, sampler="paired") for u in range(n * (n - 1))
        ]
        for b in range(n - 1):
            block = perms[b * n : (b + 1) * n]
            assert sorted(p[0] for p in block) == list(range(n))
            assert sorted(p[1] for p in block) == list(range(n))
        assert sorted((p[0], p[1]) for p in perms) == sorted(itertools.permutations(range(n), 2))
        sigma, rho = pair_cycle(PREV, "t", MINER, c, n)
        assert [p[0] for p in perms[:n]] == sigma and sorted(rho) == list(range(1, n))
    with pytest.raises(InvalidInput):
        pair_cycle(PREV, "t", MINER, -1, n)
    # the pair cycle has its own hash domain: not the stratified cycle order
    assert pair_cycle(PREV, "t", MINER, 0, 12)[0] != cycle_order(PREV, "t", MINER, 0, 12)


@pytest.mark.parametrize(("n", "bound"), [(3, 20.5), (4, 49.7)])  # 5 and 23 degrees of freedom, p = 0.001
def test_paired_roughly_uniform(n, bound):
    """Each permutation on its own is uniform: over whole cycles every permutation of n players is as
    frequent as any other."""
    counts, trials = permutation_counts("paired", n, cycle=n * (n - 1))
    expected = trials / len(counts)
    assert sum((c - expected) ** 2 / expected for c in counts.values()) < bound


def test_paired_estimate_is_unbiased_and_beats_stratified_where_pairs_matter():
    """On a game with strongly diminishing returns the second player's marginal depends on who came
    first: over one cycle of n(n-1) permutations the paired estimate is unbiased, efficient, and has
    a much smaller mean squared error than the stratified one over as many permutations."""
    n, seeds = 6, 150
    utility = quality_game([2.0, 1.5, 1.2, 1.0, 0.8, 0.6])
    exact = np.array(exact_shapley(n, utility))
    game = CoalitionGame(n, utility, cache=True)
    L = n * (n - 1)
    est = {
        sampler: np.array(
            [
                np.mean(
                    [
                        game.marginals(derive_permutation(PREV, f"pt-{k}", MINER, t, n, sampler=sampler))
                        for t in range(L)
                    ],
                    axis=0,
                )
                for k in range(seeds)
            ]
        )
        for sampler in ("stratified", "paired")
    }
    mse = {s: float(((e - exact) ** 2).sum(axis=1).mean()) for s, e in est.items()}
    assert mse["paired"] < 0.4 * mse["stratified"]  # about 0.13 measured
    e = est["paired"]
    assert np.allclose(e.sum(axis=1), utility(frozenset(range(n))), rtol=0, atol=1e-12)
    standard_error = e.std(axis=0, ddof=1) / math.sqrt(seeds)
    assert np.all(np.abs(e.mean(axis=0) - exact) < 4 * standard_error + 1e-12)


# --- p_distance / average_reports -------------------------------------------------------


def test_p_distance_values():
    assert p_distance([3.0, 4.0], [0.0, 0.0]) == 5.0
    assert p_distance([3.0, 4.0], [0.0, 0.0], 1) == 7.0
    assert p_distance([3.0, -4.0], [0.0, 0.0], math.inf) == 4.0
    assert p_distance([], []) == 0.0
    assert p_distance([1.0, 2.0], [1.0, 2.0], 3) == 0.0
    assert p_distance([1e300, 1e300], [-1e300, -1e300]) == pytest.approx(2e300 * math.sqrt(2))
    assert p_distance([1e-300, 0.0], [0.0, 1e-300]) == pytest.approx(1e-300 * math.sqrt(2))


@pytest.mark.parametrize(
    "args",
    [
        ([1.0], [1.0, 2.0]),
        ([[1.0]], [[1.0]]),
        ([float("nan")], [0.0]),
        ([1.0], [1.0], 0.5),
        ([1.0], [1.0], True),
        ([1.0], [1.0], "2"),
    ],
)
def test_p_distance_bad_input(args):
    with pytest.raises(InvalidInput):
        p_distance(*args)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.lists(st.floats(-100, 100), min_size=3, max_size=3), st.integers(0, 1000)), min_size=1, max_size=6
    ).filter(lambda rs: any(t > 0 for _, t in rs))
)
def test_average_reports(reports):
    reps = [Report(tuple(s), t) for s, t in reports]
    got = average_reports(reps)
    num = sum(t * np.array(s) for s, t in reports)
    den = sum(t for _, t in reports)
    assert np.allclose(got, num / den, rtol=1e-12, atol=1e-9)


def test_average_reports_bad():
    with pytest.raises(InvalidInput):
        average_reports([])
    with pytest.raises(InvalidInput):
        average_reports([Report((1.0,), 0)])
    with pytest.raises(InvalidInput):
        average_reports([Report((1.0,), 1), Report((1.0, 2.0), 1)])
    assert average_reports([Report((1.0, 3.0), 1), Report((3.0, 5.0), 3)]).tolist() == [2.5, 4.5]


# --- PoSapMiner ----------------------------------------------------------------------------


def miner(marginals, n=3, difficulty=0.1, **kw):
    args = {"miner": MINER, "task_id": "t", "prev_hash": PREV, "n_players": n, "marginals": marginals}
    args["difficulty"] = difficulty
    args.update(kw)
    return PoSapMiner(**args)


def random_game(n, seed):
    rng = np.random.default_rng(seed)
    values = {frozenset(c): float(rng.normal()) for k in range(1, n + 1) for c in itertools.combinations(range(n), k)}
    values[frozenset()] = 0.0
    return lambda s: values[frozenset(s)]


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_running_estimate_is_average_of_marginals(sampler):
    game = random_game(4, 1)
    m = miner(CoalitionGame(4, game).marginals, n=4, sampler=sampler)
    m.step(25)
    m.step(5)
    assert m.iterations == 30 and m.sampler == sampler
    perms = [derive_permutation(PREV, "t", MINER, t, 4, sampler=sampler) for t in range(30)]
    expected = np.mean([marginals_for_permutation(p, game, 0.0) for p in perms], axis=0)
    assert np.allclose(m.shapley, expected, rtol=0, atol=1e-12)
    r = m.report()
    assert r.iterations == 30 and np.allclose(r.shapley, expected, atol=1e-12)


def test_miner_default_sampler_is_the_chains_default():
    """A miner that names no sampler mines what a chain with default parameters re-derives."""
    assert miner(constant([0.0, 0.0, 0.0])).sampler == ChainParams().sampler == "paired"
    assert typing.get_args(ChainParams.model_fields["sampler"].annotation) == SAMPLERS
    hashes = {ChainParams(sampler=s).params_hash for s in SAMPLERS}
    assert len(hashes) == len(SAMPLERS) and ChainParams().params_hash in hashes
    game = CoalitionGame(4, random_game(4, 3))
    m = miner(game.marginals, n=4)
    m.step(9)
    perms = [derive_permutation(PREV, "t", MINER, t, 4, sampler=ChainParams().sampler) for t in range(9)]
    assert np.array_equal(m.leaves(), np.stack([game.marginals(p) for p in perms]))


def test_miner_values_a_step_in_one_batch_when_the_function_offers_many():
    """A marginal function with ``many`` gets the step's permutations in one call; the work log is the one
    the per-permutation path gives, and a ``many`` that answers the wrong number of rows is refused."""
    game = CoalitionGame(5, random_game(5, 7))
    calls: list[int] = []

    class Batched:
        def __call__(self, perm):
            return game.marginals(perm)

        def many(self, perms):
            calls.append(len(perms))
            return np.stack([game.marginals(q) for q in perms])

    plain, batched = miner(game.marginals, n=5), miner(Batched(), n=5)
    for count in (1, 6, 13):
        plain.step(count)
        batched.step(count)
    assert calls == [6, 13]  # a single iteration goes through __call__
    assert np.array_equal(plain.leaves(), batched.leaves()) and batched.iterations == 20
    assert np.array_equal(plain.shapley, batched.shapley)

    class Short(Batched):
        def many(self, perms):
            return super().many(perms)[:-1]

    bad = miner(Short(), n=5)
    with pytest.raises(InvalidInput):
        bad.step(3)
    assert bad.iterations == 0


def test_a_bad_vector_anywhere_in_a_batch_changes_nothing():
    """The batch is checked whole before any leaf is folded in, so the running S and the work log
    never disagree."""
    calls = []

    def flaky(perm):
        calls.append(perm)
        return np.full(len(perm), np.nan) if len(calls) == 4 else np.ones(len(perm)) / len(perm)

    m = miner(flaky, n=4)
    m.step(2)
    with pytest.raises(InvalidInput, match="finite"):
        m.step(3)
    assert m.iterations == 2 and m.leaves().shape == (2, 4) and m.work_log().leaves().shape == (2, 4)


def test_miner_stops_where_a_blocks_work_log_is_full():
    """Work past what a block can carry could never be proven: step runs up to ``max_iterations`` (by default
    the work log's capacity) and no further, and the miner can still report and win with what it has."""
    game = CoalitionGame(4, random_game(4, 5))
    m = miner(game.marginals, n=4, max_iterations=10)
    m.step(6)
    assert not m.full
    m.step(6)
    assert m.iterations == 10 and m.full and m.leaves().shape == (10, 4)
    assert m.step(6).iterations == 10
    default = miner(game.marginals, n=4)
    assert default.max_iterations == work_capacity(4) == MAX_WORK_VALUES // 4
    for bad in (0, work_capacity(4) + 1, 2.5, True):
        with pytest.raises(InvalidInput):
            miner(game.marginals, n=4, max_iterations=bad)


def test_a_work_log_past_its_capacity_is_a_clear_error():
    n = 4096  # the widest task: 4,096 leaves fit decoded (128 MiB)
    cap = work_capacity(n)
    assert cap == 4096
    WorkLog.from_leaves(np.zeros((cap, n)), n)
    with pytest.raises(InvalidInput, match="at most 4,096 iterations"):
        WorkLog.from_leaves(np.zeros((cap + 1, n)), n)


def test_a_miner_stops_where_its_deflated_log_would_not_fit_a_block():
    """Incompressible leaves fill the encoded limit long before the decoded one: the miner stops on the
    writer's bound, and the log it then has still fits (the bound is an upper bound)."""
    rng = np.random.default_rng(3)

    def noisy(perm):
        return rng.standard_normal(len(perm))

    m = miner(noisy, n=8, max_work_bytes=40_000)
    for _ in range(200):
        m.step(16)
    assert m.full and m.iterations < m.max_iterations
    log = m.work_log()
    assert len(base64.b64decode(log.leaves_b64)) <= 40_000
    assert log.leaves().shape == (m.iterations, 8) and log.mean() == m.exact_shapley()
    assert 40_000 - len(base64.b64decode(log.leaves_b64)) < 8 * 8 * 16 + 2_000  # it stopped close to the limit


def test_additive_game_exact():
    w = [1.0, 2.0, 3.0, -4.0]

    def game(s):
        return float(sum(w[i] for i in s))

    m = miner(CoalitionGame(4, game).marginals, n=4)
    m.step(7)
    assert m.shapley.tolist() == exact_shapley(4, game) == w


def test_random_game_near_exact():
    game = random_game(4, 2)
    exact = np.array(exact_shapley(4, game))
    m = miner(CoalitionGame(4, game).marginals, n=4)
    m.step(3000)
    err = np.linalg.norm(m.shapley - exact) / np.linalg.norm(exact)
    assert err < 0.05
    assert math.isclose(m.shapley.sum(), game(frozenset(range(4))), abs_tol=1e-9)  # efficiency holds exactly


def constant(vec):
    return lambda perm: np.array(vec, dtype=float)


def test_win_check_boundary_with_peers():
    # own S = [1, 0] after 1 iteration; a peer reports [0, 0] after 1 iteration -> S_bar = [0.5, 0]
    for d, wins in ((0.5, True), (math.nextafter(0.5, 0), False), (1.0, True)):
        m = miner(constant([1.0, 0.0]), n=2, difficulty=d)
        m.step()
        assert not m.is_winner()  # no peer heard yet (min_peers = 1)
        m.receive("peer", Report((0.0, 0.0), 1))
        assert m.network_average().tolist() == [0.5, 0.0]
        assert m.distance() == 0.5
        assert m.is_winner() is wins


def test_weights_by_iterations():
    m = miner(constant([1.0, 0.0]), n=2, difficulty=0.25)
    m.step(1)
    m.receive("peer", Report((0.0, 0.0), 3))  # S_bar = [0.25, 0], distance 0.75
    assert m.distance() == 0.75 and not m.is_winner()
    m.step(5)  # 6 own iterations: S_bar = [6/9, 0], distance 1/3
    assert m.distance() == pytest.approx(1 / 3) and not m.is_winner()
    m.step(3)  # 9 : 3 -> distance 0.25
    assert m.distance() == pytest.approx(0.25)


def test_min_peers():
    m0 = miner(constant([1.0, 0.0]), n=2, min_peers=0)
    assert not m0.is_winner()  # no iteration yet
    m0.step()
    assert m0.is_winner()  # alone, distance 0
    m2 = miner(constant([1.0, 0.0]), n=2, min_peers=2, difficulty=10.0)
    m2.step()
    m2.receive("p1", Report((1.0, 0.0), 1))
    assert not m2.is_winner()
    m2.receive("p2", Report((1.0, 0.0), 0))  # a peer with no iteration does not count
    assert not m2.is_winner()
    m2.receive("p2", Report((1.0, 0.0), 2))
    assert m2.is_winner()


def test_receive_keeps_latest_and_ignores_self():
    m = miner(constant([1.0, 0.0]), n=2)
    m.step()
    m.receive(MINER, Report((9.0, 9.0), 100))  # own id: ignored
    assert m.peer_reports == {}
    m.receive("p", Report((0.0, 0.0), 5))
    m.receive("p", Report((3.0, 3.0), 2))  # stale: fewer iterations
    assert m.peer_reports["p"] == Report((0.0, 0.0), 5)
    m.receive("p", Report((2.0, 2.0), 6))
    assert m.peer_reports["p"] == Report((2.0, 2.0), 6)


@pytest.mark.parametrize(
    "report",
    [
        Report((1.0,), 1),
        Report((1.0, 2.0, 3.0), 1),
        Report((1.0, 2.0), -1),
        Report((1.0, float("nan")), 1),
        Report((float("inf"), 0.0), 1),
        Report((1.0, 2.0), 1.5),
    ],
)
def test_bad_reports_rejected(report):
    m = miner(constant([1.0, 0.0]), n=2)
    with pytest.raises(InvalidInput):
        m.receive("p", report)
    assert m.peer_reports == {}


@pytest.mark.parametrize(
    "kw",
    [
        {"n": 0},
        {"difficulty": 0.0},
        {"difficulty": float("nan")},
        {"difficulty": -1.0},
        {"marginals": None},
        {"prev_hash": "xyz"},
        {"p": 0.5},
        {"min_peers": -1},
        {"sampler": "sobol"},
    ],
)
def test_miner_bad_construction(kw):
    args = {"marginals": constant([0.0, 0.0, 0.0])}
    args.update(kw)
    with pytest.raises(InvalidInput):
        miner(**args)


@pytest.mark.parametrize("out", [[1.0, 2.0], [1.0, float("nan"), 0.0], [[1.0, 2.0, 3.0]]])
def test_step_rejects_bad_marginals(out):
    m = miner(constant(out))
    with pytest.raises(InvalidInput):
        m.step()
    assert m.iterations == 0


# --- end to end ------------------------------------------------------------------------------


def test_end_to_end_four_miners(net):
    weights = [3.0, 1.0, -0.5]

    def game(s):  # a non-additive game on the 3 clients with a negative contributor
        x = sum(weights[i] for i in s)
        return x - 0.4 * x * x / 4 + (0.7 if {0, 1} <= set(s) else 0.0)

    genesis = net.genesis(initial_difficulty=0.005)
    # every node recomputes sampled leaves of the winner's work log on the game
    chains = [Chain(genesis, verifier=WorkVerifier(lambda _task: CoalitionGame(3, game).marginals)) for _ in range(4)]
    d = chains[0].next_difficulty()
    task = net.task("round-1", published_at=net.T0 + 1_000)
    prev = chains[0].head
    ts = net.T0 + 5_000
    miners = [
        PoSapMiner(
            miner=m.account,
            task_id=task.task_id,
            prev_hash=prev,
            n_players=3,
            marginals=CoalitionGame(3, game).marginals,
            difficulty=d,
        )
        for m in net.miners
    ]
    winner = None
    for _round in range(2_000):
        for m in miners:
            m.step(3)
        for a, ident in zip(miners, net.miners, strict=True):  # gossip: everyone hears everyone's latest report
            r = a.report()
            signed = make_report(
                ident,
                task_id=task.task_id,
                prev_hash=prev,
                shapley=list(r.shapley),
                iterations=r.iterations,
                timestamp=ts,
            )
            for b in miners:
                b.receive(a.miner, signed)
        ready = [m for m in miners if m.is_winner()]
        if ready:
            winner = ready[0]
            break
    assert winner is not None
    assert winner.iterations > 3  # it took some work to converge
    assert winner.distance() <= d
    w_ident = next(i for i in net.miners if i.account == winner.miner)
    deposit = make_transaction(net.requester, net.server.account, 1_000, 0, "deposit", task.task_id)
    block = build_block(
        chains[0],
        task=task,
        winner=w_ident,
        leaves=winner.leaves(),
        reports=winner.signed_reports(),
        transactions=[deposit],
        timestamp=ts,
    )
    # the block carries the work log behind S_winner and the three other miners' signed reports behind S̄
    assert block.header.iterations == winner.iterations and len(block.body.reports) == 3
    assert block.header.s_winner == pytest.approx(winner.shapley.tolist(), abs=1e-12)
    assert block.header.s_avg == pytest.approx(winner.network_average().tolist(), abs=1e-12)
    before = chains[0].balances()
    for chain, m in zip(chains, miners, strict=False):
        res = chain.add_block(block, local_avg=m.network_average().tolist(), now=net.NOW)
        assert res.status == "extended" and chain.head == block.hash
    heads = {c.head for c in chains}
    assert len(heads) == 1
    alloc = reward_allocation(block.header.s_avg, task.train_price)
    assert sum(a for _, a in alloc) == task.train_price
    assert all(block.header.s_avg[i] > 0 for i, _ in alloc)
    assert 2 not in dict(alloc)  # the negative contributor is not paid
    for chain in chains:
        bal = chain.balances()
        assert bal == chains[0].balances()
        for i, c in enumerate(net.clients):
            assert bal.get(c.account, 0) == before.get(c.account, 0) + dict(alloc).get(i, 0)
        assert bal[w_ident.account] == task.train_price + task.sap_price - task.train_price
        # the deposit is escrowed (its txid's account); the task names no deposit, so the server pays
        assert bal[deposit.txid] == 1_000 and chain.head_state.escrow(deposit.txid) == 1_000
        assert bal[net.server.account] == before[net.server.account] - 900
        assert sum(bal.values()) == chain.supply
        assert chain.is_settled(task)
    # a node whose local average disagrees with the winner rejects the block
    lonely = Chain(genesis)
    far = (np.array(block.header.s_winner) + 2 * d).tolist()
    with pytest.raises(Exception) as info:
        lonely.add_block(block, local_avg=far, now=net.NOW)
    assert getattr(info.value, "reason", None) == "shapley-far-from-local"
    assert lonely.height == 0
