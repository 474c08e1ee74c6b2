"""NaiveUtility (reference) versus ShapleyEngine (batched prefixes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedcoin.errors import InvalidInput
from fedcoin.fl import fedavg as fl_avg
from fedcoin.fl import model as fl_model
from fedcoin.fl import partition as fl_partition
from fedcoin.fl import training as fl_training
from fedcoin.valuation.engine import ShapleyEngine
from fedcoin.valuation.naive import NaiveUtility
from fedcoin.valuation.problem import check_permutation
from fedcoin.valuation.sampling import permutation_shapley, random_permutations

K = 8
D, C = 48, 10  # a small synthetic problem: always available, fast, and the same shape of work as MNIST


def _synthetic(n: int = 4000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten noisy clusters in [0, 1]^D: separable enough that clients' models differ in quality."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(C, D, generator=g)
    y = torch.randint(0, C, (n,), generator=g)
    X = (centers[y] + 0.35 * torch.randn(n, D, generator=g)).clamp_(0.0, 1.0)
    return X.float().contiguous(), y


def _problem(hidden):
    X, y = _synthetic()
    part = fl_partition.partition_by_type(y[:3600].numpy(), num_clients=K, num_types=4, samples_per_client=200, seed=2)
    g = fl_model.init_weights(hidden, in_features=D, num_classes=C, seed=0)
    updates, ns = [], []
    for k, ix in enumerate(part.indices):
        u, n = fl_training.local_train(g, X[ix], y[ix], iterations=20, seed=k)
        updates.append(u)
        ns.append(n + 25 * k)  # unequal FedAvg weights
    return {"updates": updates, "n": ns, "X": X[3600:], "y": y[3600:], "g": g}


@pytest.fixture(scope="module", params=[(32,), (32, 16)], ids=["1-hidden", "2-hidden"])
def problem(request):
    return _problem(request.param)


def _pair(pb, metric="neg_loss", empty_value=0.0, **kw):
    args = (pb["updates"], pb["n"], pb["X"], pb["y"])
    naive = NaiveUtility(*args, metric=metric, empty_value=empty_value, global_weights=pb["g"], device="cpu")
    engine = ShapleyEngine(*args, metric=metric, empty_value=empty_value, global_weights=pb["g"], device="cpu", **kw)
    return naive, engine


@pytest.mark.parametrize("metric", ["neg_loss", "accuracy"])
@pytest.mark.parametrize("chunk_size", [1, 3, 8])
def test_engine_marginals_equal_naive(problem, metric, chunk_size):
    naive, engine = _pair(problem, metric, chunk_size=chunk_size)
    for perm in random_permutations(K, 4, seed=chunk_size):
        m_naive = naive.marginals(perm)
        m_engine = engine.marginals(perm)
        assert m_engine.dtype == np.float64 and m_engine.shape == (K,)
        assert np.max(np.abs(m_engine - m_naive)) <= 1e-5
    assert np.any(np.abs(m_naive) > 1e-3)  # non-trivial utilities


@pytest.mark.parametrize("metric", ["neg_loss", "accuracy"])
@pytest.mark.parametrize("chunk_size", [1, 3, 8])
def test_scanned_first_layer_sums_are_the_added_ones(problem, metric, chunk_size):
    """The GPU's gather-and-scan path takes the same running sums as the CPU's loop (up to rounding: the CPU's
    scan accumulates in double), with and without truncation, and both match the naive utility."""
    for tol in (None, 0.02):
        _, loop = _pair(problem, metric, chunk_size=chunk_size, scan=False, truncation_tol=tol)
        _, scan = _pair(problem, metric, chunk_size=chunk_size, scan=True, truncation_tol=tol)
        assert not loop.scan and scan.scan
        for perm in random_permutations(K, 4, seed=20 + chunk_size):
            assert np.max(np.abs(loop.marginals(perm) - scan.marginals(perm))) <= 1e-6
        if tol is None:
            naive, _ = _pair(problem, metric)
            assert np.max(np.abs(naive.marginals(perm) - scan.marginals(perm))) <= 1e-5


@pytest.mark.parametrize("metric", ["neg_loss", "accuracy"])
def test_batched_permutations_have_each_permutations_marginals(problem, metric):
    """marginals_many values a batch of permutations in one pass; each row is that permutation's marginals,
    across ragged batches, with the memory cap forcing one at a time, and under truncation."""
    perms = random_permutations(K, 7, seed=31)
    _, one = _pair(problem, metric)
    expected = np.stack([one.marginals(q) for q in perms])
    _, batched = _pair(problem, metric, batch_size=3)
    before = batched.evaluations
    got = batched.marginals_many(perms)
    assert got.shape == (7, K) and got.dtype == np.float64
    assert np.max(np.abs(got - expected)) <= 1e-6
    assert batched.evaluations - before == 7 * K
    batched.batch_bytes = 1  # a batch that cannot fit: one permutation at a time, same rows
    assert np.max(np.abs(batched.marginals_many(perms) - expected)) <= 1e-6
    _, trunc = _pair(problem, metric, batch_size=4, truncation_tol=0.02)
    assert np.array_equal(trunc.marginals_many(perms), np.stack([trunc.marginals(q) for q in perms]))
    fn = batched.marginal_fn
    assert np.array_equal(fn(perms[0]), batched.marginals(perms[0]))
    assert fn.many(perms).shape == (7, K)
    with pytest.raises(InvalidInput):
        batched.marginals_many([perms[0], [0] * K])


def test_marginals_are_indexed_by_player(problem):
    naive, engine = _pair(problem)
    perm = [3, 0, 7, 1, 6, 2, 5, 4]
    m = engine.marginals(perm)
    assert m[3] == pytest.approx(naive(frozenset({3})) - 0.0, abs=1e-6)
    assert m[0] == pytest.approx(naive(frozenset({3, 0})) - naive(frozenset({3})), abs=1e-6)
    assert m[4] == pytest.approx(naive(frozenset(range(K))) - naive(frozenset(set(range(K)) - {4})), abs=1e-6)


@pytest.mark.parametrize("metric", ["neg_loss", "accuracy"])
def test_coalition_utilities_equal(problem, metric):
    naive, engine = _pair(problem, metric)
    full = frozenset(range(K))
    assert engine(full) == pytest.approx(naive(full), abs=1e-6)
    assert engine.full_value == pytest.approx(naive(full), abs=1e-6)
    rng = np.random.default_rng(0)
    for _ in range(5):
        c = frozenset(rng.choice(K, size=int(rng.integers(1, K)), replace=False).tolist())
        assert engine(c) == pytest.approx(naive(c), abs=1e-6)
    assert engine(frozenset()) == naive(frozenset()) == 0.0
    assert engine.n_players == naive.n_players == K and engine.empty_value == 0.0
    # the full coalition is the FedAvg model of all clients
    agg = fl_avg.fedavg(problem["updates"], problem["n"])
    ev = fl_model.evaluate(agg, problem["X"], problem["y"])
    expected = -ev["loss"] if metric == "neg_loss" else ev["accuracy"]
    assert naive(full) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("empty_value", [0.0, -2.5, "global"])
def test_telescoping_sum(problem, empty_value):
    naive, engine = _pair(problem, empty_value=empty_value)
    if empty_value == "global":
        expected_empty = -fl_model.evaluate(problem["g"], problem["X"], problem["y"])["loss"]
        assert engine.empty_value == pytest.approx(expected_empty, abs=1e-6)
        assert naive.empty_value == engine.empty_value
    total = engine(frozenset(range(K))) - engine.empty_value
    for perm in random_permutations(K, 3, seed=11):
        assert engine.marginals(perm).sum() == pytest.approx(total, abs=1e-6)
        assert naive.marginals(perm).sum() == pytest.approx(total, abs=1e-6)


def test_truncation_off_is_identical_and_on_zeroes_only_the_tail(problem):
    _, engine = _pair(problem)
    _, engine_none = _pair(problem, truncation_tol=None, chunk_size=2)
    perms = random_permutations(K, 6, seed=5)
    for perm in perms:
        assert np.array_equal(engine.marginals(perm), engine_none.marginals(perm))
    full = engine.full_value
    checked = 0
    for perm in perms:
        vals, done = engine.prefix_values(perm)
        assert done == K
        gaps = np.abs(vals[1:] - full)
        # tolerances half-way between consecutive gaps, first met strictly inside the permutation
        srt = np.sort(gaps)
        for lo, hi in zip(srt[1:5], srt[2:6], strict=False):
            if hi - lo < 1e-5:
                continue
            tol = (lo + hi) / 2
            first = int(np.flatnonzero(gaps <= tol)[0])  # 0-based position of the truncating prefix
            if first >= K - 1:
                continue
            _, trunc = _pair(problem, truncation_tol=float(tol), chunk_size=1)
            m_full = engine.marginals(perm)
            m_trunc = trunc.marginals(perm)
            head, tail = perm[: first + 1], perm[first + 1 :]
            assert np.allclose(m_trunc[head], m_full[head], atol=1e-6)
            assert np.all(m_trunc[tail] == 0.0)
            assert np.any(m_full[tail] != 0.0)
            _, evaluated = trunc.prefix_values(perm)
            assert evaluated == first + 1 < K  # the tail was not computed
            # sum telescopes to the truncation prefix, within tol of v(N)
            assert abs(m_trunc.sum() - (full - trunc.empty_value)) <= tol + 1e-9
            checked += 1
    assert checked >= 3


def test_truncation_chunked_later_layers_match(problem):
    _, whole = _pair(problem, truncation_tol=0.05, chunk_size=2)
    _, chunked = _pair(problem, truncation_tol=0.05, chunk_size=2)
    chunked.later_block_limit = 0  # force per-chunk later-layer running sums
    for perm in random_permutations(K, 4, seed=9):
        a, b = whole.marginals(perm), chunked.marginals(perm)
        assert np.allclose(a, b, atol=1e-9)
    assert whole.evaluations == chunked.evaluations < 4 * K  # truncation did happen


def test_truncation_with_chunks_saves_work(problem):
    _, engine = _pair(problem, truncation_tol=10.0, chunk_size=3)
    m = engine.marginals(list(range(K)))
    assert np.all(m[1:] == 0.0) and m[0] != 0.0  # everything is within 10 of v(N)
    _, evaluated = engine.prefix_values(list(range(K)))
    assert evaluated == 3  # one chunk


@pytest.mark.parametrize(
    "perm",
    [
        [0, 1, 2, 3, 4, 5, 6],  # too short
        [0, 1, 2, 3, 4, 5, 6, 6],  # duplicate
        [0, 1, 2, 3, 4, 5, 6, 8],  # out of range
        [0.0, 1, 2, 3, 4, 5, 6, 7],
        np.arange(8, dtype=float),
        [True, 1, 2, 3, 4, 5, 6, 7],
        np.arange(16).reshape(2, 8),
        "01234567",
        None,
    ],
)
def test_bad_permutation_rejected(problem, perm):
    naive, engine = _pair(problem)
    with pytest.raises(InvalidInput):
        engine.marginals(perm)
    with pytest.raises(InvalidInput):
        naive.marginals(perm)


def test_permutation_types_accepted():
    assert check_permutation(torch.tensor([2, 0, 1]), 3).tolist() == [2, 0, 1]
    assert check_permutation(np.array([1, 0], dtype=np.int32), 2).tolist() == [1, 0]
    assert check_permutation((0,), 1).tolist() == [0]


def test_bad_constructor_and_coalition_inputs(problem):
    args = (problem["updates"], problem["n"], problem["X"], problem["y"])
    for cls in (NaiveUtility, ShapleyEngine):
        with pytest.raises(InvalidInput):
            cls(*args, metric="f1")
        with pytest.raises(InvalidInput, match="global_weights"):
            cls(*args, empty_value="global")
        with pytest.raises(InvalidInput):
            cls(*args, empty_value="zero")
        with pytest.raises(InvalidInput):
            cls(*args, empty_value=float("nan"))
        bad = [dict(u) for u in problem["updates"]]
        bad[3]["layers.0.bias"] = bad[3]["layers.0.bias"].clone()
        bad[3]["layers.0.bias"][0] = float("nan")
        with pytest.raises(InvalidInput, match="update 3"):
            cls(bad, *args[1:])
        with pytest.raises(InvalidInput):
            cls(args[0], [1] * (K - 1), *args[2:])
        with pytest.raises(InvalidInput):
            cls(args[0], [0] * K, *args[2:])
        with pytest.raises(InvalidInput):
            cls(*args[:2], problem["X"][:, :-1], problem["y"])
        with pytest.raises(InvalidInput):
            cls(*args[:3], problem["y"] + 10)
        u = cls(*args)
        for coalition in ({K}, {-1}, {0.5}, "ab"):
            with pytest.raises(InvalidInput):
                u(coalition)
    with pytest.raises(InvalidInput):
        ShapleyEngine(*args, truncation_tol=-1.0)
    with pytest.raises(InvalidInput):
        ShapleyEngine(*args, chunk_size=0)
    with pytest.raises(InvalidInput):
        ShapleyEngine(*args, scan="yes")
    for bad in (0, 2.5, True):
        with pytest.raises(InvalidInput):
            ShapleyEngine(*args, batch_size=bad)


def test_permutation_shapley_efficiency(problem):
    _, engine = _pair(problem)
    perms = random_permutations(K, 12, seed=4)
    est = permutation_shapley(engine, permutations=perms)
    mean = np.mean([engine.marginals(p) for p in perms], axis=0)
    assert np.allclose(est, mean, atol=1e-12)
    assert est.sum() == pytest.approx(engine.full_value - engine.empty_value, abs=1e-6)
    seen = []
    permutation_shapley(engine, 5, seed=1, callback=lambda t, s: seen.append(t) or t == 3)
    assert seen == [1, 2, 3]


def test_default_device_and_workspace(problem):
    engine = ShapleyEngine(problem["updates"], problem["n"], problem["X"], problem["y"])
    assert engine.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    H1 = problem["updates"][0]["layers.0.weight"].shape[0]
    assert engine.workspace_bytes >= K * problem["X"].shape[0] * H1 * 4


def test_single_layer_model():
    pb = _problem(())
    naive, engine = _pair(pb, chunk_size=3)
    for perm in random_permutations(K, 2, seed=0):
        assert np.max(np.abs(engine.marginals(perm) - naive.marginals(perm))) <= 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(problem):  # pragma: no cover - runs only with a GPU
    args = (problem["updates"], problem["n"], problem["X"], problem["y"])
    cpu = ShapleyEngine(*args, device="cpu")
    gpu = ShapleyEngine(*args, device="cuda")
    perms = random_permutations(K, 5, seed=0)
    for perm in perms[:3]:
        assert np.max(np.abs(cpu.marginals(perm) - gpu.marginals(perm))) <= 1e-5
    assert gpu.scan and gpu.batch_size > 1
    many = gpu.marginals_many(perms)
    assert np.max(np.abs(many - np.stack([cpu.marginals(q) for q in perms]))) <= 1e-5


def test_accuracy_metric_is_the_first_maximum_rule_ties_included():
    """metric_values decides accuracy without an argmax; it must agree with argmax (first maximum on
    ties) exactly, on ties before, at and after the label."""
    from fedcoin.valuation.problem import metric_values

    g = torch.Generator().manual_seed(3)
    P, C, M = 7, 10, 500
    logits = torch.randint(-3, 4, (P, C, M), generator=g).float()  # few distinct values: many ties
    y = torch.randint(0, C, (M,), generator=g)
    expected = (logits.argmax(dim=1) == y.view(1, M)).double().mean(dim=1)
    got = metric_values(logits, y, "accuracy")
    assert torch.equal(got, expected)
    tied = (logits == logits.amax(dim=1, keepdim=True)).sum(dim=1) > 1
    assert tied.float().mean() > 0.2  # the case is exercised
