"""Partition, EMD, model, local training and FedAvg (with update validation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedcoin.errors import InvalidInput
from fedcoin.fl import data
from fedcoin.fl import fedavg as fl_avg
from fedcoin.fl import model as fl_model
from fedcoin.fl import partition as fl_partition
from fedcoin.fl import training as fl_training

FASHION = data.FASHION_MNIST_DIR
needs_fashion = pytest.mark.skipif(
    not (FASHION / "train-labels-idx1-ubyte.gz").exists(), reason="Debian dataset-fashion-mnist not installed"
)


@pytest.fixture(scope="module")
def fashion():
    images, labels = data.load_split(FASHION, "train", max_items=6000)
    X, y = data.to_tensors(images, labels)
    return X, y, labels


# --------------------------------------------------------------------------- partition


def test_labels_for_type_rule():
    assert [fl_partition.labels_for_type(j, 10, 10) for j in range(10)] == list(range(10, 0, -1))
    assert [fl_partition.labels_for_type(j, 4, 10) for j in range(4)] == [10, 7, 4, 1]
    assert fl_partition.labels_for_type(0, 1, 10) == 10
    assert [fl_partition.labels_for_type(j, 3, 2) for j in range(3)] == [2, 2, 1]
    with pytest.raises(InvalidInput):
        fl_partition.labels_for_type(10, 10, 10)


def test_assign_types():
    t = fl_partition.assign_types(100, 10)
    assert np.array_equal(np.bincount(t), np.full(10, 10)) and t[0] == 0 and t[99] == 9
    t = fl_partition.assign_types(13, 10)
    counts = np.bincount(t, minlength=10)
    assert counts.min() >= 1 and counts.max() <= 2 and counts.sum() == 13
    assert np.all(np.diff(t) >= 0)
    assert fl_partition.assign_types(5, 10).tolist() == [0, 2, 4, 6, 8]


@needs_fashion
def test_partition_label_counts_per_type(fashion):
    _, _, labels = fashion
    part = fl_partition.partition_by_type(labels, num_clients=20, num_types=10, samples_per_client=100, seed=3)
    assert part.num_clients == 20 and part.types.tolist() == [j for j in range(10) for _ in range(2)]
    for k, ix in enumerate(part.indices):
        j = int(part.types[k])
        assert len(ix) == 100 and len(np.unique(ix)) == 100  # without replacement
        got = labels[ix]
        assert sorted(set(got.tolist())) == list(part.label_sets[k])
        assert len(part.label_sets[k]) == 10 - j
        counts = np.bincount(got, minlength=10)[list(part.label_sets[k])]
        assert counts.max() - counts.min() <= 1  # uniform over the client's labels


@needs_fashion
def test_partition_deterministic_by_seed(fashion):
    _, _, labels = fashion
    a = fl_partition.partition_by_type(labels, 12, 5, 60, seed=7)
    b = fl_partition.partition_by_type(labels, 12, 5, 60, seed=7)
    c = fl_partition.partition_by_type(labels, 12, 5, 60, seed=8)
    assert all(np.array_equal(x, y) for x, y in zip(a.indices, b.indices, strict=False))
    assert a.label_sets == b.label_sets
    assert any(not np.array_equal(x, y) for x, y in zip(a.indices, c.indices, strict=False))


def test_partition_errors():
    labels = np.repeat(np.arange(10), 5)
    with pytest.raises(InvalidInput, match="only 5 exist"):
        fl_partition.partition_by_type(labels, 10, 10, samples_per_client=60)
    with pytest.raises(InvalidInput):
        fl_partition.partition_by_type(labels.astype(float), 10, 10, 10)
    with pytest.raises(InvalidInput):
        fl_partition.partition_by_type(labels, 0, 10, 10)


# --------------------------------------------------------------------------- EMD


def test_emd_definition_and_paper_types():
    uniform = np.full(10, 0.1)
    for j in range(10):
        p = np.zeros(10)
        p[: 10 - j] = 1.0 / (10 - j)
        assert fl_partition.emd(p, uniform) == pytest.approx(2 * j / 10, abs=1e-12)  # = 10 x Table 2
    assert fl_partition.emd([1, 0], [0, 1]) == 2.0
    with pytest.raises(InvalidInput):
        fl_partition.emd([0.5, 0.5], [1.0])


@needs_fashion
def test_emd_increases_with_type(fashion):
    _, _, labels = fashion
    part = fl_partition.partition_by_type(labels, 10, 10, 300, seed=0)
    ref = fl_partition.label_distribution(labels)
    e = [fl_partition.emd(fl_partition.label_distribution(labels[ix]), ref) for ix in part.indices]
    assert e[0] < 0.05  # the T0 client matches the data set up to its imbalance
    assert all(b > a for a, b in zip(e, e[1:], strict=False))
    assert e[9] == pytest.approx(1.8, abs=0.05)


# --------------------------------------------------------------------------- model and training


def test_mlp_shapes_and_forward_agree():
    w = fl_model.init_weights((20, 7), in_features=12, num_classes=3, seed=1)
    assert fl_model.weight_shapes(w) == {
        "layers.0.weight": (20, 12),
        "layers.0.bias": (20,),
        "layers.1.weight": (7, 20),
        "layers.1.bias": (7,),
        "layers.2.weight": (3, 7),
        "layers.2.bias": (3,),
    }
    assert all(v.dtype == torch.float32 for v in w.values())
    x = torch.randn(5, 12)
    model = fl_model.model_from_weights(w)
    assert torch.allclose(model(x), fl_model.forward(w, x), atol=1e-6)
    assert torch.equal(fl_model.init_weights((20, 7), 12, 3, seed=1)["layers.1.weight"], w["layers.1.weight"])
    default = fl_model.init_weights()
    assert default["layers.0.weight"].shape == (200, 784) and default["layers.1.weight"].shape == (10, 200)


@needs_fashion
def test_local_train_deterministic_and_reduces_loss(fashion):
    X, y, _ = fashion
    Xk, yk = X[:600], y[:600]
    g = fl_model.init_weights(seed=0)
    g_copy = {k: v.clone() for k, v in g.items()}
    u1, n1 = fl_training.local_train(g, Xk, yk, iterations=20, seed=5)
    u2, _ = fl_training.local_train(g, Xk, yk, iterations=20, seed=5)
    u3, _ = fl_training.local_train(g, Xk, yk, iterations=20, seed=6)
    assert n1 == 600
    assert set(u1) == set(g) and all(v.dtype == torch.float32 and v.device.type == "cpu" for v in u1.values())
    assert all(torch.equal(u1[k], u2[k]) for k in u1)
    assert any(not torch.equal(u1[k], u3[k]) for k in u1)
    assert all(torch.equal(g[k], g_copy[k]) for k in g)  # global weights untouched
    with torch.no_grad():  # local_train re-enables autograd for itself
        u4, _ = fl_training.local_train(g, Xk, yk, iterations=20, seed=5)
    assert all(torch.equal(u1[k], u4[k]) for k in u1)
    before = fl_model.evaluate(g, Xk, yk)["loss"]
    after = fl_model.evaluate(u1, Xk, yk)["loss"]
    assert after < before - 0.3


def test_local_train_rejects_bad_input():
    g = fl_model.init_weights((4,), in_features=6, num_classes=3)
    X, y = torch.rand(10, 6), torch.randint(0, 3, (10,))
    with pytest.raises(InvalidInput):
        fl_training.local_train(g, torch.rand(10, 5), y)
    with pytest.raises(InvalidInput):
        fl_training.local_train(g, X, y, lr=float("nan"))
    bad = dict(g)
    bad["layers.0.bias"] = torch.full((4,), float("nan"))
    with pytest.raises(InvalidInput):
        fl_training.local_train(bad, X, y)


# --------------------------------------------------------------------------- FedAvg


def _random_update(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "layers.0.weight": torch.randn(4, 6, generator=gen),
        "layers.0.bias": torch.randn(4, generator=gen),
        "layers.1.weight": torch.randn(3, 4, generator=gen),
        "layers.1.bias": torch.randn(3, generator=gen),
    }


def test_fedavg_equals_hand_weighted_average():
    ups = [_random_update(s) for s in range(3)]
    n = [100, 250, 650]
    avg = fl_avg.fedavg(ups, n)
    for key in ups[0]:
        hand = (100 * ups[0][key].double() + 250 * ups[1][key].double() + 650 * ups[2][key].double()) / 1000
        assert avg[key].dtype == torch.float32
        assert torch.allclose(avg[key].double(), hand, atol=1e-6)
    single = fl_avg.fedavg([ups[1]], [7])
    assert all(torch.equal(single[k], ups[1][k]) for k in single)


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda u: u.__setitem__("layers.0.weight", torch.full((4, 6), float("nan"))), "NaN or Inf"),
        (lambda u: u["layers.1.bias"].__setitem__(0, float("inf")), "NaN or Inf"),
        (lambda u: u.__setitem__("layers.0.weight", torch.zeros(6, 4)), "shape"),
        (lambda u: u.__setitem__("layers.0.bias", torch.zeros(4, dtype=torch.float64)), "dtype"),
        (lambda u: u.pop("layers.1.bias"), "missing"),
        (lambda u: u.__setitem__("layers.9.weight", torch.zeros(1)), "unexpected"),
        (lambda u: u.__setitem__("layers.0.bias", [0.0] * 4), "not a tensor"),
    ],
)
def test_validate_update_rejects_and_fedavg_never_aggregates(monkeypatch, corrupt, match):
    good = _random_update(0)
    bad = _random_update(1)
    corrupt(bad)
    with pytest.raises(InvalidInput, match=match):
        fl_avg.validate_update(bad, fl_model.weight_shapes(good))
    calls = []
    real = fl_avg.weighted_average
    monkeypatch.setattr(fl_avg, "weighted_average", lambda *a, **k: calls.append(1) or real(*a, **k))
    with pytest.raises(InvalidInput, match="update 1 rejected"):
        fl_avg.fedavg([good, bad], [1, 1])
    assert calls == []  # rejected before any arithmetic
    fl_avg.fedavg([good, _random_update(2)], [1, 1])
    assert calls == [1]


def test_fedavg_bad_counts():
    ups = [_random_update(0), _random_update(1)]
    for n in ([1], [1, 0], [1, float("nan")], [1, -2]):
        with pytest.raises(InvalidInput):
            fl_avg.fedavg(ups, n)
    with pytest.raises(InvalidInput):
        fl_avg.fedavg([], [])
    with pytest.raises(InvalidInput):
        fl_avg.validate_update("not a dict", fl_model.weight_shapes(ups[0]))


@needs_fashion
def test_run_fedavg_records_rounds(fashion):
    X, y, labels = fashion
    part = fl_partition.partition_by_type(labels, 3, 3, 120, seed=0)
    clients = [(X[ix], y[ix]) for ix in part.indices]
    hist = fl_training.run_fedavg(clients, rounds=2, hidden=(16,), iterations=5, seed=1, X_val=X[-500:], y_val=y[-500:])
    assert [r.round for r in hist.rounds] == [0, 1]
    r0, r1 = hist.rounds
    assert len(r0.updates) == 3 and r0.n_samples == [120, 120, 120]
    assert all(torch.equal(r0.global_after[k], r1.global_before[k]) for k in r0.global_after)
    again = fl_avg.fedavg(r1.updates, r1.n_samples)
    assert all(torch.equal(again[k], hist.final_weights[k]) for k in again)
    assert set(r1.metrics) == {"loss", "accuracy"} and 0.0 <= r1.metrics["accuracy"] <= 1.0
    hist2 = fl_training.run_fedavg(clients, rounds=1, hidden=(16,), iterations=5, seed=1)
    assert all(torch.equal(hist2.rounds[0].global_after[k], r0.global_after[k]) for k in r0.global_after)


class _Finalised:
    """An object whose finaliser runs Python code, so a garbage collection can switch threads."""

    freed = 0

    def __del__(self) -> None:
        _Finalised.freed += 1


def test_weights_unpack_from_many_threads_at_once() -> None:
    """Servers unpack client updates on worker threads. NumPy parses .npy headers with
    ast.literal_eval, which CPython 3.11 breaks under concurrent use (gh-106905); with
    frequent collections and thread switches this fails within a few hundred loads
    unless content.py serialises the reads."""
    import gc
    import sys
    import threading

    from fedcoin.fl.content import pack_weights, unpack_weights

    weights = {f"layers.{i}.weight": torch.randn(8, 12) for i in range(6)}
    blob = pack_weights(weights)
    errors: list[BaseException] = []

    def unpack_many() -> None:
        try:
            for _ in range(400):
                garbage: list[object] = [_Finalised() for _ in range(5)]
                garbage.append(garbage)
                got = unpack_weights(blob)
                assert torch.equal(got["layers.5.weight"], weights["layers.5.weight"])
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    old_threshold, old_interval = gc.get_threshold(), sys.getswitchinterval()
    gc.set_threshold(50, 2, 2)
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=unpack_many) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        gc.set_threshold(*old_threshold)
        sys.setswitchinterval(old_interval)
    assert errors == []
