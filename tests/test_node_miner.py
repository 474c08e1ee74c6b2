"""The miner's node logic in-process: task intake and engine cache, the PoSap worker among
miners wired to each other without HTTP, signed reports and their door checks, gossip of
reports, catch-up sync from fake peers (with the tasks' content fetched from their
``content_uri``), and fraud proofs."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest

from fedcoin.chain.blocks import Block
from fedcoin.chain.clock import now_ms
from fedcoin.chain.encoding import sha256_hex
from fedcoin.chain.reports import ShapleyReport, make_report
from fedcoin.chain.tasks import ShapleyTask, make_task
from fedcoin.chain.transactions import make_transaction
from fedcoin.consensus.mining import build_block
from fedcoin.consensus.proofs import BadLeaf
from fedcoin.errors import InvalidBlock, InvalidInput, InvalidSignature, Unavailable
from fedcoin.ledger.chain import Chain, tie_key
from fedcoin.node.blobs import BlobStore
from fedcoin.node.docstore import DocStore
from fedcoin.node.gossip import Gossip
from fedcoin.node.miner import REPORT_MAX_SKEW_MS, MinerNode
from fedcoin.node.queries import MinerQueries
from fedcoin.node.sync import ChainSync
from fedcoin.node.taskbook import TaskBook
from fedcoin.node.worker import PoSapWorker
from fedcoin.valuation.games import additive_game, quality_game
from fedcoin.valuation.sampling import CoalitionGame

QUALITIES = [1.0, 0.2, -0.5]
VALUES = [0.5, 0.3, 0.2]  # conftest's Net.block tiles S = S̄ = these: the additive game's marginals


class CountingFactory:
    """Marginal functions of a toy game; counts (and can slow down) engine builds, and can slow
    down every permutation (``step_delay`` seconds: a slower miner)."""

    def __init__(self, delay: float = 0.0, step_delay: float = 0.0) -> None:
        self.delay = delay
        self.step_delay = step_delay
        self.builds: list[str] = []
        self.lock = threading.Lock()

    def game(self, task: ShapleyTask) -> Any:
        return CoalitionGame(task.n_players, quality_game(QUALITIES)).marginals

    def __call__(self, task: ShapleyTask, content: bytes) -> Any:
        if content == b"broken":
            raise InvalidInput("content does not make an engine")
        time.sleep(self.delay)
        with self.lock:
            self.builds.append(task.task_id)
        marginals = self.game(task)
        if not self.step_delay:
            return marginals

        def slow(perm: Any) -> Any:
            time.sleep(self.step_delay)
            return marginals(perm)

        return slow


class AdditiveFactory(CountingFactory):
    """The additive game of ``VALUES``: every permutation's marginals are ``VALUES``, so the blocks
    conftest's ``Net.block`` builds (a work log of tiled S) are honest work on it."""

    def game(self, task: ShapleyTask) -> Any:
        return CoalitionGame(task.n_players, additive_game(VALUES).utility).marginals


def task_for(
    net, task_id: str, content: bytes = b"content", published_at: int | None = None, content_uri: str = ""
) -> ShapleyTask:
    return make_task(
        net.server,
        task_id=task_id,
        round=0,
        clients=[c.account for c in net.clients],
        train_price=700,
        sap_price=200,
        published_at=published_at or now_ms() - 10,
        content_hash=sha256_hex(content),
        content_uri=content_uri,
    )


def held_task(net, node: MinerNode, height: int) -> ShapleyTask:
    """The task ``Net.block`` would settle at ``height`` (same id and time), with real content, held by ``node``."""
    content = f"content of t{height}".encode()
    task = task_for(net, f"t{height}", content, published_at=net.T0 + 1_000 * height)
    assert node.add_task(task, content)
    return task


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
    assert tb.evict(lambda t: t.task_id == "t0") == ["t0"] and tb.cached == ["t2"]


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


@pytest.mark.parametrize("b_step_delay", [0.02, 0.0], ids=["b-slower", "same-speed"])
def test_two_miners_race_settle_and_free_the_engine(net, tmp_path, b_step_delay):
    genesis = net.genesis(initial_difficulty=0.05)
    # at the same speed the two may win with the same work at the same moment; each then holds its own
    # block, and the other's arrives with equal work: the smaller tie key wins on both, so they converge
    # (under "first seen stays" each would keep its own, and with two miners neither could win again:
    # a block needs a report of another miner on its parent). A slower b makes such a tie rare.
    factories = [CountingFactory(), CountingFactory(step_delay=b_step_delay)]
    nodes = [
        MinerNode(
            m,
            Chain.open(tmp_path / f"m{i}" / "chain.sqlite", genesis),
            tmp_path / f"m{i}",
            factories[i],
            batch=2,
            report_interval=0.0,
        )
        for i, m in enumerate(net.miners[:2])
    ]
    a, b = nodes
    errors: list[Exception] = []
    stale: list[tuple[Exception, Block]] = []

    def deliver(dst: MinerNode, block: Block) -> None:  # what a peer's POST /blocks and, later, its sync do
        try:
            try:
                dst.receive_block(block)
            except InvalidBlock as exc:
                if exc.category != "local":
                    raise
                dst.add_chain([block])  # rejected from this node's own view only: sync adopts it without that view
        except InvalidBlock as exc:
            # a block that brings less work than the one the receiver won with meanwhile (or equal work
            # and a larger tie key) is stale, not bad
            if exc.category == "stale":
                stale.append((exc, block))
            else:
                errors.append(exc)

    def wire(src: MinerNode, dst: MinerNode) -> None:
        src.broadcast_report = lambda report: dst.receive_report(report)
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
    assert a.chain.work == b.chain.work == block.header.iterations
    # only a block with less work, or equal work and a larger tie key, lost
    assert all(e.reason == "stale-block" for e, _ in stale)
    for _, lost in stale:
        assert lost.header.iterations < block.header.iterations or (
            lost.header.iterations == block.header.iterations and tie_key(lost.header) > tie_key(block.header)
        )
    assert a.stats["blocks_won"] + b.stats["blocks_won"] >= 1
    # the block carries b's (or a's) signed report on the task and genesis: S̄ is not the winner's alone
    reports = block.body.reports
    assert len(reports) == 1 and reports[0].miner != block.header.winner
    assert reports[0].miner in {a.identity.account, b.identity.account} and reports[0].prev_hash == genesis.block().hash
    assert a.tasks.cached == [] and b.tasks.cached == []  # settled: engines evicted
    status = MinerQueries(a).task("round0")
    assert status is not None and status["settled"] and status["block_hash"] == block.hash


# --- reports: parsed once at the door, checked there, early ones kept ----------------------------


def test_reports_are_parsed_once_and_early_ones_kept(net, tmp_path):
    node = MinerNode(net.miners[0], Chain(net.genesis()), tmp_path, CountingFactory())
    report = make_report(
        net.miners[1], task_id="later", prev_hash=node.chain.head, shapley=[0.1, 0.2, 0.3], iterations=5
    )
    node.receive_report(ShapleyReport.from_dict(report.to_dict()))  # what the host does with a POST /reports body
    fewer = make_report(net.miners[1], task_id="later", prev_hash=node.chain.head, shapley=[0.0] * 3, iterations=3)
    node.receive_report(fewer)  # an older (fewer iterations) report of the same miner does not replace it
    with node.lock:
        kept = node.take_early_reports("later", node.chain.head)
    assert list(kept) == [net.miners[1].account] and kept[net.miners[1].account] == report
    body = report.to_dict()
    for bad in (
        {"task_id": "x"},
        {**body, "iterations": -1},
        {**body, "iterations": 0},
        {**body, "extra": 1},
        {**body, "shapley": [float("nan")]},
        {**body, "shapley": []},
        {**body, "miner": "not-an-account"},
        {**body, "iterations": 10**309},  # once an OverflowError in the worker's average
    ):
        with pytest.raises(InvalidInput):
            ShapleyReport.from_dict(bad)
    # a well-formed report whose signature no longer covers it is refused at the door
    with pytest.raises(InvalidSignature):
        node.receive_report(ShapleyReport.from_dict({**body, "iterations": 6}))
    with pytest.raises(InvalidInput):
        node.receive_report(body)  # type: ignore[arg-type]  # a dict is not a report
    with node.lock:
        assert node.take_early_reports("later", node.chain.head) == {}


def test_reports_refused_at_the_door_change_nothing(net, tmp_path):
    node = MinerNode(net.miners[0], Chain(net.genesis()), tmp_path, CountingFactory())
    task = task_for(net, "door", b"door")
    assert node.add_task(task, b"door")
    head, now = node.chain.head, now_ms()
    outsider, me, peer = net.users[0], net.miners[0], net.miners[1]

    def report(signer, task_id: str = "door", *, iterations: int = 5, timestamp: int = now, shapley=VALUES):
        return make_report(
            signer, task_id=task_id, prev_hash=head, shapley=shapley, iterations=iterations, timestamp=timestamp
        )

    # the node works on (door, genesis): a report that passes goes into its S̄; one for a task it
    # does not work on yet waits in the early buckets
    with node.lock:
        node.work = PoSapWorker(node)._start_work()
    assert node.work is not None and node.work.head == head and node.work.task.task_id == "door"
    both = ("door", "early")
    refused = {
        "not an admitted miner": [report(outsider, t) for t in both],
        "signed with the node's own key": [report(me, t) for t in both],
        "stale": [report(peer, t, timestamp=now - REPORT_MAX_SKEW_MS - 60_000) for t in both],
        "from the future": [report(peer, t, timestamp=now + REPORT_MAX_SKEW_MS + 60_000) for t in both],
        # 5,000 iterations/s since the task (published 10 ms ago) and its head: about 5,050 at most
        "over the rate cap": [report(peer, iterations=1_000_000)],
        "not one value per client of the task": [report(peer, shapley=[1.0])],
    }
    for why, bad_ones in refused.items():
        for bad in bad_ones:
            with pytest.raises(InvalidInput):
                node.receive_report(bad, now=now)
            with node.lock:
                assert node.work.posap.peer_reports == {} and node.work.posap.signed_reports() == [], why
                assert node._early_reports == {}, why
    # what passes the door: the work in progress takes it, the early bucket keeps the other
    node.receive_report(report(peer, iterations=50), now=now)
    node.receive_report(report(net.miners[2], "early"), now=now)
    with node.lock:
        assert node.work.posap.peer_reports[peer.account].iterations == 50
        assert node.work.posap.signed_reports() == [report(peer, iterations=50)]
        assert list(node.take_early_reports("early", head)) == [net.miners[2].account]


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
            report = make_report(net.miners[0], task_id="t", prev_hash="00" * 32, shapley=[float(i)], iterations=i + 1)
            gossip.send_report(report)  # as the mining thread does
        await asyncio.sleep(0.5)
        codes = await gossip.broadcast("/blocks", {"block": 1}, exclude="http://p2")
        assert codes == [202]
        gossip.stop()

    asyncio.run(scenario())
    for peer in ("http://p1", "http://p2"):
        got = [ShapleyReport.from_dict(body) for url, body in transport.posts if url == f"{peer}/reports"]
        assert got[-1].iterations == 20 and len(got) <= 2  # at most the first in flight and the latest
        for r in got:
            r.verify_signature()  # sent as signed
    assert [url for url, _ in transport.posts if url.endswith("/blocks")] == ["http://p1/blocks"]


# --- sync: catch up from a peer, ignore a bad one ----------------------------------------------


class PeerNodes:
    """A transport answering the routes sync reads from in-process miners' queries (or garbage),
    and serving the tasks' content from ``blobs`` (url -> bytes) as the FL server does."""

    def __init__(self, peers: dict[str, MinerQueries | None], blobs: dict[str, bytes] | None = None) -> None:
        self.peers = peers
        self.blobs = blobs or {}
        self.fetched: list[str] = []

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
        self.fetched.append(url)
        if url not in self.blobs:
            raise Unavailable(f"{url} answered 404")
        return self.blobs[url]


def served_task(net, height: int) -> tuple[ShapleyTask, bytes]:
    """The task ``Net.block`` would settle at ``height``, its content served by the FL server."""
    content = f"content of t{height}".encode()
    uri = f"http://server/blobs/{sha256_hex(content)}"
    return task_for(net, f"t{height}", content, published_at=net.T0 + 1_000 * height, content_uri=uri), content


def test_sync_adopts_a_longer_branch_and_survives_a_bad_peer(net, tmp_path):
    genesis = net.genesis()
    ahead = MinerNode(net.miners[2], Chain(genesis), tmp_path / "ahead", AdditiveFactory())
    blobs = {}
    for h in (1, 2, 3):
        task, content = served_task(net, h)
        blobs[task.content_uri] = content
        assert ahead.add_task(task, content)  # it verified the work of each block it holds
        assert ahead.receive_block(net.block(ahead.chain, task)).status == "extended"
    node = MinerNode(net.miners[3], Chain(genesis), tmp_path / "behind", AdditiveFactory())
    peers = PeerNodes({"http://bad": None, "http://ahead": MinerQueries(ahead)})
    sync = ChainSync(node, ["http://bad", "http://ahead"], peers)
    # the node holds none of the tasks and the server does not answer: it cannot recompute the
    # blocks' leaves, so it adopts nothing (and the pass goes on)
    asyncio.run(sync.sync_once())
    assert node.chain.height == 0 and peers.fetched == [served_task(net, 1)[0].content_uri]
    # with the content served at each task's content_uri, the node fetches it, verifies and adopts
    peers.blobs = blobs
    asyncio.run(sync.sync_once())
    assert node.chain.head == ahead.chain.head and node.chain.height == 3 and node.chain.work == ahead.chain.work
    assert [t.task_id for t in node.tasks.all()] == ["t1", "t2", "t3"]
    assert asyncio.run(sync.sync_from("http://ahead")) is None  # nothing left to do


def test_sync_needs_no_content_for_tasks_the_node_holds(net, tmp_path):
    genesis = net.genesis()
    ahead = MinerNode(net.miners[2], Chain(genesis), tmp_path / "ahead", AdditiveFactory())
    node = MinerNode(net.miners[3], Chain(genesis), tmp_path / "behind", AdditiveFactory())
    for h in (1, 2):
        task = held_task(net, ahead, h)
        held_task(net, node, h)  # delivered to both, as the server publishes to every miner
        ahead.receive_block(net.block(ahead.chain, task))
    peers = PeerNodes({"http://ahead": MinerQueries(ahead)})
    assert asyncio.run(ChainSync(node, ["http://ahead"], peers).sync_from("http://ahead")) == "extended"
    assert node.chain.head == ahead.chain.head and peers.fetched == []


def test_sync_at_equal_work_adopts_the_smaller_tie_key_both_ways(net, tmp_path):
    """Two miners each hold their own block of equal work on the same task: syncing from each other,
    the one whose head has the larger tie key switches, the other stays; both end on one head."""
    genesis = net.genesis()
    nodes = [MinerNode(net.miners[i], Chain(genesis), tmp_path / f"n{i}", AdditiveFactory()) for i in (2, 3)]
    for i, node in enumerate(nodes):
        task = held_task(net, node, 1)
        assert node.receive_block(net.block(node.chain, task, winner=i)).status == "extended"
    assert nodes[0].chain.work == nodes[1].chain.work and nodes[0].chain.head != nodes[1].chain.head
    lo, hi = sorted(nodes, key=lambda n: n.chain.tie)
    winner = lo.chain.head
    assert MinerQueries(lo).head()["tie"] == lo.chain.tie == tie_key(lo.chain.head_block.header)
    peers = PeerNodes({"http://lo": MinerQueries(lo), "http://hi": MinerQueries(hi)})
    assert asyncio.run(ChainSync(lo, ["http://hi"], peers).sync_from("http://hi")) is None  # larger key: kept out
    assert asyncio.run(ChainSync(hi, ["http://lo"], peers).sync_from("http://lo")) == "reorg"
    assert lo.chain.head == hi.chain.head == winner and lo.chain.work == hi.chain.work
    assert asyncio.run(ChainSync(hi, ["http://lo"], peers).sync_from("http://lo")) is None  # nothing left to do


def test_build_block_reads_the_chain_through_its_view(net):
    chain = Chain(net.genesis())
    task = net.task("t1")
    leaves = np.array([[0.6, 0.2, 0.2], [0.4, 0.4, 0.2], [0.5, 0.3, 0.2]])
    report = net.report(chain, task, 1, [0.5, 0.3, 0.2], 3, task.published_at)
    block = build_block(
        chain, task=task, winner=net.miners[0], leaves=leaves, reports=[report], timestamp=net.T0 + 2_000
    )
    h = block.header
    assert h.prev_hash == chain.head and h.difficulty == chain.next_difficulty() and h.height == chain.height + 1
    assert h.iterations == 3 and h.s_winner == pytest.approx([0.5, 0.3, 0.2]) and h.s_avg == pytest.approx(h.s_winner)
    assert block.body.reports == [report] and block.body.work is not None and block.body.work.mean() == h.s_winner
    assert chain.add_block(block, now=net.NOW).status == "extended"
    assert chain.work == 3


# --- a reorg returns the abandoned blocks' transactions to the mempool ---------------------------


def test_a_reorg_returns_abandoned_transactions_to_the_mempool(net, tmp_path):
    genesis = net.genesis()
    alice, bob, carol = net.users
    pay_bob = make_transaction(alice, bob.account, 10, 0)
    pay_carol = make_transaction(bob, carol.account, 20, 0)
    double_spend = make_transaction(bob, alice.account, 999, 0)  # the same nonce as pay_carol
    node = MinerNode(net.miners[2], Chain(genesis), tmp_path, AdditiveFactory())
    t1, t2 = held_task(net, node, 1), held_task(net, node, 2)
    branch_a = Chain(genesis)
    a1 = net.block(branch_a, t1, txs=[pay_bob, pay_carol], winner=0)
    assert node.add_chain([a1]).status == "extended"
    assert len(node.mempool) == 0 and node.chain.balance(carol.account) == 1_020
    branch_b = Chain(genesis)
    for task, txs in ((t1, [double_spend]), (t2, [])):
        branch_b.add_block(net.block(branch_b, task, txs=txs, winner=1), now=net.NOW)
    result = node.add_chain(branch_b.main_chain()[1:])
    assert result.status == "reorg" and [b.hash for b in result.abandoned] == [a1.hash]
    # pay_bob applies on the new head and is pending again; pay_carol lost to the double spend
    assert [t.txid for t in node.mempool.pending()] == [pay_bob.txid]
    assert node.chain.balance(carol.account) == 1_000 and node.chain.head == branch_b.head


# --- fraud proofs: a node that accepted a fabricated leaf is convinced by another's proof ----------


def fabricated_block(net, chain: Chain, task: ShapleyTask, *, winner: int = 1, txs=()) -> Block:
    """Ten leaves of the additive game, leaf 7 fabricated (it sums alike, so only recomputing it tells)."""
    leaves = np.tile(VALUES, (10, 1))
    leaves[7] = [0.45, 0.35, 0.2]
    report = net.report(chain, task, winner + 1, VALUES, 10, task.published_at)
    return build_block(
        chain,
        task=task,
        winner=net.miners[winner],
        leaves=leaves,
        reports=[report],
        transactions=list(txs),
        timestamp=task.published_at + 500,
    )


def test_a_fraud_proof_condemns_an_accepted_block_and_moves_the_head_back(net, tmp_path):
    genesis = net.genesis()
    proofs: list[Any] = []
    # `trusting` recomputes no leaf; `checker` recomputes up to 16, so all ten of each block here
    trusting = MinerNode(net.miners[2], Chain(genesis), tmp_path / "trusting", AdditiveFactory(), verify_samples=0)
    checker = MinerNode(
        net.miners[3], Chain(genesis), tmp_path / "checker", AdditiveFactory(), broadcast_proof=proofs.append
    )
    stranger = MinerNode(net.miners[0], Chain(genesis), tmp_path / "stranger", AdditiveFactory())
    t1, t2 = held_task(net, trusting, 1), held_task(net, trusting, 2)
    held_task(net, checker, 1), held_task(net, checker, 2)
    b1 = net.block(trusting.chain, t1, s_avg=VALUES)
    for n in (trusting, checker):
        assert n.receive_block(b1).status == "extended"
    pay = make_transaction(net.users[0], net.users[1].account, 10, 0)
    assert trusting.add_transaction(pay)
    bad = fabricated_block(net, trusting.chain, t2, txs=[pay])
    assert trusting.receive_block(bad).status == "extended"  # it sampled nothing
    assert trusting.chain.head == bad.hash and len(trusting.mempool) == 0
    # the checker recomputes leaf 7, refuses the block and hands its proof to broadcast_proof
    before = net.snapshot(checker.chain)
    with pytest.raises(BadLeaf) as info:
        checker.receive_block(bad)
    assert info.value.reason == "bad-leaf" and net.snapshot(checker.chain) == before
    proof = info.value.proof
    assert proofs == [proof] and proof.block_hash == bad.hash and proof.index == 7
    assert checker.chain.is_condemned(bad.hash) and checker.stats["fraud_proofs"] == 1
    # a node that does not hold the task cannot check a proof yet; a "proof" about an honest leaf
    # convinces nobody; neither changes anything
    with pytest.raises(Unavailable):
        stranger.receive_fraud_proof(proof)
    held_task(net, stranger, 2)
    honest = proof.model_copy(update={"index": 0, "leaf": VALUES, "path": bad.body.work.path(0)})
    before = net.snapshot(trusting.chain)
    for node in (stranger, trusting):
        with pytest.raises(InvalidInput):
            node.receive_fraud_proof(honest)
    assert net.snapshot(trusting.chain) == before and not trusting.chain.is_condemned(bad.hash)
    assert trusting.stats["fraud_proofs"] == 0
    # delivered to the trusting node, the real proof condemns the block: the head goes back to b1, the
    # task is unsettled again and the block's user transaction returns to the mempool
    result = trusting.receive_fraud_proof(proof)
    assert result.status == "reorg" and result.head == b1.hash and [b.hash for b in result.abandoned] == [bad.hash]
    assert trusting.chain.head == b1.hash and trusting.chain.height == 1 and trusting.chain.is_condemned(bad.hash)
    assert not trusting.chain.is_settled(t2) and trusting.stats["fraud_proofs"] == 1
    assert [t.txid for t in trusting.mempool.pending()] == [pay.txid]
    assert trusting.receive_fraud_proof(proof).status == "known"  # once is enough
    with pytest.raises(InvalidBlock) as again:
        trusting.receive_block(bad)
    assert again.value.reason == "fraudulent-block" and trusting.chain.head == b1.hash
    # an honest block on t2 is accepted everywhere instead
    good = net.block(trusting.chain, t2, winner=1, s_avg=VALUES)
    for n in (trusting, checker):
        assert n.receive_block(good).status == "extended" and n.chain.head == good.hash
