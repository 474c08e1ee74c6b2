"""JSON documents by (collection, id) in a node's SQLite file: tasks, registrations, status."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from fedcoin.errors import InvalidInput
from fedcoin.ledger.store import connect


class DocStore:
    """JSON documents in a node's SQLite file; every write is one transaction (durable on return)."""

    def __init__(self, path: str | Path | None = None, conn: sqlite3.Connection | None = None) -> None:
        if conn is None:
            if path is None:
                raise InvalidInput("DocStore needs a path or a connection")
            conn = connect(path)
        self._conn = conn
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS docs (collection TEXT NOT NULL, id TEXT NOT NULL, data TEXT NOT NULL, "
            "PRIMARY KEY (collection, id))"
        )

    def put(self, collection: str, doc_id: str, data: dict[str, Any]) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO docs VALUES (?, ?, ?)", (collection, doc_id, json.dumps(data, sort_keys=True))
        )

    def get(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        row = self._conn.execute(
            "SELECT data FROM docs WHERE collection = ? AND id = ?", (collection, doc_id)
        ).fetchone()
        return None if row is None else json.loads(row[0])

    def list(self, collection: str) -> list[dict[str, Any]]:
        return [
            json.loads(r[0])
            for r in self._conn.execute("SELECT data FROM docs WHERE collection = ? ORDER BY rowid", (collection,))
        ]

    def delete(self, collection: str, doc_id: str) -> None:
        self._conn.execute("DELETE FROM docs WHERE collection = ? AND id = ?", (collection, doc_id))
