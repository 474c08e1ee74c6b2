"""A Flower app whose clients are paid by Shapley value on FedCoin."""
