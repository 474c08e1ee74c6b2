"""Merkle root of a block body's transactions.

Leaves are transaction ids (SHA-256 hex). To avoid the ambiguity of Bitcoin's
"duplicate the last node" rule (two different lists with one root), the tree
follows RFC 6962: a leaf hashes as ``SHA-256(0x00 || txid)``, an inner node as
``SHA-256(0x01 || left || right)``, and an odd node at the end of a level is
promoted unchanged. The root of an empty list is ``SHA-256(b"")``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from ..errors import InvalidInput
from .encoding import is_hex


def merkle_root(txids: Sequence[str]) -> str:
    if not txids:
        return hashlib.sha256(b"").hexdigest()
    level = []
    for txid in txids:
        if not is_hex(txid, 64):
            raise InvalidInput(f"merkle leaf is not a SHA-256 hex digest: {txid!r}")
        level.append(hashlib.sha256(b"\x00" + bytes.fromhex(txid)).digest())
    while len(level) > 1:
        nxt = [hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0].hex()
