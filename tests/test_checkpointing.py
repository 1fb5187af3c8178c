"""The orbax wrapper: exact round trips (typed keys included), keep-last-k, corrupt and foreign
checkpoints, and the SIGTERM guard."""

from __future__ import annotations

import os
import pathlib
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pnas_jax.checkpointing import (
    Checkpointer,
    CheckpointError,
    IncompatibleCheckpointError,
    PreemptionGuard,
)


def _state(seed: int):
  k = jax.random.key(seed)
  params = {"w": jax.random.normal(k, (3, 4)), "b": jnp.arange(4.0)}
  opt = optax.sgd(0.1, momentum=0.9).init(params)
  return {"params": params, "opt": opt, "step": jnp.int32(seed), "key": jax.random.fold_in(k, 1),
          "alpha": (jnp.ones(7) * seed, jnp.zeros(6))}


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_and_keep_last(tmp_path):
  ck = Checkpointer(tmp_path / "ckpt", every_steps=2, keep=2)
  assert not ck.save(3, _state(3), force=False)  # not a multiple of every_steps
  for s in (2, 4, 6):
    assert ck.save(s, _state(s), meta={"data": {"epoch": s, "step": 1}}, force=False)
  assert ck.steps() == [4, 6]
  step, state, meta = ck.restore(_state(0))
  assert step == 6 and meta == {"data": {"epoch": 6, "step": 1}}
  _assert_same(state, _state(6))
  assert jax.dtypes.issubdtype(state["key"].dtype, jax.dtypes.prng_key)
  step, state, _ = ck.restore(_state(0), step=4)
  _assert_same(state, _state(4))
  ck.close()


def _corrupt(step_dir: pathlib.Path):
  files = [p for p in step_dir.rglob("*") if p.is_file() and p.stat().st_size > 0]
  assert files
  for p in files:
    p.write_bytes(b"\x00garbage")


def test_corrupt_latest_falls_back(tmp_path, caplog):
  with Checkpointer(tmp_path, keep=3) as ck:
    ck.save(1, _state(1))
    ck.save(2, _state(2))
    _corrupt(tmp_path / "2")
    step, state, _ = ck.restore(_state(0))
    assert step == 1
    _assert_same(state, _state(1))
    assert "checkpoint 2" in caplog.text and "unreadable" in caplog.text
    _corrupt(tmp_path / "1")
    with pytest.raises(CheckpointError, match="no loadable checkpoint"):
      ck.restore(_state(0))


def test_corrupt_checkpoint_is_moved_aside_and_not_counted_in_keep(tmp_path, caplog):
  ck = Checkpointer(tmp_path, keep=3)
  for s in (1, 2, 3):
    ck.save(s, _state(s))
  _corrupt(tmp_path / "3")
  step, state, _ = ck.restore(_state(0))
  assert step == 2
  _assert_same(state, _state(2))
  moved = list((tmp_path / "corrupt").iterdir())
  assert [p.name.split("-")[0] for p in moved] == ["3"] and "moved it to" in caplog.text
  assert ck.steps() == [1, 2]
  # The run goes on from step 2: the new step 3 is written (not skipped as "already saved"), and
  # keep-last-3 keeps the three newest good checkpoints.
  for s in (3, 4):
    assert ck.save(s, _state(s))
  assert ck.steps() == [2, 3, 4]
  for s in (2, 3, 4):
    _assert_same(ck.restore(_state(0), step=s)[1], _state(s))
  ck.close()
  reopened = Checkpointer(tmp_path, keep=3)  # a fresh process sees the same steps
  assert reopened.steps() == [2, 3, 4]
  reopened.close()


def test_incompatible_state_is_named(tmp_path):
  # Closed on the way out: an unclosed Checkpointer's orbax threads outlive their event loop, and
  # the garbage collector later reports "Event loop is closed" in whichever test runs then.
  with Checkpointer(tmp_path) as ck:
    ck.save(1, _state(1))
    other = _state(1)
    other["params"]["w"] = jnp.zeros((5, 4))
    with pytest.raises(IncompatibleCheckpointError, match="another config"):
      ck.restore(other)


def test_empty_directory(tmp_path):
  with Checkpointer(tmp_path / "none") as ck, pytest.raises(CheckpointError,
                                                           match="no checkpoint in"):
    ck.restore(_state(0))


def test_preemption_guard_catches_sigterm():
  with PreemptionGuard() as guard:
    assert not guard.requested
    os.kill(os.getpid(), signal.SIGTERM)
    assert guard.requested and guard.signal_name == "SIGTERM"
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
