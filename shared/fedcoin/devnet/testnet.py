"""A new network's shared files: the requester's key (funded at genesis) and ``genesis.json``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fedcoin.chain.genesis import ChainParams, GenesisConfig
from fedcoin.chain.identity import Identity
from fedcoin.errors import InvalidInput

DEFAULT_REQUESTER_FUNDS = 10**12
DEFAULT_DIFFICULTY = 5e-2
DEFAULT_TARGET_BLOCK_MS = 30_000
DEFAULT_RETARGET_WINDOW = 10


def init_testnet(
    directory: str | Path,
    *,
    initial_difficulty: float = DEFAULT_DIFFICULTY,
    funds: int = DEFAULT_REQUESTER_FUNDS,
    chain_id: str = "fedcoin-testnet",
    target_block_ms: int = DEFAULT_TARGET_BLOCK_MS,
    retarget_window: int = DEFAULT_RETARGET_WINDOW,
) -> dict[str, Any]:
    """Create (or reuse) ``requester.key`` and ``genesis.json`` in ``directory``; idempotent."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    key = d / "requester.key"
    genesis_path = d / "genesis.json"
    requester = Identity.load_or_create(key)
    if genesis_path.exists():
        genesis = GenesisConfig.load(genesis_path)
        if requester.account not in genesis.allocations:
            raise InvalidInput(f"{genesis_path} does not fund {key}")
    else:
        genesis = GenesisConfig(
            params=ChainParams(
                chain_id=chain_id,
                initial_difficulty=initial_difficulty,
                target_block_ms=target_block_ms,
                retarget_window=retarget_window,
            ),
            allocations={requester.account: funds},
            timestamp=int(time.time() * 1000),
        )
        genesis.save(genesis_path)
    return {
        "genesis": str(genesis_path),
        "requester_key": str(key),
        "requester": requester.account,
        "genesis_hash": genesis.block().hash,
    }
