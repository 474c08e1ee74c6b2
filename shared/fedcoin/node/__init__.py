"""Everything a service runs, without HTTP routes: typed settings, signed messages, the miner
(PoSap worker, queries, gossip, sync), the FL server's round loop, the client and the requester.

May import: fedcoin.errors, fedcoin.chain, fedcoin.fl, fedcoin.valuation, fedcoin.consensus,
fedcoin.ledger, fedcoin.api, fedcoin.client; httpx, never a web framework.
"""
