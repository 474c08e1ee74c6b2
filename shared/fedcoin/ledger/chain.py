"""A node's view of the chain: every valid block it knows, fork choice, the head and reorgs.

Fork choice: the head is the tip of greatest height; at equal height the tip
with the smaller block hash wins (a deterministic tie-break, so all nodes that
know the same blocks pick the same head). A block is accepted only if it beats
the head (Algorithm 2's condition 3, "Blk.ID ≥ longest chain length",
``stale-block`` otherwise; ``orphan-block`` when its parent is unknown);
catching up on a longer fork goes through :meth:`Chain.add_chain`, which
validates a whole branch and switches to it atomically if its tip beats the
head. A switch re-derives the balances by replaying the new branch
(:mod:`fedcoin.chain.state`). Every block is checked by
:func:`fedcoin.consensus.rules.verify_block`.

A call that raises leaves the chain, its store and its head unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedcoin.chain.blocks import Block
from fedcoin.chain.genesis import GenesisConfig
from fedcoin.chain.state import ChainState, apply_block
from fedcoin.consensus.difficulty import next_difficulty
from fedcoin.consensus.rules import check_mutation, verify_block
from fedcoin.errors import InvalidBlock, InvalidInput, OrphanBlock, Reason, StaleBlock, StoreError

from .index import BlockIndex
from .store import BlockStore


@dataclass(frozen=True)
class AddResult:
    """What adding blocks did: ``status`` is ``extended``, ``reorg`` or ``known``; after a reorg,
    ``abandoned`` holds the blocks that left the main chain, oldest first."""

    status: str
    head: str
    height: int
    reorg_depth: int = 0
    abandoned: tuple[Block, ...] = ()


class Chain:
    """A node's view of the chain: all valid blocks it knows, the head and its state.

    ``store`` (a :class:`fedcoin.ledger.store.BlockStore`) makes it durable:
    every accepted block and head change is written in one SQLite transaction
    before the call returns, and a reopened chain resumes where it was.
    """

    def __init__(self, genesis: GenesisConfig, store: BlockStore | None = None) -> None:
        if not isinstance(genesis, GenesisConfig):
            raise InvalidInput("Chain needs a GenesisConfig")
        self.genesis_config = genesis
        self.params = genesis.params
        g = genesis.block()
        self.genesis = g
        self._index = BlockIndex(g, window=max(self.params.retarget_window, self.params.median_time_window))
        self._main: list[str] = [g.hash]
        self._store = store
        head_state = apply_block(ChainState(), g, check_signatures=False)
        self.supply = head_state.total
        if store is not None:
            store.init_genesis(g)
            blocks, head = store.load()
            for b in blocks:
                self._index.add(b)
            if head is not None and head != g.hash:
                if head not in self._index:
                    raise StoreError(f"stored head {head[:16]} is not among the stored blocks")
                try:
                    self._main = self._index.branch(head)
                    head_state = self._index.replay(self._main)
                except (KeyError, InvalidBlock) as exc:
                    raise StoreError(f"stored chain is inconsistent: {exc}") from exc
        self._head_state = head_state
        self._index.remember(self.head, head_state)

    @classmethod
    def open(cls, path: str | Path, genesis: GenesisConfig) -> Chain:
        return cls(genesis, BlockStore(path))

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    # --- queries ----------------------------------------------------------
    @property
    def store(self) -> BlockStore | None:
        return self._store

    @property
    def head(self) -> str:
        return self._main[-1]

    @property
    def head_block(self) -> Block:
        return self._index[self.head]

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
        return self._index[self._main[height]]

    def main_chain(self) -> list[Block]:
        return [self._index[h] for h in self._main]

    def get(self, block_hash: str) -> Block | None:
        return self._index.get(block_hash)

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self._index

    def tail(self, tip: str | None = None) -> list[Block]:
        """The last blocks of the branch ending at ``tip`` (the head by default), oldest first:
        as many as the difficulty and median-time rules read."""
        return self._index.tail(self.head if tip is None else tip)

    def next_difficulty(self) -> float:
        return next_difficulty(self.tail(), self.params)

    def _known(self, block: Block) -> bool:
        """True if this exact block is stored; a different block with a known header hash (a mutated
        body or signature) raises the reason its body or seal fails with."""
        stored = self._index.get(block.hash)
        if stored is None:
            return False
        if block != stored:
            check_mutation(block)
        return True

    def _beats_head(self, height: int, block_hash: str) -> bool:
        return height > self.height or (height == self.height and block_hash < self.head)

    # --- VerifyBlock and fork choice ----------------------------------------
    def verify(self, block: Block, *, local_avg: Sequence[float] | None = None, now: int | None = None) -> ChainState:
        """Full VerifyBlock including condition 3; returns the state after ``block``. Changes nothing."""
        if not isinstance(block, Block):
            raise InvalidInput("verify needs a Block")
        parent = self._index.get(block.header.prev_hash)
        if parent is None:
            raise OrphanBlock(
                f"parent {block.header.prev_hash[:16]}... of block at height {block.header.height} is unknown"
            )
        state = verify_block(
            block,
            self._index.tail(parent.hash),
            self._index.state_at(parent.hash),
            self.params,
            local_avg=local_avg,
            now=now,
        )
        if not self._beats_head(block.header.height, block.hash):
            raise StaleBlock(f"block at height {block.header.height} does not beat the head at height {self.height}")
        return state

    def add_block(self, block: Block, *, local_avg: Sequence[float] | None = None, now: int | None = None) -> AddResult:
        """Verify ``block`` and make it the head, or raise and change nothing."""
        if isinstance(block, Block) and self._known(block):
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
        new = [b for b in blocks if not self._known(b)]
        if not new:
            return AddResult("known", self.head, self.height)
        parent = self._index.get(new[0].header.prev_hash)
        if parent is None:
            raise OrphanBlock(
                f"parent {new[0].header.prev_hash[:16]}... of block at height {new[0].header.height} is unknown"
            )
        overlay = self._index.overlay()
        state = self._index.state_at(parent.hash)
        prev = parent
        for b in new:
            if b.header.prev_hash != prev.hash:
                raise InvalidBlock(
                    Reason.BAD_PARENT, f"block at height {b.header.height} does not link to the block before it"
                )
            state = verify_block(b, overlay.tail(prev.hash), state, self.params, now=now)
            overlay.add(b)
            prev = b
        if not self._beats_head(prev.header.height, prev.hash):
            raise StaleBlock(
                f"branch tip at height {prev.header.height} does not beat the head at height {self.height}"
            )
        return self._commit(new, prev.hash, state)

    def _commit(self, new_blocks: list[Block], tip: str, tip_state: ChainState) -> AddResult:
        if self._store is not None:
            self._store.save(new_blocks, tip)  # one SQLite transaction; raises before any in-memory change
        old_main = self._main
        for b in new_blocks:
            self._index.add(b)
        new_main = self._index.branch(tip)
        fork = 0
        while fork < min(len(old_main), len(new_main)) and old_main[fork] == new_main[fork]:
            fork += 1
        depth = len(old_main) - fork
        abandoned = tuple(self._index[h] for h in old_main[fork:])
        self._main = new_main
        self._head_state = tip_state
        self._index.remember(tip, tip_state)
        return AddResult("reorg" if depth > 0 else "extended", tip, self.height, depth, abandoned)
