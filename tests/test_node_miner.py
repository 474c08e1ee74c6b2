"""The miner's node logic in-process: task intake and engine cache, the PoSap worker among
miners wired to each other without HTTP, gossip of reports, and catch-up sync from fake peers."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from fedcoin.chain.blocks import Block
from fedcoin.chain.clock import now_ms
from fedcoin.chain.encoding import sha256_hex
from fedcoin.chain.tasks import ShapleyTask, make_task
from fedcoin.chain.transactions import make_transaction
from fedcoin.consensus.mining import build_block
from fedcoin.errors import InvalidBlock, InvalidInput
from fedcoin.ledger.chain import Chain
from fedcoin.node.blobs import BlobStore
from fedcoin.node.docstore import DocStore
from fedcoin.node.gossip import Gossip
from fedcoin.node.messages import PoSapReport, SignedMessage
from fedcoin.node.miner import MinerNode
from fedcoin.node.queries import MinerQueries
from fedcoin.node.sync import ChainSync
from fedcoin.node.taskbook import TaskBook
from fedcoin.valuation.games import quality_game
from fedcoin.valuation.sampling import CoalitionGame

QUALITIES = [1.0, 0.2, -0.5]


class CountingFactory:
    """Marginal functions of a toy game; counts (and can slow down) engine builds."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.builds: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, task: ShapleyTask, content: bytes) -> Any:
        if content == b"broken":
            raise InvalidInput("content does not make an engine")
        time.sleep(self.delay)
        with self.lock:
            self.builds.append(task.task_id)
        return CoalitionGame(task.n_players, quality_game(QUALITIES)).marginals


def task_for(net, task_id: str, content: bytes = b"content", published_at: int | None = None) -> ShapleyTask:
    return make_task(
        net.server,
        task_id=task_id,
        round=0,
        clients=[c.account for c in net.clients],
        train_price=700,
        sap_price=200,
        published_at=published_at or now_ms() - 10,
        content_hash=sha256_hex(content),
    )


# --- TaskBook: the engine cache and concurrent deliveries ---------------------------------


def book(tmp_path, factory, cache_size=2) -> TaskBook:
    return TaskBook(DocStore(tmp_path / "docs.sqlite"), BlobStore(tmp_path / "content"), factory, cache_size=cache_size)


def test_engine_cache_is_bounded_and_evicts_settled_tasks(net, tmp_path):
    factory = CountingFactory()
    tb = book(tmp_path, factory, cache_size=2)
    tasks = [task_for(net, f"t{i}", f"c{i}".encode()) for i in range(3)]
    for t in tasks:
        assert tb.claim(t.task_id)
        tb.accept(t, f"c{t.task_id[1]}".encode())
    assert tb.cached == ["t1", "t2"]  # least recently used out first
    assert [t.task_id for t in tb.all()] == ["t0", "t1", "t2"]  # every task stays persisted
    tb.marginals(tasks[0])  # rebuilt from its stored content
    assert factory.builds == ["t0", "t1", "t2", "t0"] and tb.cached == ["t2", "t0"]
    assert tb.evict(lambda tid: tid == "t0") == ["t0"] and tb.cached == ["t2"]


def test_one_engine_per_task_when_deliveries_race(net, tmp_path):
    factory = CountingFactory(delay=0.2)
    node = MinerNode(net.miners[0], Chain(net.genesis()), tmp_path, factory)
    task = task_for(net, "race")
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(node.add_task(task, b"content"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, False, True]
    assert factory.builds == ["race"]
    assert node.add_task(task, b"content") is False  # known now


def test_a_task_whose_engine_fails_is_not_kept(net, tmp_path):
    node = MinerNode(net.miners[0], Chain(net.genesis()), tmp_path, CountingFactory())
    task = task_for(net, "bad", b"broken")
    with pytest.raises(InvalidInput):
        node.add_task(task, b"broken")
    assert not node.tasks.known("bad") and node.tasks.all() == []
    with pytest.raises(InvalidInput, match="content_hash"):
        node.add_task(task_for(net, "mismatch"), b"other bytes")


# --- two miners wired to each other, without HTTP ---------------------------------------------


def test_two_miners_race_settle_and_free_the_engine(net, tmp_path):
    genesis = net.genesis(initial_difficulty=0.05)
    nodes = [
        MinerNode(
            m,
            Chain.open(tmp_path / f"m{i}" / "chain.sqlite", genesis),
            tmp_path / f"m{i}",
            CountingFactory(),
            batch=2,
            report_interval=0.0,
        )
        for i, m in enumerate(net.miners[:2])
    ]
    a, b = nodes
    errors: list[Exception] = []

    def deliver(dst: MinerNode, block: Block) -> None:  # what a peer's POST /blocks and, later, its sync do
        try:
            dst.receive_block(block)
        except InvalidBlock as exc:
            if exc.category != "local":
                errors.append(exc)
                return
            dst.add_chain([block])  # rejected from this node's own view only: sync adopts it without that view

    def wire(src: MinerNode, dst: MinerNode) -> None:
        src.broadcast_report = lambda msg: dst.receive_report(msg)
        src.broadcast_block = lambda block: deliver(dst, block)

    wire(a, b)
    wire(b, a)
    task = task_for(net, "round0")
    for n in nodes:
        assert n.add_task(task, b"content")
    stop = threading.Event()
    workers = [threading.Thread(target=n.run, args=(stop,), daemon=True) for n in nodes]
    for w in workers:
        w.start()
    deadline = time.time() + 60
    while time.time() < deadline and not all(n.chain.height == 1 and n.chain.head == a.chain.head for n in nodes):
        time.sleep(0.05)
    stop.set()
    for w in workers:
        w.join(timeout=10)
    assert errors == []
    assert a.chain.head == b.chain.head and a.chain.height == 1
    block = a.chain.head_block
    assert block.header.task_id == "round0" and block.header.iterations >= 2
    assert a.stats["blocks_won"] + b.stats["blocks_won"] >= 1
    assert a.tasks.cached == [] and b.tasks.cached == []  # settled: engines evicted
    status = MinerQueries(a).task("round0")
    assert status is not None and status["settled"] and status["block_hash"] == block.hash


def test_reports_are_parsed_once_and_early_ones_kept(net, tmp_path):
    node = MinerNode(net.miners[0], Chain(net.genesis()), tmp_path, CountingFactory())
    report = PoSapReport(task_id="later", prev_hash=node.chain.head, shapley=[0.1, 0.2, 0.3], iterations=5)
    node.receive_report(report.sign(net.miners[1]))
    with node.lock:
        kept = node.take_early_reports("later", node.chain.head)
    assert kept[net.miners[1].account].iterations == 5
    for bad in (
        {"task_id": "x"},
        {**report.model_dump(), "iterations": -1},
        {**report.model_dump(), "extra": 1},
        {**report.model_dump(), "shapley": [float("nan")]},
        {**report.model_dump(), "iterations": 10**309},  # once an OverflowError in the worker's average
    ):
        with pytest.raises(InvalidInput):
            node.receive_report(SignedMessage.create(net.miners[1], PoSapReport.KIND, bad))


# --- gossip: the latest report per peer, one in flight ---------------------------------------


class SlowPeers:
    """A transport whose POSTs take ``delay`` seconds; it records what each URL received."""

    def __init__(self, delay: float = 0.05) -> None:
        self.delay = delay
        self.posts: list[tuple[str, Any]] = []

    async def get_json(self, url: str, *, retries: int = 1) -> Any | None:
        return None

    async def post_json(self, url: str, body: Any, *, retries: int = 2) -> int | None:
        await asyncio.sleep(self.delay)
        self.posts.append((url, body))
        return 202

    async def get_bytes(self, url: str) -> bytes:
        raise AssertionError("not used")


def test_gossip_sends_only_the_latest_report_to_a_slow_peer(net):
    transport = SlowPeers()
    gossip = Gossip(["http://p1", "http://p2"], transport)

    async def scenario() -> None:
        gossip.start(asyncio.get_running_loop())
        for i in range(20):
            msg = PoSapReport(task_id="t", prev_hash="00" * 32, shapley=[float(i)], iterations=i).sign(net.miners[0])
            gossip.send_report(msg)  # as the mining thread does
        await asyncio.sleep(0.5)
        codes = await gossip.broadcast("/blocks", {"block": 1}, exclude="http://p2")
        assert codes == [202]
        gossip.stop()

    asyncio.run(scenario())
    for peer in ("http://p1", "http://p2"):
        got = [body["payload"]["iterations"] for url, body in transport.posts if url == f"{peer}/reports"]
        assert got[-1] == 19 and len(got) <= 2  # at most the first in flight and the latest
    assert [url for url, _ in transport.posts if url.endswith("/blocks")] == ["http://p1/blocks"]


# --- sync: catch up from a peer, ignore a bad one ----------------------------------------------


class PeerNodes:
    """A transport answering the routes sync reads from in-process miners' queries (or garbage)."""

    def __init__(self, peers: dict[str, MinerQueries | None]) -> None:
        self.peers = peers

    async def get_json(self, url: str, *, retries: int = 1) -> Any | None:
        base, _, path = url.partition("/chain") if "/chain" in url else url.partition("/blocks")
        q = self.peers[base]
        if q is None:
            return {"height": "lots", "hash": "zz"}
        if url.endswith("/chain/head"):
            return q.head()
        if "?start=" in url:
            start, end = url.split("?start=")[1].split("&end=")
            return q.blocks(int(start), int(end))
        return q.block_at(int(path.strip("/")))

    async def post_json(self, url: str, body: Any, *, retries: int = 2) -> int | None:
        return None

    async def get_bytes(self, url: str) -> bytes:
        raise AssertionError("not used")


def test_sync_adopts_a_longer_branch_and_survives_a_bad_peer(net, tmp_path):
    genesis = net.genesis()
    ahead = MinerNode(net.miners[2], Chain(genesis), tmp_path / "ahead", CountingFactory())
    for _ in range(3):
        ahead.chain.add_block(net.block(ahead.chain), now=net.NOW)
    node = MinerNode(net.miners[3], Chain(genesis), tmp_path / "behind", CountingFactory())
    peers = PeerNodes({"http://bad": None, "http://ahead": MinerQueries(ahead)})
    sync = ChainSync(node, ["http://bad", "http://ahead"], peers)
    asyncio.run(sync.sync_once())
    assert node.chain.head == ahead.chain.head and node.chain.height == 3
    assert asyncio.run(sync.sync_from("http://ahead")) is None  # nothing left to do


def test_build_block_reads_the_chain_through_its_view(net):
    chain = Chain(net.genesis())
    block = build_block(
        chain,
        task=net.task("t1"),
        winner=net.miners[0],
        s_winner=[0.5, 0.3, 0.2],
        s_avg=[0.5, 0.3, 0.2],
        iterations=3,
        timestamp=net.T0 + 2_000,
    )
    assert block.header.prev_hash == chain.head and block.header.difficulty == chain.next_difficulty()
    assert chain.add_block(block, now=net.NOW).status == "extended"


# --- a reorg returns the abandoned blocks' transactions to the mempool ---------------------------


def test_a_reorg_returns_abandoned_transactions_to_the_mempool(net, tmp_path):
    genesis = net.genesis()
    alice, bob, carol = net.users
    pay_bob = make_transaction(alice, bob.account, 10, 0)
    pay_carol = make_transaction(bob, carol.account, 20, 0)
    double_spend = make_transaction(bob, alice.account, 999, 0)  # the same nonce as pay_carol
    branch_a = Chain(genesis)
    a1 = net.block(branch_a, txs=[pay_bob, pay_carol], winner=0)
    node = MinerNode(net.miners[2], Chain(genesis), tmp_path, CountingFactory())
    assert node.add_chain([a1]).status == "extended"
    assert len(node.mempool) == 0 and node.chain.balance(carol.account) == 1_020
    branch_b = Chain(genesis)
    for txs in ([double_spend], []):
        branch_b.add_block(net.block(branch_b, txs=txs, winner=1), now=net.NOW)
    result = node.add_chain(branch_b.main_chain()[1:])
    assert result.status == "reorg" and [b.hash for b in result.abandoned] == [a1.hash]
    # pay_bob applies on the new head and is pending again; pay_carol lost to the double spend
    assert [t.txid for t in node.mempool.pending()] == [pay_bob.txid]
    assert node.chain.balance(carol.account) == 1_000 and node.chain.head == branch_b.head
