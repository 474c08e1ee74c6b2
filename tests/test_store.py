"""Tests for the SQLite block store and durable chains (Chain.open)."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fedcoin.chain.transactions import make_transaction
from fedcoin.chain.work import WorkLog
from fedcoin.errors import InvalidBlock, StoreError
from fedcoin.ledger.chain import Chain
from fedcoin.ledger.store import BlockStore

TESTS_DIR = Path(__file__).resolve().parent


def grow(net, chain: Chain, n: int, *, offset: int = 0):
    blocks = []
    for _ in range(n):
        h = chain.height + 1
        u, v = net.users[h % 3], net.users[(h + 1) % 3]
        tx = make_transaction(u, v.account, 7 + h, chain.nonce(u.account))
        b = net.block(chain, net.task(f"t{h}", published_at=net.T0 + 1_000 * h), winner=(h + offset) % 4, txs=[tx])
        chain.add_block(b, now=net.NOW)
        blocks.append(b)
    return blocks


def state_of(chain: Chain):
    s = chain.head_state
    return chain.head, chain.height, s.balances, s.nonces, s.settled, getattr(s, "deposits", None)


def replayed(net, genesis, chain: Chain):
    fresh = Chain(genesis)
    if chain.height:
        fresh.add_chain(chain.main_chain()[1:], now=net.NOW)
    return fresh


def test_reopen_resumes(net, tmp_path):
    path = tmp_path / "node" / "chain.db"
    g = net.genesis()
    chain = Chain.open(path, g)
    grow(net, chain, 5)
    saved = state_of(chain)
    chain.close()
    again = Chain.open(path, g)
    assert state_of(again) == saved
    assert [b.hash for b in again.main_chain()] == [b.hash for b in replayed(net, g, again).main_chain()]
    grow(net, again, 2)  # and it keeps working
    assert again.height == 7
    again.close()
    third = Chain.open(path, g)
    assert third.height == 7 and state_of(third) == state_of(again)
    third.close()


def test_work_logs_stay_on_disk_and_blocks_come_back_whole(net, tmp_path):
    """A stored chain keeps no work log in memory (they are the bulk of a block: a node's memory
    would grow by one per task); block_at, get and main_chain read them back, byte for byte."""
    g = net.genesis()
    chain = Chain.open(tmp_path / "chain.db", g)
    blocks = grow(net, chain, 4)
    assert all(b.body.work is not None for b in blocks)
    assert all(b.body.work is None for b in chain.main_chain_light()[1:])
    assert [chain.block_at(b.height) for b in blocks] == blocks
    assert [chain.get(b.hash) for b in blocks] == blocks
    assert chain.main_chain()[1:] == blocks and chain.head_block == blocks[-1]
    assert chain.add_block(blocks[2], now=net.NOW).status == "known"
    # a copy of a known block whose work log differs from the one its header commits to is refused
    leaves = blocks[1].body.work.leaves().copy()
    leaves[0, [0, 1]] = leaves[0, [1, 0]]  # two clients' values swapped: same sums, another log
    other = WorkLog.from_leaves(leaves, blocks[1].body.work.n_players)
    forged = blocks[1].model_copy(update={"body": blocks[1].body.model_copy(update={"work": other})})
    with pytest.raises(InvalidBlock, match="bad-work-root"):
        chain.add_block(forged, now=net.NOW)
    chain.close()
    again = Chain.open(tmp_path / "chain.db", g)
    assert again.main_chain()[1:] == blocks
    assert all(b.body.work is None for b in again.main_chain_light()[1:])
    in_memory = Chain(g)  # without a store the blocks stay whole in memory
    in_memory.add_chain(blocks, now=net.NOW)
    assert in_memory.main_chain_light()[1:] == blocks


def test_empty_store_reopens_at_genesis(net, tmp_path):
    g = net.genesis()
    Chain.open(tmp_path / "c.db", g).close()
    c = Chain.open(tmp_path / "c.db", g)
    assert c.height == 0 and c.head == g.block().hash and c.balances() == Chain(g).balances()
    c.close()


def test_reorg_is_persisted(net, tmp_path):
    g = net.genesis()
    path = tmp_path / "c.db"
    node = Chain.open(path, g)
    grow(net, node, 2)
    other = Chain(g)
    other.add_chain(node.main_chain()[1:2], now=net.NOW)
    branch = grow(net, other, 3, offset=1)
    res = node.add_chain(branch, now=net.NOW)
    assert res.status == "reorg" and res.reorg_depth == 1
    saved = state_of(node)
    node.close()
    again = Chain.open(path, g)
    assert state_of(again) == saved == state_of(other)
    assert again.get(branch[0].hash) is not None
    again.close()


def test_other_genesis_refused(net, tmp_path):
    path = tmp_path / "c.db"
    c = Chain.open(path, net.genesis())
    grow(net, c, 1)
    c.close()
    with pytest.raises(StoreError):
        Chain.open(path, net.genesis(chain_id="another-chain"))
    alloc = dict(net.genesis().allocations)
    alloc[net.miners[0].account] = 1
    with pytest.raises(StoreError):
        Chain.open(path, net.genesis().model_copy(update={"allocations": alloc}))
    c = Chain.open(path, net.genesis())  # the right genesis still opens it
    assert c.height == 1
    c.close()


def test_wal_mode(net, tmp_path):
    path = tmp_path / "c.db"
    c = Chain.open(path, net.genesis())
    grow(net, c, 1)
    assert c.store.pragma("journal_mode").lower() == "wal"
    assert c.store.pragma("synchronous") == 2  # FULL
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"  # persistent in the file
    conn.close()
    c.close()


def test_rejected_block_not_stored(net, tmp_path):
    path = tmp_path / "c.db"
    c = Chain.open(path, net.genesis())
    grow(net, c, 1)
    b = net.block(c, winner=2)
    bad = net.reheader(b, net.miners[2], difficulty=0.5)
    with pytest.raises(InvalidBlock):
        c.add_block(bad, now=net.NOW)
    assert c.store.count() == 1 and c.store.head == c.head
    c.close()
    c = Chain.open(path, net.genesis())
    assert c.height == 1 and bad.hash not in c
    c.close()


# --- corruption ---------------------------------------------------------------------------


@pytest.fixture
def stored(net, tmp_path):
    path = tmp_path / "c.db"
    g = net.genesis()
    c = Chain.open(path, g)
    blocks = grow(net, c, 3)
    c.close()
    return path, g, blocks


def edit(path, sql, *args):
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(sql, args)
    conn.close()


def test_corrupted_row_not_json(stored):
    path, g, blocks = stored
    edit(path, "UPDATE blocks SET data = ? WHERE hash = ?", "{not json", blocks[1].hash)
    with pytest.raises(StoreError):
        Chain.open(path, g)


def test_corrupted_row_other_block(stored):
    path, g, blocks = stored
    edit(path, "UPDATE blocks SET data = ? WHERE hash = ?", blocks[0].to_json(), blocks[1].hash)
    with pytest.raises(StoreError):
        Chain.open(path, g)


def test_corrupted_row_header_field(stored):
    path, g, blocks = stored
    d = json.loads(blocks[1].to_json())
    d["header"]["iterations"] += 1
    edit(path, "UPDATE blocks SET data = ? WHERE hash = ?", json.dumps(d), blocks[1].hash)
    with pytest.raises(StoreError):
        Chain.open(path, g)


def test_corrupted_row_body_amount(stored):
    # the block hash covers only the header; a body edit must still be caught on load
    path, g, blocks = stored
    d = json.loads(blocks[1].to_json())
    d["body"]["transactions"][0]["amount"] += 100
    edit(path, "UPDATE blocks SET data = ? WHERE hash = ?", json.dumps(d), blocks[1].hash)
    with pytest.raises(StoreError):
        Chain.open(path, g)


def test_missing_ancestor_row(stored):
    path, g, blocks = stored
    edit(path, "DELETE FROM blocks WHERE hash = ?", blocks[1].hash)
    with pytest.raises(StoreError):
        Chain.open(path, g)


def test_head_unknown(stored):
    path, g, blocks = stored
    edit(path, "UPDATE meta SET value = ? WHERE key = 'head'", "ff" * 32)
    with pytest.raises(StoreError):
        Chain.open(path, g)


def test_not_a_database(net, tmp_path):
    path = tmp_path / "garbage.db"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(StoreError):
        Chain.open(path, net.genesis())


def test_blockstore_save_and_load(net, tmp_path):
    c = Chain(net.genesis())
    blocks = grow(net, c, 2)
    with BlockStore(tmp_path / "s.db") as s:
        s.init_genesis(c.genesis)
        s.save(blocks, blocks[-1].hash)
        s.save(blocks, blocks[-1].hash)  # idempotent
        assert s.count() == 2 and s.head == blocks[-1].hash
        loaded, head = s.load()
        assert [b.hash for b in loaded] == [b.hash for b in blocks] and loaded == blocks
        with pytest.raises(StoreError):
            s.init_genesis(blocks[0])


# --- crash safety ----------------------------------------------------------------------------


WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    from conftest import Net
    from fedcoin.ledger.chain import Chain
    from fedcoin.chain.transactions import make_transaction

    net = Net()
    chain = Chain.open(sys.argv[2], net.genesis())
    print("ready", chain.height, flush=True)
    while True:
        h = chain.height + 1
        u, v = net.users[h % 3], net.users[(h + 1) % 3]
        tx = make_transaction(u, v.account, 1 + h % 5, chain.nonce(u.account))
        task = net.task(f"t{h}", published_at=net.T0 + 1_000 * h)
        chain.add_block(net.block(chain, task, winner=h % 4, txs=[tx]), now=net.NOW)
        print(chain.height, flush=True)
    """
)


def test_sigkill_mid_write(net, tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    path = tmp_path / "crash.db"
    g = net.genesis()
    rng = random.Random(1234)
    last_height = 0
    for _attempt in range(4):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(TESTS_DIR), str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            line = proc.stdout.readline()
            assert line.startswith("ready"), proc.stderr.read()
            assert int(line.split()[1]) >= last_height
            time.sleep(rng.uniform(0.05, 0.6))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        printed = [int(x) for x in proc.stdout.read().split()]
        chain = Chain.open(path, g)
        try:
            # durability: every add_block that returned is on disk
            assert chain.height >= max(printed, default=last_height)
            # the head's ancestry is complete and linked
            main = chain.main_chain()
            assert [b.height for b in main] == list(range(chain.height + 1))
            for parent, child in zip(main, main[1:], strict=False):
                assert child.header.prev_hash == parent.hash
            # balances equal a fresh replay, supply conserved
            fresh = replayed(net, g, chain)
            assert state_of(fresh) == state_of(chain)
            assert sum(chain.balances().values()) == chain.supply
            last_height = chain.height
        finally:
            chain.close()
    assert last_height > 0
