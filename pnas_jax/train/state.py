"""The search state: one flax.struct.dataclass carried through every weight and arch step.

Keys: every step derives its randomness from `state.key` alone (no key argument), as
fold_in(fold_in(key, family), counter) then one fold_in per stream (gates, dropout), with family
0 = weight steps (counter `step`) and family 1 = arch steps (counter `arch_step`), so the gates are
identical on every device and a step never reuses another's randomness.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from pnas_jax.arch.supernet import Supernet, init_supernet

WEIGHT_FAMILY, ARCH_FAMILY = 0, 1
GATES_STREAM, DROPOUT_STREAM = 0, 1


@flax.struct.dataclass
class SearchState:
  """Weights, BN statistics, architecture logits, both optimizer states, counters and the key.

  Attributes:
    params, batch_stats: the supernet's variables.
    alpha: one float32 logit vector per searchable block (p_l = softmax(alpha_l)).
    weight_opt_state: the weight optimizer's state (over all params; only sampled ones move).
    arch_opt_state: one arch-optimizer state per block (a tuple, like alpha).
    step, arch_step: int32 counts of weight and arch steps taken.
    key: the typed PRNG key all randomness is folded from.
    baseline: REINFORCE's moving-average reward baseline (NaN until the first REINFORCE step).
  """

  params: Any
  batch_stats: Any
  alpha: tuple[jax.Array, ...]
  weight_opt_state: Any
  arch_opt_state: tuple[Any, ...]
  step: jax.Array
  arch_step: jax.Array
  key: jax.Array
  baseline: jax.Array


def init_alpha(key: jax.Array, model: Supernet, std: float = 1e-3) -> tuple[jax.Array, ...]:
  """alpha_l ~ N(0, std^2), one vector per block with len(block.candidates) entries."""
  return tuple(
      std * jax.random.normal(jax.random.fold_in(key, b.index), (len(b.candidates),), jnp.float32)
      for b in model.space.blocks
  )


def create_search_state(
    model: Supernet,
    key: jax.Array,
    weight_tx: optax.GradientTransformation,
    arch_tx: optax.GradientTransformation,
    alpha_std: float = 1e-3,
) -> SearchState:
  """Initialises weights (every candidate), alpha ~ N(0, 1e-3^2) and both optimizer states."""
  k_params, k_alpha, k_state = jax.random.split(key, 3)
  variables = init_supernet(model, k_params)
  params = variables["params"]
  alpha = init_alpha(k_alpha, model, alpha_std)
  return SearchState(
      params=params,
      batch_stats=variables.get("batch_stats", {}),
      alpha=alpha,
      weight_opt_state=weight_tx.init(params),
      arch_opt_state=tuple(arch_tx.init(a) for a in alpha),
      step=jnp.zeros((), jnp.int32),
      arch_step=jnp.zeros((), jnp.int32),
      key=k_state,
      baseline=jnp.asarray(jnp.nan, jnp.float32),
  )


def stream_key(key: jax.Array, family: int, counter: jax.Array, stream: int) -> jax.Array:
  """fold_in(fold_in(fold_in(key, family), counter), stream)."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, family), counter), stream)


@flax.struct.dataclass
class TrainState:
  """The retrain loop's state: a ChildNet's variables, SGD state, optional EMA, step and key.

  Randomness (dropout, augmentation) is folded from `key` and `step` exactly as in SearchState
  (family WEIGHT_FAMILY), so the retrain loop resumes bit-identically too.
  """

  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any  # exponential moving average of params (None when EMA is off)
  step: jax.Array
  key: jax.Array
