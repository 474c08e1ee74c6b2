"""Mempool, signed messages and task content: the pieces the services are wired from."""

from __future__ import annotations

import math

import pytest
import torch

from fedcoin.chain.encoding import sha256_hex
from fedcoin.chain.identity import Identity
from fedcoin.chain.state import ChainState
from fedcoin.chain.transactions import Transaction, make_transaction
from fedcoin.errors import InvalidInput, InvalidSignature, InvalidTransaction
from fedcoin.fl.content import pack_task_content, pack_weights, unpack_task_content, unpack_weights
from fedcoin.ledger.mempool import MAX_NONCE_GAP, Mempool
from fedcoin.node.messages import SignedMessage

A = Identity.from_seed(b"a" * 32)
B = Identity.from_seed(b"b" * 32)


def state(balance: int = 100, nonce: int = 0) -> ChainState:
    return ChainState(balances={A.account: balance}, nonces={A.account: nonce} if nonce else {})


# --- mempool ---------------------------------------------------------------------


def test_mempool_admits_and_persists(tmp_path):
    db = tmp_path / "node.sqlite"
    pool = Mempool(str(db))
    t0 = make_transaction(A, B.account, 10, 0)
    t1 = make_transaction(A, B.account, 20, 1, "deposit", "job")
    assert pool.add(t1, state()) and pool.add(t0, state())
    assert pool.add(t0, state()) is False  # already pending: idempotent
    assert [t.nonce for t in pool.pending()] == [0, 1]
    again = Mempool(str(db))  # accepted transactions survive a restart
    assert [t.txid for t in again.pending()] == [t0.txid, t1.txid]
    assert again.prune(state(nonce=1)) == [t0.txid] and len(again) == 1
    assert len(Mempool(str(db))) == 1


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda: make_transaction(A, B.account, 10, 0).model_copy(update={"amount": 11}), "bad-signature"),
        (lambda: make_transaction(A, B.account, 101, 0), "insufficient-balance"),
        (lambda: make_transaction(A, B.account, 1, MAX_NONCE_GAP + 1), "nonce-too-far-ahead"),
        (lambda: make_transaction(A, A.account, 1, 0), "self-transfer"),
        (
            lambda: Transaction(sender=A.account, recipient=B.account, amount=1, nonce=0, kind="payout", memo="t"),
            "bad-kind",
        ),
    ],
)
def test_mempool_rejections_change_nothing(tmp_path, make, reason):
    pool = Mempool(str(tmp_path / "n.sqlite"))
    with pytest.raises(InvalidTransaction) as info:
        pool.add(make(), state())
    assert info.value.reason == reason and len(pool) == 0


def test_mempool_counts_pending_spend_and_nonce_conflicts():
    pool = Mempool()
    assert pool.add(make_transaction(A, B.account, 60, 0), state())
    with pytest.raises(InvalidTransaction, match="insufficient-balance"):
        pool.add(make_transaction(A, B.account, 41, 1), state())
    with pytest.raises(InvalidTransaction, match="nonce-conflict"):
        pool.add(make_transaction(A, B.account, 1, 0, memo="other"), state())
    with pytest.raises(InvalidTransaction, match="bad-nonce"):
        pool.add(make_transaction(A, B.account, 1, 0), state(nonce=1))
    assert len(pool) == 1


def test_mempool_full_is_a_local_rejection():
    pool = Mempool(max_pending=2)
    C = Identity.from_seed(b"c" * 32)
    rich = ChainState(balances={A.account: 100, B.account: 100, C.account: 100})
    assert pool.add(make_transaction(A, C.account, 1, 0), rich) and pool.add(make_transaction(B, C.account, 1, 0), rich)
    with pytest.raises(InvalidTransaction) as info:
        pool.add(make_transaction(C, A.account, 1, 0), rich)
    assert info.value.reason == "mempool-full" and info.value.category == "local"
    assert len(pool) == 2


# --- signed messages -------------------------------------------------------------------


def test_signed_message_round_trip_and_tamper():
    msg = SignedMessage.create(A, "posap-report", {"task_id": "t", "shapley": [0.5, -0.25], "iterations": 3})
    back = SignedMessage.from_dict(msg.model_dump())
    assert back.open("posap-report", sender=A.account)["iterations"] == 3
    with pytest.raises(InvalidInput):
        back.open("update")
    with pytest.raises(InvalidSignature):
        back.open("posap-report", sender=B.account)
    forged = back.model_copy(update={"payload": {**back.payload, "iterations": 4}})
    with pytest.raises(InvalidSignature):
        forged.open("posap-report")
    stale = SignedMessage.create(A, "k", {}, timestamp=1)
    with pytest.raises(InvalidInput, match="clock"):
        stale.open("k")
    assert stale.open("k", max_skew_ms=None) == {}
    with pytest.raises(InvalidInput):
        SignedMessage.from_dict({"kind": "k", "sender": "zz", "payload": {}, "timestamp": 0, "signature": ""})


# --- task content ------------------------------------------------------------------------


def _weights(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "layers.0.weight": torch.randn(4, 3, generator=g),
        "layers.0.bias": torch.randn(4, generator=g),
        "layers.1.weight": torch.randn(2, 4, generator=g),
        "layers.1.bias": torch.randn(2, generator=g),
    }


def test_weights_and_task_content_round_trip():
    w = _weights(0)
    back = unpack_weights(pack_weights(w))
    assert all(torch.equal(w[k], back[k]) for k in w)
    X, y = torch.rand(5, 3), torch.tensor([0, 1, 1, 0, 1])
    blob = pack_task_content([_weights(1), _weights(2)], [10, 30], X, y, w)
    c = unpack_task_content(blob, sha256_hex(blob), n_players=2)
    assert c.n_samples == [10, 30] and torch.equal(c.X_val, X) and torch.equal(c.y_val, y)
    assert torch.equal(c.updates[1]["layers.1.bias"], _weights(2)["layers.1.bias"])


def test_task_content_rejections():
    w = _weights(0)
    X, y = torch.rand(5, 3), torch.tensor([0, 1, 1, 0, 1])
    blob = pack_task_content([_weights(1)], [10], X, y, w)
    with pytest.raises(InvalidInput, match="content_hash"):
        unpack_task_content(blob, "0" * 64)
    with pytest.raises(InvalidInput, match="clients"):
        unpack_task_content(blob, n_players=2)
    with pytest.raises(InvalidInput, match="npz"):
        unpack_task_content(b"definitely not a zip")
    bad = _weights(1)
    bad["layers.0.bias"][0] = math.nan
    with pytest.raises(InvalidInput):
        unpack_task_content(pack_task_content([bad], [10], X, y, w))
    wrong = _weights(1)
    wrong["layers.1.weight"] = torch.zeros(3, 4)
    with pytest.raises(InvalidInput):
        unpack_task_content(pack_task_content([wrong], [10], X, y, w))
    as64 = {k: v.double() for k, v in _weights(1).items()}
    with pytest.raises(InvalidInput):
        unpack_task_content(pack_task_content([as64], [10], X, y, w))


def _gateway_over(handlers):
    """An HttpMinerGateway over an in-process transport: ``handlers`` maps a miner's host to a
    function of the request (which may block, like a peer that silently vanished)."""
    import httpx

    from fedcoin.node.peers import HttpMinerGateway

    def route(request):
        return handlers[request.url.host](request)

    http = httpx.Client(transport=httpx.MockTransport(route))
    miners = [f"http://{h}" for h in handlers]
    return HttpMinerGateway(miners, http), http


def test_miner_reads_do_not_add_up_the_timeouts_of_vanished_miners():
    import time

    import httpx

    def vanished(request):  # answers nothing until the read timeout, like a dead TCP peer
        time.sleep(1.0)
        raise httpx.ReadTimeout("timed out", request=request)

    def settled(request):
        return httpx.Response(200, json={"settled": True, "block_hash": "ab"})

    gw, http = _gateway_over({"m1": vanished, "m2": vanished, "m3": settled, "m4": vanished})
    with http:
        t0 = time.monotonic()
        assert gw.get_all("/tasks/x") == [{"settled": True, "block_hash": "ab"}]
        assert time.monotonic() - t0 < 2.5  # one timeout (1 s), not three in a row
    gw, http = _gateway_over({"m3": settled, "m1": vanished})
    with http:
        t0 = time.monotonic()
        assert gw.get("/tasks/x") == {"settled": True, "block_hash": "ab"}
        assert time.monotonic() - t0 < 0.8  # the first answer does not wait for the vanished miner


def test_a_gpu_miner_steps_in_batches_by_default():
    from fedcoin.node.miner_host import default_batch

    assert default_batch("cpu") == 4
    if torch.cuda.is_available():  # pragma: no cover - with a GPU only
        assert default_batch(None) == default_batch("cuda") == 64
    else:
        assert default_batch(None) == 4
        with pytest.raises(InvalidInput):
            default_batch("cuda")  # asked for, not there: the node refuses to start
