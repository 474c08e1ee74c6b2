"""Identities: Ed25519 key pairs and account ids.

An account id is the lowercase hex of the 32-byte raw Ed25519 public key.
Key files hold the private key as unencrypted PKCS#8 PEM and are written with
mode 0600 (created that way, never widened afterwards).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import InvalidInput, InvalidSignature
from .encoding import is_hex

ACCOUNT_HEX_LEN = 64
SIGNATURE_HEX_LEN = 128


def is_account(value: object) -> bool:
    return is_hex(value, ACCOUNT_HEX_LEN)


def check_account(value: object, what: str = "account") -> str:
    if not is_account(value):
        raise InvalidInput(f"{what} must be 64 lowercase hex characters (an Ed25519 public key), got {value!r}")
    return value  # type: ignore[return-value]


class Identity:
    """A node's or a client's signing key."""

    __slots__ = ("_key", "account")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise InvalidInput("Identity needs an Ed25519 private key")
        self._key = private_key
        raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.account: str = raw.hex()

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """Deterministic identity from a 32-byte seed (tests and reproducible demos)."""
        if not isinstance(seed, bytes) or len(seed) != 32:
            raise InvalidInput("an Ed25519 seed is exactly 32 bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def sign(self, message: bytes) -> str:
        return self._key.sign(message).hex()

    def private_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the private key to ``path`` with mode 0600."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError as exc:
            raise InvalidInput(f"key file {path} already exists (pass overwrite=True to replace it)") from exc
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, self.private_pem())
        finally:
            os.close(fd)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise InvalidInput(f"key file {path} does not exist") from exc
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"key file {path} is not an unencrypted PEM private key: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise InvalidInput(f"key file {path} does not hold an Ed25519 key")
        return cls(key)

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> Identity:
        path = Path(path)
        if path.exists():
            return cls.load(path)
        ident = cls.generate()
        ident.save(path)
        return ident

    def __repr__(self) -> str:
        return f"Identity(account={self.account[:16]}...)"


def verify_signature(account: str, message: bytes, signature: str) -> None:
    """Raise :class:`InvalidSignature` unless ``signature`` by ``account`` covers ``message``."""
    if not is_account(account):
        raise InvalidSignature(f"not an account id: {account!r}")
    if not is_hex(signature, SIGNATURE_HEX_LEN):
        raise InvalidSignature("signature must be 128 lowercase hex characters")
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(account)).verify(bytes.fromhex(signature), message)
    except (_CryptoInvalidSignature, ValueError) as exc:
        raise InvalidSignature(f"signature does not verify for account {account[:16]}...") from exc
