# FedCoin — developer entry points. `make setup` then `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup datasets browser lint format test test-fast demo simulate bench bench-extra bench-shapley bench-engine bench-gpu bench-verify flower-demo load soak docs clean

setup: $(BIN)/fedcoin datasets browser ## create .venv and install everything (torch included)

$(BIN)/fedcoin: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,paper,testbed,flower]'
	@touch $@

browser: ## Debian's chromium and chromium-driver, for the explorer's browser tests (where apt is available)
	@bash scripts/install-browser.sh

datasets: ## the offline default dataset (Debian's dataset-fashion-mnist), where apt is available
	@bash scripts/install-datasets.sh

lint: $(BIN)/fedcoin ## ruff (lint and format check) and mypy; zero findings
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(BIN)/fedcoin ## apply ruff's formatting and safe fixes
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint ## lint, then the whole test suite
	$(BIN)/python -m pytest

test-fast: $(BIN)/fedcoin
	$(BIN)/python -m pytest -x -q -m "not slow"

demo: $(BIN)/fedcoin ## the whole network as local processes, one paid training task end to end
	$(BIN)/fedcoin demo

simulate: $(BIN)/fedcoin ## one in-process PoSap round among 4 miners, paid by Algorithm 3
	$(BIN)/fedcoin simulate

bench: bench-extra ## Shapley estimators vs their peers: error at equal time, time to 5% (K=100) and 1% (K=16); 35-45 min
	$(BIN)/python scripts/bench_accuracy.py $(if $(wildcard ../shared/data/mnist),--dataset mnist --data-dir ../shared/data/mnist) --json build/bench_accuracy.json

bench-extra: $(BIN)/fedcoin ## the peers make bench runs: shapiq 1.4.1, pydvl 0.10.0 (its numpy<2 pin ignored: it runs on numpy 2)
	$(BIN)/pip install -q "shapiq==1.4.1" more-itertools joblib pandas scikit-learn scipy cvxpy tqdm pyDeprecate numcodecs psutil
	$(BIN)/pip install -q --no-deps "pydvl==0.10.0"

bench-shapley: $(BIN)/fedcoin ## Shapley utility engine vs naive evaluator (speed, convergence, roofline)
	$(BIN)/python scripts/bench_shapley.py

bench-engine: $(BIN)/fedcoin ## engine perm/s vs this machine's bandwidth and matmul bounds at 1 and 2 threads; sampler variance
	$(BIN)/python scripts/bench_engine.py $(if $(wildcard ../shared/data/mnist),--dataset mnist --data-dir ../shared/data/mnist) --json build/bench_engine.json

flower-demo: $(BIN)/fedcoin ## a Flower app (examples/flower) on Flower's deployment runtime, its clients paid on a local FedCoin network
	$(BIN)/python -m fedcoin.flower.demo --app examples/flower $(if $(wildcard ../shared/data/mnist),--dataset mnist --data-dir ../shared/data/mnist) --json build/flower-demo.json

bench-gpu: $(BIN)/fedcoin ## the engine on CUDA: perm/s vs the GPU's bandwidth bound, CPU/GPU agreement, races (exits 2 without a GPU)
	$(BIN)/python scripts/bench_gpu.py $(if $(wildcard ../shared/data/mnist),--dataset mnist --data-dir ../shared/data/mnist) --json build/bench_gpu.json

bench-verify: $(BIN)/fedcoin ## what verifying a block's work costs on the paper's round (K = 100)
	$(BIN)/python scripts/bench_verify.py $(if $(wildcard ../shared/data/mnist),--dataset mnist --data-dir ../shared/data/mnist) --json build/bench_verify.json

load: $(BIN)/fedcoin ## load test of one local network: reads, transfers, tasks (p50/p99, req/s, RSS, nothing lost)
	$(BIN)/python scripts/load_test.py --json build/load.json

soak: $(BIN)/fedcoin ## 50 one-round tasks in a row on one local network; fails if a miner's RSS keeps growing
	$(BIN)/python scripts/soak.py --tasks 50 --json build/soak.json

docs: $(BIN)/fedcoin ## re-render the README's generated sections (settings, reject reasons)
	$(BIN)/python scripts/render_docs.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info shared/*.egg-info

# --- Docker testbed (docker-compose.yml): 4 miners, server, client node(s), requester ---
COMPOSE         ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
COMPOSE_PROJECT ?= fedcoin
BASE_IMAGE      ?= fedcoin-base:bookworm
CLIENTS         ?= 1
UP_TIMEOUT      ?= 600
DC              := $(COMPOSE) -p $(COMPOSE_PROJECT)

.PHONY: base-image up down logs test-faults test-faults-local swarm-up swarm-down test-swarm

base-image: ## the local base image (debootstrap + docker import; no registry needed)
	@bash scripts/build-base-image.sh

up: base-image ## build the image, start the testbed and wait until every service is healthy
	FEDCOIN_BASE_IMAGE=$(BASE_IMAGE) $(DC) $(if $(MONITORING),--profile monitoring) up -d --build --scale client=$(CLIENTS)
	@echo "up: waiting (at most $(UP_TIMEOUT) s) for every service to be healthy"
	@deadline=$$(( $$(date +%s) + $(UP_TIMEOUT) )); \
	while :; do \
	    states=$$(docker inspect -f '{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}/{{.State.ExitCode}}{{end}}' $$($(DC) ps -q)); \
	    waiting=$$(echo "$$states" | grep -v -E ' (healthy|exited/0)$$' || true); \
	    [ -z "$$waiting" ] && break; \
	    if echo "$$waiting" | grep -q -E ' (unhealthy|exited/[1-9][0-9]*)$$' || [ $$(date +%s) -gt $$deadline ]; then \
	        echo "up: not healthy:"; echo "$$waiting"; echo "(make logs shows why)"; exit 1; fi; \
	    sleep 2; \
	done; \
	echo "$$states" | sed 's/^\//  /'
	@echo "requester  http://127.0.0.1:8000   (GET /health, POST /tasks, GET /tasks/default)"
	@echo "server     http://127.0.0.1:8001   (GET /tasks, GET /tasks/default, GET /clients)"
	@echo "miners     http://127.0.0.1:8101 .. http://127.0.0.1:8104   (GET /chain/head, /blocks/1, /balances)"

down: ## stop the testbed and delete its volumes (chains, keys, genesis)
	$(DC) --profile monitoring down -v --remove-orphans

swarm-up: base-image ## the testbed as a Docker Swarm stack (derived from docker-compose.yml; a single-node swarm if there is none)
	FEDCOIN_BASE_IMAGE=$(BASE_IMAGE) $(DC) build init
	$(BIN)/fedcoin testbed swarm-up --clients $(CLIENTS)

swarm-down: ## remove the swarm stack, its volumes, and the swarm itself if swarm-up created it
	$(BIN)/fedcoin testbed swarm-down

test-swarm: ## CI: deploy the stack, wait for the default task to be paid on all 4 miners, remove it all
	$(MAKE) swarm-up; status=$$?; \
	if [ $$status -eq 0 ]; then $(BIN)/fedcoin testbed swarm-check; status=$$?; fi; \
	if [ $$status -ne 0 ]; then docker service ls > build/swarm-logs.txt 2>&1; \
	    for s in $$(docker service ls -q 2>/dev/null); do docker service logs --no-task-ids --tail 200 $$s >> build/swarm-logs.txt 2>&1; done; fi; \
	$(MAKE) swarm-down; \
	if [ $$status -ne 0 ]; then echo "test-swarm: failed; the services' logs are in build/swarm-logs.txt"; fi; \
	exit $$status

logs: ## follow the testbed's logs
	$(DC) logs --follow --tail=100

# --- Paper reproduction (scripts/paper/run.py): Table 2, Figures 4-6 as JSON + PNG ---
PAPER_ARGS ?=

.PHONY: paper paper-quick

paper: $(BIN)/fedcoin ## the paper's Section 6 into docs/results (~75 min: Figure 6's D = 1e-3 block alone ~35 min); committed: PAPER_ARGS="--dataset mnist --data-dir ../shared/data/mnist"
	$(BIN)/python scripts/paper/run.py $(PAPER_ARGS)

paper-quick: $(BIN)/fedcoin ## the CI-sized reproduction (< 5 min) into build/paper-quick
	$(BIN)/python scripts/paper/run.py --quick --out build/paper-quick $(PAPER_ARGS)

test-faults: ## fault injection on the compose testbed (kill -9, pause, restart, server crash, crash mid-write, disconnect)
	$(MAKE) up
	$(BIN)/fedcoin testbed faults --backend docker --project $(COMPOSE_PROJECT) --json build/faults-docker.json; \
	status=$$?; \
	if [ $$status -ne 0 ]; then $(DC) logs --no-color --timestamps > build/faults-docker-logs.txt 2>&1 || true; fi; \
	$(MAKE) down; \
	$(BIN)/fedcoin testbed faults-report build/faults-docker.json || true; \
	if [ $$status -ne 0 ]; then echo "test-faults: failed; the testbed's logs are in build/faults-docker-logs.txt"; fi; \
	exit $$status

test-faults-local: $(BIN)/fedcoin ## the same scenarios on a local-process network (no Docker; no disconnect)
	$(BIN)/fedcoin testbed faults --backend local --json build/faults-local.json
