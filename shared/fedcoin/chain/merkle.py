"""Merkle trees over SHA-256 leaves: the roots of a block's transactions and of a miner's work log,
and the inclusion paths of fraud proofs.

Leaves are SHA-256 hex digests (transaction ids, work-log leaf hashes). To
avoid the ambiguity of Bitcoin's "duplicate the last node" rule (two different
lists with one root), the tree follows RFC 6962: a leaf hashes as
``SHA-256(0x00 || leaf)``, an inner node as ``SHA-256(0x01 || left || right)``,
and an odd node at the end of a level is promoted unchanged. The root of an
empty list is ``SHA-256(b"")``.

:func:`merkle_path` gives the sibling hashes from a leaf up to the root
(promoted levels have no sibling), and :func:`verify_merkle_path` recomputes
the root from a leaf, its index, the leaf count and that path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from ..errors import InvalidInput
from .encoding import is_hex


def _leaf(h: str) -> bytes:
    if not is_hex(h, 64):
        raise InvalidInput(f"merkle leaf is not a SHA-256 hex digest: {h!r}")
    return hashlib.sha256(b"\x00" + bytes.fromhex(h)).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _levels(leaves: Sequence[str]) -> list[list[bytes]]:
    level = [_leaf(h) for h in leaves]
    levels = [level]
    while len(level) > 1:
        nxt = [_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
        levels.append(level)
    return levels


def merkle_root(leaves: Sequence[str]) -> str:
    if not leaves:
        return hashlib.sha256(b"").hexdigest()
    return _levels(leaves)[-1][0].hex()


def merkle_path(leaves: Sequence[str], index: int) -> list[str]:
    """The sibling hashes (hex) from leaf ``index`` to the root, lowest first."""
    if not 0 <= index < len(leaves):
        raise InvalidInput(f"leaf index {index} is outside 0..{len(leaves) - 1}")
    path = []
    for level in _levels(leaves)[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            path.append(level[sibling].hex())
        index //= 2
    return path


def verify_merkle_path(leaf: str, index: int, count: int, path: Sequence[str], root: str) -> bool:
    """True when ``leaf`` is leaf ``index`` of a ``count``-leaf tree with ``root``, by ``path``."""
    if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
        return False
    node = _leaf(leaf)
    rest = list(path)
    size = count
    while size > 1:
        sibling = index ^ 1
        if sibling < size:
            if not rest or not is_hex(rest[0], 64):
                return False
            other = bytes.fromhex(rest.pop(0))
            node = _node(node, other) if index % 2 == 0 else _node(other, node)
        index //= 2
        size = (size + 1) // 2
    return not rest and node.hex() == root
