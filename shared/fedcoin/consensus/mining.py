"""Block building: what a PoSap winner broadcasts (Algorithm 1, line 18).

Mining is separate from validation: :func:`build_block` assembles and signs a
block on a chain's head, and the node then checks it with the same
:func:`fedcoin.consensus.rules.verify_block` every other node runs. It reads the
chain through :class:`ChainView`, so it needs no particular chain class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from fedcoin.chain.blocks import MAX_TRANSACTIONS, Block, BlockBody, BlockHeader, body_merkle_root, reports_merkle_root
from fedcoin.chain.clock import now_ms
from fedcoin.chain.genesis import ChainParams
from fedcoin.chain.identity import Identity
from fedcoin.chain.reports import ShapleyReport
from fedcoin.chain.state import ChainState
from fedcoin.chain.tasks import ShapleyTask
from fedcoin.chain.transactions import USER_KINDS, Transaction, make_transaction
from fedcoin.chain.work import WorkLog, empty_root, work_mean
from fedcoin.errors import InvalidBlock, InvalidInput, InvalidTransaction, Reason

from .difficulty import next_difficulty
from .payments import settlement_transactions
from .posap import Report, average_reports
from .rules import median_time_past


class ChainView(Protocol):
    """What block building reads of a chain: its head, the head's state and the last blocks."""

    @property
    def head(self) -> str: ...

    @property
    def height(self) -> int: ...

    @property
    def head_state(self) -> ChainState: ...

    @property
    def params(self) -> ChainParams: ...

    def tail(self, tip: str | None = None) -> list[Block]: ...


def _body(
    task: ShapleyTask, winner: Identity, s_avg: Sequence[float], transactions: Sequence[Transaction], state: ChainState
) -> list[Transaction]:
    """Pending transactions that apply in order, then Algorithm 3's payout and rewards."""
    txs: list[Transaction] = []
    funding = [tx for tx in task.funding if tx.txid not in state.deposits]
    settlement = settlement_transactions(task, winner.account, s_avg)
    room = MAX_TRANSACTIONS - len(settlement)  # a full mempool must not make the block too big to exist
    seen: set[str] = set()
    for tx in [*funding, *transactions]:
        if len(txs) >= room:
            break
        if not isinstance(tx, Transaction) or tx.kind not in USER_KINDS or tx.txid in seen:
            continue
        if tx.kind == "refund" and tx.sender == task.deposit:
            continue  # the round settles first; its server refunds what is left afterwards
        try:
            state.apply(tx)
        except InvalidTransaction:
            continue
        seen.add(tx.txid)
        txs.append(tx)
    nonce = state.nonce(winner.account)
    for kind, recipient, amount in settlement:
        if kind == "payout" or kind == "commission":
            tx = Transaction(
                sender=task.payer, recipient=recipient, amount=amount, nonce=0, kind=kind, memo=task.task_id
            )
        else:
            tx = make_transaction(winner, recipient, amount, nonce, "reward", task.task_id)
            nonce += 1
        try:
            state.apply(tx)
        except InvalidTransaction as exc:
            raise InvalidBlock(Reason.BAD_TRANSACTION, f"cannot settle task {task.task_id} on the head: {exc}") from exc
        txs.append(tx)
    return txs


def build_block(
    chain: ChainView,
    *,
    task: ShapleyTask,
    winner: Identity,
    leaves: np.ndarray | WorkLog,
    reports: Sequence[ShapleyReport] = (),
    transactions: Sequence[Transaction] = (),
    timestamp: int | None = None,
) -> Block:
    """Create the block a PoSap winner broadcasts on ``chain``'s head, from its work log.

    ``leaves`` are the winner's per-iteration marginal vectors (deflated here), or its work log
    already encoded (:meth:`fedcoin.consensus.posap.PoSapMiner.work_log`); S_winner is
    their exact mean and S̄ the iteration-weighted mean of S_winner and
    ``reports`` (the other miners' latest signed reports on this task and
    head), which the body carries. The body holds those of ``transactions``
    (pending user transfers and deposits) that apply in order on the head
    state (others are left out), then Algorithm 3's payout and rewards, the
    rewards signed now by ``winner`` with its next nonces. Pending
    transactions come first so that a requester's deposit confirmed in this
    block can fund the server's payout. Raises
    :class:`~fedcoin.errors.InvalidBlock` (``bad-transaction``) when the task
    cannot be settled on the head (the server cannot pay, say).
    """
    if isinstance(leaves, WorkLog):
        work, leaves = leaves, leaves.leaves()
    else:
        leaves = np.asarray(leaves, dtype=np.float64)
        work = None
    if leaves.ndim != 2 or leaves.shape[0] < 1:
        raise InvalidInput("build_block needs a work log of at least one leaf")
    s_winner = work_mean(leaves)
    s_avg = average_reports([Report(tuple(s_winner), leaves.shape[0]), *reports]).tolist()
    return seal_block(
        chain,
        task=task,
        winner=winner,
        s_winner=s_winner,
        s_avg=s_avg,
        iterations=leaves.shape[0],
        work=WorkLog.from_leaves(leaves, task.n_players) if work is None else work,
        reports=reports,
        transactions=transactions,
        timestamp=timestamp,
    )


def seal_block(
    chain: ChainView,
    *,
    task: ShapleyTask,
    winner: Identity,
    s_winner: Sequence[float],
    s_avg: Sequence[float],
    iterations: int,
    work: WorkLog | None = None,
    reports: Sequence[ShapleyReport] = (),
    transactions: Sequence[Transaction] = (),
    timestamp: int | None = None,
) -> Block:
    """Assemble and sign a block with the given header values, as they are: what
    :func:`build_block` derives from a work log, or an attacker's claim in a test
    (under ``consensus = "paper"`` nothing more is checked)."""
    if not isinstance(task, ShapleyTask) or not isinstance(winner, Identity):
        raise InvalidInput("a block needs a ShapleyTask and the winner's Identity")
    s_avg = [float(x) for x in s_avg]
    txs = _body(task, winner, s_avg, transactions, chain.head_state)
    tail = chain.tail()
    ts = now_ms() if timestamp is None else timestamp
    ts = max(ts, task.published_at, median_time_past(tail, chain.params) + 1)
    header = BlockHeader(
        height=chain.height + 1,
        prev_hash=chain.head,
        timestamp=ts,
        winner=winner.account,
        s_avg=s_avg,
        s_winner=[float(x) for x in s_winner],
        difficulty=next_difficulty(tail, chain.params),
        merkle_root=body_merkle_root(txs),
        task_id=task.task_id,
        task_hash=task.task_hash,
        iterations=iterations,
        work_root=empty_root() if work is None else work.root(),
        reports_root=reports_merkle_root(list(reports)),
    )
    header = header.model_copy(update={"signature": winner.sign(header.signing_payload())})
    body = BlockBody(task=task, work=work, reports=list(reports), transactions=txs)
    return Block(header=header, body=body)
