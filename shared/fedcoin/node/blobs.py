"""Content-addressed files in a node's state directory: model weights and Shapley-task content.

A blob is stored under its SHA-256 and written atomically (a temporary file,
then a rename), so a reader never sees half a file and a hash always names the
bytes it was computed from.
"""

from __future__ import annotations

from pathlib import Path

from fedcoin.chain.encoding import is_hex, sha256_hex


class BlobStore:
    def __init__(self, directory: Path, suffix: str = ".npz") -> None:
        self.directory = directory
        self.suffix = suffix
        directory.mkdir(parents=True, exist_ok=True)

    def path(self, content_hash: str) -> Path:
        return self.directory / f"{content_hash}{self.suffix}"

    def put(self, data: bytes) -> str:
        h = sha256_hex(data)
        path = self.path(h)
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return h

    def get(self, content_hash: str) -> bytes | None:
        if not is_hex(content_hash, 64):
            return None
        path = self.path(content_hash)
        return path.read_bytes() if path.exists() else None

    def __contains__(self, content_hash: object) -> bool:
        return isinstance(content_hash, str) and is_hex(content_hash, 64) and self.path(content_hash).exists()
