"""Typed errors raised by the fedcoin library.

Every public entry point validates its input and raises one of these instead of
failing somewhere deep inside; a call that raises changes no state.
"""

from __future__ import annotations


class FedcoinError(Exception):
    """Base class of every error raised on purpose by fedcoin."""


class InvalidInput(FedcoinError, ValueError):
    """An argument is malformed (wrong type, out of range, not finite, ...)."""


class InvalidSignature(FedcoinError):
    """A signature does not verify against the claimed account."""


class InvalidTransaction(FedcoinError):
    """A transaction is malformed or not applicable to the current state."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class InvalidBlock(FedcoinError):
    """A block failed VerifyBlock; ``reason`` is a stable machine-readable code.

    Reason codes (see ``fedcoin.ledger``) include ``bad-parent``, ``bad-height``,
    ``bad-merkle-root``, ``bad-signature``, ``bad-difficulty``, ``bad-timestamp``,
    ``bad-task``, ``task-already-settled``, ``shapley-far-from-average``,
    ``shapley-far-from-local``, ``bad-rewards``, ``bad-transaction`` and
    ``stale-block``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class OrphanBlock(InvalidBlock):
    """The block's parent is unknown; fetch the missing ancestors first."""

    def __init__(self, message: str) -> None:
        super().__init__("orphan-block", message)


class StaleBlock(InvalidBlock):
    """The block is valid but does not beat the current head (Algorithm 2, condition 3)."""

    def __init__(self, message: str) -> None:
        super().__init__("stale-block", message)


class StoreError(FedcoinError):
    """The on-disk store is unusable (corrupt, from another chain, ...)."""
