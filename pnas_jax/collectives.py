"""Per-device step helpers for data parallelism under shard_map (one home for the estimators, the
search steps and the retrain step).

Every step takes `axis_name`: None on one device, the mesh axis ('data') under shard_map, where
gradients, BN statistics and metrics are averaged with lax.pmean.
"""

from __future__ import annotations

from typing import Any

import jax
from jax import lax


def maybe_pmean(x: Any, axis_name: str | None) -> Any:
  """lax.pmean over `axis_name` under data parallelism, identity on one device."""
  return x if axis_name is None else lax.pmean(x, axis_name)


def device_dropout_key(key: jax.Array, axis_name: str | None) -> jax.Array:
  """The dropout key of this device: folded with the device index under data parallelism."""
  return key if axis_name is None else jax.random.fold_in(key, lax.axis_index(axis_name))
