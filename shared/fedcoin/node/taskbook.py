"""The Shapley tasks a miner knows: persisted tasks, their content on disk, and their engines.

A task is persisted (its signed spec in the node's SQLite file, its content as a
blob) only after its content was checked against the task's hash and turned into
a marginal function, so a restarted miner finds every task it accepted.

Engines are large (about 80 MB per task at K = 100 clients), so at most
``cache_size`` are kept, least recently used first out, and a task's engine is
evicted as soon as the task is settled; a later need rebuilds it from the blob.

Deliveries of one task may race (the server and every peer forward it): the
first caller :meth:`claim` s the task id; the others see it as known, so only
one engine is built and the task is re-broadcast once.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from fedcoin.chain.tasks import ShapleyTask
from fedcoin.errors import InvalidInput, StoreError
from fedcoin.fl.content import unpack_task_content
from fedcoin.valuation.engine import engine_for

from .blobs import BlobStore
from .docstore import DocStore

MarginalFn = Callable[[Sequence[int]], Any]
MarginalsFactory = Callable[[ShapleyTask, bytes], MarginalFn]


class TaskBook:
    COLLECTION = "tasks"

    def __init__(self, docs: DocStore, content: BlobStore, factory: MarginalsFactory, *, cache_size: int = 2) -> None:
        if cache_size < 1:
            raise InvalidInput("cache_size must be at least 1")
        self.docs = docs
        self.content = content
        self._factory = factory
        self.cache_size = cache_size
        self._engines: OrderedDict[str, MarginalFn] = OrderedDict()
        self._claimed: set[str] = set()
        self._lock = threading.Lock()

    # --- intake -------------------------------------------------------------
    def known(self, task_id: str) -> bool:
        with self._lock:
            return task_id in self._claimed or self.docs.get(self.COLLECTION, task_id) is not None

    def claim(self, task_id: str) -> bool:
        """Reserve ``task_id`` for one delivery; False if it is known or another delivery holds it."""
        with self._lock:
            if task_id in self._claimed or self.docs.get(self.COLLECTION, task_id) is not None:
                return False
            self._claimed.add(task_id)
            return True

    def release(self, task_id: str) -> None:
        """Give up a claim without accepting the task."""
        with self._lock:
            self._claimed.discard(task_id)

    def accept(self, task: ShapleyTask, content: bytes) -> None:
        """Build the task's marginal function from ``content`` and persist both; the caller holds the claim.

        Raises (and persists nothing) when the content does not make an engine."""
        try:
            marginals = self._factory(task, content)
            self.content.put(content)
            with self._lock:
                self.docs.put(self.COLLECTION, task.task_id, {"task": task.to_dict(), "received_at": time.time()})
                self._cache(task.task_id, marginals)
        finally:
            with self._lock:
                self._claimed.discard(task.task_id)

    # --- queries --------------------------------------------------------------
    def all(self) -> list[ShapleyTask]:
        with self._lock:
            docs = self.docs.list(self.COLLECTION)
        return [ShapleyTask.from_dict(d["task"]) for d in docs]

    def get(self, task_id: str) -> ShapleyTask | None:
        with self._lock:
            doc = self.docs.get(self.COLLECTION, task_id)
        return None if doc is None else ShapleyTask.from_dict(doc["task"])

    def next_unsettled(self, is_settled: Callable[[ShapleyTask], bool]) -> ShapleyTask | None:
        """The oldest task not settled on the caller's chain."""
        for task in self.all():
            if not is_settled(task):
                return task
        return None

    # --- engines ----------------------------------------------------------------
    def marginals(self, task: ShapleyTask) -> MarginalFn:
        """The task's marginal function, rebuilt from its stored content when not cached."""
        with self._lock:
            fn = self._engines.get(task.task_id)
            if fn is not None:
                self._engines.move_to_end(task.task_id)
                return fn
        data = self.content.get(task.content_hash)
        if data is None:
            raise StoreError(f"content {task.content_hash[:16]} of task {task.task_id} is missing")
        fn = self._factory(task, data)
        with self._lock:
            self._cache(task.task_id, fn)
        return fn

    def _cache(self, task_id: str, fn: MarginalFn) -> None:
        self._engines[task_id] = fn
        self._engines.move_to_end(task_id)
        while len(self._engines) > self.cache_size:
            self._engines.popitem(last=False)

    def evict(self, is_settled: Callable[[ShapleyTask], bool]) -> list[str]:
        """Drop the engines of settled tasks; return their ids."""
        with self._lock:
            docs = {t: self.docs.get(self.COLLECTION, t) for t in self._engines}
            gone = [t for t, d in docs.items() if d is not None and is_settled(ShapleyTask.from_dict(d["task"]))]
            for t in gone:
                del self._engines[t]
        return gone

    @property
    def cached(self) -> list[str]:
        with self._lock:
            return list(self._engines)

    def drop(self, task_id: str) -> None:
        """Forget a task whose content cannot be valued (its engine failed)."""
        with self._lock:
            self.docs.delete(self.COLLECTION, task_id)
            self._engines.pop(task_id, None)


def engine_factory(device: str | None = None) -> MarginalsFactory:
    """Marginal functions from the fast Shapley engine, built from a task's checked content."""

    def factory(task: ShapleyTask, content: bytes) -> MarginalFn:
        parsed = unpack_task_content(content, task.content_hash, task.n_players)
        return engine_for(parsed, metric=task.metric, empty_value=task.empty_value, device=device).marginal_fn

    return factory
