"""Prometheus metrics of a node (``prometheus-client``), served at ``/metrics`` by every service.

Each node object owns its registry, so several nodes can live in one process (the tests do).
Events are counted where they happen (a block judged, a report taken, a round's phases, a
client's training, an HTTP request); levels (height, mempool, iterations so far) are read from
the node at scrape time by a collector, so they are never stale. All names start ``fedcoin_``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _Levels(Collector):
    """Gauges and counters read from the node when Prometheus scrapes."""

    def __init__(self, read: Callable[[], Iterable[Metric]]) -> None:
        self.read = read

    def describe(self) -> list[Metric]:
        return []  # registered before the node is complete: nothing is read until a scrape

    def collect(self) -> Iterator[Metric]:
        yield from self.read()


class NodeMetrics:
    """What every service exports: HTTP requests by route, method and status, and their latency."""

    def __init__(self, role: str) -> None:
        self.role = role
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "fedcoin_http_requests", "HTTP requests answered", ["route", "method", "status"], registry=r
        )
        self.http_seconds = Histogram(
            "fedcoin_http_request_seconds", "HTTP request latency", ["route", "method"], buckets=SECONDS, registry=r
        )

    def levels(self, read: Callable[[], Iterable[Metric]]) -> None:
        """Export what ``read`` yields at every scrape (see :func:`gauge` and :func:`counter`)."""
        self.registry.register(_Levels(read))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.http_requests.labels(route, method, str(status)).inc()
        self.http_seconds.labels(route, method).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    g.add_metric(list((labels or {}).values()), value)
    return g


def gauge_by(name: str, doc: str, label: str, values: dict[str, float]) -> GaugeMetricFamily:
    """One gauge family with a sample per ``label`` value."""
    g = GaugeMetricFamily(name, doc, labels=[label])
    for k, v in values.items():
        g.add_metric([k], v)
    return g


def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class MinerMetrics(NodeMetrics):
    """A miner: blocks by outcome (``extended``, ``reorg``, ``known``, ``rejected`` with its reject
    reason for a received block; ``sync-*`` for a run fetched from a peer; ``mined`` for its own),
    reorgs and their depth, the time a block takes to verify, PoSap reports taken and refused; at
    scrape time the chain's height, the mempool, the iterations mined so far and the current
    race's rate."""

    def __init__(self) -> None:
        super().__init__("miner")
        r = self.registry
        self.blocks = Counter(
            "fedcoin_blocks", "blocks received, by outcome and reject reason", ["outcome", "reason"], registry=r
        )
        self.reorgs = Counter("fedcoin_reorgs", "reorganisations of the main chain", registry=r)
        self.reorg_depth = Histogram(
            "fedcoin_reorg_depth", "blocks abandoned by a reorganisation", buckets=(1, 2, 3, 5, 10, 20, 50), registry=r
        )
        self.verify_seconds = Histogram(
            "fedcoin_block_verify_seconds", "time to verify and append a received block", buckets=SECONDS, registry=r
        )
        self.reports = Counter("fedcoin_reports", "PoSap reports received, by outcome", ["outcome"], registry=r)

    def block(self, outcome: str, reason: str = "", reorg_depth: int = 0, seconds: float | None = None) -> None:
        self.blocks.labels(outcome, reason).inc()
        if reorg_depth > 0:
            self.reorgs.inc()
            self.reorg_depth.observe(reorg_depth)
        if seconds is not None:
            self.verify_seconds.observe(seconds)


class ServerMetrics(NodeMetrics):
    """The FL server: each round's phases (train, settle) and their durations; tasks by status at
    scrape time."""

    def __init__(self) -> None:
        super().__init__("server")
        r = self.registry
        self.phase_seconds = Histogram(
            "fedcoin_round_phase_seconds", "duration of a round's phase", ["phase"], buckets=SECONDS, registry=r
        )
        self.rounds = Counter("fedcoin_rounds", "rounds settled and recorded", registry=r)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.phase_seconds.labels(name).observe(time.perf_counter() - t)


class ClientMetrics(NodeMetrics):
    """An FL client node: local training time and outcomes."""

    def __init__(self) -> None:
        super().__init__("client")
        r = self.registry
        self.train_seconds = Histogram(
            "fedcoin_client_train_seconds", "a client's local training for one order", buckets=SECONDS, registry=r
        )
        self.trainings = Counter("fedcoin_client_trainings", "train orders, by outcome", ["outcome"], registry=r)
