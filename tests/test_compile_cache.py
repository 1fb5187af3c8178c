"""The compile-once settings: the cache folder from the environment and the collector threshold."""

from __future__ import annotations

import gc

import pytest

from pnas_jax import compile_cache


@pytest.fixture
def gc_threshold():
  saved = gc.get_threshold()
  yield
  gc.set_threshold(*saved)


def test_cache_dir_from_environment(monkeypatch, tmp_path):
  monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / "c"))
  assert compile_cache.default_cache_dir() == str(tmp_path / "c")
  monkeypatch.setenv(compile_cache.ENV_VAR, "off")
  assert compile_cache.default_cache_dir() is None
  monkeypatch.delenv(compile_cache.ENV_VAR)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert compile_cache.default_cache_dir() == str(tmp_path / "pnas_jax" / "jax")


def test_garbage_collected_less_often(gc_threshold):
  gc.set_threshold(700, 10, 10)
  compile_cache.collect_garbage_less_often()
  assert gc.get_threshold() == (compile_cache.GC_YOUNG_THRESHOLD, 10, 10)


def test_a_higher_threshold_is_kept(gc_threshold):
  gc.set_threshold(50_000, 5, 7)
  compile_cache.collect_garbage_less_often()
  assert gc.get_threshold() == (50_000, 5, 7)
