"""The work log's encodings: deflated or raw, the same leaves, root and mean; bad encodings refused."""

from __future__ import annotations

import base64
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedcoin.chain.work import MAX_WORK_BYTES, MAX_WORK_VALUES, WorkLog, WorkLogWriter
from fedcoin.errors import InvalidInput


def accuracy_like(rows: int, n: int, seed: int = 0) -> np.ndarray:
    """Marginals under an accuracy metric on 1,000 samples: differences of multiples of 1/1000."""
    rng = np.random.default_rng(seed)
    counts = np.cumsum(rng.integers(-3, 6, size=(rows, n)), axis=1) + 100
    values = np.concatenate([np.zeros((rows, 1)), counts / 1000.0], axis=1)
    return np.diff(values, axis=1)


def encoded(log: WorkLog) -> bytes:
    return base64.b64decode(log.leaves_b64)


def test_both_encodings_carry_the_same_leaves_root_and_mean():
    leaves = accuracy_like(500, 20)
    deflated = WorkLog.from_leaves(leaves, 20)
    raw = WorkLog.from_leaves(leaves, 20, encoding="raw")
    assert deflated.encoding == "deflate" and raw.encoding == "raw"
    assert np.array_equal(deflated.leaves(), leaves) and np.array_equal(raw.leaves(), leaves)
    assert deflated.root() == raw.root() and deflated.mean() == raw.mean()
    assert deflated.path(7) == raw.path(7)
    assert len(encoded(deflated)) * 3 < len(encoded(raw))  # accuracy marginals repeat: deflate pays
    again = WorkLog.from_json(deflated.model_dump_json())  # through the wire format
    assert again == deflated and np.array_equal(again.leaves(), leaves)


def test_a_log_without_an_encoding_field_is_raw():
    """Logs written before deflate existed (stored chains) still read."""
    leaves = accuracy_like(3, 4)
    old = {"n_players": 4, "leaves_b64": base64.b64encode(leaves.astype("<f8").tobytes()).decode()}
    assert np.array_equal(WorkLog.from_dict(old).leaves(), leaves)


@pytest.mark.parametrize(
    "data, match",
    [
        (b"not a deflate stream", "not a deflate stream"),
        (zlib.compress(np.zeros((4, 3)).tobytes())[:-6], "truncated"),
        (zlib.compress(np.zeros((4, 3)).tobytes()) + b"tail", "followed by other bytes"),
        (zlib.compress(np.zeros(5).tobytes()), "whole number of 3-value leaves"),
        (zlib.compress(np.array([1.0, np.nan, 2.0]).tobytes()), "non-finite"),
    ],
)
def test_a_malformed_deflated_log_is_refused(data, match):
    log = WorkLog(n_players=3, encoding="deflate", leaves_b64=base64.b64encode(data).decode())
    with pytest.raises(InvalidInput, match=match):
        log.leaves()


def test_a_deflate_bomb_is_refused_without_decoding_it_all():
    """A few KiB that would inflate past the decoded limit are refused at the limit."""
    inflater = zlib.compressobj(9)
    chunk = bytes(1 << 20)
    parts = [inflater.compress(chunk) for _ in range(MAX_WORK_VALUES * 8 // len(chunk) + 8)]
    data = b"".join(parts) + inflater.flush()
    assert len(data) < 200_000
    log = WorkLog(n_players=1, encoding="deflate", leaves_b64=base64.b64encode(data).decode())
    with pytest.raises(InvalidInput, match="decodes past 128 MiB"):
        log.leaves()


def test_an_unknown_encoding_is_refused():
    with pytest.raises(InvalidInput, match="malformed work log"):
        WorkLog.from_dict({"n_players": 1, "encoding": "lz4", "leaves_b64": ""})
    with pytest.raises(InvalidInput, match="unknown work log encoding"):
        WorkLog.from_leaves(np.zeros((1, 1)), 1, encoding="lz4")  # type: ignore[arg-type]


def test_a_log_that_encodes_past_a_block_is_a_clear_error():
    n = 1024
    noise = np.random.default_rng(1).standard_normal((MAX_WORK_BYTES * 5 // 4 // (8 * n), n))  # 20 MiB
    with pytest.raises(InvalidInput, match=r"encodes to 1[7-9]\.\d MiB; a block carries at most 16 MiB"):
        WorkLog.from_leaves(noise, n)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 40),
    batches=st.lists(st.tuples(st.integers(1, 300), st.booleans()), min_size=1, max_size=12),
    seed=st.integers(0, 2**16),
)
def test_the_writer_bounds_its_encoding_and_matches_the_leaves(n, batches, seed):
    rng = np.random.default_rng(seed)
    writer = WorkLogWriter(n)
    writer.FLUSH_BYTES = 4096  # flush often, so the bound's both parts are exercised
    rows = []
    for count, noisy in batches:
        block = rng.standard_normal((count, n)) if noisy else accuracy_like(count, n, seed)
        writer.append(block)
        rows.append(block)
        log = writer.log()
        assert len(encoded(log)) <= writer.encoded_bound
    leaves = np.concatenate(rows)
    assert writer.rows == leaves.shape[0]
    assert np.array_equal(log.leaves(), leaves)
    assert log.root() == WorkLog.from_leaves(leaves, n, encoding="raw").root()


def test_the_writer_says_when_more_would_not_fit():
    writer = WorkLogWriter(10, max_bytes=10_000)
    assert writer.fits(100) and not writer.fits(200)  # 100 incompressible leaves are 8,000 bytes
    writer.append(np.random.default_rng(0).standard_normal((100, 10)))
    assert not writer.fits(30)
    assert len(encoded(writer.log())) <= 10_000
