"""IDX parsing, validation and the data-set loaders (no downloads, ever)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from fedcoin.errors import InvalidInput
from fedcoin.fl import data
from fedcoin.fl.data import DatasetNotFound, IDXFormatError

FASHION = data.FASHION_MNIST_DIR
needs_fashion = pytest.mark.skipif(
    not (FASHION / "t10k-labels-idx1-ubyte.gz").exists(), reason="Debian dataset-fashion-mnist not installed"
)


def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    return header + arr.tobytes()


def write(path: Path, payload: bytes, gz: bool) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


@pytest.fixture
def tiny():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    return images, labels


@pytest.mark.parametrize("gz", [False, True])
def test_roundtrip_tiny_idx(tmp_path, tiny, gz):
    images, labels = tiny
    ip = write(tmp_path / "train-images-idx3-ubyte", idx_bytes(images), gz)
    lp = write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(labels), gz)
    got_i = data.load_idx_images(ip)
    got_l = data.load_idx_labels(lp)
    assert got_i.dtype == np.uint8 and got_i.shape == (5, 28, 28)
    assert np.array_equal(got_i, images)
    assert got_l.dtype == np.int64 and got_l.tolist() == [3, 1, 4, 1, 5]
    im, lab = data.load_split(tmp_path, "train")
    assert np.array_equal(im, images) and np.array_equal(lab, labels)
    head_i, head_l = data.load_split(tmp_path, "train", max_items=2)
    assert np.array_equal(head_i, images[:2]) and head_l.tolist() == [3, 1]


def test_read_idx_other_types_and_torchvision_layout(tmp_path):
    arr = np.arange(6, dtype=">i4").reshape(2, 3)
    p = tmp_path / "ints.idx"
    p.write_bytes(idx_bytes(arr, 0x0C))
    out = data.read_idx(p)
    assert out.shape == (2, 3) and out.tolist() == [[0, 1, 2], [3, 4, 5]]
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.array([7], np.uint8)))
    assert data.find_idx_file(tmp_path, "t10k-labels-idx1-ubyte") == raw / "t10k-labels-idx1-ubyte"


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda b: b"\x01" + b[1:], "magic"),
        (lambda b: b[:2] + b"\x42" + b[3:], "type code"),
        (lambda b: b[:-10], "truncated"),
        (lambda b: b + b"\x00", "trailing"),
        (lambda b: b[:3], "truncated"),
    ],
)
def test_bad_image_files_rejected(tmp_path, tiny, gz, mutate, match):
    p = write(tmp_path / "bad", mutate(idx_bytes(tiny[0])), gz)
    with pytest.raises(IDXFormatError, match=match):
        data.load_idx_images(p)


def test_semantic_errors(tmp_path, tiny):
    images, labels = tiny
    lp = tmp_path / "labels"
    lp.write_bytes(idx_bytes(labels))
    ip = tmp_path / "images"
    ip.write_bytes(idx_bytes(images))
    with pytest.raises(IDXFormatError, match="image file"):
        data.load_idx_images(lp)  # a label file is not an image file
    with pytest.raises(IDXFormatError, match="label file"):
        data.load_idx_labels(ip)
    bad = tmp_path / "bad-labels"
    bad.write_bytes(idx_bytes(np.array([1, 12], np.uint8)))
    with pytest.raises(IDXFormatError, match="out of range"):
        data.load_idx_labels(bad)
    corrupt = tmp_path / "corrupt.gz"
    corrupt.write_bytes(gzip.compress(idx_bytes(labels))[:-12] + b"garbage!")
    with pytest.raises(IDXFormatError):
        data.load_idx_labels(corrupt)
    # IDX errors are InvalidInput (and ValueError) for callers that catch broadly.
    assert issubclass(IDXFormatError, InvalidInput) and issubclass(IDXFormatError, ValueError)


def test_split_count_mismatch_and_missing(tmp_path, tiny):
    images, labels = tiny
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(images))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels[:4])))
    with pytest.raises(IDXFormatError, match="5 images but 4 labels"):
        data.load_split(tmp_path, "test")
    with pytest.raises(DatasetNotFound, match="train-images-idx3-ubyte"):
        data.load_split(tmp_path, "train")
    with pytest.raises(FileNotFoundError):
        data.load_idx_images(tmp_path / "nope")
    with pytest.raises(FileNotFoundError):
        data.load_split(tmp_path / "no-such-dir", "test")
    with pytest.raises(InvalidInput):
        data.load_split(tmp_path, "validation")
    small = np.zeros((2, 14, 14), np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(small))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels[:2])))
    with pytest.raises(IDXFormatError, match="28 x 28"):
        data.load_split(tmp_path, "test")


def test_to_tensors(tiny):
    images, labels = tiny
    X, y = data.to_tensors(images, labels)
    assert X.dtype == torch.float32 and X.shape == (5, 784)
    assert float(X.min()) >= 0.0 and float(X.max()) <= 1.0
    assert torch.allclose(X[0, :3], torch.from_numpy(images[0, 0, :3].astype(np.float32)) / 255)
    assert y.dtype == torch.int64 and y.tolist() == [3, 1, 4, 1, 5]
    with pytest.raises(InvalidInput):
        data.to_tensors(images.astype(np.float32), labels)
    with pytest.raises(InvalidInput):
        data.to_tensors(images, labels[:3])


@needs_fashion
def test_real_fashion_mnist_slices():
    im, lab = data.load_split(FASHION, "train", max_items=1000)
    assert im.shape == (1000, 28, 28) and im.dtype == np.uint8
    assert lab.dtype == np.int64 and lab[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert set(np.unique(lab).tolist()) == set(range(10))
    ds = data.load_dataset("fashion-mnist", max_train=300, max_test=200)
    assert ds.name == "fashion-mnist" and ds.train_images.shape == (300, 28, 28)
    assert ds.test_labels.shape == (200,)
    X, y = ds.test_tensors()
    assert X.shape == (200, 784) and float(X.min()) >= 0.0 and float(X.max()) <= 1.0 and X.max() > 0.5


def test_load_dataset_never_downloads_by_default(monkeypatch, tmp_path, tiny):
    def boom(*args, **kwargs):
        raise AssertionError("download attempted")

    monkeypatch.setattr(data, "_torchvision_download", boom)
    with pytest.raises(DatasetNotFound, match="no default data directory"):
        data.load_dataset("mnist")
    with pytest.raises(DatasetNotFound):
        data.load_dataset("mnist", data_dir=tmp_path)
    with pytest.raises(DatasetNotFound):
        data.load_dataset("fashion-mnist", data_dir=tmp_path)
    with pytest.raises(InvalidInput):
        data.load_dataset("cifar10")
    # An explicit directory of IDX files works for "mnist".
    images, labels = tiny
    for split in ("train", "test"):
        img_stem, lab_stem = data.SPLIT_FILES[split]
        (tmp_path / (img_stem + ".gz")).write_bytes(gzip.compress(idx_bytes(images)))
        (tmp_path / lab_stem).write_bytes(idx_bytes(labels))
    ds = data.load_dataset("mnist", data_dir=tmp_path)
    assert ds.train_images.shape == (5, 28, 28) and ds.test_labels.tolist() == [3, 1, 4, 1, 5]


def test_download_only_when_asked(monkeypatch, tmp_path, tiny):
    calls = []
    images, labels = tiny

    def fake_download(name, root):
        calls.append((name, root))
        raw = root / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for split in ("train", "test"):
            img_stem, lab_stem = data.SPLIT_FILES[split]
            (raw / img_stem).write_bytes(idx_bytes(images))
            (raw / lab_stem).write_bytes(idx_bytes(labels))
        return raw

    monkeypatch.setattr(data, "_torchvision_download", fake_download)
    ds = data.load_dataset("mnist", data_dir=tmp_path / "m", download=True)
    assert calls == [("mnist", tmp_path / "m")]
    assert ds.train_labels.tolist() == [3, 1, 4, 1, 5]
