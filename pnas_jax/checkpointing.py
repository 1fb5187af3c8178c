"""The one orbax wrapper: save a training state every N steps, keep the last k, restore the newest good.

A checkpoint holds the state pytree (weights, BN statistics, alpha, both optimiser states, step,
PRNG keys, estimator baseline, ...) and a JSON dict (data-iterator position, config fingerprint, any
metadata). Typed PRNG keys are stored as their raw key data and re-wrapped on restore. Saves are
atomic (orbax writes to a temporary folder and renames it), so a crash or `kill -9` mid-save leaves
the previous checkpoints intact; a checkpoint that still fails to load (corrupt or truncated files)
is moved aside to `<directory>/corrupt/<step>-<time>/` (which orbax ignores, so it no longer counts
toward keep-last-k and cannot push a good older checkpoint out), logged, and skipped in favour of
the previous one. A state whose structure does not match the checkpoint (another config) raises
`IncompatibleCheckpointError` naming the difference.

`PreemptionGuard` turns SIGTERM/SIGINT into a flag the loop polls, so the loop saves and exits
cleanly instead of dying mid-step.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import signal
import threading
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from pnas_jax.errors import PnasError
from pnas_jax.file_io import tree_differences

log = logging.getLogger(__name__)


class CheckpointError(PnasError, RuntimeError):
  """No usable checkpoint could be restored."""


class IncompatibleCheckpointError(CheckpointError):
  """The checkpoint's tree does not match the state the run expects (another config?)."""


def _is_key(x: Any) -> bool:
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _keys_to_data(tree: Any) -> Any:
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _data_to_keys(restored: Any, like: Any) -> Any:
  return jax.tree.map(
      lambda r, t: jax.random.wrap_key_data(r, impl=jax.random.key_impl(t)) if _is_key(t) else r,
      restored,
      like,
  )


def _abstract(tree: Any) -> Any:
  def one(x):
    if isinstance(x, (jax.Array, np.ndarray)):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))
    return x

  return jax.tree.map(one, _keys_to_data(tree))


class Checkpointer:
  """Saves every `every_steps` (and on demand), keeps `keep` checkpoints under `directory`."""

  def __init__(self, directory: str | os.PathLike, every_steps: int = 1000, keep: int = 3,
               async_save: bool = False):
    self.directory = os.path.abspath(os.fspath(directory))
    self.every_steps = every_steps
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.steps()
    return steps[-1] if steps else None

  def should_save(self, step: int) -> bool:
    return self.every_steps > 0 and step % self.every_steps == 0

  def save(self, step: int, state: Any, meta: dict[str, Any] | None = None, force: bool = True) -> bool:
    """Writes checkpoint `step` (atomically); returns whether it saved."""
    if not force and not self.should_save(step):
      return False
    if step in self._manager.all_steps():
      return False
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(_keys_to_data(state)), meta=ocp.args.JsonSave(meta or {})
    )
    saved = self._manager.save(step, args=args, force=True)
    self._manager.wait_until_finished()
    return saved

  def restore(self, like: Any, step: int | None = None) -> tuple[int, Any, dict[str, Any]]:
    """(step, state, meta) of the newest loadable checkpoint (or of `step`), shaped like `like`.

    A checkpoint that fails to load is logged and skipped; a structural mismatch with `like` raises
    IncompatibleCheckpointError at once (an older checkpoint of the same run would not fit either).
    """
    candidates = [step] if step is not None else sorted(self._manager.all_steps(), reverse=True)
    if not candidates:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    target = _abstract(like)
    errors = []
    for s in candidates:
      try:
        meta = self._manager.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        restored = self._manager.restore(
            s, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
        )["state"]
      except Exception as e:  # orbax raises many types for unreadable files.
        if _looks_structural(e):
          raise IncompatibleCheckpointError(
              f"checkpoint {s} in {self.directory} does not match the current state "
              f"({self._mismatch(s, target)}); was it written by another config? Use a fresh "
              "--workdir or the config that wrote it."
          ) from e
        aside = self._move_aside(s)
        log.warning("checkpoint %d in %s is unreadable (%s: %s); moved it to %s; trying the "
                    "previous one", s, self.directory, type(e).__name__, str(e)[:200], aside)
        errors.append(f"step {s}: {type(e).__name__}: {str(e)[:200]}")
        continue
      return s, _data_to_keys(restored, like), meta
    raise CheckpointError(
        f"no loadable checkpoint in {self.directory}: " + " | ".join(errors) + f". The unreadable "
        f"ones were moved to {self.corrupt_dir}; delete the workdir's checkpoints to start over, or "
        "move one back if it was readable after all."
    )

  @property
  def corrupt_dir(self) -> str:
    """Where unreadable checkpoints are moved (a folder orbax does not take for a step)."""
    return os.path.join(self.directory, "corrupt")

  def _move_aside(self, step: int) -> str:
    """Moves checkpoint `step` to corrupt_dir so it neither loads nor counts toward `keep`."""
    stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
    dest = os.path.join(self.corrupt_dir, f"{step}-{stamp}")
    if jax.process_index() == 0:
      src = os.path.join(self.directory, str(step))
      os.makedirs(self.corrupt_dir, exist_ok=True)
      n = 1
      while os.path.exists(dest):
        dest, n = os.path.join(self.corrupt_dir, f"{step}-{stamp}-{n}"), n + 1
      if os.path.isdir(src):
        shutil.move(src, dest)
    self._manager.reload()
    return dest

  def _mismatch(self, step: int, target: Any) -> str:
    try:
      saved = self._manager.item_metadata(step)["state"]
      return tree_differences(saved, target, "checkpoint") or "tree structures differ"
    except Exception:  # metadata unreadable too: say what we can.
      return "structure differs"

  def close(self) -> None:
    """Waits for pending saves and stops orbax's background threads (their event loop)."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


def _looks_structural(e: Exception) -> bool:
  msg = str(e).lower()
  return isinstance(e, (ValueError, KeyError, TypeError)) and any(
      w in msg for w in ("structure", "shape", "mismatch", "does not match", "missing", "unexpected")
  )


class PreemptionGuard:
  """Context manager: SIGTERM/SIGINT set `.requested` instead of killing the process.

  The loop checks `guard.requested` after each step, saves and returns. A second signal of the same
  kind restores the default behaviour (a user pressing Ctrl-C twice really wants out).
  """

  def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
    self.signals = signals
    self.requested = False
    self.signal_name: str | None = None
    self._previous: dict[int, Any] = {}

  def _handler(self, signum, frame):
    del frame
    self.requested = True
    self.signal_name = signal.Signals(signum).name
    signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

  def __enter__(self) -> PreemptionGuard:
    if threading.current_thread() is threading.main_thread():
      for s in self.signals:
        self._previous[s] = signal.signal(s, self._handler)
    return self

  def __exit__(self, *exc) -> None:
    for s, h in self._previous.items():
      signal.signal(s, h)
