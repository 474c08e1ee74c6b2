"""A node's durable copy of the chain: block index, fork choice and reorgs, the SQLite block
store and the mempool.

May import: fedcoin.errors, fedcoin.chain, fedcoin.fl, fedcoin.valuation, fedcoin.consensus.
"""
