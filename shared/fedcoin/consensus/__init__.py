"""The rules every node agrees on: Proof of Shapley (Algorithm 1), difficulty, payments
(Algorithm 3), VerifyBlock (Algorithm 2) and block building.

May import: fedcoin.errors, fedcoin.chain, fedcoin.fl, fedcoin.valuation.
"""
