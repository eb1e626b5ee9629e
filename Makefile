# Quick start: `make demo` runs the demo, `make test` runs every check. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test lint typecheck protos bench clean

$(BIN)/exchange: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/exchange
	$(BIN)/exchange demo

test: $(BIN)/exchange lint typecheck
	$(BIN)/pytest

lint: $(BIN)/exchange
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/exchange
	$(BIN)/mypy

# The hub against a bare gRPC baseline on loopback; e.g. make bench BENCH_ARGS="--postgres URL".
bench: $(BIN)/exchange
	$(BIN)/python -m bench $(BENCH_ARGS)

protos: $(BIN)/exchange
	$(BIN)/python scripts/generate_protos.py

clean:
	rm -rf $(VENV) .demo .pytest_cache .mypy_cache .ruff_cache
