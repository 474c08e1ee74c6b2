"""Tests for fedcoin.chain.identity: Ed25519 keys, key files and signatures."""

from __future__ import annotations

import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedcoin.chain.identity import Identity, check_account, is_account, verify_signature
from fedcoin.errors import InvalidInput, InvalidSignature


def seeded(i: int) -> Identity:
    return Identity.from_seed(bytes([i]) * 32)


def test_account_is_lowercase_hex_pubkey():
    ident = seeded(1)
    assert is_account(ident.account)
    assert len(ident.account) == 64 and ident.account == ident.account.lower()
    assert seeded(1).account == ident.account  # deterministic from the seed
    assert seeded(2).account != ident.account


@pytest.mark.parametrize("seed", [b"", b"\x01" * 31, b"\x01" * 33, "x" * 32, None])
def test_from_seed_rejects_bad_seed(seed):
    with pytest.raises(InvalidInput):
        Identity.from_seed(seed)


def test_identity_rejects_non_ed25519_key():
    with pytest.raises(InvalidInput):
        Identity(ec.generate_private_key(ec.SECP256R1()))


def test_save_load_round_trip(tmp_path):
    ident = seeded(3)
    path = ident.save(tmp_path / "sub" / "node.key")
    loaded = Identity.load(path)
    assert loaded.account == ident.account
    msg = b"hello fedcoin"
    assert loaded.sign(msg) == ident.sign(msg)  # Ed25519 is deterministic: same key


def test_key_file_mode_0600(tmp_path):
    path = seeded(3).save(tmp_path / "node.key")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_key_file_mode_0600_despite_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        path = seeded(3).save(tmp_path / "node.key")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_save_refuses_to_overwrite(tmp_path):
    path = tmp_path / "node.key"
    seeded(3).save(path)
    before = path.read_bytes()
    with pytest.raises(InvalidInput):
        seeded(4).save(path)
    assert path.read_bytes() == before
    assert Identity.load(path).account == seeded(3).account


def test_overwrite_true_replaces_and_tightens_mode(tmp_path):
    path = tmp_path / "node.key"
    path.write_bytes(b"junk")
    os.chmod(path, 0o644)
    seeded(4).save(path, overwrite=True)
    assert Identity.load(path).account == seeded(4).account
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.parametrize(
    "content",
    [b"", b"not a key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", b"\x00\xff" * 40],
)
def test_load_bad_key_file(tmp_path, content):
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    with pytest.raises(InvalidInput):
        Identity.load(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(InvalidInput):
        Identity.load(tmp_path / "absent.key")


def test_load_wrong_key_type(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "ec.key"
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    with pytest.raises(InvalidInput):
        Identity.load(path)


def test_load_encrypted_key(tmp_path):
    pem = seeded(5)._key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
    )
    path = tmp_path / "enc.key"
    path.write_bytes(pem)
    with pytest.raises(InvalidInput):
        Identity.load(path)


def test_load_or_create(tmp_path):
    path = tmp_path / "k.key"
    a = Identity.load_or_create(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    b = Identity.load_or_create(path)
    assert a.account == b.account


def test_signature_verifies():
    ident = seeded(6)
    sig = ident.sign(b"message")
    assert len(sig) == 128
    verify_signature(ident.account, b"message", sig)  # does not raise


def test_signature_tampered_message():
    ident = seeded(6)
    sig = ident.sign(b"message")
    with pytest.raises(InvalidSignature):
        verify_signature(ident.account, b"messagf", sig)


@pytest.mark.parametrize("pos", [0, 31, 63, 64, 100, 127])
def test_signature_bit_flip(pos):
    ident = seeded(6)
    sig = ident.sign(b"message")
    flipped = sig[:pos] + format(int(sig[pos], 16) ^ 1, "x") + sig[pos + 1 :]
    with pytest.raises(InvalidSignature):
        verify_signature(ident.account, b"message", flipped)


def test_signature_wrong_account():
    sig = seeded(6).sign(b"message")
    with pytest.raises(InvalidSignature):
        verify_signature(seeded(7).account, b"message", sig)


@pytest.mark.parametrize(
    "sig_fn", [lambda s: s.upper(), lambda s: s[:-2], lambda s: s + "00", lambda s: "zz" + s[2:], lambda s: ""]
)
def test_signature_malformed(sig_fn):
    ident = seeded(6)
    with pytest.raises(InvalidSignature):
        verify_signature(ident.account, b"m", sig_fn(ident.sign(b"m")))


@pytest.mark.parametrize("account", ["", "00" * 31, "AB" * 32, "g" * 64, None, 5])
def test_bad_account(account):
    assert not is_account(account)
    with pytest.raises(InvalidInput):
        check_account(account)
    with pytest.raises(InvalidSignature):
        verify_signature(account, b"m", seeded(1).sign(b"m"))
