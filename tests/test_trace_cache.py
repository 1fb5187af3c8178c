"""The trace cache: a step exported once is deserialized in later runs, keyed by all it depends on."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from checkpoint_helpers import saved_state

from pnas_jax import trace_cache
from pnas_jax.config_loading import load_config
from pnas_jax.train import search as search_lib
from pnas_jax.train.search import search

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "search", "tiny.py")


def _step(scale):
  return jax.jit(lambda s, b: ({"w": s["w"] * scale + b.sum()}, {"mean": b.mean()}), donate_argnums=0)


def _args():
  return {"w": jnp.arange(3.0)}, jnp.ones((2, 2))


def test_an_exported_step_is_reused_only_under_the_same_key(tmp_path, caplog):
  folder = str(tmp_path)
  first = trace_cache.CachedTrace(_step(2.0), "toy", {"lr": 1}, folder)
  out, m = first(*_args())
  assert first.hit is False and len(os.listdir(folder)) == 1
  np.testing.assert_allclose(out["w"], [4.0, 6.0, 8.0])
  # Same name and fingerprint: the stored trace runs, not the function given (which would scale
  # by 3), so a key that missed a dependency would run stale code; hence the key's coverage.
  again = trace_cache.CachedTrace(_step(3.0), "toy", {"lr": 1}, folder)
  out, m = again(*_args())
  assert again.hit is True and float(m["mean"]) == 1.0
  np.testing.assert_allclose(out["w"], [4.0, 6.0, 8.0])
  # Another fingerprint, or other argument shapes: traced anew.
  other = trace_cache.CachedTrace(_step(3.0), "toy", {"lr": 2}, folder)
  np.testing.assert_allclose(other(*_args())[0]["w"], [4.0, 7.0, 10.0])
  assert other.hit is False
  wide = trace_cache.CachedTrace(_step(2.0), "toy", {"lr": 1}, folder)
  wide({"w": jnp.arange(4.0)}, jnp.ones((2, 2)))
  assert wide.hit is False and len(os.listdir(folder)) == 3
  with pytest.raises(ValueError, match="another argument structure"):
    wide({"w": jnp.arange(4.0), "v": jnp.zeros(())}, jnp.ones((2, 2)))
  # An unreadable entry is traced again, with a warning.
  for name in os.listdir(folder):
    with open(os.path.join(folder, name), "wb") as f:
      f.write(b"not a trace")
  broken = trace_cache.CachedTrace(_step(2.0), "toy", {"lr": 1}, folder)
  np.testing.assert_allclose(broken(*_args())[0]["w"], [4.0, 6.0, 8.0])
  assert broken.hit is False and "unreadable" in caplog.text


def test_prune_deletes_the_least_recently_used_traces_first(tmp_path, monkeypatch):
  def entry(name, size, mtime):
    path = tmp_path / f"{name}.jaxexport"
    path.write_bytes(b"x" * size)
    os.utime(path, (mtime, mtime))
    return str(path)

  old, mid, new = entry("old", 400, 1000), entry("mid", 300, 2000), entry("new", 200, 3000)
  (tmp_path / "other.txt").write_bytes(b"y" * 10_000)  # not a trace: never counted nor deleted
  assert trace_cache.prune(str(tmp_path), max_bytes=900) == []
  assert trace_cache.prune(str(tmp_path), max_bytes=500) == [old]
  assert trace_cache.prune(str(tmp_path), max_bytes=100, keep=mid) == [new]  # mid is kept
  assert sorted(os.listdir(tmp_path)) == ["mid.jaxexport", "other.txt"]
  # In use: a hit touches its file (the least recently used go first), and a new trace prunes.
  monkeypatch.setattr(trace_cache, "MAX_BYTES", 0)
  folder = str(tmp_path / "t")
  first = trace_cache.CachedTrace(_step(2.0), "toy", {"lr": 1}, folder)
  first(*_args())
  (path,) = [os.path.join(folder, n) for n in os.listdir(folder)]
  os.utime(path, (1000, 1000))
  trace_cache.CachedTrace(_step(2.0), "toy", {"lr": 1}, folder)(*_args())
  assert os.path.getmtime(path) > 1000
  second = trace_cache.CachedTrace(_step(2.0), "toy", {"lr": 2}, folder)
  second(*_args())
  assert second.hit is False and not os.path.exists(path) and len(os.listdir(folder)) == 1


def test_off_by_environment(monkeypatch):
  monkeypatch.setenv(trace_cache.ENV_VAR, "off")
  fn = _step(1.0)
  assert trace_cache.cached_trace(fn, "toy", {}) is fn


def _final_params(workdir, step):
  state = saved_state(workdir, step)
  return jax.tree.leaves(state["params"]) + jax.tree.leaves(state["alpha"])


def test_a_search_from_cached_traces_ends_where_a_traced_one_does(tmp_path, monkeypatch):
  cfg = ["--config.eval.every_epochs=0", "--config.eval.bn_batches=0", "--config.schedule.epochs=1.0"]
  made = []
  real = trace_cache.CachedTrace

  def recording(*a, **k):
    made.append(real(*a, **k))
    return made[-1]

  monkeypatch.setattr(trace_cache, "trace_cache_dir", lambda: str(tmp_path / "traces"))
  monkeypatch.setattr(search_lib, "cached_trace", lambda fn, name, fp, **k: recording(
      fn, name, fp, str(tmp_path / "traces"), **k))
  search(load_config(TINY, cfg), str(tmp_path / "first"))
  search(load_config(TINY, cfg), str(tmp_path / "second"))
  assert [t.hit for t in made] == [False, False, True, True]  # weight and arch step, twice
  monkeypatch.undo()
  monkeypatch.setenv(trace_cache.ENV_VAR, "off")
  search(load_config(TINY, cfg), str(tmp_path / "plain"))
  runs = [_final_params(str(tmp_path / name), 12) for name in ("first", "second", "plain")]
  for a, b, c in zip(*runs, strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
