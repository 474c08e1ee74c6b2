"""FastAPI services of the FedCoin network: thin HTTP wiring over the ``fedcoin`` library."""
