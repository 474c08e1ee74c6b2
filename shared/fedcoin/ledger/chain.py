"""A node's view of the chain: every valid block it knows, fork choice, the head and reorgs.

Fork choice by verified work: a branch's work is the sum of its blocks'
``iterations`` (each one a leaf of a work log the chain checked; under
``consensus = "paper"`` every block counts 1, so work is height, as in
Algorithm 2's condition 3). The head is the tip of greatest work; at equal
work, the tip of smaller :func:`tie_key`, a hash of the tip's parent, task,
winner and work root. Its producer cannot grind it: an honest work log of N
leaves is fixed by (parent, task, winner) (a block hash can be ground by
re-signing with another timestamp; this key cannot), and a fabricated one is
caught. Being deterministic, it makes every node that knows the same blocks
pick the same head, so two halves of a network split on equal work converge
(with "first seen stays" they could wait on each other forever: a block needs
reports of other miners on its own parent). A block or branch is accepted
only if it beats the head (``stale-block`` otherwise; ``orphan-block`` when
its parent is unknown).

Every block is checked by :func:`fedcoin.consensus.rules.verify_block` and then,
with a :class:`~fedcoin.consensus.proofs.WorkVerifier`, by recomputing sampled
leaves of its work log. A fraud proof (:meth:`Chain.apply_fraud_proof`)
condemns a block for good (persisted): it and its descendants leave the index
and the store, the head moves to the best remaining tip, and the block and
anything built on it are refused with ``fraudulent-block`` from then on.
Catching up on a heavier fork goes through :meth:`Chain.add_chain`, which
validates a whole branch and switches to it atomically if its tip beats the
head. A switch re-derives the balances by replaying the new branch
(:mod:`fedcoin.chain.state`).

A call that raises leaves the chain, its store and its head unchanged.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedcoin.chain.blocks import Block, BlockHeader
from fedcoin.chain.encoding import sha256_hex, tagged
from fedcoin.chain.genesis import GenesisConfig
from fedcoin.chain.state import ChainState, apply_block
from fedcoin.chain.tasks import ShapleyTask
from fedcoin.chain.work import empty_root
from fedcoin.consensus.difficulty import next_difficulty
from fedcoin.consensus.proofs import FraudProof, WorkVerifier, fraud_key
from fedcoin.consensus.rules import check_mutation, verify_block
from fedcoin.errors import InvalidBlock, InvalidInput, OrphanBlock, Reason, StaleBlock, StoreError

from .index import BlockIndex
from .store import BlockStore


def tie_key(header: BlockHeader) -> str:
    """Fork choice among tips of equal work: the smaller key wins."""
    return sha256_hex(tagged("fedcoin/tie/v1", [header.prev_hash, header.task_hash, header.winner, header.work_root]))


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

    WHOLE_CACHE = 8  # whole blocks (work logs included) read back from the store, most recent kept

    def __init__(
        self, genesis: GenesisConfig, store: BlockStore | None = None, *, verifier: WorkVerifier | None = None
    ) -> None:
        if not isinstance(genesis, GenesisConfig):
            raise InvalidInput("Chain needs a GenesisConfig")
        self.verifier = verifier
        self.genesis_config = genesis
        self.params = genesis.params
        g = genesis.block()
        self.genesis = g
        self._index = BlockIndex(g, window=max(self.params.retarget_window, self.params.median_time_window))
        self._main: list[str] = [g.hash]
        self._work: dict[str, int] = {g.hash: 0}  # cumulative work of the branch ending at each block
        self._invalid: dict[str, str] = {}
        self._store = store
        self._whole: OrderedDict[str, Block] = OrderedDict()
        head_state = apply_block(ChainState(), g, check_signatures=False)
        self.supply = head_state.total
        if store is not None:
            store.init_genesis(g)
            self._invalid = store.invalid()
            blocks, head = store.load()
            for b in blocks:
                if b.header.prev_hash not in self._work:
                    raise StoreError(f"stored block {b.hash[:16]} has no stored parent {b.header.prev_hash[:16]}")
                self._index_block(b)
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
    def open(cls, path: str | Path, genesis: GenesisConfig, *, verifier: WorkVerifier | None = None) -> Chain:
        return cls(genesis, BlockStore(path), verifier=verifier)

    def _index_block(self, block: Block) -> None:
        self._index.add(self._resident(block))
        if self._store is not None and block.body.work is not None:
            self._keep_whole(block)  # peers relay a new block several times: their copies compare to this
        self._work[block.hash] = self._work[block.header.prev_hash] + self.block_work(block)

    def _resident(self, block: Block) -> Block:
        """What the index keeps of ``block`` in memory. With a store, the work log (8 bytes per client
        and iteration: the bulk of a block) stays on disk once the block is verified and saved; only
        serving the block needs it, and :meth:`get` and :meth:`block_at` read it back."""
        if self._store is None or block.body.work is None:
            return block
        return block.model_copy(update={"body": block.body.model_copy(update={"work": None})})

    def _read_whole(self, block_hash: str) -> Block | None:
        """The block as received, work log included (from the store when the index keeps it without)."""
        resident = self._index.get(block_hash)
        if resident is None or self._store is None or resident.body.work is not None:
            return resident
        if resident.header.work_root == empty_root():
            return resident  # no work log to restore (genesis, or a block under ``paper``)
        whole = self._whole.get(block_hash)
        if whole is None:
            whole = self._store.get(block_hash)
            if whole is None:
                raise StoreError(f"block {block_hash[:16]} is indexed but missing from the store")
        self._keep_whole(whole)
        return whole

    def _keep_whole(self, block: Block) -> None:
        self._whole[block.hash] = block
        self._whole.move_to_end(block.hash)
        while len(self._whole) > self.WHOLE_CACHE:
            self._whole.popitem(last=False)

    def block_work(self, block: Block) -> int:
        """What a block adds to its branch's work: its verified iterations (1 under ``paper``)."""
        return block.header.iterations if self.params.verified else 1

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
        """The head, whole (work log included)."""
        whole = self._read_whole(self.head)
        assert whole is not None
        return whole

    @property
    def head_header(self) -> BlockHeader:
        return self._index[self.head].header

    @property
    def height(self) -> int:
        return len(self._main) - 1

    @property
    def work(self) -> int:
        """The head branch's work (sum of verified iterations)."""
        return self._work[self.head]

    def work_at(self, block_hash: str) -> int | None:
        return self._work.get(block_hash)

    @property
    def head_state(self) -> ChainState:
        return self._head_state.copy()

    def balance(self, account: str) -> int:
        return self._head_state.balance(account)

    def nonce(self, account: str) -> int:
        return self._head_state.nonce(account)

    def balances(self) -> dict[str, int]:
        return dict(self._head_state.balances)

    def is_settled(self, task: ShapleyTask) -> bool:
        return task.settlement_key in self._head_state.settled

    def block_at(self, height: int) -> Block:
        """The main chain's block at ``height``, whole (work log included)."""
        if not isinstance(height, int) or isinstance(height, bool) or not 0 <= height <= self.height:
            raise InvalidInput(f"no block at height {height!r} on the main chain (height is {self.height})")
        whole = self._read_whole(self._main[height])
        assert whole is not None
        return whole

    def main_chain(self) -> list[Block]:
        """The main chain's blocks, whole (with a store, every work log is read back from disk)."""
        out = [self._read_whole(h) for h in self._main]
        return [b for b in out if b is not None]

    def main_chain_light(self) -> list[Block]:
        """The main chain as kept in memory, nothing read from disk: headers, tasks, reports and
        transactions, and with a store no work logs (what lookups of transactions and tasks need)."""
        return [self._index[h] for h in self._main]

    def get(self, block_hash: str) -> Block | None:
        """A known block by hash, whole (work log included); None if unknown."""
        return self._read_whole(block_hash)

    def get_light(self, block_hash: str) -> Block | None:
        """A known block as kept in memory (with a store, without its work log); nothing read from disk."""
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
        whole = self._whole.get(block.hash)
        if whole is not None:
            differs = block != whole
        else:  # the work log is on disk: compare the rest, and check the copy's log against its root
            differs = self._resident(block) != stored or (stored.body.work is None and block.body.work is not None)
        if differs:
            check_mutation(block)
        return True

    def _beats_head(self, work: int, tip: Block) -> bool:
        if work != self.work:
            return work > self.work
        return tie_key(tip.header) < tie_key(self.head_header)

    @property
    def tie(self) -> str:
        """The head's tie key (what an equal-work rival must be below)."""
        return tie_key(self.head_header)

    def _check_condemned(self, block: Block) -> None:
        for h in (block.hash, block.header.prev_hash, fraud_key(block.header)):
            if h in self._invalid:
                raise InvalidBlock(
                    Reason.FRAUDULENT_BLOCK, f"block {h[:16]}... was condemned by a fraud proof: {self._invalid[h]}"
                )

    def _verify_work(self, block: Block) -> None:
        if self.verifier is not None:
            self.verifier.verify(block, self.params)

    # --- VerifyBlock and fork choice ----------------------------------------
    def verify(self, block: Block, *, local_avg: Sequence[float] | None = None, now: int | None = None) -> ChainState:
        """Full VerifyBlock including condition 3; returns the state after ``block``. Changes nothing."""
        if not isinstance(block, Block):
            raise InvalidInput("verify needs a Block")
        self._check_condemned(block)
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
        work = self._work[parent.hash] + self.block_work(block)
        if not self._beats_head(work, block):
            raise StaleBlock(
                f"block at height {block.header.height} brings its branch to work {work}, "
                f"the head's is {self.work} (height {self.height}; equal work: the smaller tie key wins)"
            )
        self._verify_work(block)
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
        work = self._work[parent.hash] + sum(self.block_work(b) for b in new)
        if not self._beats_head(work, new[-1]):
            raise StaleBlock(
                f"branch tip at height {new[-1].header.height} has work {work}, the head's is {self.work} "
                "(equal work: the smaller tie key wins)"
            )
        overlay = self._index.overlay()
        state = self._index.state_at(parent.hash)
        prev = parent
        for b in new:
            self._check_condemned(b)
            if b.header.prev_hash != prev.hash:
                raise InvalidBlock(
                    Reason.BAD_PARENT, f"block at height {b.header.height} does not link to the block before it"
                )
            state = verify_block(b, overlay.tail(prev.hash), state, self.params, now=now)
            self._verify_work(b)
            overlay.add(b)
            prev = b
        return self._commit(new, prev.hash, state)

    def _commit(self, new_blocks: list[Block], tip: str, tip_state: ChainState) -> AddResult:
        if self._store is not None:
            self._store.save(new_blocks, tip)  # one SQLite transaction; raises before any in-memory change
        old_main = self._main
        for b in new_blocks:
            self._index_block(b)
        return self._switch(old_main, tip, tip_state)

    def _switch(
        self, old_main: list[str], tip: str, tip_state: ChainState, removed: dict[str, Block] | None = None
    ) -> AddResult:
        new_main = self._index.branch(tip)
        fork = 0
        while fork < min(len(old_main), len(new_main)) and old_main[fork] == new_main[fork]:
            fork += 1
        depth = len(old_main) - fork
        lookup = removed or {}
        abandoned = tuple(lookup[h] if h in lookup else self._read_whole(h) or self._index[h] for h in old_main[fork:])
        self._main = new_main
        self._head_state = tip_state
        self._index.remember(tip, tip_state)
        return AddResult("reorg" if depth > 0 else "extended", tip, self.height, depth, abandoned)

    # --- fraud proofs -------------------------------------------------------------------
    def is_condemned(self, block_hash: str) -> bool:
        """True for a block a fraud proof condemned, or one of the same work log re-signed."""
        if block_hash in self._invalid:
            return True
        block = self._index.get(block_hash)
        return block is not None and fraud_key(block.header) in self._invalid

    def apply_fraud_proof(self, proof: FraudProof) -> AddResult:
        """Check ``proof`` (one leaf recomputed) and condemn its block: it and its descendants leave
        the index and the store, and the head moves to the best remaining tip (greatest work, smaller
        tie key on a tie). Raises InvalidInput for a proof that does not hold; changes nothing then."""
        if not isinstance(proof, FraudProof):
            raise InvalidInput("apply_fraud_proof needs a FraudProof")
        if self.verifier is None:
            raise InvalidInput("this chain has no work verifier to check fraud proofs with")
        bad = proof.block_hash
        if bad in self._invalid:
            return AddResult("known", self.head, self.height)
        if self.params.verified and proof.header.winner not in self.params.miners:
            raise InvalidInput("fraud proof about a block of a miner the chain does not admit (refused anyway)")
        if bad not in self._index and proof.header.prev_hash not in self._index:
            raise InvalidInput("fraud proof about a block on a parent this node does not know")
        self.verifier.check_proof(proof, self.params)
        why = f"leaf {proof.index} of the work log is not the marginal vector of its permutation"
        key = fraud_key(proof.header)
        doomed = [
            d
            for h in self._index.hashes()
            if h == bad or fraud_key(self._index[h].header) == key
            for d in self._index.descendants(h)
        ]
        head = self.head
        if head in doomed:
            survivors = self._index.overlay()
            for h in doomed:
                survivors.remove(h)
            best = max(self._work[h] for h in survivors.tips())
            head = min(
                (h for h in survivors.tips() if self._work[h] == best), key=lambda h: tie_key(self._index[h].header)
            )
        removed = {h: self._read_whole(h) or self._index[h] for h in doomed}  # before the store drops them
        if self._store is not None:
            self._store.save([], head, condemn=[bad, key], drop=doomed, why=why)
        self._invalid[bad] = why
        self._invalid[key] = why
        old_main = self._main
        for h in doomed:
            self._index.remove(h)
            self._work.pop(h, None)
            self._whole.pop(h, None)
        if head == self.head:
            return AddResult("known", self.head, self.height)
        return self._switch(old_main, head, self._index.state_at(head), removed)
