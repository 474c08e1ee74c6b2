"""fedcoin.node.payer without a network: which client updates a round pays (receipts that verify, for the
update they sign, one per account), and what it refuses to start with."""

from __future__ import annotations

import json

import httpx
import pytest
import torch

from fedcoin.chain.identity import Identity
from fedcoin.errors import InvalidInput, Unavailable
from fedcoin.fl.model import init_weights, weight_shapes
from fedcoin.node.payer import RoundPayer, SignedUpdate, sign_update, update_hash

SERVER, REQUESTER = Identity.from_seed(b"S" * 32), Identity.from_seed(b"R" * 32)
CLIENTS = [Identity.from_seed(bytes([0x30 + i]) * 32) for i in range(4)]
X, Y = torch.rand(20, 784), torch.randint(0, 10, (20,))


def payer(handler=None, **kw) -> RoundPayer:
    http = httpx.Client(transport=httpx.MockTransport(handler or (lambda r: httpx.Response(503))))
    args = {"budget": 1000, "rounds": 2, "X_val": X, "y_val": Y, "task_id": "fl"}
    args.update(kw)
    return RoundPayer(server=SERVER, requester=REQUESTER, miners=["http://m1"], http=http, **args)


def update(seed: int) -> dict[str, torch.Tensor]:
    return init_weights(seed=seed)


def signed(who: Identity, u, task="fl:r0", r=0, n=600) -> SignedUpdate:
    return SignedUpdate(update=u, receipt=sign_update(who, task, r, u, n))


def test_only_updates_with_their_own_valid_receipt_are_paid():
    p = payer()
    shapes = weight_shapes(update(0))
    u = [update(i + 1) for i in range(4)]
    tampered = {k: v.clone() for k, v in u[1].items()}
    tampered["layers.0.bias"][0] += 1.0
    forged = json.loads(sign_update(CLIENTS[2], "fl:r0", 0, u[2], 600))
    forged["sender"] = CLIENTS[3].account  # someone else's receipt, re-addressed: the signature fails
    wrong_shape = {**u[3], "layers.0.bias": torch.zeros(7)}
    got = p.check(
        0,
        [
            signed(CLIENTS[0], u[0]),
            SignedUpdate(update=tampered, receipt=sign_update(CLIENTS[1], "fl:r0", 0, u[1], 600)),  # not what it signed
            SignedUpdate(update=u[2], receipt=json.dumps(forged)),
            signed(CLIENTS[3], u[3], task="fl:r1", r=1),  # another round's receipt
            signed(CLIENTS[0], u[2]),  # a second update from the same account
            SignedUpdate(update=wrong_shape, receipt=sign_update(CLIENTS[3], "fl:r0", 0, wrong_shape, 600)),
            SignedUpdate(update=u[3], receipt="not json"),
            signed(CLIENTS[3], u[3], n=300),
        ],
        shapes,
    )
    assert [(a, n) for a, _, n in got] == [(CLIENTS[0].account, 600), (CLIENTS[3].account, 300)]
    assert update_hash(got[0][1]) == update_hash(u[0])


def test_bad_setups_and_unreachable_miners_are_refused():
    with pytest.raises(InvalidInput):
        payer(metric="f1")
    with pytest.raises(InvalidInput):
        RoundPayer(server=SERVER, requester=REQUESTER, miners=[], budget=1, rounds=1, X_val=X, y_val=Y)
    p = payer()
    with pytest.raises(Unavailable, match="balance"):
        p.deposit()  # no miner answers
    with pytest.raises(InvalidInput, match="not one of"):
        p.settle(2, [], update(0))


def test_the_deposit_needs_the_budget_and_is_signed_once():
    posted: list[dict] = []

    def miner(request: httpx.Request) -> httpx.Response:
        if request.url.path == f"/balances/{REQUESTER.account}":
            return httpx.Response(200, json={"account": REQUESTER.account, "balance": 5000, "nonce": 3, "height": 1})
        if request.url.path == "/transactions/pending":
            return httpx.Response(200, json=[])
        if request.method == "POST":
            posted.append(json.loads(request.content))
            return httpx.Response(202, json={"status": "pending"})
        return httpx.Response(404)

    p = payer(miner)
    txid = p.deposit()
    assert p.deposit() == txid and len(posted) == 1
    tx = posted[0]
    assert (tx["kind"], tx["sender"], tx["recipient"], tx["amount"], tx["nonce"], tx["memo"]) == (
        "deposit",
        REQUESTER.account,
        SERVER.account,
        1000,
        3,
        "fl",
    )
    with pytest.raises(InvalidInput, match="less than the budget"):
        payer(miner, budget=10_000).deposit()
