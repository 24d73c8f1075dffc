# One command to set up and run the pipeline, one to set up and run the tests.
# Both create the virtualenv on first use (and again whenever pyproject.toml changes).
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
PYTHON ?= python3

.PHONY: setup repro test test-fast lint format clean-venv verify

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

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
	rm -rf $(VENV)

# Re-run the whole pipeline from scratch; the quality metrics must equal the committed ones.
verify: setup
	PATH="$(BIN):$$PATH" dvc repro --force
	git diff --exit-code -- metrics/data.json metrics/train.json metrics/evaluate.json \
		&& echo "verify: quality metrics reproduced exactly"
