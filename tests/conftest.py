"""Shared fixtures for the ledger tests (deterministic identities and block builders), and the
check that every reject reason of the registry is raised by some test."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from fedcoin.chain.blocks import Block, body_merkle_root
from fedcoin.chain.encoding import sha256_hex
from fedcoin.chain.genesis import ChainParams, GenesisConfig
from fedcoin.chain.identity import Identity
from fedcoin.chain.reports import make_report
from fedcoin.chain.tasks import ShapleyTask, make_task
from fedcoin.consensus.mining import build_block
from fedcoin.errors import Reason, Rejected
from fedcoin.ledger.chain import Chain
from fedcoin.valuation.games import additive_game
from fedcoin.valuation.sampling import CoalitionGame

T0 = 1_700_000_000_000  # a fixed "now" (ms) for deterministic timestamps
NOW = T0 + 10**9


def ident(i: int) -> Identity:
    return Identity.from_seed(bytes([i]) * 32)


class Net:
    """A small fixed network: a server, a requester, miners, FL clients and users."""

    T0 = T0
    NOW = NOW
    ident = staticmethod(ident)

    def __init__(self) -> None:
        self.server = ident(1)
        self.requester = ident(2)
        self.miners = [ident(10 + k) for k in range(4)]
        self.clients = [ident(20 + k) for k in range(3)]
        self.users = [ident(30 + k) for k in range(3)]

    def genesis(self, **params) -> GenesisConfig:
        """The network's genesis: its server and miners admitted, the server, requester and users funded."""
        alloc = {self.server.account: 1_000_000, self.requester.account: 50_000}
        alloc.update({u.account: 1_000 for u in self.users})
        params.setdefault("servers", [self.server.account])
        params.setdefault("miners", [m.account for m in self.miners])
        return GenesisConfig(params=ChainParams(**params), allocations=alloc, timestamp=T0)

    def report(self, chain: Chain, task, miner: int | Identity, shapley, iterations: int, timestamp: int):
        """A signed PoSap report of ``miner`` on ``task`` from ``chain``'s head."""
        m = self.miners[miner] if isinstance(miner, int) else miner
        return make_report(
            m,
            task_id=task.task_id,
            prev_hash=chain.head,
            shapley=list(shapley),
            iterations=iterations,
            timestamp=timestamp,
        )

    def task(
        self,
        task_id: str = "t1",
        *,
        published_at: int = T0 + 1_000,
        train_price: int = 700,
        sap_price: int = 200,
        clients=None,
        server: Identity | None = None,
        **extra,
    ):
        clients = [c.account for c in self.clients] if clients is None else clients
        extra.setdefault("round", 0)
        return make_task(
            server or self.server,
            task_id=task_id,
            clients=clients,
            train_price=train_price,
            sap_price=sap_price,
            published_at=published_at,
            content_hash="ab" * 32,
            **extra,
        )

    def block(
        self,
        chain: Chain,
        task=None,
        *,
        winner: int | Identity = 0,
        s_avg=(0.5, 0.3, 0.2),
        s_winner=None,
        txs=(),
        timestamp: int | None = None,
        iterations: int = 10,
    ) -> Block:
        task = task or self.task(f"t{chain.height + 1}", published_at=T0 + 1_000 * (chain.height + 1))
        w = self.miners[winner] if isinstance(winner, int) else winner
        ts = task.published_at + 500 if timestamp is None else timestamp
        mine = np.array(s_winner if s_winner is not None else s_avg, dtype=np.float64)
        # the winner's work log repeats its S (each leaf sums alike); one other miner reports S' so
        # that the iteration-weighted mean of S and S' is s_avg
        other = self.miners[(self.miners.index(w) + 1) % len(self.miners)] if w in self.miners else self.miners[0]
        peer = 2 * np.array(s_avg, dtype=np.float64) - mine
        report = self.report(
            chain, task, other, peer, iterations, max(task.published_at, chain.head_block.header.timestamp)
        )
        return build_block(
            chain,
            task=task,
            winner=w,
            leaves=np.tile(mine, (iterations, 1)),
            reports=[report],
            transactions=list(txs),
            timestamp=ts,
        )

    @staticmethod
    def reheader(block: Block, signer: Identity | None, **updates) -> Block:
        """Replace header fields; re-sign with ``signer`` (None keeps the old signature)."""
        h = block.header.model_copy(update=updates)
        if signer is not None:
            h = h.model_copy(update={"signature": signer.sign(h.signing_payload())})
        return block.model_copy(update={"header": h})

    @classmethod
    def rebody(
        cls, block: Block, signer: Identity | None, *, transactions=None, task=None, fix_merkle: bool = True
    ) -> Block:
        """Replace body parts; recompute the merkle root (unless told not to) and re-sign."""
        body_up = {}
        if transactions is not None:
            body_up["transactions"] = list(transactions)
        if task is not None:
            body_up["task"] = task
        body = block.body.model_copy(update=body_up)
        b = block.model_copy(update={"body": body})
        upd = {"merkle_root": body_merkle_root(body.transactions)} if fix_merkle else {}
        return cls.reheader(b, signer, **upd)

    def winner_of(self, block: Block) -> Identity:
        return next(m for m in self.miners if m.account == block.header.winner)

    @staticmethod
    def snapshot(chain: Chain):
        """Everything a rejected block must leave untouched."""
        store = chain.store
        stored = None
        if store is not None:
            stored = (store.head, store.count())
        state = chain.head_state
        return (
            chain.head,
            chain.height,
            chain.balances(),
            dict(state.nonces),
            set(state.settled),
            set(getattr(state, "deposits", ())),
            len(chain.main_chain()),
            stored,
        )


@pytest.fixture(scope="session")
def net() -> Net:
    return Net()


@pytest.fixture
def chain(net: Net) -> Chain:
    return Chain(net.genesis())


# --- every reject reason is raised by some test ------------------------------------------
RAISED_REASONS: set[Reason] = set()
_rejected_init = Rejected.__init__


def _recording_init(self: Rejected, reason: Reason | str, message: str) -> None:
    _rejected_init(self, reason, message)
    RAISED_REASONS.add(self.reason)


Rejected.__init__ = _recording_init  # type: ignore[method-assign]


def _whole_suite(config: pytest.Config) -> bool:
    tests = Path(__file__).parent.resolve()
    return not config.option.keyword and [Path(a).resolve() for a in config.args] == [tests]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A run of the whole suite fails if some reason of :class:`fedcoin.errors.Reason` was never raised."""
    if exitstatus != 0 or not _whole_suite(session.config):
        return
    missing = sorted(r.value for r in set(Reason) - RAISED_REASONS)
    if missing:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"reject reasons no test raised: {', '.join(missing)}", red=True)


# --- the services in-process (FastAPI's TestClient) ---------------------------------------------------
VALUES = [0.5, 0.3, 0.2]  # Net.block tiles S = S̄ = these: the additive game's marginals


def additive_engines(device=None):
    """The miner's engine factory in these tests: the additive game of ``VALUES`` whatever the content,
    so the blocks conftest's ``Net.block`` builds are honest work the miner's verifier recomputes."""
    return lambda task, content: CoalitionGame(task.n_players, additive_game(VALUES).utility).marginals


@pytest.fixture
def node_env(tmp_path, monkeypatch, net) -> GenesisConfig:
    for name in list(os.environ):
        if name.startswith("FEDCOIN_"):
            monkeypatch.delenv(name)
    genesis = net.genesis()
    genesis.save(tmp_path / "genesis.json")
    monkeypatch.setenv("FEDCOIN_GENESIS", str(tmp_path / "genesis.json"))
    monkeypatch.setenv("FEDCOIN_DATA_DIR", str(tmp_path / "node"))
    monkeypatch.setenv("FEDCOIN_LOG_LEVEL", "WARNING")
    return genesis


@pytest.fixture
def miner(node_env, monkeypatch) -> Iterator[TestClient]:
    from services.miner.app import create_app

    monkeypatch.setattr("fedcoin.node.miner_host.engine_factory", additive_engines)
    with TestClient(create_app()) as client:
        yield client


def give_task(miner: TestClient, net, task_id: str, published_at: int) -> ShapleyTask:
    """A server-signed task delivered to the miner with its content, as the FL server does."""
    content = f"content of {task_id}".encode()
    task = make_task(
        net.server,
        task_id=task_id,
        round=0,
        clients=[c.account for c in net.clients],
        train_price=700,
        sap_price=200,
        published_at=published_at,
        content_hash=sha256_hex(content),
    )
    r = miner.post("/tasks", json={**task.to_dict(), "content_b64": base64.b64encode(content).decode()})
    assert r.status_code == 202 and r.json()["status"] == "accepted", r.text
    return task
