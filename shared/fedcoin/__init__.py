"""FedCoin: blockchain-paid federated learning with Proof of Shapley (PoSap)."""

__version__ = "0.1.0"
