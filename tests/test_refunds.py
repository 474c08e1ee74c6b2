"""Refunds: what is left of a deposit's escrow goes back to its requester, signed by its server.

A refund returns the whole remaining escrow of a confirmed deposit to the requester who made it,
with nonce 0 and the deposit's server's signature; anything else is ``bad-refund``, in the mempool
and in a block, and changes nothing. Once refunded, the escrow pays no further round."""

from __future__ import annotations

import pytest

from fedcoin.chain.transactions import make_refund, make_transaction
from fedcoin.errors import InvalidBlock, InvalidTransaction
from fedcoin.ledger.chain import Chain
from fedcoin.ledger.mempool import Mempool


@pytest.fixture
def funded(net):
    """A chain where the requester's deposit of 9,000 for the server is confirmed."""
    chain = Chain(net.genesis())
    dep = make_transaction(net.requester, net.server.account, 9_000, 0, "deposit", "job")
    chain.add_block(net.block(chain, winner=0, txs=[dep]), now=net.NOW)
    assert chain.head_state.escrow(dep.txid) == 9_000
    return chain, dep


def test_the_server_refunds_the_whole_escrow_to_the_requester(net, funded):
    chain, dep = funded
    before = chain.balance(net.requester.account)
    refund = make_refund(net.server, dep.txid, net.requester.account, 9_000)
    pool = Mempool()
    assert pool.add(refund, chain.head_state)
    chain.add_block(net.block(chain, winner=1, txs=pool.pending()), now=net.NOW)
    assert chain.balance(net.requester.account) == before + 9_000
    assert chain.head_state.escrow(dep.txid) == 0 and chain.head_state.total == chain.supply
    # the escrow is empty: no second refund, and no round of a task naming the deposit can be paid
    assert pool.prune(chain.head_state) == [refund.txid]
    with pytest.raises(InvalidTransaction) as info:
        pool.add(refund, chain.head_state)
    assert info.value.reason == "bad-refund"


@pytest.mark.parametrize(
    "case",
    ["requester-signs", "stranger-signs", "partial", "too-much", "other-recipient", "nonce-1", "unknown-deposit"],
)
def test_bad_refunds_are_refused_in_the_pool_and_in_blocks(net, funded, case):
    chain, dep = funded
    signer, txid, to, amount = net.server, dep.txid, net.requester.account, 9_000
    if case == "requester-signs":
        signer = net.requester
    elif case == "stranger-signs":
        signer = net.users[0]
    elif case == "partial":
        amount = 4_000
    elif case == "too-much":
        amount = 9_001
    elif case == "other-recipient":
        to = net.users[1].account
    elif case == "unknown-deposit":
        txid = "cd" * 32
    refund = make_refund(signer, txid, to, amount)
    if case == "nonce-1":
        unsigned = refund.model_copy(update={"nonce": 1, "signature": ""})
        refund = unsigned.model_copy(update={"signature": net.server.sign(unsigned.signing_payload())})
    before = net.snapshot(chain)
    with pytest.raises(InvalidTransaction) as info:
        Mempool().add(refund, chain.head_state)
    assert info.value.reason == "bad-refund"
    good = net.block(chain, winner=1)
    w = net.winner_of(good)
    bad = net.rebody(good, w, transactions=[refund, *good.body.transactions])
    with pytest.raises(InvalidBlock) as binfo:
        chain.add_block(bad, now=net.NOW)
    assert binfo.value.reason == "bad-transaction" and "bad-refund" in str(binfo.value)
    assert net.snapshot(chain) == before


def test_one_refund_per_deposit_is_pending_and_a_settled_round_prunes_it(net, funded):
    chain, dep = funded
    pool = Mempool()
    refund = make_refund(net.server, dep.txid, net.requester.account, 9_000)
    assert pool.add(refund, chain.head_state)
    assert not pool.add(refund, chain.head_state)  # the same one again: known
    other = make_refund(net.server, dep.txid, net.requester.account, 9_000).model_copy(update={"memo": "again"})
    other = other.model_copy(update={"signature": net.server.sign(other.signing_payload())})
    with pytest.raises(InvalidTransaction) as info:
        pool.add(other, chain.head_state)
    assert info.value.reason == "nonce-conflict"
    # a round of the deposit's task settles first (the block builder leaves the refund out), so the
    # pending refund no longer matches the escrow and is dropped; the server signs a new one
    from fedcoin.consensus.payments import round_prices

    train, _com, sap = round_prices(9_000, (7, 1, 2), 3, 0)
    task = net.task(
        "job:r0",
        published_at=net.T0 + 5_000,
        deposit=dep.txid,
        budget=9_000,
        rounds=3,
        train_price=train,
        sap_price=sap,
    )
    block = net.block(chain, task, winner=2, txs=pool.pending())
    assert refund not in block.body.transactions
    chain.add_block(block, now=net.NOW)
    left = chain.head_state.escrow(dep.txid)
    assert left == 6_000 and pool.prune(chain.head_state) == [refund.txid]
    assert pool.add(make_refund(net.server, dep.txid, net.requester.account, left), chain.head_state)
