# One command to set up and run the pipeline, one to set up and run the tests.
# Both create the virtualenv on first use (and again whenever pyproject.toml or uv.lock
# changes), installing the exact versions in uv.lock with uv (itself pinned here).
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
export UV_PROJECT_ENVIRONMENT := $(abspath $(VENV))
export UV_PYTHON_DOWNLOADS := never

.PHONY: setup repro test test-fast lint format clean-venv verify lock gpu-check real

setup: $(STAMP)

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet uv==$(UV_VERSION)

$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --extra dev --python $(PYTHON)
	touch $(STAMP)

# After editing the dependencies in pyproject.toml: re-resolve uv.lock (every platform and
# Python version the project supports), then commit both.
lock: | $(UV)
	$(UV) lock

# The stages' `python` must be the venv's: put it first on PATH.
repro: setup
	PATH="$(BIN):$$PATH" dvc repro

test: setup lint
	PATH="$(BIN):$$PATH" python -m pytest

test-fast: setup
	PATH="$(BIN):$$PATH" python -m pytest -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean-venv:
	rm -rf $(VENV) $(TOOLS)

# Re-run the whole pipeline from scratch, then compare its quality metrics with the committed
# ones: data exactly, CER/WER within the tolerance measured across hosts (pipeline/verify.py).
verify: setup
	PATH="$(BIN):$$PATH" dvc repro --force
	$(BIN)/python -m pipeline.verify --expected HEAD --actual metrics
