"""FedCoin: blockchain-paid federated learning with Proof of Shapley (PoSap).

Packages, each importing only those listed before it (see the README's
"Architecture"): ``errors`` → ``chain`` → ``fl`` → ``valuation`` →
``consensus`` → ``ledger`` → ``node`` → ``devnet`` → ``cli``.
"""

__version__ = "0.1.0"
