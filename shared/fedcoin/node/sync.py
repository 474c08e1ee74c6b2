"""Catching up: poll the peers' heads and adopt any branch that beats this node's head.

After a restart or a partition a miner has missed blocks; gossip alone never
brings them back. :class:`ChainSync` asks each peer for its head and, when the
peer's head beats this node's (more work, or equal work and a smaller tie
key), walks back from the lower of the
two heights to the last block this node knows, fetches the rest in pages,
makes sure it holds each block's task (:func:`ensure_task`, to recompute
sampled leaves) and hands them to :meth:`MinerNode.add_chain
<fedcoin.node.miner.MinerNode.add_chain>`, which validates the whole branch
and switches to it atomically or not at all. A peer's claimed work is only a
hint; the branch's verified work decides.
"""

from __future__ import annotations

import asyncio
import logging

from fedcoin.chain.blocks import Block
from fedcoin.chain.tasks import ShapleyTask
from fedcoin.errors import FedcoinError, InvalidBlock, Reason

from .miner import MinerNode
from .peers import Transport
from .queries import MAX_BLOCKS_PER_PAGE

log = logging.getLogger("fedcoin.sync")


async def ensure_task(node: MinerNode, transport: Transport, task: ShapleyTask) -> None:
    """Make sure ``node`` holds ``task`` and its content (to recompute a block's leaves): an admitted
    server's signed task, its content fetched from ``content_uri``."""
    if node.tasks.get(task.task_id) is not None:
        return
    params = node.chain.params
    if params.verified and task.server not in params.servers:
        raise InvalidBlock(Reason.UNKNOWN_SERVER, f"task signed by {task.server[:16]}..., not an admitted server")
    task.verify_signature()
    if not node.wants_task(task):
        return
    content = await transport.get_bytes(task.content_uri)
    await asyncio.to_thread(node.add_task, task, content)


class ChainSync:
    def __init__(
        self,
        node: MinerNode,
        peers: list[str],
        transport: Transport,
    ) -> None:
        self.node = node
        self.peers = list(peers)
        self.transport = transport

    async def sync_once(self) -> None:
        """One pass over the peers."""
        for peer in self.peers:
            try:
                await self.sync_from(peer)
            except (FedcoinError, KeyError, TypeError, ValueError) as exc:  # a bad peer must not stop the pass
                log.warning("sync from %s failed: %s", peer, exc)

    async def sync_from(self, peer: str) -> str | None:
        """Adopt ``peer``'s branch if it beats ours; the add status, or None when there was nothing to do."""
        head = await self.transport.get_json(f"{peer}/chain/head")
        if not head:
            return None
        with self.node.lock:
            mine_h, mine_work, mine_tie = self.node.chain.height, self.node.chain.work, self.node.chain.tie
        height, work = int(head["height"]), int(head["work"])
        if work < mine_work or (work == mine_work and not str(head.get("tie", mine_tie)) < mine_tie):
            return None
        blocks = await self._fetch_branch(peer, min(mine_h, height), height)
        if not blocks:
            return None
        for b in blocks:
            if b.body.task is not None and b.hash not in self.node.chain:
                await ensure_task(self.node, self.transport, b.body.task)
        result = await asyncio.to_thread(self.node.add_chain, blocks)
        log.info("synced from %s: %s to height %d", peer, result.status, result.height)
        return result.status

    async def _fetch_branch(self, peer: str, start: int, height: int) -> list[Block]:
        while start > 0:  # back to the last block of the peer's main chain that we know
            b = await self.transport.get_json(f"{peer}/blocks/{start}")
            if b is None:
                break
            block_hash = Block.from_dict(b).hash
            with self.node.lock:
                known = block_hash in self.node.chain
            if known:
                break
            start -= 1
        blocks: list[Block] = []
        h = start + 1
        while h <= height:
            end = min(h + MAX_BLOCKS_PER_PAGE - 1, height)
            page = await self.transport.get_json(f"{peer}/blocks?start={h}&end={end}")
            if not page:
                break
            blocks.extend(Block.from_dict(x) for x in page)
            h += len(page)
        return blocks

    async def run(self, interval: float) -> None:
        """Sync every ``interval`` seconds until cancelled; every failure is logged, none ends the loop."""
        while True:
            try:
                await self.sync_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sync pass failed")
            await asyncio.sleep(interval)
