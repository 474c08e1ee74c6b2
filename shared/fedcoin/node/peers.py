"""Talking to other nodes over HTTP (httpx): bounded timeouts, a few retries, never an exception
for an unreachable peer.

:class:`Transport` is what the miner's gossip and sync need (async); the FL
server's worker thread talks to miners and clients through
:class:`MinerGateway` and :class:`ClientGateway` (sync). Each has an HTTP
implementation here; tests pass in-process fakes instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import httpx

from fedcoin.errors import InvalidInput, Unavailable

log = logging.getLogger("fedcoin.peers")

PEER_TIMEOUT = httpx.Timeout(10.0, connect=3.0)
GOSSIP_TIMEOUT = httpx.Timeout(3.0, connect=1.0)
CONTENT_TIMEOUT = httpx.Timeout(60.0, connect=5.0)
TRAIN_TIMEOUT = httpx.Timeout(300.0, connect=5.0)
MINER_TIMEOUT = httpx.Timeout(30.0, connect=3.0)
LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=16)


class Transport(Protocol):
    async def get_json(self, url: str, *, retries: int = 1) -> Any | None:
        """The JSON body of a 200 answer; None when the peer is unreachable or answers otherwise."""
        ...

    async def post_json(self, url: str, body: Any, *, retries: int = 2) -> int | None:
        """POST ``body``; the status code, or None when the peer stays unreachable."""
        ...

    async def get_bytes(self, url: str) -> bytes:
        """The body of a 200 answer; :class:`~fedcoin.errors.Unavailable` otherwise."""
        ...


class HttpTransport:
    """:class:`Transport` over one ``httpx.AsyncClient`` (one per purpose, so gossip never starves sync)."""

    def __init__(self, timeout: httpx.Timeout = PEER_TIMEOUT) -> None:
        self.client = httpx.AsyncClient(limits=LIMITS, timeout=timeout)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def get_json(self, url: str, *, retries: int = 1) -> Any | None:
        for attempt in range(retries + 1):
            try:
                r = await self.client.get(url)
                return r.json() if r.status_code == 200 else None
            except (httpx.HTTPError, ValueError):
                if attempt == retries:
                    return None
                await asyncio.sleep(0.2 * (attempt + 1))
        return None

    async def post_json(self, url: str, body: Any, *, retries: int = 2) -> int | None:
        for attempt in range(retries + 1):
            try:
                return (await self.client.post(url, json=body)).status_code
            except httpx.HTTPError as exc:
                if attempt == retries:
                    log.debug("POST %s failed: %s", url, exc)
                    return None
                await asyncio.sleep(0.2 * (attempt + 1))
        return None

    async def get_bytes(self, url: str, *, timeout: httpx.Timeout = CONTENT_TIMEOUT) -> bytes:
        """The body of a 200 answer; :class:`Unavailable` otherwise."""
        if not url.startswith(("http://", "https://")):
            raise InvalidInput(f"not an http(s) URL: {url!r}")
        try:
            r = await self.client.get(url, timeout=timeout)
        except httpx.HTTPError as exc:
            raise Unavailable(f"cannot fetch {url}: {exc}") from exc
        if r.status_code != 200:
            raise Unavailable(f"{url} answered {r.status_code}")
        return r.content


class MinerGateway(Protocol):
    """What the FL server asks of the miners (from its worker thread)."""

    def get(self, path: str) -> Any | None:
        """The first miner's answer to GET ``path`` that is 200 (JSON), or None (404 or none reachable)."""
        ...

    def get_all(self, path: str) -> list[Any]:
        """The 200 answers of every reachable miner."""
        ...

    def post_all(self, path: str, body: Any) -> list[tuple[int, str]]:
        """POST to every miner at once; (status, text) of those that answered."""
        ...


class HttpMinerGateway:
    """The FL server's view of the miners. Reads go to every miner at once with the short
    :data:`PEER_TIMEOUT`, so one miner that silently vanished (a dead keep-alive connection
    after a partition) delays an answer by at most that, not by the sum over the miners;
    posts (a Shapley task, a transaction) get :data:`MINER_TIMEOUT`."""

    def __init__(
        self,
        miners: list[str],
        http: httpx.Client,
        timeout: httpx.Timeout = MINER_TIMEOUT,
        read_timeout: httpx.Timeout = PEER_TIMEOUT,
    ) -> None:
        self.miners = miners
        self.http = http
        self.timeout = timeout
        self.read_timeout = read_timeout

    def _answers(self, path: str) -> Iterator[httpx.Response]:
        """Each reachable miner's answer to GET ``path``, in the miners' order, asked all at once."""

        def ask(m: str) -> httpx.Response | None:
            try:
                return self.http.get(f"{m}{path}", timeout=self.read_timeout)
            except httpx.HTTPError:
                return None

        pool = ThreadPoolExecutor(max_workers=max(1, len(self.miners)))
        try:
            for r in pool.map(ask, self.miners):
                if r is not None:
                    yield r
        finally:  # a caller that stopped at the first answer does not wait for the slower miners
            pool.shutdown(wait=False, cancel_futures=True)

    def get(self, path: str) -> Any | None:
        for r in self._answers(path):
            if r.status_code == 200:
                return r.json()
            if r.status_code == 404:
                return None
        return None

    def get_all(self, path: str) -> list[Any]:
        return [r.json() for r in self._answers(path) if r.status_code == 200]

    def post_all(self, path: str, body: Any) -> list[tuple[int, str]]:
        def post(m: str) -> tuple[int, str] | None:
            try:
                r = self.http.post(f"{m}{path}", json=body, timeout=self.timeout)
            except httpx.HTTPError as exc:
                log.warning("miner %s unreachable: %s", m, exc)
                return None
            return r.status_code, r.text

        with ThreadPoolExecutor(max_workers=max(1, len(self.miners))) as pool:
            return [a for a in pool.map(post, self.miners) if a is not None]


class ClientGateway(Protocol):
    """How the FL server reaches a client node."""

    def train(self, url: str, order: dict[str, Any]) -> dict[str, Any]:
        """POST a signed train order to ``url``/train; the answer's JSON. Raises :class:`Unavailable`."""
        ...


class HttpClientGateway:
    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    def train(self, url: str, order: dict[str, Any]) -> dict[str, Any]:
        try:
            r = self.http.post(f"{url.rstrip('/')}/train", json=order, timeout=TRAIN_TIMEOUT)
        except httpx.HTTPError as exc:
            raise Unavailable(f"client {url} unreachable: {exc}") from exc
        if r.status_code != 200:
            raise Unavailable(f"client {url} answered {r.status_code}: {r.text[:200]}")
        try:
            body: dict[str, Any] = r.json()
        except ValueError as exc:
            raise Unavailable(f"client {url} answered with no JSON") from exc
        return body
