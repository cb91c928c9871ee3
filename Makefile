# Two entry points for a fresh machine: `make demo` runs the daemon against the built-in sandbox,
# `make test` runs the test suite. Both create .venv and install the project into it first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench install

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/python sync.py demo

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: install
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/review.py
	$(BIN)/python bench/calls.py
	$(BIN)/python bench/store.py
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/throughput.py --tickets 100000
	$(BIN)/python bench/latency.py --interval 60
	$(BIN)/python bench/peer.py
