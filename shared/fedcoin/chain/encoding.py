"""Canonical byte encoding used for every hash and signature in FedCoin.

The encoding is JSON with a fixed shape, so it can be reproduced from any
language:

* objects are written with keys sorted by their UTF-16 code units (Python's
  ``sort_keys``), no whitespace (``","`` and ``":"`` separators) and
  ASCII-only output (non-ASCII characters escaped as ``\\uXXXX``);
* integers are written in decimal without exponent;
* floats are written with Python's shortest round-trip ``repr`` (for example
  ``0.1``, ``1e-06``, ``-2.5``); NaN and infinities are not encodable;
* every encoded value is prefixed with a domain tag and a newline
  (``b"fedcoin/tx/v1\\n"``) so that a signature over one kind of object can
  never be replayed as a signature over another.

Hashes are SHA-256 and are written as 64 lowercase hex characters.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from ..errors import InvalidInput

HASH_HEX_LEN = 64
ZERO_HASH = "0" * HASH_HEX_LEN


def _check_finite(value: Any, path: str = "$") -> None:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput(f"{path} is not a finite number: {value!r}")
    elif isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidInput(f"{path} has a non-string key {k!r}")
            _check_finite(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(v, f"{path}[{i}]")


def canonical_json(value: Any) -> bytes:
    """Encode ``value`` (dicts, lists, str, int, float, bool, None) canonically."""
    _check_finite(value)
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"value is not canonically encodable: {exc}") from exc
    return text.encode("ascii")


def tagged(domain: str, value: Any) -> bytes:
    """The bytes that are hashed and signed: ``domain`` tag, newline, canonical JSON."""
    return domain.encode("ascii") + b"\n" + canonical_json(value)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_hex(value: Any, length: int | None = None) -> bool:
    if not isinstance(value, str) or (length is not None and len(value) != length):
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return value == value.lower()
