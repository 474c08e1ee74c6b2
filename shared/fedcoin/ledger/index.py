"""Every block a node knows, by hash, and the states of their branches.

:class:`BlockIndex` walks branches back to genesis (:meth:`~BlockIndex.branch`,
:meth:`~BlockIndex.tail`) and derives a branch's :class:`ChainState` by replay,
keeping the states of the last few tips it was asked about.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from fedcoin.chain.blocks import Block
from fedcoin.chain.state import ChainState, apply_block


class BlockIndex:
    STATE_CACHE = 16

    def __init__(self, genesis: Block, *, window: int) -> None:
        self.window = window
        self._blocks: dict[str, Block] = {genesis.hash: genesis}
        self._states: OrderedDict[str, ChainState] = OrderedDict()

    def __contains__(self, block_hash: object) -> bool:
        return block_hash in self._blocks

    def __getitem__(self, block_hash: str) -> Block:
        return self._blocks[block_hash]

    def get(self, block_hash: str) -> Block | None:
        return self._blocks.get(block_hash)

    def add(self, block: Block) -> None:
        self._blocks[block.hash] = block

    def remove(self, block_hash: str) -> None:
        self._blocks.pop(block_hash, None)
        self._states.pop(block_hash, None)

    def hashes(self) -> list[str]:
        """Every known block, in the order it was added."""
        return list(self._blocks)

    def descendants(self, block_hash: str) -> list[str]:
        """``block_hash`` and every known block built on it, parents first."""
        children: dict[str, list[str]] = {}
        for h, b in self._blocks.items():
            if b.header.height > 0:
                children.setdefault(b.header.prev_hash, []).append(h)
        out, todo = [], [block_hash] if block_hash in self._blocks else []
        while todo:
            h = todo.pop(0)
            out.append(h)
            todo.extend(children.get(h, []))
        return out

    def tips(self) -> list[str]:
        """Blocks no known block builds on, in the order they were added."""
        parents = {b.header.prev_hash for b in self._blocks.values() if b.header.height > 0}
        return [h for h in self._blocks if h not in parents]

    def overlay(self) -> BlockIndex:
        """A copy to validate a branch in: adding blocks to it leaves this index unchanged."""
        other = BlockIndex.__new__(BlockIndex)
        other.window = self.window
        other._blocks = dict(self._blocks)
        other._states = OrderedDict()
        return other

    def branch(self, tip: str) -> list[str]:
        """Hashes from genesis to ``tip``."""
        out = []
        cur: str | None = tip
        while cur is not None:
            out.append(cur)
            b = self._blocks[cur]
            cur = None if b.header.height == 0 else b.header.prev_hash
        out.reverse()
        return out

    def tail(self, tip: str) -> list[Block]:
        """The last ``window`` blocks of the branch ending at ``tip`` (fewer near genesis), oldest first."""
        out = []
        cur = self._blocks[tip]
        while True:
            out.append(cur)
            if len(out) >= self.window or cur.header.height == 0:
                break
            cur = self._blocks[cur.header.prev_hash]
        out.reverse()
        return out

    def replay(self, hashes: Iterable[str]) -> ChainState:
        state = ChainState()
        for h in hashes:
            state = apply_block(state, self._blocks[h], check_signatures=False)
        return state

    def remember(self, block_hash: str, state: ChainState) -> None:
        self._states[block_hash] = state
        self._states.move_to_end(block_hash)
        while len(self._states) > self.STATE_CACHE:
            self._states.popitem(last=False)

    def state_at(self, block_hash: str) -> ChainState:
        state = self._states.get(block_hash)
        if state is None:
            state = self.replay(self.branch(block_hash))
            self.remember(block_hash, state)
        return state
