# Two commands on a fresh machine:
#   make demo   -- set up .venv and run the main job
#   make test   -- set up .venv and run lint + the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup data compiler demo demo-quick test lint bench clean

setup: $(STAMP) data compiler

# A C++ compiler for the native CPU depthwise kernels (pnas_jax/layers/native.py builds them at
# first use); installed with apt-get when missing and possible. Without one, pnas_jax falls back to
# the slower pure-XLA depthwise implementation.
compiler:
	@if command -v "$${CXX:-g++}" >/dev/null 2>&1 || command -v c++ >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  { (apt-get install -y -q g++ >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q g++ >/dev/null 2>&1)) && \
	    echo "installed g++" || echo "could not install g++ with apt-get: the depthwise layers use pure XLA (slower)"; }; \
	else \
	  echo "no C++ compiler: install g++ (e.g. 'sudo apt-get install g++') for the native depthwise kernels;" \
	       "without it pnas_jax uses pure XLA (slower)"; \
	fi

# The offline data set of the demo and of some tests: Debian's dataset-fashion-mnist (the real
# Fashion-MNIST IDX files). Installed when missing and apt-get can run (root, or sudo without a
# password); otherwise the message says how to get it.
data:
	@if [ -e $(FMNIST_DIR)/train-images-idx3-ubyte.gz ] || [ -e $(FMNIST_DIR)/train-images-idx3-ubyte ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  { (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) && \
	    echo "installed dataset-fashion-mnist" || \
	    echo "could not install dataset-fashion-mnist with apt-get; the demo can use --data tfds:fashion_mnist"; }; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	  { sudo -n apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 && echo "installed dataset-fashion-mnist" || \
	    echo "could not install dataset-fashion-mnist with apt-get"; }; \
	else \
	  echo "Fashion-MNIST is missing from $(FMNIST_DIR): run 'sudo apt-get install dataset-fashion-mnist'" \
	       "(Debian/Ubuntu), or use 'pnas demo --data tfds:fashion_mnist' after 'tfds build fashion_mnist'."; \
	fi

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/pnas demo --workdir results/demo

demo-quick: setup
	$(VENV)/bin/pnas demo --workdir results/demo_quick --quick

lint: setup
	$(VENV)/bin/ruff check pnas_jax tests experiments configs

# Huge pages for malloc, as every `pnas` process sets for itself (pnas_jax/host_malloc.py).
test: lint
	GLIBC_TUNABLES=$${GLIBC_TUNABLES:+$$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1 $(PY) -m pytest -n 2 -q

bench: setup
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) experiments/bench_ops.py --json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
