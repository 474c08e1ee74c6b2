"""Shapley values: exact and permutation-sampled estimators, games with known values, and the
naive and fast (batched prefix-sum) FL utilities.

May import: fedcoin.errors, fedcoin.chain, fedcoin.fl.
"""
