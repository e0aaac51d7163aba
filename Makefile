# The two commands a fresh clone needs: `make run` and `make test`.
# Both create .venv and install the project on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: run test lint typecheck unit vectors schemas bench bench-core clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/ssr up --data-dir .ssr-data

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check broker clients tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy broker clients examples

unit: $(STAMP)
	$(BIN)/coverage erase
	$(BIN)/coverage run -m pytest
	$(BIN)/coverage report --include='broker/core/*' --fail-under=95

test: lint typecheck unit

# Regenerate the published JSON Schemas and test vectors (tests fail if they drift).
schemas: $(STAMP)
	$(BIN)/python -m broker.schemagen schemas

vectors: $(STAMP)
	$(BIN)/python -m broker.vectors schemas/vectors

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# Throughput, latency, fan-out and memory against a raw JetStream baseline (~5 min).
bench: $(BENCH_STAMP)
	$(BIN)/python bench/run.py

# Per-operation costs of the protocol core (seconds).
bench-core: $(STAMP)
	$(BIN)/python bench/core_costs.py

clean:
	rm -rf $(VENV) .coverage .mypy_cache .pytest_cache .ruff_cache tests/artifacts
