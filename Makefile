# Two entry points on a fresh machine:  `make quickstart`  (the main job)  and  `make test`  (the test suite).
# Both create ./.venv on first use: CPU torch 2.13 first (so pip never pulls a multi-GB CUDA build), then this
# package with its test extra, then the optional tau2 extra (τ³-bench airline tests).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install quickstart test test-slow lint benchmark clean

$(STAMP): pyproject.toml scripts/install_tau2.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"
	PYTHON=$(BIN)/python bash scripts/install_tau2.sh
	touch $(STAMP)

install: $(STAMP)

quickstart: $(STAMP)
	$(BIN)/python examples/quickstart.py

test: $(STAMP)
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

lint: $(STAMP)
	$(BIN)/ruff check trl_sgcd tests examples benchmarks
	$(BIN)/ruff format --check trl_sgcd tests examples benchmarks

benchmark: $(STAMP)
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf $(VENV) outputs
