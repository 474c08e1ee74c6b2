"""Flower federations paid by Shapley value: :class:`FedCoinFedAvg`, Flower's own FedAvg strategy
(server-app API) that has each round's Shapley task settled on FedCoin and records the block's S̄
and payments in the round's metrics, and :func:`receipt_record`, what a Flower ClientApp adds to
its train reply: the update's receipt signed with the client's FedCoin key. Needs the optional
``flower`` extra (``flwr``).

May import: fedcoin.errors, fedcoin.chain, fedcoin.fl, fedcoin.valuation, fedcoin.consensus,
fedcoin.ledger, fedcoin.api, fedcoin.client, fedcoin.node, fedcoin.devnet; flwr.
"""

from .strategy import RECEIPT_KEY, FedCoinFedAvg, arrays_to_update, receipt_record, update_to_arrays

__all__ = ["RECEIPT_KEY", "FedCoinFedAvg", "arrays_to_update", "receipt_record", "update_to_arrays"]
