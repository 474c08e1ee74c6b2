"""Typed errors raised by the fedcoin library, and the one registry of reject reasons.

Every public entry point validates its input and raises one of these instead of
failing somewhere deep inside; a call that raises changes no state.

A block or transaction that is turned away raises a :class:`Rejected` subclass
whose ``reason`` is a :class:`Reason`: a stable, machine-readable code (a
``str``, so ``exc.reason == "bad-merkle-root"`` holds) with a :class:`Category`
that tells a node what the rejection means, after Bitcoin Core's validation
results:

``consensus``
    invalid by the rules every node applies; no node will ever accept it, and
    a peer that relays it misbehaves;
``local``
    invalid only from this node's view (its clock, its own Shapley average, its
    mempool policy or contents); another node, or this one later, may accept it;
``missing-parent``
    cannot be judged yet: an ancestor is unknown, fetch it first;
``stale``
    valid, but it does not beat what this node already has.

The README's table of reasons is rendered from :data:`Reason` (``python
scripts/render_docs.py``), and a test checks that every reason is raised by some
test and documented.
"""

from __future__ import annotations

import enum


class Category(enum.StrEnum):
    CONSENSUS = "consensus"
    LOCAL = "local"
    MISSING_PARENT = "missing-parent"
    STALE = "stale"


class Reason(enum.StrEnum):
    """Why a block or a transaction was rejected (``value``: the code; see :attr:`category`)."""

    # --- blocks: where they attach ------------------------------------------------
    ORPHAN_BLOCK = "orphan-block"
    STALE_BLOCK = "stale-block"
    BAD_PARENT = "bad-parent"
    BAD_HEIGHT = "bad-height"
    # --- blocks: the Shapley task they settle --------------------------------------
    MISSING_TASK = "missing-task"
    TASK_MISMATCH = "task-mismatch"
    BAD_TASK_SIGNATURE = "bad-task-signature"
    BAD_SHAPLEY_LENGTH = "bad-shapley-length"
    BAD_ITERATIONS = "bad-iterations"
    UNKNOWN_SERVER = "unknown-server"
    UNKNOWN_MINER = "unknown-miner"
    # --- blocks: seal, difficulty and time ------------------------------------------
    BAD_MERKLE_ROOT = "bad-merkle-root"
    BAD_SIGNATURE = "bad-signature"
    BAD_DIFFICULTY = "bad-difficulty"
    TIME_BEFORE_TASK = "time-before-task"
    TIME_TOO_OLD = "time-too-old"
    TIME_TOO_NEW = "time-too-new"
    # --- blocks: Proof of Shapley (Algorithm 2) ---------------------------------------
    SHAPLEY_FAR_FROM_AVERAGE = "shapley-far-from-average"
    SHAPLEY_FAR_FROM_LOCAL = "shapley-far-from-local"
    # --- blocks: verifiable work and the reports S̄ averages ------------------------------
    BAD_WORK_ROOT = "bad-work-root"
    BAD_WORK_MEAN = "bad-work-mean"
    BAD_LEAF = "bad-leaf"
    FRAUDULENT_BLOCK = "fraudulent-block"
    BAD_REPORT = "bad-report"
    TOO_FEW_REPORTS = "too-few-reports"
    BAD_AVERAGE = "bad-average"
    # --- blocks: settlement (Algorithm 3) ---------------------------------------------
    TASK_ALREADY_SETTLED = "task-already-settled"
    BAD_REWARDS = "bad-rewards"
    BAD_TRANSACTION = "bad-transaction"
    UNFUNDED_TASK = "unfunded-task"
    BAD_PRICES = "bad-prices"
    # --- transactions -------------------------------------------------------------
    BAD_KIND = "bad-kind"
    SELF_TRANSFER = "self-transfer"
    BAD_NONCE = "bad-nonce"
    NONCE_TOO_FAR_AHEAD = "nonce-too-far-ahead"
    NONCE_CONFLICT = "nonce-conflict"
    INSUFFICIENT_BALANCE = "insufficient-balance"
    BAD_REFUND = "bad-refund"
    MEMPOOL_FULL = "mempool-full"

    @property
    def category(self) -> Category:
        return _CATEGORY.get(self, Category.CONSENSUS)

    @property
    def description(self) -> str:
        return _DESCRIPTION[self]


_CATEGORY = {
    Reason.ORPHAN_BLOCK: Category.MISSING_PARENT,
    Reason.STALE_BLOCK: Category.STALE,
    Reason.TIME_TOO_NEW: Category.LOCAL,
    Reason.SHAPLEY_FAR_FROM_LOCAL: Category.LOCAL,
    Reason.NONCE_TOO_FAR_AHEAD: Category.LOCAL,
    Reason.NONCE_CONFLICT: Category.LOCAL,
    Reason.MEMPOOL_FULL: Category.LOCAL,
}

_DESCRIPTION = {
    Reason.ORPHAN_BLOCK: "the block's parent is unknown to this node",
    Reason.STALE_BLOCK: "valid, but does not beat the current head (Algorithm 2, condition 3)",
    Reason.BAD_PARENT: "prev_hash does not name the block before it",
    Reason.BAD_HEIGHT: "height is not the parent's height + 1",
    Reason.MISSING_TASK: "the body holds no Shapley task",
    Reason.TASK_MISMATCH: "the header's task_id/task_hash do not match the body's task",
    Reason.BAD_TASK_SIGNATURE: "the task is not signed by the server it names",
    Reason.BAD_SHAPLEY_LENGTH: "S_winner or S̄ does not have one value per client of the task",
    Reason.BAD_ITERATIONS: "the winner claims no Shapley iteration",
    Reason.UNKNOWN_SERVER: "the task is signed by a server the chain does not admit",
    Reason.UNKNOWN_MINER: "the winner is not a miner the chain admits",
    Reason.BAD_MERKLE_ROOT: "the Merkle root does not match the body's transactions",
    Reason.BAD_SIGNATURE: "a header or transaction is not signed by its winner or sender",
    Reason.BAD_DIFFICULTY: "D is not the retarget rule's value at this height",
    Reason.TIME_BEFORE_TASK: "the block is older than the publication of the task it settles",
    Reason.TIME_TOO_OLD: "the timestamp is not after the median of the last blocks",
    Reason.TIME_TOO_NEW: "the timestamp is too far ahead of this node's clock",
    Reason.SHAPLEY_FAR_FROM_AVERAGE: "‖S_winner − S̄_block‖_p > D (Algorithm 2, condition 1)",
    Reason.SHAPLEY_FAR_FROM_LOCAL: "‖S̄_local − S_winner‖_p > D against this node's own S̄ (condition 2)",
    Reason.BAD_WORK_ROOT: "the work log does not match the header's work_root, or its leaf count is not `iterations`",
    Reason.BAD_WORK_MEAN: "S_winner is not the mean of the work log's leaves, or a leaf breaks efficiency "
    "(its values do not sum to v(N) − v(∅))",
    Reason.BAD_LEAF: "a leaf this node recomputed differs from the logged marginals (a fraud proof follows)",
    Reason.FRAUDULENT_BLOCK: "a fraud proof showed this block, or one below it, logs a fabricated leaf",
    Reason.BAD_REPORT: "a carried report is not a signed report of another admitted miner on this task and "
    "parent, or claims more iterations than the rate cap allows",
    Reason.TOO_FEW_REPORTS: "the block carries fewer reports of other miners than the chain requires",
    Reason.BAD_AVERAGE: "S̄ is not the iteration-weighted mean of the winner's S and the carried reports",
    Reason.TASK_ALREADY_SETTLED: "the task was settled earlier on this branch",
    Reason.BAD_REWARDS: "the body does not end with exactly Algorithm 3's payout and rewards, "
    "or a payout/reward/genesis transaction stands elsewhere",
    Reason.BAD_TRANSACTION: "a transaction in the body does not apply (its own reason follows)",
    Reason.UNFUNDED_TASK: "a deposit the task embeds as funding, or names as its payer, is not confirmed "
    "on this branch",
    Reason.BAD_PRICES: "the task's TrainPrice/SapPrice are not its round's share of the deposit's V by the "
    "contract's ratio, or the deposit is not for this server or not of this V",
    Reason.BAD_KIND: "only transfers and deposits are submitted by users",
    Reason.SELF_TRANSFER: "sender and recipient are the same account",
    Reason.BAD_NONCE: "the nonce is not the sender's next one (already used, or out of order in a block)",
    Reason.NONCE_TOO_FAR_AHEAD: "the nonce is further ahead of the sender's next one than the mempool holds",
    Reason.NONCE_CONFLICT: "another pending transaction of the sender has this nonce",
    Reason.INSUFFICIENT_BALANCE: "the sender's balance does not cover it (with its pending transactions)",
    Reason.BAD_REFUND: "a refund must return a confirmed deposit's whole remaining escrow to its requester, "
    "signed by the deposit's server, with nonce 0",
    Reason.MEMPOOL_FULL: "the mempool holds as many transactions as it may; retry later",
}


class FedcoinError(Exception):
    """Base class of every error raised on purpose by fedcoin."""


class InvalidInput(FedcoinError, ValueError):
    """An argument is malformed (wrong type, out of range, not finite, ...)."""


class InvalidSignature(FedcoinError):
    """A signature does not verify against the claimed account."""


class NotFound(FedcoinError):
    """The thing asked for (a task, a block, a client of this node) does not exist here."""


class Conflict(FedcoinError):
    """The request is well formed but clashes with the current state (asked too early, taken already)."""


class Unavailable(FedcoinError):
    """An operation failed for a reason outside the caller's input: a peer is unreachable,
    answered with an error, or did not finish in time."""


class StoreError(FedcoinError):
    """The on-disk store is unusable (corrupt, from another chain, ...)."""


class SettingsError(FedcoinError):
    """A setting (a ``FEDCOIN_*`` environment variable) is missing or malformed."""


class Rejected(FedcoinError):
    """A block or transaction was turned away; ``reason`` says why (a :class:`Reason`)."""

    def __init__(self, reason: Reason | str, message: str) -> None:
        reason = Reason(reason)
        super().__init__(f"{reason}: {message}")
        self.reason: Reason = reason
        self.message = message

    @property
    def category(self) -> Category:
        return self.reason.category

    def __reduce__(self) -> tuple[object, ...]:
        """Pickle as (class, reason, message), whatever the subclass's constructor takes, so a rejection
        raised in a worker process arrives whole in its parent."""
        return (_rebuild, (type(self), self.reason, self.message))


def _rebuild(cls: type[Rejected], reason: Reason, message: str) -> Rejected:
    obj = cls.__new__(cls)
    Rejected.__init__(obj, reason, message)
    return obj


class InvalidTransaction(Rejected):
    """A transaction is malformed or not applicable to the current state."""


class InvalidBlock(Rejected):
    """A block failed VerifyBlock."""


class OrphanBlock(InvalidBlock):
    """The block's parent is unknown; fetch the missing ancestors first."""

    def __init__(self, message: str) -> None:
        super().__init__(Reason.ORPHAN_BLOCK, message)


class StaleBlock(InvalidBlock):
    """The block is valid but does not beat the current head (Algorithm 2, condition 3)."""

    def __init__(self, message: str) -> None:
        super().__init__(Reason.STALE_BLOCK, message)
