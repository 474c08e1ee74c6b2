"""Dynamic mining difficulty (Section 4.2): a deterministic retarget rule.

D is a distance bound: a miner wins when ‖S − S̄‖_p ≤ D, so a *smaller* D is
*harder*. The rule, in the spirit of Bitcoin's:

* Block 1 uses ``params.initial_difficulty``.
* D changes only at heights h with (h − 1) mod window = 0 and h > 1 (every
  ``retarget_window`` blocks); elsewhere D(h) = D(h − 1).
* At a retarget height, the mining time of each of the last ``window`` blocks
  (heights h−window … h−1, never genesis) is its timestamp minus the
  server-signed ``published_at`` of the task it settles (at least 1 ms). With
  ``actual`` their sum and ``expected = window × target_block_ms``,
  D(h) = clamp(D(h−1) × clamp(actual / expected, 1/max_adjust, max_adjust),
  min_difficulty, max_difficulty).

Blocks mined slower than the target make D larger (easier); faster ones make
it smaller (harder); one retarget moves D by at most ×max_adjust (default 4,
as Bitcoin's limit). Every header records its D and VerifyBlock checks it.
Measuring from the task's publication rather than from the parent block keeps
the idle time between FL rounds out of the measurement.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedcoin.chain.blocks import Block
from fedcoin.chain.genesis import ChainParams


def mining_time_ms(block: Block) -> int:
    task = block.body.task
    if task is None:
        return 1
    return max(1, block.header.timestamp - task.published_at)


def is_retarget_height(height: int, params: ChainParams) -> bool:
    return height > 1 and (height - 1) % params.retarget_window == 0


def next_difficulty(ancestors: Sequence[Block], params: ChainParams) -> float:
    """Difficulty required of the block that extends ``ancestors``.

    ``ancestors`` is the chain from genesis (index 0) to the parent (last).
    Only the last ``retarget_window`` blocks are read.
    """
    parent = ancestors[-1]
    height = parent.header.height + 1
    if height == 1:
        return params.initial_difficulty
    previous = parent.header.difficulty
    if not is_retarget_height(height, params):
        return previous
    window = [b for b in ancestors[-params.retarget_window :] if b.header.height > 0]
    actual = sum(mining_time_ms(b) for b in window)
    expected = len(window) * params.target_block_ms
    factor = min(max(actual / expected, 1.0 / params.max_adjust), params.max_adjust)
    return min(max(previous * factor, params.min_difficulty), params.max_difficulty)
