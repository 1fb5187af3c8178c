# Two commands on a fresh machine:
#   make demo   -- set up .venv and run the main job
#   make test   -- set up .venv and run lint + the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

FMNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup data compiler allocator demo demo-quick test lint bench clean

setup: $(STAMP) data compiler allocator

# A C++ compiler for the native CPU depthwise and BatchNorm kernels (pnas_jax/layers/native.py
# builds them at first use); installed with apt-get when missing and possible. Without one, pnas_jax
# falls back to the slower pure-XLA implementations.
compiler:
	@if command -v "$${CXX:-g++}" >/dev/null 2>&1 || command -v c++ >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  { (apt-get install -y -q g++ >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q g++ >/dev/null 2>&1)) && \
	    echo "installed g++" || echo "could not install g++ with apt-get: the depthwise and BatchNorm layers use pure XLA (slower)"; }; \
	else \
	  echo "no C++ compiler: install g++ (e.g. 'sudo apt-get install g++') for the native depthwise and BatchNorm kernels;" \
	       "without it pnas_jax uses pure XLA (slower)"; \
	fi

# tcmalloc, the host allocator every `pnas` process preloads where installed
# (pnas_jax/host_malloc.py: XLA:CPU's per-step temporary buffers stop page-faulting); installed with
# apt-get when missing and possible. Without it, glibc with huge pages (slower).
TCMALLOC_PKG := libtcmalloc-minimal4
allocator:
	@if $(PYTHON) -c 'import sys; sys.path.insert(0, "pnas_jax"); import host_malloc; sys.exit(host_malloc.find_tcmalloc() is None)'; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  { (apt-get install -y -q $(TCMALLOC_PKG) >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $(TCMALLOC_PKG) >/dev/null 2>&1)) && \
	    echo "installed $(TCMALLOC_PKG)" || echo "could not install $(TCMALLOC_PKG) with apt-get: pnas uses glibc malloc with huge pages (slower)"; }; \
	else \
	  echo "no tcmalloc: install it (e.g. 'sudo apt-get install $(TCMALLOC_PKG)') for faster CPU steps;" \
	       "without it pnas uses glibc malloc with huge pages"; \
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

# With the host allocator every `pnas` process chooses for itself (pnas_jax/host_malloc.py).
test: lint
	$(PY) -m pnas_jax.host_malloc $(PY) -m pytest -n 2 -q

bench: setup
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) experiments/bench_ops.py --json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
