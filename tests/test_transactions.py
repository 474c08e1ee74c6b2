"""Tests for fedcoin.chain.transactions (and the canonical encoding they rely on)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from fedcoin.chain.encoding import canonical_json, tagged
from fedcoin.chain.identity import Identity
from fedcoin.chain.transactions import MAX_AMOUNT, MAX_MEMO, MINT_ACCOUNT, TX_DOMAIN, Transaction, make_transaction
from fedcoin.errors import InvalidInput, InvalidSignature

ALICE = Identity.from_seed(b"\x01" * 32)
BOB = Identity.from_seed(b"\x02" * 32)
CAROL = Identity.from_seed(b"\x03" * 32)


def tx(**kw) -> Transaction:
    args = {"recipient": BOB.account, "amount": 10, "nonce": 0, "kind": "transfer", "memo": ""}
    args.update(kw)
    return make_transaction(ALICE, **args)


# --- canonical encoding -----------------------------------------------------------


def test_canonical_json_shape():
    assert canonical_json({"b": 1, "a": [1.5, "x", None, True]}) == b'{"a":[1.5,"x",null,true],"b":1}'
    assert canonical_json({"m": "\u00e9"}) == b'{"m":"\\u00e9"}'
    assert canonical_json(1e-06) == b"1e-06"
    assert tagged("d", {"a": 1}) == b'd\n{"a":1}'


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {"a": [float("-inf")]}, {1: 2}, object()])
def test_canonical_json_rejects(bad):
    with pytest.raises(InvalidInput):
        canonical_json(bad)


def test_signing_payload_is_stable_and_documented():
    t = tx(amount=42, nonce=3, memo="hi")
    expected = (
        b"fedcoin/tx/v1\n"
        + b'{"amount":42,"kind":"transfer","memo":"hi","nonce":3,"recipient":"'
        + BOB.account.encode()
        + b'","sender":"'
        + ALICE.account.encode()
        + b'"}'
    )
    assert t.signing_payload() == expected
    assert t.txid == hashlib.sha256(expected).hexdigest()
    # independent of construction path and of dict ordering
    again = Transaction.from_dict(dict(reversed(list(t.to_dict().items()))))
    assert again.signing_payload() == expected and again.txid == t.txid
    assert tx(amount=42, nonce=3, memo="hi").txid == t.txid  # deterministic signature => stable id


def test_txid_excludes_signature():
    t = tx()
    assert t.model_copy(update={"signature": ""}).txid == t.txid


FIELD_CHANGES = {
    "sender": CAROL.account,
    "recipient": CAROL.account,
    "amount": 11,
    "nonce": 1,
    "kind": "deposit",
    "memo": "x",
}


@pytest.mark.parametrize("field", sorted(FIELD_CHANGES))
def test_txid_changes_with_every_field(field):
    t = tx()
    changed = t.model_copy(update={field: FIELD_CHANGES[field]})
    assert changed.txid != t.txid
    with pytest.raises(InvalidSignature):
        changed.verify_signature()


def test_domain_tag_in_payload():
    t = tx()
    assert t.signing_payload().startswith(TX_DOMAIN.encode() + b"\n")


# --- signatures -----------------------------------------------------------------


def test_signature_verifies():
    t = tx(kind="deposit", memo="task-1")
    t.verify_signature()


def test_signature_by_other_key_rejected():
    t = tx()
    forged = t.model_copy(update={"signature": CAROL.sign(t.signing_payload())})
    with pytest.raises(InvalidSignature):
        forged.verify_signature()


def test_signature_flipped_rejected():
    t = tx()
    sig = t.signature
    flipped = sig[:10] + format(int(sig[10], 16) ^ 4, "x") + sig[11:]
    with pytest.raises(InvalidSignature):
        t.model_copy(update={"signature": flipped}).verify_signature()


def test_unsigned_rejected():
    t = tx()
    with pytest.raises(InvalidSignature):
        t.model_copy(update={"signature": ""}).verify_signature()


# --- validation -------------------------------------------------------------------


@pytest.mark.parametrize("amount", [0, -1, MAX_AMOUNT + 1, True, False, 1.0, 2.5, "5", None])
def test_bad_amount_rejected(amount):
    with pytest.raises(InvalidInput):
        tx(amount=amount)
    with pytest.raises(InvalidInput):
        Transaction.from_dict({**tx().to_dict(), "amount": amount})


@pytest.mark.parametrize("nonce", [-1, True, 1.0, "0", MAX_AMOUNT + 1])
def test_bad_nonce_rejected(nonce):
    with pytest.raises(InvalidInput):
        tx(nonce=nonce)


@pytest.mark.parametrize("account", ["", "00" * 31, "AB" * 32, "g" * 64, " " + "a" * 63, "a" * 66, 7, None])
def test_bad_account_rejected(account):
    with pytest.raises(InvalidInput):
        tx(recipient=account)
    with pytest.raises(InvalidInput):
        Transaction.from_dict({**tx().to_dict(), "sender": account})


@pytest.mark.parametrize("memo", ["caf\u00e9", "\u2603", "tab\there", "nul\x00", "del\x7f", "x" * (MAX_MEMO + 1)])
def test_bad_memo_rejected(memo):
    with pytest.raises(InvalidInput):
        tx(memo=memo)


def test_memo_trailing_newline_rejected():
    # "printable ASCII" excludes "\n" wherever it stands.
    with pytest.raises(InvalidInput):
        tx(memo="abc\n")


def test_memo_limits_accepted():
    assert tx(memo="~" * MAX_MEMO).memo == "~" * MAX_MEMO
    assert tx(memo=" !az~").memo == " !az~"


@pytest.mark.parametrize("kind", ["payout", "genesis", "mint", ""])
def test_make_transaction_refuses_unsigned_kinds(kind):
    with pytest.raises(InvalidInput):
        tx(kind=kind)


def test_from_dict_rejects_unknown_field_and_bad_kind():
    with pytest.raises(InvalidInput):
        Transaction.from_dict({**tx().to_dict(), "fee": 1})
    with pytest.raises(InvalidInput):
        Transaction.from_dict({**tx().to_dict(), "kind": "mint"})
    with pytest.raises(InvalidInput):
        Transaction.from_dict("not a dict")


def test_transaction_is_frozen():
    t = tx()
    with pytest.raises(ValidationError, match="frozen"):
        t.amount = 5  # type: ignore[misc]


def test_genesis_tx_from_mint():
    g = Transaction(sender=MINT_ACCOUNT, recipient=BOB.account, amount=5, nonce=0, kind="genesis")
    assert Transaction.from_dict(g.to_dict()) == g


@settings(max_examples=60, deadline=None)
@given(
    amount=st.integers(1, MAX_AMOUNT),
    nonce=st.integers(0, MAX_AMOUNT),
    kind=st.sampled_from(["transfer", "deposit", "reward"]),
    memo=st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
)
def test_from_dict_round_trip(amount, nonce, kind, memo):
    t = make_transaction(ALICE, BOB.account, amount, nonce, kind, memo)
    back = Transaction.from_dict(t.to_dict())
    assert back == t
    assert back.txid == t.txid
    back.verify_signature()
    import json

    assert Transaction.from_dict(json.loads(json.dumps(t.to_dict()))) == t
