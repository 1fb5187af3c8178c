"""Watching a training loop: a progress bar with rates and metrics, non-finite value checks."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from pnas_jax.errors import PnasError
from pnas_jax.train.metrics_log import to_python
from pnas_jax.train.parallel import to_host


class NonFiniteError(PnasError, FloatingPointError):
  """A loss or the state became NaN/inf; the message names the step and the last good checkpoint."""


def first_non_finite(rows: Sequence[tuple[str, int, dict[str, Any]]]) -> tuple[str, int, str] | None:
  """(kind, step, metric) of the first non-finite scalar among fetched metrics rows, or None."""
  for kind, step, metrics in rows:
    for name, v in metrics.items():
      if np.ndim(v) == 0 and np.issubdtype(np.asarray(v).dtype, np.floating) and not math.isfinite(
          float(v)):
        return kind, step, name
  return None


@jax.jit
def _finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def all_finite(tree: Any) -> bool:
  """Every float leaf of `tree` is finite (one device reduction, one host sync)."""
  return bool(to_host(_finite(tree)))


class Progress:
  """tqdm over steps with images/s and the latest metrics; silent when disabled or not a tty."""

  def __init__(self, total: int, initial: int, desc: str, enabled: bool = True):
    self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                     disable=not enabled, file=sys.stderr, mininterval=1.0)
    self._metrics: dict[str, str] = {}

  def update_metrics(self, **metrics: float) -> None:
    for k, v in metrics.items():
      self._metrics[k] = f"{v:.4g}"
    self._bar.set_postfix(self._metrics, refresh=False)

  def advance(self, images_per_s: float) -> None:
    self._metrics["img/s"] = f"{images_per_s:.0f}"
    self._bar.set_postfix(self._metrics, refresh=False)
    self._bar.update(1)

  def close(self) -> None:
    self._bar.close()


class LoopMonitor:
  """The bookkeeping a training loop shares: metrics buffered on device, fetched once per log
  interval (no per-step host sync), checked for NaN/inf, averaged into metrics.jsonl/TensorBoard
  and the progress bar; checkpoints saved only from a state known to be finite.

  Attributes:
    last_good: the step of the newest checkpoint known to be finite (None: none yet).
  """

  def __init__(self, logger: Any, bar: Progress, checkpointer: Any, last_good: int | None,
               hint: str, bar_keys: dict[str, dict[str, str]] | None = None,
               pending: Sequence[Sequence[Any]] = ()):
    self.logger, self.bar, self.checkpointer = logger, bar, checkpointer
    self.last_good = last_good
    self.hint = hint
    # kind -> {metric: progress-bar name}
    self.bar_keys = bar_keys or {"train": {"loss": "loss", "acc": "acc"}}
    # Rows not yet logged; a resumed run starts with those its checkpoint carried (see save).
    self._pending: list[tuple[str, int, Any]] = [(k, int(s), m) for k, s, m in pending]

  def add(self, kind: str, step: int, metrics: Any) -> None:
    self._pending.append((kind, step, metrics))

  def _stop(self, what: str) -> NonFiniteError:
    good = self.last_good if self.last_good is not None else "none yet"
    return NonFiniteError(f"{what}; the run stopped and kept its last good checkpoint ({good}). "
                          f"{self.hint}")

  def _fetch(self) -> list[tuple[str, int, Any]]:
    """The pending rows on the host (kept pending); NonFiniteError on NaN/inf."""
    fetched = to_host([m for _, _, m in self._pending])
    self._pending = [(k, s, m) for (k, s, _), m in zip(self._pending, fetched, strict=True)]
    bad = first_non_finite(self._pending)
    if bad is not None:
      kind, s, name = bad
      raise self._stop(f"{kind} step {s}: {name} is not finite")
    return self._pending

  def flush(self) -> None:
    """Fetches pending metrics, raises NonFiniteError on NaN/inf, logs per-kind averages."""
    if not self._pending:
      return
    rows = list(self._fetch())
    self._pending.clear()
    for kind in dict.fromkeys(k for k, _, _ in rows):
      mine = [(s, m) for k, s, m in rows if k == kind]
      avg = {k: float(np.mean([m[k] for _, m in mine])) for k in mine[0][1]
             if np.ndim(mine[0][1][k]) == 0}
      self.logger.write(mine[-1][0], avg, kind)
      shown = {name: avg[k] for k, name in self.bar_keys.get(kind, {}).items() if k in avg}
      if shown:
        self.bar.update_metrics(**shown)

  def save(self, step: int, state: Any, finite: Any, meta: dict[str, Any] | None = None,
           final: bool = False) -> None:
    """Checks the pending metrics and `finite` (the float trees that must be finite), then saves
    checkpoint `step`.

    The pending metrics go into the checkpoint rather than the log (unless `final`): a log record
    averages the steps since the previous log point, and a run resumed from this checkpoint logs
    the same records with the same values as one that was never stopped.
    """
    if final:
      self.flush()
    pending = [[k, s, to_python(m)] for k, s, m in self._fetch()]
    if not all_finite(finite):
      raise self._stop(f"the state is not finite at step {step}")
    self.checkpointer.save(step, state, meta={**(meta or {}), "pending_metrics": pending})
    self.last_good = step
