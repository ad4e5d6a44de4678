# medtwin: two commands on a fresh machine with only python3 and make.
#   make demo   create .venv if missing, install, run the demo
#   make test   create .venv if missing, install, lint + type check + whole test suite

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.medtwin-installed

.PHONY: demo test test-slow test-ci-slow lint format typecheck bench install clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/medtwin demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# the slow tests CI runs after `make test`: the README tour's long lines, the MLLP attacks beside a live client, and
# the predicted-low alerts on the 30 virtual patients (~3 min: the figures of docs/living-twin.md)
CI_SLOW := tests/test_readme.py tests/adversarial/test_mllp_attacks.py tests/twin/test_glucose_alerts.py
test-ci-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow $(CI_SLOW)

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	@for f in bench/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) build dist .mypy_cache .pytest_cache .ruff_cache
