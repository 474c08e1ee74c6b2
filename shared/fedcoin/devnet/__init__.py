"""Whole networks on a developer's machine: a new testnet's shared files, the services as local
processes, waiting on them, and in-process simulation.

May import: fedcoin.errors, fedcoin.chain, fedcoin.fl, fedcoin.valuation, fedcoin.consensus,
fedcoin.ledger, fedcoin.api, fedcoin.client, fedcoin.node.
"""
