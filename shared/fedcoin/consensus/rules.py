"""VerifyBlock (Algorithm 2) and the structural checks, as named rule groups.

:func:`verify_block` runs the groups in this order; the first failure raises
:class:`~fedcoin.errors.InvalidBlock` with its :class:`~fedcoin.errors.Reason`:

=====================  =================================================================
``check_links``        ``bad-parent``, ``bad-height``
``check_task``         ``missing-task``, ``task-mismatch``, ``bad-task-signature``,
                       ``bad-shapley-length``, ``bad-iterations``
``check_admission``    ``unknown-server`` (the task's), ``unknown-miner`` (the winner)
``check_seal``         ``bad-merkle-root``, ``bad-signature`` (the winner's, on the
                       header), ``bad-work-root``
``check_difficulty``   ``bad-difficulty``
``check_time``         ``time-before-task``, ``time-too-old``, ``time-too-new``
``check_work``         ``bad-work-root`` (leaf count), ``bad-work-mean``
``check_reports``      ``bad-report``, ``too-few-reports``, ``bad-average``
``check_posap``        ``shapley-far-from-average`` (condition 1),
                       ``shapley-far-from-local`` (condition 2, with the verifier's S̄)
``check_settlement``   ``task-already-settled``, ``unfunded-task``, ``bad-prices``,
                       ``bad-rewards``, ``bad-transaction``
=====================  =================================================================

Under ``ChainParams.consensus == "paper"`` (Algorithm 2 as published, kept to
show its holes) ``check_admission``, ``check_work`` and ``check_reports`` are
skipped: any key may sign tasks and blocks, ``iterations`` is a claim and S̄ is
whatever the header says.

Recomputing sampled leaves of the work log needs the task's content, so it is
not a rule here: :class:`fedcoin.consensus.proofs.WorkVerifier` does it, and
:class:`fedcoin.ledger.chain.Chain` runs it after these rules. Condition 3 (the
block beats the head) and ``orphan-block`` belong to fork choice, which also
runs :func:`check_mutation` on a block whose hash it already knows but whose
bytes differ (a mutated copy). Every rule only reads; the state after the
block is returned by :func:`check_settlement`.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import numpy as np

from fedcoin.chain.blocks import Block, body_merkle_root, reports_merkle_root
from fedcoin.chain.clock import now_ms
from fedcoin.chain.genesis import ChainParams
from fedcoin.chain.identity import verify_signature
from fedcoin.chain.state import ChainState, Deposit, apply_block
from fedcoin.chain.tasks import ShapleyTask
from fedcoin.chain.transactions import SETTLEMENT_KINDS, USER_KINDS
from fedcoin.chain.work import empty_root, work_mean
from fedcoin.errors import InvalidBlock, InvalidInput, InvalidSignature, Reason

from .difficulty import next_difficulty
from .payments import round_prices, settlement_transactions
from .posap import Report, average_reports, p_distance


def check_links(block: Block, parent: Block) -> None:
    h = block.header
    if h.prev_hash != parent.hash:
        raise InvalidBlock(Reason.BAD_PARENT, "prev_hash does not name the given parent")
    if h.height != parent.header.height + 1:
        raise InvalidBlock(Reason.BAD_HEIGHT, f"height {h.height} does not follow parent height {parent.header.height}")


def check_task(block: Block) -> ShapleyTask:
    """The body's task is the header's, signed by its server, with one S value per client."""
    h = block.header
    task = _committed_task(block)
    if task is None:
        raise InvalidBlock(Reason.MISSING_TASK, "the body holds no Shapley task")
    try:
        task.verify_signature()
    except InvalidSignature as exc:
        raise InvalidBlock(Reason.BAD_TASK_SIGNATURE, f"task not signed by its server: {exc}") from exc
    n = task.n_players
    if len(h.s_winner) != n or len(h.s_avg) != n:
        raise InvalidBlock(
            Reason.BAD_SHAPLEY_LENGTH,
            f"S vectors have lengths {len(h.s_winner)}/{len(h.s_avg)}, the task has {n} clients",
        )
    if h.iterations < 1:
        raise InvalidBlock(Reason.BAD_ITERATIONS, "the winner claims no Shapley iteration")
    return task


def _committed_task(block: Block) -> ShapleyTask | None:
    """The body's task, if the header names it (``task-mismatch`` otherwise)."""
    h, task = block.header, block.body.task
    if task is not None and (task.task_id != h.task_id or task.task_hash != h.task_hash):
        raise InvalidBlock(Reason.TASK_MISMATCH, "header task_id/task_hash do not match the body's task")
    return task


def check_admission(block: Block, task: ShapleyTask, params: ChainParams) -> None:
    """Only admitted FL servers publish tasks and only admitted miners win blocks."""
    if not params.verified:
        return
    if task.server not in params.servers:
        raise InvalidBlock(Reason.UNKNOWN_SERVER, f"task signed by {task.server[:16]}..., not an admitted server")
    if block.header.winner not in params.miners:
        raise InvalidBlock(Reason.UNKNOWN_MINER, f"winner {block.header.winner[:16]}... is not an admitted miner")


def _check_merkle_root(block: Block) -> None:
    if body_merkle_root(block.body.transactions) != block.header.merkle_root:
        raise InvalidBlock(Reason.BAD_MERKLE_ROOT, "merkle root does not match the body's transactions")
    if reports_merkle_root(block.body.reports) != block.header.reports_root:
        raise InvalidBlock(Reason.BAD_MERKLE_ROOT, "reports_root does not match the body's reports")


def _check_work_root(block: Block) -> None:
    work = block.body.work
    try:
        root = empty_root() if work is None else work.root()
    except InvalidInput as exc:
        raise InvalidBlock(Reason.BAD_WORK_ROOT, str(exc)) from exc
    if root != block.header.work_root:
        raise InvalidBlock(Reason.BAD_WORK_ROOT, "work_root does not match the body's work log")


def _check_winner_signature(block: Block) -> None:
    h = block.header
    try:
        verify_signature(h.winner, h.signing_payload(), h.signature)
    except InvalidSignature as exc:
        raise InvalidBlock(Reason.BAD_SIGNATURE, f"header not signed by the winner: {exc}") from exc


def check_mutation(block: Block) -> None:
    """The bytes are the ones the header commits to: its task, its transactions, its winner's signature.
    Cheap; a node runs it on a block whose header hash it already knows but whose bytes differ, so a
    mutated copy of a known block is rejected rather than answered as known."""
    if _committed_task(block) is None and block.header.height > 0:
        raise InvalidBlock(Reason.MISSING_TASK, "the body holds no Shapley task")
    check_seal(block)


def check_seal(block: Block) -> None:
    """The header commits to the body (transactions, reports, work log) and is signed by its winner.
    The signature is checked before the work log is decoded (up to 128 MiB from a few KiB of
    deflate), so only an admitted miner's own block can cost a node that decoding."""
    _check_merkle_root(block)
    _check_winner_signature(block)
    _check_work_root(block)


def check_work(block: Block, task: ShapleyTask, params: ChainParams) -> np.ndarray | None:
    """The work log holds ``iterations`` leaves of one value per client, S_winner is their exact mean,
    and every leaf sums to the same v(N) − v(∅) (efficiency, within ``work_tolerance``).
    Returns the leaves (None under ``paper``)."""
    if not params.verified:
        return None
    h, work = block.header, block.body.work
    if work is None or work.n_players != task.n_players:
        raise InvalidBlock(Reason.BAD_WORK_ROOT, "the body holds no work log with one value per client")
    try:
        leaves = work.leaves()
    except InvalidInput as exc:
        raise InvalidBlock(Reason.BAD_WORK_ROOT, str(exc)) from exc
    if leaves.shape[0] != h.iterations:
        raise InvalidBlock(
            Reason.BAD_WORK_ROOT, f"the work log holds {leaves.shape[0]} leaves, the header claims {h.iterations}"
        )
    if work_mean(leaves) != list(h.s_winner):
        raise InvalidBlock(Reason.BAD_WORK_MEAN, "S_winner is not the exact mean of the work log's leaves")
    sums = leaves.sum(axis=1)
    spread = float(sums.max() - sums.min())
    if spread > params.work_tolerance:
        raise InvalidBlock(
            Reason.BAD_WORK_MEAN,
            f"leaves sum to values {spread:.3g} apart; every permutation's marginals sum to v(N) − v(∅)",
        )
    return leaves


def max_report_iterations(params: ChainParams, task: ShapleyTask, parent: Block, at: int) -> float:
    """The most iterations a report dated ``at`` may claim: ``max_report_rate`` per second since the task
    and the parent both existed, plus one second's worth."""
    start = max(task.published_at, parent.header.timestamp)
    return params.max_report_rate * (at - start + 1000) / 1000


def check_reports(block: Block, task: ShapleyTask, parent: Block, params: ChainParams) -> None:
    """S̄ is the iteration-weighted mean of the winner's S and the carried reports: signed reports of
    other admitted miners, one each, on this task and parent, no later than the block, each claiming
    at most ``max_report_rate`` iterations per second since the task and the parent both existed."""
    if not params.verified:
        return
    h = block.header
    start = max(task.published_at, parent.header.timestamp)
    seen: set[str] = set()
    for r in block.body.reports:
        problem = None
        if r.miner not in params.miners or r.miner == h.winner or r.miner in seen:
            problem = "not from another admitted miner, or a second report of one miner"
        elif r.task_id != h.task_id or r.prev_hash != h.prev_hash or len(r.shapley) != task.n_players:
            problem = "not a report on this block's task and parent"
        elif not start <= r.timestamp <= h.timestamp:
            problem = "dated before its task and parent existed, or after the block"
        elif r.iterations > max_report_iterations(params, task, parent, r.timestamp):
            problem = f"claims {r.iterations} iterations, more than {params.max_report_rate:g}/s allows"
        else:
            try:
                r.verify_signature()
            except InvalidSignature as exc:
                problem = f"bad signature: {exc}"
        if problem is not None:
            raise InvalidBlock(Reason.BAD_REPORT, f"report of {r.miner[:16]}...: {problem}")
        seen.add(r.miner)
    if len(seen) < params.min_reports:
        raise InvalidBlock(
            Reason.TOO_FEW_REPORTS, f"{len(seen)} report(s) of other miners, the chain requires {params.min_reports}"
        )
    expected = average_reports([Report(tuple(h.s_winner), h.iterations), *block.body.reports])
    if expected.tolist() != list(h.s_avg):
        raise InvalidBlock(Reason.BAD_AVERAGE, "S̄ is not the weighted mean of S_winner and the carried reports")


def check_difficulty(block: Block, ancestors: Sequence[Block], params: ChainParams) -> None:
    expected = next_difficulty(ancestors, params)
    if block.header.difficulty != expected:
        raise InvalidBlock(
            Reason.BAD_DIFFICULTY, f"difficulty {block.header.difficulty!r}, the retarget rule requires {expected!r}"
        )


def median_time_past(ancestors: Sequence[Block], params: ChainParams) -> int:
    """The median timestamp of the last ``median_time_window`` blocks; a child must be later."""
    return statistics.median_low([b.header.timestamp for b in ancestors[-params.median_time_window :]])


def check_time(
    block: Block, task: ShapleyTask, ancestors: Sequence[Block], params: ChainParams, now: int | None
) -> None:
    h = block.header
    if h.timestamp < task.published_at:
        raise InvalidBlock(Reason.TIME_BEFORE_TASK, "block is older than the task it settles")
    mtp = median_time_past(ancestors, params)
    if h.height > 1 and h.timestamp <= mtp:
        raise InvalidBlock(
            Reason.TIME_TOO_OLD, f"timestamp {h.timestamp} is not after the median of recent blocks ({mtp})"
        )
    limit = (now_ms() if now is None else now) + params.max_future_ms
    if h.timestamp > limit:
        raise InvalidBlock(
            Reason.TIME_TOO_NEW, f"timestamp {h.timestamp} is more than {params.max_future_ms} ms in the future"
        )


def check_posap(block: Block, params: ChainParams, local_avg: Sequence[float] | None) -> None:
    """Algorithm 2, conditions 1 and 2 (the latter only with the verifier's own S̄)."""
    h = block.header
    d1 = p_distance(h.s_winner, h.s_avg, params.p)
    if d1 > h.difficulty:
        raise InvalidBlock(
            Reason.SHAPLEY_FAR_FROM_AVERAGE, f"‖S_winner − S̄‖_{params.p:g} = {d1:.3g} > D = {h.difficulty:.3g}"
        )
    if local_avg is None:
        return
    if len(local_avg) != len(h.s_winner):
        raise InvalidInput(f"local average has {len(local_avg)} values, the task has {len(h.s_winner)} clients")
    d2 = p_distance(local_avg, h.s_winner, params.p)
    if d2 > h.difficulty:
        raise InvalidBlock(
            Reason.SHAPLEY_FAR_FROM_LOCAL, f"‖S̄_local − S_winner‖_{params.p:g} = {d2:.3g} > D = {h.difficulty:.3g}"
        )


def check_settlement(block: Block, task: ShapleyTask, parent_state: ChainState) -> ChainState:
    """Algorithm 3: the body ends with exactly the payout and rewards, every transaction applies
    and the deposits that fund the task are confirmed; returns the state after the block."""
    h = block.header
    if task.settlement_key in parent_state.settled:
        raise InvalidBlock(Reason.TASK_ALREADY_SETTLED, f"task {task.task_id} was settled earlier on this chain")
    check_prices(block, task, parent_state)
    expected = settlement_transactions(task, h.winner, h.s_avg)
    txs = block.body.transactions
    if len(txs) < len(expected):
        raise InvalidBlock(
            Reason.BAD_REWARDS, f"body has {len(txs)} transactions, Algorithm 3 prescribes {len(expected)} at its end"
        )
    first = len(txs) - len(expected)
    for tx in txs[:first]:
        if tx.kind not in USER_KINDS:
            raise InvalidBlock(Reason.BAD_REWARDS, f"a {tx.kind} transaction is only valid where Algorithm 3 places it")
    for k, (kind, recipient, amount) in enumerate(expected):
        tx = txs[first + k]
        sender = task.payer if kind in SETTLEMENT_KINDS else h.winner
        if (tx.kind, tx.sender, tx.recipient, tx.amount, tx.memo) != (kind, sender, recipient, amount, task.task_id):
            raise InvalidBlock(
                Reason.BAD_REWARDS,
                f"transaction {first + k} is {tx.kind} {tx.amount} to {tx.recipient[:16]}..., "
                f"Algorithm 3 prescribes {kind} {amount} to {recipient[:16]}...",
            )
        if kind in SETTLEMENT_KINDS and (tx.nonce != 0 or tx.signature != ""):
            raise InvalidBlock(Reason.BAD_REWARDS, f"a {kind} carries nonce 0 and no signature")
    new_state = apply_block(parent_state, block)
    for tx in task.funding:
        if tx.txid not in new_state.deposits:
            raise InvalidBlock(
                Reason.UNFUNDED_TASK, f"the task's deposit {tx.txid[:16]}... is not confirmed on this branch"
            )
    return new_state


def check_prices(block: Block, task: ShapleyTask, parent_state: ChainState) -> None:
    """A task that names a deposit is paid at the division contract's prices from that deposit, which
    is for this task's server, of the task's V, and confirmed on this branch (or in this block)."""
    if task.deposit is None:
        return
    dep = parent_state.deposits.get(task.deposit)
    if dep is None:
        dep = next(
            (
                Deposit(tx.sender, tx.recipient, tx.amount)
                for tx in block.body.transactions
                if tx.kind == "deposit" and tx.txid == task.deposit
            ),
            None,
        )
    if dep is None:
        raise InvalidBlock(Reason.UNFUNDED_TASK, f"the deposit {task.deposit[:16]}... is not confirmed on this branch")
    if dep.server != task.server or dep.amount != task.budget:
        raise InvalidBlock(
            Reason.BAD_PRICES, f"the deposit pays {dep.amount} to {dep.server[:16]}..., the task names its server and V"
        )
    if task.round >= task.rounds:
        raise InvalidBlock(Reason.BAD_PRICES, f"round {task.round} of a {task.rounds}-round budget")
    train, _com, sap = round_prices(task.budget, task.ratio, task.rounds, task.round)
    if (task.train_price, task.sap_price) != (train, sap):
        raise InvalidBlock(
            Reason.BAD_PRICES,
            f"TrainPrice/SapPrice {task.train_price}/{task.sap_price}, round {task.round} of V = {task.budget} "
            f"by {':'.join(map(str, task.ratio))} over {task.rounds} rounds is {train}/{sap}",
        )


def verify_block(
    block: Block,
    ancestors: Sequence[Block],
    parent_state: ChainState,
    params: ChainParams,
    *,
    local_avg: Sequence[float] | None = None,
    now: int | None = None,
) -> ChainState:
    """VerifyBlock without condition 3: check ``block`` as a child of ``ancestors[-1]``.

    ``ancestors`` ends with the parent and holds at least the last
    ``max(retarget_window, median_time_window)`` blocks of its branch.
    Returns the state after the block.
    """
    check_links(block, ancestors[-1])
    task = check_task(block)
    check_admission(block, task, params)
    check_seal(block)
    check_difficulty(block, ancestors, params)
    check_time(block, task, ancestors, params, now)
    check_work(block, task, params)
    check_reports(block, task, ancestors[-1], params)
    check_posap(block, params, local_avg)
    return check_settlement(block, task, parent_state)
