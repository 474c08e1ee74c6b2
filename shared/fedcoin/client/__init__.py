"""Typed Python clients of the services' HTTP APIs (httpx): the miner, the FL server and the
requester, answering :mod:`fedcoin.api` models and the chain's own blocks and transactions, and
raising the typed errors of :mod:`fedcoin.errors` that the services answered with.

May import: fedcoin.errors, fedcoin.chain, fedcoin.fl, fedcoin.valuation, fedcoin.consensus,
fedcoin.ledger, fedcoin.api; httpx, never torch or a web framework.
"""

from .http import MinerClient, RequesterClient, ServerClient, ServiceClient, error_from_response

__all__ = ["MinerClient", "RequesterClient", "ServerClient", "ServiceClient", "error_from_response"]
