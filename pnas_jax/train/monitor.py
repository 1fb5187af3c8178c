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


class NonFiniteError(FloatingPointError):
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
  from pnas_jax.train.parallel import to_host

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
