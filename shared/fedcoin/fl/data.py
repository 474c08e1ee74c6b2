"""MNIST-format (IDX) data loading for the FedCoin experiments.

IDX format (LeCun et al.): two zero bytes, a type code, the number of
dimensions ``d``, then ``d`` big-endian uint32 sizes, then the data in C order.
MNIST / Fashion-MNIST use type ``0x08`` (unsigned byte): images have magic
``0x00000803`` (3-D, ``N x 28 x 28``) and labels ``0x00000801`` (1-D, ``N``).

Files may be raw or gzip-compressed (detected from the content, not the name).
Every loader validates what it reads and raises :class:`IDXFormatError` (an
:class:`~fedcoin.errors.InvalidInput`) for malformed files and
:class:`DatasetNotFound` (a ``FileNotFoundError``) for missing ones.

Nothing here downloads anything unless ``download=True`` is passed explicitly
to :func:`load_dataset`.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedcoin.errors import FedcoinError, InvalidInput

__all__ = [
    "IDXFormatError",
    "DatasetNotFound",
    "Dataset",
    "FASHION_MNIST_DIR",
    "SPLIT_FILES",
    "read_idx",
    "load_idx_images",
    "load_idx_labels",
    "find_idx_file",
    "load_split",
    "to_tensors",
    "load_dataset",
]

#: Default location of Fashion-MNIST (Debian package ``dataset-fashion-mnist``).
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

#: IDX file stems of each split: (images, labels).
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

_IDX_TYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IDXFormatError(InvalidInput):
    """An IDX file is malformed (bad magic, truncated, unexpected shape or values)."""


class DatasetNotFound(FedcoinError, FileNotFoundError):
    """A data set file or directory does not exist."""


def _open(path: Path) -> io.BufferedIOBase:
    """Open ``path`` for reading, transparently decompressing gzip (detected by content)."""
    try:
        with open(path, "rb") as probe:
            head = probe.read(2)
    except FileNotFoundError:
        raise DatasetNotFound(f"IDX file not found: {path}") from None
    except IsADirectoryError:
        raise IDXFormatError(f"{path} is a directory, not an IDX file") from None
    if head == b"\x1f\x8b":
        return gzip.open(path, "rb")
    return open(path, "rb")


def _read_exact(f: io.BufferedIOBase, n: int, path: Path, what: str) -> bytes:
    try:
        data = f.read(n)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:  # corrupt gzip stream
        raise IDXFormatError(f"{path}: cannot read {what}: {exc}") from None
    if len(data) != n:
        raise IDXFormatError(f"{path}: truncated {what} (wanted {n} bytes, got {len(data)})")
    return data


def read_idx(path: str | os.PathLike, max_items: int | None = None) -> np.ndarray:
    """Read a whole IDX file (raw or gzip) into a NumPy array of its declared type/shape.

    ``max_items`` reads only the first items along axis 0 (the gzip stream is
    decompressed only that far), so tests can load small slices quickly; the
    trailing-bytes check is then skipped.  Raises :class:`IDXFormatError` on a
    bad magic number, unknown type code, truncated or over-long file.
    """
    path = Path(path)
    if max_items is not None and (isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 0):
        raise InvalidInput(f"max_items must be a non-negative integer, got {max_items!r}")
    with _open(path) as f:
        magic = _read_exact(f, 4, path, "magic number")
        if magic[0] != 0 or magic[1] != 0:
            raise IDXFormatError(f"{path}: bad IDX magic {magic.hex()} (first two bytes must be zero)")
        code, ndim = magic[2], magic[3]
        if code not in _IDX_TYPES:
            raise IDXFormatError(f"{path}: unknown IDX type code 0x{code:02x}")
        if ndim == 0:
            raise IDXFormatError(f"{path}: IDX file declares 0 dimensions")
        dims = list(struct.unpack(">" + "I" * ndim, _read_exact(f, 4 * ndim, path, "dimension sizes")))
        full = dims[0]
        if max_items is not None:
            dims[0] = min(dims[0], max_items)
        dtype = _IDX_TYPES[code]
        count = int(np.prod(dims, dtype=np.int64))
        data = _read_exact(f, count * dtype.itemsize, path, "data")
        if max_items is None or max_items >= full:
            try:
                extra = f.read(1)
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                raise IDXFormatError(f"{path}: cannot read: {exc}") from None
            if extra:
                raise IDXFormatError(f"{path}: trailing bytes after the declared {count} items")
    arr = np.frombuffer(data, dtype=dtype).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def load_idx_images(path: str | os.PathLike, max_items: int | None = None) -> np.ndarray:
    """uint8 images ``(N, rows, cols)`` from an IDX3 ubyte file (magic ``0x00000803``)."""
    path = Path(path)
    arr = read_idx(path, max_items)
    if arr.ndim != 3 or arr.dtype != np.uint8:
        raise IDXFormatError(
            f"{path}: expected an image file (magic 0x{IMAGES_MAGIC:08x}, uint8 N x rows x cols), "
            f"got {arr.dtype} array of shape {arr.shape}"
        )
    return arr


def load_idx_labels(path: str | os.PathLike, max_items: int | None = None, num_classes: int = 10) -> np.ndarray:
    """int64 labels ``(N,)`` in ``[0, num_classes)`` from an IDX1 ubyte file (magic ``0x00000801``)."""
    path = Path(path)
    arr = read_idx(path, max_items)
    if arr.ndim != 1 or arr.dtype != np.uint8:
        raise IDXFormatError(
            f"{path}: expected a label file (magic 0x{LABELS_MAGIC:08x}, uint8 N), "
            f"got {arr.dtype} array of shape {arr.shape}"
        )
    if arr.size and int(arr.max()) >= num_classes:
        raise IDXFormatError(f"{path}: label {int(arr.max())} out of range [0, {num_classes})")
    return arr.astype(np.int64)


def find_idx_file(data_dir: str | os.PathLike, stem: str) -> Path:
    """Locate ``stem`` or ``stem.gz`` in ``data_dir`` (also ``raw/`` and ``*/raw/``, torchvision's layout)."""
    base = Path(data_dir)
    if not base.is_dir():
        raise DatasetNotFound(f"data directory not found: {base}")
    tried = []
    dirs = [base, base / "raw", base / "MNIST" / "raw", base / "FashionMNIST" / "raw"]
    for d in dirs:
        for name in (stem, stem + ".gz"):
            p = d / name
            tried.append(str(p))
            if p.is_file():
                return p
    raise DatasetNotFound(f"no {stem}[.gz] in {base}; tried: {', '.join(tried)}")


def load_split(
    data_dir: str | os.PathLike, split: str = "train", max_items: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 28, 28), labels int64 (N,))`` of one split (``"train"`` or ``"test"``)."""
    if split not in SPLIT_FILES:
        raise InvalidInput(f"split must be one of {sorted(SPLIT_FILES)}, got {split!r}")
    img_stem, lab_stem = SPLIT_FILES[split]
    images = load_idx_images(find_idx_file(data_dir, img_stem), max_items)
    labels = load_idx_labels(find_idx_file(data_dir, lab_stem), max_items)
    if images.shape[1:] != (28, 28):
        raise IDXFormatError(f"{data_dir}: {split} images are {images.shape[1:]}, expected 28 x 28")
    if images.shape[0] != labels.shape[0]:
        raise IDXFormatError(f"{data_dir}: {split} has {images.shape[0]} images but {labels.shape[0]} labels")
    return images, labels


def to_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """``(X float32 (N, 784) in [0, 1], y int64 (N,))`` from uint8 images and integer labels."""
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim < 2:
        raise InvalidInput(f"images must be a uint8 array (N, ...), got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise InvalidInput(f"labels must be integers of shape ({images.shape[0]},), got {labels.dtype} {labels.shape}")
    X = torch.from_numpy(images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(255.0))
    y = torch.from_numpy(labels.astype(np.int64))
    return X, y


@dataclass(frozen=True)
class Dataset:
    """A loaded MNIST-like data set (NumPy arrays; see :func:`to_tensors`)."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int = 10

    def train_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return to_tensors(self.train_images, self.train_labels)

    def test_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return to_tensors(self.test_images, self.test_labels)


_DATASETS = ("fashion-mnist", "mnist")


def _torchvision_download(name: str, root: Path) -> Path:  # pragma: no cover - needs the network
    import torchvision

    cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
    for train in (True, False):
        cls(root=str(root), train=train, download=True)
    return root / cls.__name__ / "raw"


def load_dataset(
    name: str = "fashion-mnist",
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    max_train: int | None = None,
    max_test: int | None = None,
) -> Dataset:
    """Load ``"fashion-mnist"`` or ``"mnist"`` (train and test splits) from IDX files.

    * ``fashion-mnist``: ``data_dir`` defaults to :data:`FASHION_MNIST_DIR`
      (``/usr/share/datasets/fashion-mnist``, Debian ``dataset-fashion-mnist``).
    * ``mnist``: pass ``data_dir``, a directory of the four IDX files (raw or
      ``.gz``; torchvision's ``MNIST/raw`` layout is also found).  There is no
      default directory.

    With ``download=True`` (never the default) and files missing, torchvision
    downloads the data set into ``data_dir`` (when not given:
    ``~/.cache/fedcoin/<name>``) and the downloaded IDX files are read with the
    same validating parser.  ``max_train``/``max_test`` keep only the first
    rows of each split.
    """
    if name not in _DATASETS:
        raise InvalidInput(f"dataset must be one of {_DATASETS}, got {name!r}")
    if not isinstance(download, bool):
        raise InvalidInput("download must be a bool")
    cache = Path.home() / ".cache" / "fedcoin" / name
    if data_dir is None:
        if name == "fashion-mnist":
            data_dir = FASHION_MNIST_DIR
        elif download:
            data_dir = cache
        else:
            raise DatasetNotFound(
                "mnist has no default data directory: pass data_dir=<dir with the IDX files> "
                "or download=True to fetch it with torchvision"
            )
        target = cache
    else:
        target = Path(data_dir)
    data_dir = Path(data_dir)
    try:
        train = load_split(data_dir, "train", max_train)
        test = load_split(data_dir, "test", max_test)
    except DatasetNotFound:
        if not download:
            raise
        target.mkdir(parents=True, exist_ok=True)
        raw = _torchvision_download(name, target)
        train = load_split(raw, "train", max_train)
        test = load_split(raw, "test", max_test)
    return Dataset(name, train[0], train[1], test[0], test[1])
