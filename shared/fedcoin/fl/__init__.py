"""Federated learning: IDX data, the paper's non-IID partition, the MLP, local training, FedAvg,
and the content of a Shapley task.

May import: fedcoin.errors, fedcoin.chain.
"""
