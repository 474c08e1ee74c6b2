"""Transaction gossip: every accepted transaction reaches every peer, in order, through outages.

Each peer has an outbox with one sender posting batches (``POST /transactions/batch``): a peer
that is down or answers 5xx gets the same batch again, with backoff, until it takes it; an
answer below 500 ends those transactions' delivery (the peer judged each one); the order of the
transactions is kept (so one sender's nonces arrive in order)."""

from __future__ import annotations

import asyncio
from typing import Any

from fedcoin.node import gossip as gossip_mod
from fedcoin.node.gossip import Gossip


class FlakyTransport:
    """Peer A is down for its first ``down`` posts, peer B answers 503 for its first ``busy``; a
    transaction marked ``refuse`` is judged invalid by the peer (in a batch answered 200)."""

    def __init__(self, down: int, busy: int) -> None:
        self.down, self.busy = down, busy
        self.got: dict[str, list[int]] = {"http://a": [], "http://b": []}
        self.attempts = 0

    async def post_json(self, url: str, body: Any, *, retries: int = 2) -> int | None:
        self.attempts += 1
        peer = url.split("/transactions")[0]
        if peer == "http://a" and self.down > 0:
            self.down -= 1
            return None
        if peer == "http://b" and self.busy > 0:
            self.busy -= 1
            return 503
        assert url.endswith("/transactions/batch") and isinstance(body, list)
        self.got[peer].extend(t["n"] for t in body if not t.get("refuse"))
        return 200


def test_every_transaction_reaches_every_peer_in_order_through_outages(monkeypatch):
    monkeypatch.setattr(gossip_mod, "RETRY_MAX_S", 0.02)
    monkeypatch.setattr(gossip_mod, "BATCH", 16)
    transport = FlakyTransport(down=7, busy=5)

    async def main() -> None:
        g = Gossip(["http://a", "http://b"], transport)  # type: ignore[arg-type]
        g.start(asyncio.get_running_loop())
        for n in range(200):
            g.send_transaction({"n": n, "refuse": n == 50})
        for _ in range(500):
            if g.outbox_size() == 0:
                break
            await asyncio.sleep(0.01)
        assert g.outbox_size() == 0
        g.stop()

    asyncio.run(main())
    expected = [n for n in range(200) if n != 50]  # the refused one is not sent again
    assert transport.got["http://a"] == expected and transport.got["http://b"] == expected
    assert transport.attempts == 2 * 13 + 7 + 5  # 13 batches of at most 16 to each peer, plus the retries


def test_a_full_outbox_drops_the_oldest(monkeypatch):
    monkeypatch.setattr(gossip_mod, "MAX_OUTBOX", 10)
    g = Gossip(["http://a"], FlakyTransport(0, 0))  # type: ignore[arg-type]
    for n in range(25):  # no event loop yet: nothing is sent, the outbox keeps the newest 10
        g.send_transaction({"n": n})
    assert [t["n"] for t in g._outbox["http://a"]] == list(range(15, 25))


def test_what_was_queued_before_the_loop_is_sent_once_it_runs():
    transport = FlakyTransport(0, 0)
    g = Gossip(["http://a"], transport)  # type: ignore[arg-type]
    for n in range(3):
        g.send_transaction({"n": n})

    async def main() -> None:
        g.start(asyncio.get_running_loop())
        for _ in range(200):
            if g.outbox_size() == 0:
                break
            await asyncio.sleep(0.01)
        g.stop()

    asyncio.run(main())
    assert transport.got["http://a"] == [0, 1, 2]
