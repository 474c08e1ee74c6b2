# FedCoin — developer entry points. `make setup` then `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup datasets test test-fast simulate bench clean

setup: $(BIN)/fedcoin datasets ## create .venv and install everything (torch included)

$(BIN)/fedcoin: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

datasets: ## the offline default dataset (Debian's dataset-fashion-mnist), where apt is available
	@bash scripts/install-datasets.sh

test: $(BIN)/fedcoin ## the whole test suite
	$(BIN)/python -m pytest

test-fast: $(BIN)/fedcoin
	$(BIN)/python -m pytest -x -q -m "not slow"

simulate: $(BIN)/fedcoin ## one in-process PoSap round among 4 miners, paid by Algorithm 3
	$(BIN)/fedcoin simulate

bench: $(BIN)/fedcoin ## Shapley utility engine vs naive evaluator
	$(BIN)/python scripts/bench_shapley.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info shared/*.egg-info
