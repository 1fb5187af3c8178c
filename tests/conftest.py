"""Shared fixtures: the reference data folder (../shared/reference), skipped with a reason if absent;
the Fashion-MNIST config's search space; the persistent compilation cache of the test run."""

from __future__ import annotations

import os
import pathlib

import pytest

from pnas_jax.compile_cache import ENV_VAR, collect_garbage_less_often, enable_compilation_cache
from pnas_jax.config_loading import load_config
from pnas_jax.search_space.space import SearchSpace

REPO = pathlib.Path(__file__).resolve().parents[1]
# Compiled programs are shared between tests, pytest workers and the CLI runs they start (the
# same tiny search compiles once per suite run); the folder is the tests' own, not the user's.
os.environ.setdefault(ENV_VAR, str(REPO / ".cache" / "jax-tests"))
enable_compilation_cache()
collect_garbage_less_often()  # as `pnas` does: tracing is faster
REFERENCE_DIR = pathlib.Path(
    os.environ.get("PNAS_REFERENCE_DIR", REPO.parent / "shared" / "reference" / "proxylessnas")
)
REFERENCE_NETS = ("proxyless_mobile", "proxyless_mobile_14", "proxyless_gpu", "proxyless_cpu")


@pytest.fixture
def reference_dir() -> pathlib.Path:
  if not REFERENCE_DIR.is_dir():
    pytest.skip(
        f"reference data folder {REFERENCE_DIR} is absent (it lives in ../shared/reference beside "
        "the checkout; set PNAS_REFERENCE_DIR to point elsewhere)"
    )
  return REFERENCE_DIR


@pytest.fixture(scope="session")
def fmnist_space() -> SearchSpace:
  """The search space of configs/search/fashion_mnist.py (7 blocks, three candidates + Zero)."""
  cfg = load_config(str(REPO / "configs" / "search" / "fashion_mnist.py"))
  return SearchSpace.from_dict(cfg.space.to_dict())
