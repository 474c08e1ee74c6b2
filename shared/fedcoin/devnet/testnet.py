"""A new network's shared files: ``genesis.json`` and the keys it names.

The genesis funds the requester and admits the FL server and the miners
(``ChainParams.servers`` / ``miners``): only they may publish Shapley tasks and
win blocks. ``requester.key``, ``server.key`` and ``miner1.key`` ...
``minerN.key`` are written next to it, for the services to load
(``FEDCOIN_KEY``). ``allocations`` funds further accounts in a new genesis (load
tests' senders, say). On a real deployment each operator creates its own key
(``fedcoin keygen``) and sends only the account to whoever writes the genesis.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fedcoin.chain.genesis import ChainParams, GenesisConfig
from fedcoin.chain.identity import Identity
from fedcoin.errors import InvalidInput

DEFAULT_REQUESTER_FUNDS = 10**12
DEFAULT_DIFFICULTY = 5e-2
DEFAULT_TARGET_BLOCK_MS = 30_000
DEFAULT_RETARGET_WINDOW = 10
DEFAULT_MINERS = 4


def init_testnet(
    directory: str | Path,
    *,
    initial_difficulty: float = DEFAULT_DIFFICULTY,
    funds: int = DEFAULT_REQUESTER_FUNDS,
    chain_id: str = "fedcoin-testnet",
    target_block_ms: int = DEFAULT_TARGET_BLOCK_MS,
    retarget_window: int = DEFAULT_RETARGET_WINDOW,
    miners: int = DEFAULT_MINERS,
    allocations: dict[str, int] | None = None,
    sampler: str | None = None,
) -> dict[str, Any]:
    """Create (or reuse) the keys and ``genesis.json`` in ``directory``; idempotent.

    ``sampler`` is the permutation sampler the chain's miners use and its verifiers re-derive
    (``ChainParams.sampler``: uniform, stratified or paired; None: the default, paired). With an
    existing genesis it is only checked to be that genesis's (InvalidInput otherwise).

    ``allocations`` (account -> base units) are funded in a new genesis, next to the
    requester's ``funds``; with an existing genesis they are not added, only checked to be
    funded there (InvalidInput otherwise).
    """
    if not 1 <= miners <= 1024:
        raise InvalidInput("between 1 and 1024 miners")
    extra = dict(allocations or {})
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    key = d / "requester.key"
    genesis_path = d / "genesis.json"
    requester = Identity.load_or_create(key)
    server = Identity.load_or_create(d / "server.key")
    miner_ids = [Identity.load_or_create(d / f"miner{i + 1}.key") for i in range(miners)]
    if genesis_path.exists():
        genesis = GenesisConfig.load(genesis_path)
        if requester.account not in genesis.allocations:
            raise InvalidInput(f"{genesis_path} does not fund {key}")
        admitted = set(genesis.params.miners)
        if server.account not in genesis.params.servers or any(m.account not in admitted for m in miner_ids):
            raise InvalidInput(f"{genesis_path} does not admit the server and miner keys in {d}")
        if sampler is not None and sampler != genesis.params.sampler:
            raise InvalidInput(f"{genesis_path} uses the {genesis.params.sampler} sampler, not {sampler}")
        unfunded = [a for a in extra if a not in genesis.allocations]
        if unfunded:
            raise InvalidInput(
                f"{genesis_path} does not fund {len(unfunded)} of the accounts asked for ({unfunded[0]})"
            )
    else:
        if requester.account in extra:
            raise InvalidInput("allocations name the requester's account; its funds are given by `funds`")
        fields: dict[str, Any] = {
            "chain_id": chain_id,
            "initial_difficulty": initial_difficulty,
            "target_block_ms": target_block_ms,
            "retarget_window": retarget_window,
            "servers": [server.account],
            "miners": [m.account for m in miner_ids],
        }
        if sampler is not None:
            fields["sampler"] = sampler
        try:
            params = ChainParams(**fields)
        except ValidationError as exc:
            raise InvalidInput(f"bad chain parameters: {exc}") from exc
        genesis = GenesisConfig(
            params=params,
            allocations={requester.account: funds, **extra},
            timestamp=int(time.time() * 1000),
        )
        genesis.save(genesis_path)
    return {
        "genesis": str(genesis_path),
        "requester_key": str(key),
        "requester": requester.account,
        "server_key": str(d / "server.key"),
        "miner_keys": [str(d / f"miner{i + 1}.key") for i in range(miners)],
        "genesis_hash": genesis.block().hash,
    }
