# make demo : create .venv, install auditkit with pinned versions, train + audit the digits CNN
# make test : same venv, then lint (ruff), type check (mypy) and the test suite (pytest)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps torchattacks==3.5.1  # reference APGD/APGD-T in tests (its requests pin conflicts)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/auditkit demo --out reports/demo

lint: $(STAMP)
	$(BIN)/ruff check auditkit tests benchmarks
	$(BIN)/ruff format --check auditkit tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest

test: lint typecheck pytest

clean:
	rm -rf $(VENV) reports/demo
