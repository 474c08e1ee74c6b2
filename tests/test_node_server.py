"""The FL server's round loop in-process: fake clients that really train, fake miners that settle
each Shapley task on a real chain; acceptance, rounds, payments, dropped clients, resume, failures."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedcoin.chain.encoding import sha256_hex
from fedcoin.chain.genesis import ChainParams, GenesisConfig
from fedcoin.chain.identity import Identity
from fedcoin.chain.reports import make_report
from fedcoin.chain.tasks import ShapleyTask, make_task
from fedcoin.chain.transactions import Transaction, make_transaction
from fedcoin.consensus.mining import build_block
from fedcoin.consensus.payments import reward_allocation
from fedcoin.errors import Conflict, InvalidInput, InvalidSignature, Unavailable
from fedcoin.fl.content import pack_weights, unpack_task_content, unpack_weights
from fedcoin.fl.training import local_train
from fedcoin.ledger.chain import Chain
from fedcoin.node.messages import (
    CancelRequest,
    ClientRegistration,
    SignedMessage,
    TrainingRequest,
    TrainOrder,
    UpdateReceipt,
)
from fedcoin.node.server import FLServer
from fedcoin.node.settings import ServerSettings, load

D, C = 12, 3
SERVER = Identity.from_seed(b"S" * 32)
REQUESTER = Identity.from_seed(b"R" * 32)
WINNER = Identity.from_seed(b"W" * 32)
PEER = Identity.from_seed(b"P" * 32)  # the other admitted miner, whose report the winner's block carries


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (n,), generator=g)
    X = torch.nn.functional.one_hot(y, D).float() + 0.3 * torch.rand(n, D, generator=g)
    return X, y


class FakeClients:
    """Client nodes that verify the server's order and really train (on tiny synthetic data)."""

    def __init__(self, server: FLServer, count: int) -> None:
        self.server = server
        self.idents = [Identity.from_seed(bytes([0x40 + i]) * 32) for i in range(count)]
        self.data = {c.account: data(60, i) for i, c in enumerate(self.idents)}
        self.calls: list[str] = []
        self.forge: set[str] = set()  # accounts whose receipt will not match their update
        self.poison: set[str] = set()  # accounts whose update holds NaN weights (the receipt matches it)

    def register(self) -> None:
        for i, c in enumerate(self.idents):
            reg = ClientRegistration(url=f"http://127.0.0.1:{9000 + i}", n_samples=60, client_type=0)
            self.server.register_client(reg.sign(c))

    def train(self, url: str, order: dict[str, Any]) -> dict[str, Any]:
        o = TrainOrder.open(SignedMessage.from_dict(order), sender=SERVER.account)
        self.calls.append(o.client)
        ident = next(c for c in self.idents if c.account == o.client)
        blob = self.server.blobs.get(o.global_hash)
        assert blob is not None and f"/blobs/{o.global_hash}" in o.global_uri
        X, y = self.data[o.client]
        w, n = local_train(unpack_weights(blob), X, y, o.iterations, o.batch_size, o.lr, o.seed)
        if o.client in self.poison:
            w = {k: torch.full_like(v, float("nan")) for k, v in w.items()}
        update = pack_weights(w)
        claimed = sha256_hex(b"another update") if o.client in self.forge else sha256_hex(update)
        receipt = UpdateReceipt(task_id=o.task_id, round=o.round, n_samples=n, update_hash=claimed)
        return {"message": receipt.sign(ident).model_dump(), "update_b64": base64.b64encode(update).decode()}


class FakeMiners:
    """Miners that settle every Shapley task they are given on one real chain (S = S̄: the clients'
    order; the winner's work log repeats it, and the peer reports the same)."""

    def __init__(self, genesis: GenesisConfig, *, refuse_deposit: bool = False, hold: bool = False) -> None:
        self.chain = Chain(genesis)
        self.on_settled: Any = None  # called with each block this fake network mines
        self.pool: dict[str, Transaction] = {}
        self.tasks: list[ShapleyTask] = []
        self.refuse_deposit = refuse_deposit
        self.hold = hold

    def _settled(self, stid: str) -> dict[str, Any] | None:
        for b in self.chain.main_chain():
            if b.header.task_id == stid:
                return {
                    "task_id": stid,
                    "settled": True,
                    "height": b.height,
                    "block_hash": b.hash,
                    "winner": b.header.winner,
                    "s_avg": b.header.s_avg,
                }
        return None

    def get(self, path: str) -> Any | None:
        kind, _, key = path.strip("/").partition("/")
        if kind == "transactions":
            for b in self.chain.main_chain():
                if any(t.txid == key for t in b.body.transactions):
                    return {"txid": key, "status": "confirmed"}
            return {"txid": key, "status": "pending"} if key in self.pool else None
        if kind == "tasks":
            return self._settled(key)
        if kind == "balances":
            return {"account": key, "balance": self.chain.balance(key), "nonce": self.chain.nonce(key)}
        if kind == "blocks":
            return self.chain.block_at(int(key)).to_dict()
        raise AssertionError(path)

    def get_all(self, path: str) -> list[Any]:
        found = self.get(path)
        return [] if found is None else [found]

    def post_all(self, path: str, body: Any) -> list[tuple[int, str]]:
        if path == "/transactions":
            if self.refuse_deposit:
                return [(422, '{"reason": "insufficient-balance"}')]
            tx = Transaction.from_dict(body)
            if tx.kind == "refund":
                self.chain.head_state.apply(tx)  # a refund the server sends must apply on the head
            self.pool[tx.txid] = tx
            return [(202, "")]
        task = ShapleyTask.from_dict(body)
        task.verify_signature()
        self.tasks.append(task)
        if not self.hold and self._settled(task.task_id) is None:
            s = [1.0 / (i + 1) for i in range(task.n_players)]
            report = make_report(PEER, task_id=task.task_id, prev_hash=self.chain.head, shapley=s, iterations=5)
            block = build_block(
                self.chain,
                task=task,
                winner=WINNER,
                leaves=np.tile(s, (5, 1)),
                reports=[report],
                transactions=list(self.pool.values()),
            )
            self.chain.add_block(block)
            self.pool = {k: t for k, t in self.pool.items() if t not in block.body.transactions}
            if self.on_settled is not None:
                self.on_settled(block)
        return [(202, "")]


def settings(tmp_path: Path, genesis: GenesisConfig, **kw: Any) -> ServerSettings:
    path = tmp_path / "genesis.json"
    genesis.save(path)
    base = {
        "genesis": path,
        "data_dir": tmp_path / "server",
        "hidden": (8,),
        "local_iterations": 3,
        "batch_size": 16,
        "client_wait": 5.0,
        "settle_timeout": 5.0,
        "min_clients": 2,
        "advertise_url": "http://server:8001",
    }
    return load(ServerSettings, **{**base, **kw})


def make_server(
    tmp_path: Path, miners: FakeMiners, n_clients: int = 3, *, register: bool = True, **kw: Any
) -> tuple[FLServer, FakeClients]:
    genesis = miners.chain.genesis_config
    holder: dict[str, FakeClients] = {}

    class Gate:
        def train(self, url: str, order: dict[str, Any]) -> dict[str, Any]:
            return holder["c"].train(url, order)

    server = FLServer(SERVER, settings(tmp_path, genesis, **kw), miners, Gate(), validation=lambda: data(50, 99))
    holder["c"] = FakeClients(server, n_clients)
    if register:
        holder["c"].register()
    return server, holder["c"]


def request(budget: int = 1_000_000, rounds: int = 2, task_id: str = "job", nonce: int = 0) -> SignedMessage:
    deposit = make_transaction(REQUESTER, SERVER.account, budget, nonce, "deposit", task_id)
    return TrainingRequest(task_id=task_id, budget=budget, rounds=rounds, deposit=deposit).sign(REQUESTER)


@pytest.fixture
def genesis() -> GenesisConfig:
    params = ChainParams(servers=[SERVER.account], miners=[WINNER.account, PEER.account])
    return GenesisConfig(params=params, allocations={REQUESTER.account: 10_000_000})


def test_a_paid_task_runs_every_round_and_records_the_payments(tmp_path, genesis):
    miners = FakeMiners(genesis)
    server, clients = make_server(tmp_path, miners)
    doc = server.submit(request(rounds=2))
    assert doc["status"] == "queued" and doc["prices"] == {"train": 700_000, "com": 100_000, "sap": 200_000}
    server.process(doc, threading.Event())
    doc = server.task("job")
    assert doc["status"] == "done" and len(doc["round_results"]) == 2 and "pending_round" not in doc
    assert len(clients.calls) == 2 * 3
    for r, res in enumerate(doc["round_results"]):
        block = miners.chain.block_at(res["block_height"])
        task = block.body.task
        assert res["shapley_task_id"] == task.task_id == f"job:r{r}" and task.server == SERVER.account
        assert task.train_price == 350_000 and task.sap_price == 100_000
        content = server.blobs.get(task.content_hash)
        assert content is not None and len(unpack_task_content(content, task.content_hash, 3).updates) == 3
        expected = [{"to": task.clients[i], "amount": a} for i, a in reward_allocation(block.header.s_avg, 350_000)]
        assert res["payments"]["reward"] == expected
        assert res["payments"]["payout"] == [{"to": WINNER.account, "amount": 450_000}]
        assert res["payments"]["commission"] == [{"to": SERVER.account, "amount": 50_000}]
        assert task.deposit == doc["deposit_txid"] and [r.miner for r in block.body.reports] == [PEER.account]
        assert 0.0 <= res["metrics"]["accuracy"] <= 1.0
    # the deposit funded the first round's task and was confirmed in its block
    first = miners.chain.block_at(1)
    assert [t.txid for t in first.body.task.funding] == [doc["deposit_txid"]]
    assert miners.chain.block_at(2).body.task.funding == []
    assert miners.chain.head_state.escrow(doc["deposit_txid"]) == 0  # the two rounds paid the whole budget
    model_hash, model = server.model("job")
    assert model_hash == doc["model_hash"] and sha256_hex(model) == model_hash
    assert set(unpack_weights(model)) == {"layers.0.weight", "layers.0.bias", "layers.1.weight", "layers.1.bias"}


def test_a_client_whose_receipt_lies_is_left_out_of_the_round(tmp_path, genesis):
    miners = FakeMiners(genesis)
    server, clients = make_server(tmp_path, miners)
    liar = clients.idents[1].account
    clients.forge.add(liar)
    server.process(server.submit(request(rounds=1)), threading.Event())
    res = server.task("job")["round_results"][0]
    assert liar not in res["clients"] and len(res["clients"]) == 2
    assert [d["client"] for d in res["dropped"]] == [liar] and "receipt" in res["dropped"][0]["reason"]


def test_a_nan_update_is_dropped_and_the_round_goes_on(tmp_path, genesis):
    miners = FakeMiners(genesis)
    server, clients = make_server(tmp_path, miners)
    bad = clients.idents[0].account
    clients.poison.add(bad)
    server.process(server.submit(request(rounds=1)), threading.Event())
    doc = server.task("job")
    assert doc["status"] == "done"
    res = doc["round_results"][0]
    assert bad not in res["clients"] and len(res["clients"]) == 2  # paid nothing for this round
    assert all(p["to"] != bad for p in res["payments"].get("reward", []))
    assert [d["client"] for d in res["dropped"]] == [bad] and "NaN" in res["dropped"][0]["reason"]


def test_client_registrations_need_an_allowed_address_and_are_bounded(tmp_path, genesis):
    server, _ = make_server(
        tmp_path, FakeMiners(genesis), register=False, client_networks="10.0.0.0/8,trusted.example", max_clients=4
    )
    before = server.registered_clients()
    assert [c["url"] for c in before] == []  # the fake clients' loopback addresses are not allowed here
    stranger = Identity.from_seed(b"Z" * 32)
    for url in ("http://127.0.0.1:9000", "http://169.254.169.254/latest", "http://evil.example:80", "ftp://10.0.0.1"):
        with pytest.raises(InvalidInput):
            server.register_client(ClientRegistration(url=url, n_samples=1, client_type=0).sign(stranger))
    assert server.registered_clients() == before
    ok = ["http://10.1.2.3:8002", "http://trusted.example:8002", "https://10.200.0.9"]
    idents = [Identity.from_seed(bytes([0x60 + i]) * 32) for i in range(5)]
    for ident, url in zip(idents, [*ok, "http://10.0.0.7"], strict=False):
        server.register_client(ClientRegistration(url=url, n_samples=1, client_type=0).sign(ident))
    assert len(server.registered_clients()) == 4
    with pytest.raises(Conflict):  # a fifth account: the server keeps 4
        server.register_client(ClientRegistration(url="http://10.0.0.8", n_samples=1, client_type=0).sign(idents[4]))
    # a registered client may update its own registration
    server.register_client(ClientRegistration(url="http://10.9.9.9", n_samples=2, client_type=1).sign(idents[0]))
    assert len(server.registered_clients()) == 4


def test_a_restarted_server_resumes_the_pending_round_without_retraining(tmp_path, genesis):
    miners = FakeMiners(genesis, hold=True)
    server, clients = make_server(tmp_path, miners, settle_timeout=600.0)
    stop = threading.Event()
    worker = threading.Thread(target=server.process, args=(server.submit(request(rounds=1)), stop))
    worker.start()
    while not miners.tasks:  # the round is trained and its task published; nobody settles it
        worker.join(timeout=0.05)
    stop.set()
    worker.join(timeout=10)
    pending = server.task("job")["pending_round"]
    assert pending["round"] == 0 and len(clients.calls) == 3
    miners.hold = False  # the network comes back; the server restarts on the same state
    again, clients_again = make_server(tmp_path, miners, settle_timeout=600.0)
    again.process(again.task("job"), threading.Event())
    doc = again.task("job")
    assert doc["status"] == "done" and clients_again.calls == []  # the stored round was reused
    assert doc["round_results"][0]["shapley_task_id"] == pending["task"]["task_id"]


def test_a_deposit_the_miners_refuse_fails_the_task(tmp_path, genesis):
    server, _ = make_server(tmp_path, FakeMiners(genesis, refuse_deposit=True))
    stop = threading.Event()
    server.submit(request())
    worker = threading.Thread(target=server.run, args=(stop,))
    worker.start()
    try:
        for _ in range(100):
            if server.task("job")["status"] == "failed":
                break
            worker.join(timeout=0.05)
    finally:
        stop.set()
        server.wake.set()
        worker.join(timeout=10)
    doc = server.task("job")
    assert doc["status"] == "failed" and "deposit rejected" in doc["error"]


def test_bad_requests_change_nothing(tmp_path, genesis):
    server, _ = make_server(tmp_path, FakeMiners(genesis))
    server.submit(request())
    with pytest.raises(InvalidInput, match="another deposit"):
        server.submit(request(nonce=1))
    other = Identity.from_seed(b"O" * 32)
    wrong_payee = make_transaction(REQUESTER, other.account, 5, 0, "deposit", "x")
    with pytest.raises(InvalidInput, match="to this server"):
        server.submit(TrainingRequest(task_id="x", budget=5, deposit=wrong_payee).sign(REQUESTER))
    mismatch = make_transaction(REQUESTER, SERVER.account, 7, 0, "deposit", "y")
    with pytest.raises(InvalidInput, match="budget"):
        server.submit(TrainingRequest(task_id="y", budget=8, deposit=mismatch).sign(REQUESTER))
    forged = request(task_id="z").model_copy(update={"sender": other.account})
    with pytest.raises(InvalidSignature):
        server.submit(forged)
    with pytest.raises(InvalidInput):
        server.register_client(ClientRegistration(url="ftp://x", n_samples=1, client_type=0).sign(other))
    with pytest.raises(Conflict):
        server.model("job")
    assert [d["task_id"] for d in server.tasks()] == ["job"]
    assert json.dumps(server.task("job"))  # the stored document stays plain JSON


def test_a_cancelled_task_stops_and_refunds_the_unspent_budget(tmp_path, genesis):
    miners = FakeMiners(genesis)
    server, _ = make_server(tmp_path, miners)
    doc = server.submit(request(budget=1_000_000, rounds=2))
    cancel = CancelRequest(task_id="job").sign(REQUESTER)
    miners.on_settled = lambda block: server.cancel(cancel)  # the requester cancels once round 0 is paid
    server.process(doc, threading.Event())
    doc = server.task("job")
    assert doc["status"] == "cancelled" and len(doc["round_results"]) == 1  # round 1 never started
    left = miners.chain.head_state.escrow(doc["deposit_txid"])
    assert left == 500_000  # round 0 paid its half (train + sap + com)
    server._refunds(every=0)
    refund = server.task("job")["refund"]
    assert refund["status"] == "pending" and refund["amount"] == left
    tx = miners.pool[refund["txid"]]
    assert (tx.kind, tx.sender, tx.recipient, tx.amount) == ("refund", doc["deposit_txid"], REQUESTER.account, left)
    after = miners.chain.head_state.copy()
    after.apply(tx)
    assert after.escrow(doc["deposit_txid"]) == 0 and after.balance(REQUESTER.account) == 10_000_000 - 500_000
    # only the requester may cancel, and only once
    with pytest.raises(Conflict):
        server.cancel(cancel)
    with pytest.raises(InvalidSignature):
        server.cancel(CancelRequest(task_id="job").sign(WINNER))


def test_a_failed_task_refunds_its_whole_budget_once_the_deposit_is_confirmed(tmp_path, genesis):
    miners = FakeMiners(genesis)
    server, _ = make_server(tmp_path, miners, register=False, client_wait=0.5)  # no client ever registers
    doc = server.submit(request(budget=600_000, rounds=1))
    stop = threading.Event()
    with pytest.raises(Unavailable):
        server.process(doc, stop)
    doc.update(status="failed")
    server._save(doc)
    server._refunds(every=0)  # the deposit is only pending: nothing to refund yet
    assert "refund" not in server.task("job")
    # the deposit confirms (in a block settling another server-funded task)
    dep = Transaction.from_dict(doc["deposit"])
    other = make_task(
        SERVER,
        task_id="other:r0",
        round=0,
        clients=[WINNER.account],
        train_price=0,
        sap_price=0,
        published_at=1,
        content_hash="ab" * 32,
    )
    report = make_report(PEER, task_id=other.task_id, prev_hash=miners.chain.head, shapley=[1.0], iterations=1)
    miners.chain.add_block(
        build_block(
            miners.chain, task=other, winner=WINNER, leaves=np.ones((1, 1)), reports=[report], transactions=[dep]
        )
    )
    server._refunds(every=0)
    refund = server.task("job")["refund"]
    assert refund["status"] == "pending" and refund["amount"] == 600_000
