# amt_ingest: the two commands are `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint typecheck check clean chaos bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## run: the simulator, a local AWS endpoint, Redis and the service, until Ctrl-C
run: $(STAMP)
	bash deploy/local-run.sh

## test: the whole suite (real Redis, PostgreSQL, SQLite and a moto server)
test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/cfn-lint deploy/cloudformation.yaml
	$(BIN)/hadolint deploy/Dockerfile

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .local

## chaos: one randomized fault run (SIGKILL, SIGTERM, Redis restarts): CHAOS_SECONDS of events, CHAOS_SEED;
## CHAOS_MODE=replicas: 3 intake replicas and 2 workers, leaders, standbys and workers killed
CHAOS_SECONDS ?= 120
CHAOS_SEED ?= 1
CHAOS_MODE ?= single
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos.harness --duration $(CHAOS_SECONDS) --seed $(CHAOS_SEED) --mode $(CHAOS_MODE)

## bench: throughput, latency, coalescing and memory against same-run references; writes bench.json
bench: $(STAMP)
	$(BIN)/python -m benchmarks.bench
