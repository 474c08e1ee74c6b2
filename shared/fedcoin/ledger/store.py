"""SQLite block store: one file per node, WAL mode, one transaction per change.

Schema::

    meta(key TEXT PRIMARY KEY, value TEXT)       -- 'genesis' (hash), 'head' (hash)
    blocks(hash TEXT PRIMARY KEY, height INTEGER, prev_hash TEXT, data TEXT)
    invalid(hash TEXT PRIMARY KEY, reason TEXT)  -- blocks a fraud proof condemned

``data`` is the block's JSON as :meth:`fedcoin.chain.blocks.Block.to_json` writes
it. Blocks are inserted after their parents, so reading them in ``rowid``
order rebuilds the block tree. New blocks and the new head are written in a
single transaction with ``synchronous=FULL``: after a crash the file holds
either the old or the new state, never a mix, and a change that returned is on
disk. Balances are not stored; they are re-derived by replaying the chain.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from fedcoin.chain.blocks import Block, body_merkle_root, reports_merkle_root
from fedcoin.chain.work import empty_root
from fedcoin.errors import InvalidInput, StoreError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    hash TEXT PRIMARY KEY,
    height INTEGER NOT NULL,
    prev_hash TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS blocks_height ON blocks(height);
CREATE TABLE IF NOT EXISTS invalid (hash TEXT PRIMARY KEY, reason TEXT NOT NULL);
"""


def connect(path: str | Path) -> sqlite3.Connection:
    """Open an SQLite file in WAL mode with full fsync (shared by every node store)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{path} is not a usable SQLite database: {exc}") from exc
    return conn


class BlockStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn = connect(self.path)
        try:
            self._conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot create the schema: {exc}") from exc

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> BlockStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def init_genesis(self, genesis: Block) -> None:
        stored = self._meta("genesis")
        if stored is None:
            with self._conn:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('genesis', ?)", (genesis.hash,))
        elif stored != genesis.hash:
            raise StoreError(
                f"{self.path} belongs to another chain (genesis {stored[:16]}..., expected {genesis.hash[:16]}...)"
            )

    @property
    def head(self) -> str | None:
        return self._meta("head")

    def load(self) -> tuple[list[Block], str | None]:
        blocks = []
        for block_hash, data in self._conn.execute("SELECT hash, data FROM blocks ORDER BY rowid"):
            try:
                block = Block.from_json(data)
            except InvalidInput as exc:
                raise StoreError(f"{self.path}: stored block {block_hash[:16]} is unreadable: {exc}") from exc
            if block.hash != block_hash:
                raise StoreError(f"{self.path}: stored block {block_hash[:16]} does not hash to its key")
            task, work = block.body.task, block.body.work
            if (
                body_merkle_root(block.body.transactions) != block.header.merkle_root
                or reports_merkle_root(block.body.reports) != block.header.reports_root
                or (empty_root() if work is None else work.root()) != block.header.work_root
                or (task is not None and task.task_hash != block.header.task_hash)
            ):
                raise StoreError(
                    f"{self.path}: stored block {block_hash[:16]} has a body its header does not commit to"
                )
            blocks.append(block)
        return blocks, self.head

    def get(self, block_hash: str) -> Block | None:
        """One stored block, whole; None if it is not stored."""
        row = self._conn.execute("SELECT data FROM blocks WHERE hash = ?", (block_hash,)).fetchone()
        if row is None:
            return None
        try:
            block = Block.from_json(row[0])
        except InvalidInput as exc:
            raise StoreError(f"{self.path}: stored block {block_hash[:16]} is unreadable: {exc}") from exc
        if block.hash != block_hash:
            raise StoreError(f"{self.path}: stored block {block_hash[:16]} does not hash to its key")
        return block

    def invalid(self) -> dict[str, str]:
        """Block hashes condemned by fraud proofs, with why."""
        return dict(self._conn.execute("SELECT hash, reason FROM invalid").fetchall())

    def save(
        self,
        blocks: Sequence[Block],
        head: str,
        *,
        condemn: Sequence[str] = (),
        drop: Sequence[str] = (),
        why: str = "",
    ) -> None:
        """Insert ``blocks`` and set the head, atomically; ``condemn`` records keys (block hashes,
        fraud keys) as invalid and ``drop`` deletes blocks (a condemned block and its descendants) in
        the same transaction."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT OR IGNORE INTO blocks (hash, height, prev_hash, data) VALUES (?, ?, ?, ?)",
                    [(b.hash, b.header.height, b.header.prev_hash, b.to_json()) for b in blocks],
                )
                self._conn.executemany("INSERT OR REPLACE INTO invalid VALUES (?, ?)", [(k, why) for k in condemn])
                self._conn.executemany("DELETE FROM blocks WHERE hash = ?", [(h,) for h in drop])
                self._conn.execute("INSERT OR REPLACE INTO meta VALUES ('head', ?)", (head,))
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: write failed: {exc}") from exc

    def pragma(self, name: str) -> object:
        """The value of an SQLite pragma on this store's connection (``journal_mode``, ``synchronous``)."""
        if not name.isidentifier():
            raise InvalidInput(f"not a pragma name: {name!r}")
        return self._conn.execute(f"PRAGMA {name}").fetchone()[0]

    def count(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM blocks").fetchone()[0]
