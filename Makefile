# Two commands on a fresh machine:
#   make demo   -- set up .venv and run the main job
#   make test   -- set up .venv and run lint + the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/pnas zoo

lint: setup
	$(VENV)/bin/ruff check pnas_jax tests experiments configs

test: lint
	$(PY) -m pytest -n 2 -q

bench: setup
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) experiments/bench_ops.py --json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
