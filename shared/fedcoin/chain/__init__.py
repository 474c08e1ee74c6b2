"""The ledger's objects and their bytes: encoding, identities, transactions, Shapley tasks, blocks,
genesis, Merkle roots, and the state (balances, nonces) they derive.

May import: fedcoin.errors.
"""
