"""The chain: balances derived by replay, VerifyBlock, fork choice and reorgs.

State
    :class:`ChainState` (balances, nonces, settled task ids) is never stored as
    the source of truth: it is derived by replaying a branch from genesis, so
    balances are always reproducible from the blocks alone. The sum of all
    balances equals the genesis allocation forever: every transaction moves
    value, none creates it.

VerifyBlock (Algorithm 2 and the structural checks), in this order, each
failure raising :class:`~fedcoin.errors.InvalidBlock` with the reason code:

==============================  =================================================
``orphan-block``                parent unknown (:class:`~fedcoin.errors.OrphanBlock`)
``bad-height``                  height ≠ parent height + 1
``bad-task``                    no task, task id/hash ≠ header, bad server
                                signature, S vectors' length ≠ number of clients
``bad-iterations``              the winner claims no iteration
``bad-merkle-root``             Merkle root ≠ root of the body's transactions
``bad-signature``               header not signed by the winner
``bad-difficulty``              D ≠ the retarget rule's value at this height
``bad-timestamp``               before the task's publication, not after the
                                median of the last blocks, or too far ahead
``shapley-far-from-average``    ‖S_winner − S̄_block‖_p > D (condition 1)
``shapley-far-from-local``      ‖S̄_local − S_winner‖_p > D (condition 2; only
                                when the verifier passes its local S̄)
``task-already-settled``        the task was settled earlier on this branch
``bad-rewards``                 the body does not end with exactly the payout
                                and reward transactions of Algorithm 3, or a
                                payout/reward/genesis transaction stands elsewhere
``bad-transaction``             a transaction's signature, nonce, balance or
                                kind is wrong
``unfunded-task``               a deposit the task embeds as ``funding`` is
                                neither in the block nor earlier on its branch
``stale-block``                 valid, but does not beat the current head
                                (condition 3; :class:`~fedcoin.errors.StaleBlock`)
==============================  =================================================

Fork choice: the head is the tip of greatest height; at equal height the tip
with the smaller block hash wins (a deterministic tie-break, so all nodes that
know the same blocks pick the same head). A block is accepted only if it beats
the head (Algorithm 2's condition 3, "Blk.ID ≥ longest chain length");
catching up on a longer fork goes through :meth:`Chain.add_chain`, which
validates a whole branch and switches to it atomically if its tip beats the
head. A switch re-derives the balances by replaying the new branch.

A call that raises leaves the chain, its store and its head unchanged.
"""

from __future__ import annotations

import statistics
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .blocks import Block, BlockBody, BlockHeader, ChainParams, GenesisConfig, body_merkle_root
from .difficulty import next_difficulty
from .errors import InvalidBlock, InvalidInput, InvalidSignature, InvalidTransaction, OrphanBlock, StaleBlock, StoreError
from .identity import Identity, verify_signature
from .payments import reward_allocation
from .posap import p_distance
from .tasks import ShapleyTask
from .transactions import MINT_ACCOUNT, USER_KINDS, Transaction, make_transaction


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class ChainState:
    balances: dict[str, int] = field(default_factory=dict)
    nonces: dict[str, int] = field(default_factory=dict)
    settled: set[str] = field(default_factory=set)
    deposits: set[str] = field(default_factory=set)  # txids of confirmed deposits

    def copy(self) -> "ChainState":
        return ChainState(dict(self.balances), dict(self.nonces), set(self.settled), set(self.deposits))

    def balance(self, account: str) -> int:
        return self.balances.get(account, 0)

    def nonce(self, account: str) -> int:
        return self.nonces.get(account, 0)

    @property
    def total(self) -> int:
        return sum(self.balances.values())

    def apply(self, tx: Transaction, *, check_signature: bool = True) -> None:
        """Apply one transaction in place; raise InvalidTransaction (state untouched) if it cannot apply.

        ``genesis`` and ``payout`` transactions are only valid where the block
        rules place them; this method applies their value movement and nothing more.
        """
        if tx.kind == "genesis":
            self.balances[tx.recipient] = self.balance(tx.recipient) + tx.amount
            return
        if tx.sender == tx.recipient and tx.kind in USER_KINDS:
            raise InvalidTransaction("self-transfer", "sender and recipient are the same account")
        if tx.kind != "payout":
            if check_signature:
                try:
                    tx.verify_signature()
                except InvalidSignature as exc:
                    raise InvalidTransaction("bad-signature", f"transaction {tx.txid[:16]}: {exc}") from exc
            expected = self.nonce(tx.sender)
            if tx.nonce != expected:
                raise InvalidTransaction("bad-nonce", f"transaction {tx.txid[:16]} has nonce {tx.nonce}, sender's next nonce is {expected}")
        have = self.balance(tx.sender)
        if have < tx.amount:
            raise InvalidTransaction("insufficient-balance", f"transaction {tx.txid[:16]} moves {tx.amount}, sender has {have}")
        self.balances[tx.sender] = have - tx.amount
        if self.balances[tx.sender] == 0:
            del self.balances[tx.sender]
        self.balances[tx.recipient] = self.balance(tx.recipient) + tx.amount
        if tx.kind != "payout":
            self.nonces[tx.sender] = self.nonce(tx.sender) + 1
        if tx.kind == "deposit":
            self.deposits.add(tx.txid)


def settlement_transactions(task: ShapleyTask, winner: str, s_avg: Sequence[float]) -> list[tuple[str, str, int]]:
    """Algorithm 3 for one block: (kind, recipient, amount) as the body must end.

    First the server's payout of TrainPrice + SapPrice to the winner (when
    positive), then the winner's rewards to the clients with S̄_i > 0, by
    increasing client index, amounts by :func:`fedcoin.payments.reward_allocation`.
    """
    out: list[tuple[str, str, int]] = []
    if task.train_price + task.sap_price > 0:
        out.append(("payout", winner, task.train_price + task.sap_price))
    for i, amount in reward_allocation(s_avg, task.train_price):
        out.append(("reward", task.clients[i], amount))
    return out


def apply_block(state: ChainState, block: Block, *, check_signatures: bool = True) -> ChainState:
    """Apply a block's transactions to a copy of ``state``; the body layout was checked by verify."""
    new = state.copy()
    for tx in block.body.transactions:
        try:
            new.apply(tx, check_signature=check_signatures)
        except InvalidTransaction as exc:
            raise InvalidBlock("bad-transaction", f"{exc.reason}: {exc.message}") from exc
    if block.body.task is not None:
        new.settled.add(block.body.task.task_id)
    return new


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
    h = block.header
    body = block.body
    parent = ancestors[-1]
    if h.prev_hash != parent.hash:
        raise InvalidBlock("bad-parent", "prev_hash does not name the given parent")
    if h.height != parent.header.height + 1:
        raise InvalidBlock("bad-height", f"height {h.height} does not follow parent height {parent.header.height}")
    task = body.task
    if task is None:
        raise InvalidBlock("bad-task", "the body holds no Shapley task")
    if task.task_id != h.task_id or task.task_hash != h.task_hash:
        raise InvalidBlock("bad-task", "header task_id/task_hash do not match the body's task")
    try:
        task.verify_signature()
    except InvalidSignature as exc:
        raise InvalidBlock("bad-task", f"task not signed by its server: {exc}") from exc
    n = task.n_players
    if len(h.s_winner) != n or len(h.s_avg) != n:
        raise InvalidBlock("bad-task", f"S vectors have lengths {len(h.s_winner)}/{len(h.s_avg)}, the task has {n} clients")
    if h.iterations < 1:
        raise InvalidBlock("bad-iterations", "the winner claims no Shapley iteration")
    if body_merkle_root(body.transactions) != h.merkle_root:
        raise InvalidBlock("bad-merkle-root", "merkle root does not match the body's transactions")
    try:
        verify_signature(h.winner, h.signing_payload(), h.signature)
    except InvalidSignature as exc:
        raise InvalidBlock("bad-signature", f"header not signed by the winner: {exc}") from exc
    expected_d = next_difficulty(ancestors, params)
    if h.difficulty != expected_d:
        raise InvalidBlock("bad-difficulty", f"difficulty {h.difficulty!r}, the retarget rule requires {expected_d!r}")
    if h.timestamp < task.published_at:
        raise InvalidBlock("bad-timestamp", "block is older than the task it settles")
    recent = [b.header.timestamp for b in ancestors[-params.median_time_window :]]
    mtp = statistics.median_low(recent)
    if h.height > 1 and h.timestamp <= mtp:
        raise InvalidBlock("bad-timestamp", f"timestamp {h.timestamp} is not after the median of recent blocks ({mtp})")
    limit = (now_ms() if now is None else now) + params.max_future_ms
    if h.timestamp > limit:
        raise InvalidBlock("bad-timestamp", f"timestamp {h.timestamp} is more than {params.max_future_ms} ms in the future")
    d1 = p_distance(h.s_winner, h.s_avg, params.p)
    if d1 > h.difficulty:
        raise InvalidBlock("shapley-far-from-average", f"‖S_winner − S̄‖_{params.p:g} = {d1:.3g} > D = {h.difficulty:.3g}")
    if local_avg is not None:
        if len(local_avg) != n:
            raise InvalidInput(f"local average has {len(local_avg)} values, the task has {n} clients")
        d2 = p_distance(local_avg, h.s_winner, params.p)
        if d2 > h.difficulty:
            raise InvalidBlock("shapley-far-from-local", f"‖S̄_local − S_winner‖_{params.p:g} = {d2:.3g} > D = {h.difficulty:.3g}")
    if task.task_id in parent_state.settled:
        raise InvalidBlock("task-already-settled", f"task {task.task_id} was settled earlier on this chain")
    expected = settlement_transactions(task, h.winner, h.s_avg)
    txs = body.transactions
    if len(txs) < len(expected):
        raise InvalidBlock("bad-rewards", f"body has {len(txs)} transactions, Algorithm 3 prescribes {len(expected)} at its end")
    first = len(txs) - len(expected)
    for tx in txs[:first]:
        if tx.kind not in USER_KINDS:
            raise InvalidBlock("bad-rewards", f"a {tx.kind} transaction is only valid where Algorithm 3 places it")
    for k, (kind, recipient, amount) in enumerate(expected):
        tx = txs[first + k]
        sender = task.server if kind == "payout" else h.winner
        if (tx.kind, tx.sender, tx.recipient, tx.amount, tx.memo) != (kind, sender, recipient, amount, task.task_id):
            raise InvalidBlock(
                "bad-rewards",
                f"transaction {first + k} is {tx.kind} {tx.amount} to {tx.recipient[:16]}..., "
                f"Algorithm 3 prescribes {kind} {amount} to {recipient[:16]}...",
            )
        if kind == "payout" and (tx.nonce != 0 or tx.signature != ""):
            raise InvalidBlock("bad-rewards", "a payout carries nonce 0 and no signature")
    new_state = apply_block(parent_state, block)
    for tx in task.funding:
        if tx.txid not in new_state.deposits:
            raise InvalidBlock("unfunded-task", f"the task's deposit {tx.txid[:16]}... is not confirmed on this branch")
    return new_state


@dataclass(frozen=True)
class AddResult:
    """What adding blocks did: ``status`` is ``extended``, ``reorg`` or ``known``."""

    status: str
    head: str
    height: int
    reorg_depth: int = 0


class Chain:
    """A node's view of the chain: all valid blocks it knows, the head and its state.

    ``store`` (a :class:`fedcoin.store.BlockStore`) makes it durable: every
    accepted block and head change is written in one SQLite transaction before
    the call returns, and a reopened chain resumes where it was.
    """

    _STATE_CACHE = 16

    def __init__(self, genesis: GenesisConfig, store=None) -> None:  # noqa: ANN001 (BlockStore, avoids an import cycle)
        if not isinstance(genesis, GenesisConfig):
            raise InvalidInput("Chain needs a GenesisConfig")
        self.genesis_config = genesis
        self.params = genesis.params
        g = genesis.block()
        self.genesis = g
        self._blocks: dict[str, Block] = {g.hash: g}
        self._main: list[str] = [g.hash]
        self._states: OrderedDict[str, ChainState] = OrderedDict()
        self._store = store
        head_state = apply_block(ChainState(), g, check_signatures=False)
        self.supply = head_state.total
        if store is not None:
            store.init_genesis(g)
            blocks, head = store.load()
            for b in blocks:
                self._blocks[b.hash] = b
            if head is not None and head != g.hash:
                if head not in self._blocks:
                    raise StoreError(f"stored head {head[:16]} is not among the stored blocks")
                try:
                    self._main = self._branch_hashes(head)
                    head_state = self._replay(self._main)
                except (KeyError, InvalidBlock) as exc:
                    raise StoreError(f"stored chain is inconsistent: {exc}") from exc
        self._head_state = head_state
        self._remember(self.head, head_state)

    @classmethod
    def open(cls, path: str | Path, genesis: GenesisConfig) -> "Chain":
        from .store import BlockStore

        return cls(genesis, BlockStore(path))

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    # --- queries ----------------------------------------------------------
    @property
    def head(self) -> str:
        return self._main[-1]

    @property
    def head_block(self) -> Block:
        return self._blocks[self.head]

    @property
    def height(self) -> int:
        return len(self._main) - 1

    @property
    def head_state(self) -> ChainState:
        return self._head_state.copy()

    def balance(self, account: str) -> int:
        return self._head_state.balance(account)

    def nonce(self, account: str) -> int:
        return self._head_state.nonce(account)

    def balances(self) -> dict[str, int]:
        return dict(self._head_state.balances)

    def is_settled(self, task_id: str) -> bool:
        return task_id in self._head_state.settled

    def block_at(self, height: int) -> Block:
        if not isinstance(height, int) or isinstance(height, bool) or not 0 <= height <= self.height:
            raise InvalidInput(f"no block at height {height!r} on the main chain (height is {self.height})")
        return self._blocks[self._main[height]]

    def main_chain(self) -> list[Block]:
        return [self._blocks[h] for h in self._main]

    def get(self, block_hash: str) -> Block | None:
        return self._blocks.get(block_hash)

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self._blocks

    def next_difficulty(self) -> float:
        return next_difficulty(self._tail(self.head), self.params)

    # --- internals --------------------------------------------------------
    def _branch_hashes(self, tip: str) -> list[str]:
        out = []
        cur: str | None = tip
        while cur is not None:
            out.append(cur)
            b = self._blocks[cur]
            cur = None if b.header.height == 0 else b.header.prev_hash
        out.reverse()
        return out

    def _tail(self, tip: str, blocks: dict[str, Block] | None = None) -> list[Block]:
        blocks = self._blocks if blocks is None else blocks
        need = max(self.params.retarget_window, self.params.median_time_window)
        out = []
        cur = blocks[tip]
        while True:
            out.append(cur)
            if len(out) >= need or cur.header.height == 0:
                break
            cur = blocks[cur.header.prev_hash]
        out.reverse()
        return out

    def _replay(self, hashes: Iterable[str]) -> ChainState:
        state = ChainState()
        for h in hashes:
            state = apply_block(state, self._blocks[h], check_signatures=False)
        return state

    def _remember(self, block_hash: str, state: ChainState) -> None:
        self._states[block_hash] = state
        self._states.move_to_end(block_hash)
        while len(self._states) > self._STATE_CACHE:
            self._states.popitem(last=False)

    def _state_at(self, block_hash: str) -> ChainState:
        state = self._states.get(block_hash)
        if state is None:
            state = self._replay(self._branch_hashes(block_hash))
            self._remember(block_hash, state)
        return state

    def _beats_head(self, height: int, block_hash: str) -> bool:
        return height > self.height or (height == self.height and block_hash < self.head)

    # --- VerifyBlock and fork choice ----------------------------------------
    def verify(self, block: Block, *, local_avg: Sequence[float] | None = None, now: int | None = None) -> ChainState:
        """Full VerifyBlock including condition 3; returns the state after ``block``. Changes nothing."""
        if not isinstance(block, Block):
            raise InvalidInput("verify needs a Block")
        parent = self._blocks.get(block.header.prev_hash)
        if parent is None:
            raise OrphanBlock(f"parent {block.header.prev_hash[:16]}... of block at height {block.header.height} is unknown")
        state = verify_block(block, self._tail(parent.hash), self._state_at(parent.hash), self.params, local_avg=local_avg, now=now)
        if not self._beats_head(block.header.height, block.hash):
            raise StaleBlock(f"block at height {block.header.height} does not beat the head at height {self.height}")
        return state

    def add_block(self, block: Block, *, local_avg: Sequence[float] | None = None, now: int | None = None) -> AddResult:
        """Verify ``block`` and make it the head, or raise and change nothing."""
        if isinstance(block, Block) and block.hash in self._blocks:
            return AddResult("known", self.head, self.height)
        state = self.verify(block, local_avg=local_avg, now=now)
        return self._commit([block], block.hash, state)

    def add_chain(self, blocks: Sequence[Block], *, now: int | None = None) -> AddResult:
        """Catch up: validate a linked run of blocks and switch to its tip if it beats the head.

        Blocks already known are skipped; the first unknown block's parent
        must be known. All-or-nothing.
        """
        if not isinstance(blocks, Sequence) or not all(isinstance(b, Block) for b in blocks):
            raise InvalidInput("add_chain needs a sequence of Blocks")
        new = [b for b in blocks if b.hash not in self._blocks]
        if not new:
            return AddResult("known", self.head, self.height)
        parent = self._blocks.get(new[0].header.prev_hash)
        if parent is None:
            raise OrphanBlock(f"parent {new[0].header.prev_hash[:16]}... of block at height {new[0].header.height} is unknown")
        overlay = dict(self._blocks)
        state = self._state_at(parent.hash)
        prev = parent
        for b in new:
            if b.header.prev_hash != prev.hash:
                raise InvalidBlock("bad-parent", f"block at height {b.header.height} does not link to the block before it")
            state = verify_block(b, self._tail(prev.hash, overlay), state, self.params, now=now)
            overlay[b.hash] = b
            prev = b
        if not self._beats_head(prev.header.height, prev.hash):
            raise StaleBlock(f"branch tip at height {prev.header.height} does not beat the head at height {self.height}")
        return self._commit(new, prev.hash, state)

    def _commit(self, new_blocks: list[Block], tip: str, tip_state: ChainState) -> AddResult:
        if self._store is not None:
            self._store.save(new_blocks, tip)  # one SQLite transaction; raises before any in-memory change
        old_main = self._main
        for b in new_blocks:
            self._blocks[b.hash] = b
        new_main = self._branch_hashes(tip)
        fork = 0
        while fork < min(len(old_main), len(new_main)) and old_main[fork] == new_main[fork]:
            fork += 1
        depth = len(old_main) - fork
        self._main = new_main
        self._head_state = tip_state
        self._remember(tip, tip_state)
        return AddResult("reorg" if depth > 0 else "extended", tip, self.height, depth)


def build_block(
    chain: Chain,
    *,
    task: ShapleyTask,
    winner: Identity,
    s_winner: Sequence[float],
    s_avg: Sequence[float],
    iterations: int,
    transactions: Sequence[Transaction] = (),
    timestamp: int | None = None,
) -> Block:
    """Create the block a PoSap winner broadcasts (Algorithm 1, line 18) on the current head.

    The body holds those of ``transactions`` (pending user transfers and
    deposits) that apply in order on the head state (others are left out),
    then Algorithm 3's payout and rewards, the rewards signed now by
    ``winner`` with its next nonces. Pending transactions come first so that a
    requester's deposit confirmed in this block can fund the server's payout.
    """
    if not isinstance(task, ShapleyTask) or not isinstance(winner, Identity):
        raise InvalidInput("build_block needs a ShapleyTask and the winner's Identity")
    state = chain.head_state
    txs: list[Transaction] = []
    funding = [tx for tx in task.funding if tx.txid not in state.deposits]
    seen: set[str] = set()
    for tx in [*funding, *transactions]:
        if not isinstance(tx, Transaction) or tx.kind not in USER_KINDS or tx.txid in seen:
            continue
        try:
            state.apply(tx)
        except InvalidTransaction:
            continue
        seen.add(tx.txid)
        txs.append(tx)
    nonce = state.nonce(winner.account)
    for kind, recipient, amount in settlement_transactions(task, winner.account, [float(x) for x in s_avg]):
        if kind == "payout":
            tx = Transaction(sender=task.server, recipient=recipient, amount=amount, nonce=0, kind="payout", memo=task.task_id)
        else:
            tx = make_transaction(winner, recipient, amount, nonce, "reward", task.task_id)
            nonce += 1
        try:
            state.apply(tx)
        except InvalidTransaction as exc:
            raise InvalidInput(f"cannot settle task {task.task_id} on the head: {exc}") from exc
        txs.append(tx)
    tail = chain._tail(chain.head)
    mtp = statistics.median_low([b.header.timestamp for b in tail[-chain.params.median_time_window :]])
    ts = now_ms() if timestamp is None else timestamp
    ts = max(ts, task.published_at, mtp + 1)
    header = BlockHeader(
        height=chain.height + 1,
        prev_hash=chain.head,
        timestamp=ts,
        winner=winner.account,
        s_avg=[float(x) for x in s_avg],
        s_winner=[float(x) for x in s_winner],
        difficulty=chain.next_difficulty(),
        merkle_root=body_merkle_root(txs),
        task_id=task.task_id,
        task_hash=task.task_hash,
        iterations=iterations,
    )
    header = header.model_copy(update={"signature": winner.sign(header.signing_payload())})
    return Block(header=header, body=BlockBody(task=task, transactions=txs))


__all__ = [
    "AddResult",
    "Chain",
    "ChainState",
    "MINT_ACCOUNT",
    "apply_block",
    "build_block",
    "settlement_transactions",
    "verify_block",
]
