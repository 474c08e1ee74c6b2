"""Waiting on a running network from outside: a task done, the miners agreed."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from fedcoin.errors import FedcoinError


def wait_for_task(
    server_url: str,
    task_id: str,
    timeout: float = 600.0,
    on_progress: Callable[[dict[str, Any] | None], None] | None = None,
) -> dict[str, Any]:
    """Poll the FL server until ``task_id`` is done (or failed); return its document."""
    deadline = time.time() + timeout
    with httpx.Client(timeout=5.0) as http:
        while True:
            doc = None
            try:
                r = http.get(f"{server_url}/tasks/{task_id}")
                if r.status_code == 200:
                    doc = r.json()
            except httpx.HTTPError:
                pass
            if on_progress is not None:
                on_progress(doc)
            if doc is not None and doc["status"] == "done":
                return doc
            if doc is not None and doc["status"] == "failed":
                raise FedcoinError(f"task {task_id} failed: {doc.get('error')}")
            if time.time() > deadline:
                raise FedcoinError(f"task {task_id} not done after {timeout:.0f} s (status {doc and doc['status']})")
            time.sleep(0.5)


def wait_for_agreement(miner_urls: list[str], min_height: int, timeout: float = 60.0) -> dict[str, Any]:
    """Wait until every miner reports the same head at ``min_height`` or above."""
    deadline = time.time() + timeout
    with httpx.Client(timeout=5.0) as http:
        while True:
            heads = {}
            for u in miner_urls:
                try:
                    heads[u] = http.get(f"{u}/chain/head").json()
                except (httpx.HTTPError, ValueError):
                    heads[u] = None
            hashes = {h["hash"] for h in heads.values() if h}
            if len(hashes) == 1 and all(heads.values()) and next(iter(heads.values()))["height"] >= min_height:
                return next(iter(heads.values()))
            if time.time() > deadline:
                raise FedcoinError(f"miners disagree on the head after {timeout:.0f} s: {heads}")
            time.sleep(0.5)
