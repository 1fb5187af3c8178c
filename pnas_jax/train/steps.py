"""Pure steps `(state, batch) -> (state, metrics)`: the search's weight and arch steps and the
retrain step, collaborators bound by functools.partial.

The key lives in the state (see train/state.py for the fold_in scheme), so a step's randomness is a
function of the state alone. `batch` is {"image": NHWC float, "label": int}. Bind the collaborators
and jit once, donating the state:

    weight = jit_step(weight_step, model=model, tx=weight_tx)                      # sample ~ p
    warmup = jit_step(weight_step, model=model, tx=weight_tx, sample_mode="uniform")
    arch = jit_step(arch_step, model=model, tx=arch_tx, estimator=get_estimator("two"),
                    cost_fn=partial(expected_cost, macs_table(space)), loss_fn=my_loss)

Gate samples are traced values, so no step ever recompiles for a new sample. For data parallelism a
later wrapper maps these per-device steps with shard_map over a 'data' axis: pass axis_name="data"
and gradients, BN statistics and metrics are averaged with lax.pmean; the gates are identical on
every device (same key), dropout differs per device.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from pnas_jax.arch.estimators import ArchBatch, CostFn, Estimator, LossFn
from pnas_jax.arch.sampling import sample_gates
from pnas_jax.arch.supernet import Supernet, candidate_mask
from pnas_jax.collectives import device_dropout_key, maybe_pmean
from pnas_jax.losses import accuracy, cross_entropy
from pnas_jax.models.child import ChildNet
from pnas_jax.train.optim import masked_tensor_update, masked_update
from pnas_jax.train.state import (
  ARCH_FAMILY,
  DROPOUT_STREAM,
  GATES_STREAM,
  WEIGHT_FAMILY,
  SearchState,
  TrainState,
  stream_key,
)

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def _supervised_update(
    apply_fn: Callable[[Any], tuple[jax.Array, Any]],
    params: Any,
    labels: jax.Array,
    label_smoothing: float,
    axis_name: str | None,
) -> tuple[Any, Any, Metrics]:
  """The supervised core of the weight step and the retrain step.

  apply_fn(params) -> (logits, new batch_stats) is a train-mode forward. Returns the gradients of
  the label-smoothed cross-entropy, the new BN statistics and {"loss", "acc"}, each averaged over
  `axis_name` under data parallelism.
  """

  def loss_of(p):
    logits, batch_stats = apply_fn(p)
    return cross_entropy(logits, labels, label_smoothing), (logits, batch_stats)

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
  metrics = {"loss": loss, "acc": accuracy(logits, labels)}
  return maybe_pmean(grads, axis_name), maybe_pmean(batch_stats, axis_name), maybe_pmean(
      metrics, axis_name)


def weight_step(
    state: SearchState,
    batch: Batch,
    *,
    model: Supernet,
    tx: optax.GradientTransformation,
    sample_mode: str = "single",
    label_smoothing: float = 0.1,
    uniform_steps: int = 0,
    axis_name: str | None = None,
) -> tuple[SearchState, Metrics]:
  """One weight step on a binarized path (Cai et al. 2019, Sec. 3.2).

  Samples a ~ p (or uniformly in warm-up), runs only that path, minimises CE with label smoothing
  and updates only the sampled candidates' weights: the others, with their momentum, stay
  bit-identical (no weight decay either), as the reference drops their gradients.

  uniform_steps: while state.step < uniform_steps the path is drawn from uniform probabilities
  (the warm-up), decided inside the step so warm-up and search share one compilation.
  """
  k_gates = stream_key(state.key, WEIGHT_FAMILY, state.step, GATES_STREAM)
  k_drop = device_dropout_key(stream_key(state.key, WEIGHT_FAMILY, state.step, DROPOUT_STREAM),
                              axis_name)
  alpha = state.alpha
  if uniform_steps:
    warm = state.step < uniform_steps
    alpha = tuple(jnp.where(warm, jnp.zeros_like(a), a) for a in alpha)
  sample = sample_gates(k_gates, alpha, sample_mode)

  def apply_fn(params):
    logits, upd = model.apply({"params": params, "batch_stats": state.batch_stats}, batch["image"],
                              sample, train=True, mutable=["batch_stats"], rngs={"dropout": k_drop})
    return logits, upd["batch_stats"]

  grads, batch_stats, metrics = _supervised_update(apply_fn, state.params, batch["label"],
                                                   label_smoothing, axis_name)
  mask = candidate_mask(state.params, model.space, sample.active)
  params, opt_state = masked_update(tx, grads, state.weight_opt_state, state.params, mask)
  metrics["active"] = sample.active  # which path was trained (identical on every device)
  new_state = state.replace(
      params=params, batch_stats=batch_stats, weight_opt_state=opt_state, step=state.step + 1
  )
  return new_state, metrics


def train_step(state: TrainState, batch: Batch, *, model: ChildNet, tx: optax.GradientTransformation,
               label_smoothing: float, ema_decay: float, axis_name: str | None = None
               ) -> tuple[TrainState, Metrics]:
  """One SGD step of a ChildNet (the retrain): the weight step's core on a fixed architecture,
  plus an optional EMA of the weights, ema <- d ema + (1 - d) params."""
  k_drop = device_dropout_key(stream_key(state.key, WEIGHT_FAMILY, state.step, DROPOUT_STREAM),
                              axis_name)

  def apply_fn(params):
    logits, upd = model.apply({"params": params, "batch_stats": state.batch_stats}, batch["image"],
                              train=True, mutable=["batch_stats"], rngs={"dropout": k_drop})
    return logits, upd["batch_stats"]

  grads, batch_stats, metrics = _supervised_update(apply_fn, state.params, batch["label"],
                                                   label_smoothing, axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = state.ema_params
  if ema_decay > 0:
    ema = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, ema, params)
  return state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state, ema_params=ema,
                       step=state.step + 1), metrics


def arch_step(
    state: SearchState,
    batch: Batch,
    *,
    model: Supernet,
    tx: optax.GradientTransformation,
    estimator: Estimator,
    cost_fn: CostFn | None = None,
    loss_fn: LossFn | None = None,
    update_batch_stats: bool = True,
    axis_name: str | None = None,
) -> tuple[SearchState, Metrics]:
  """One architecture step on a held-out batch (BN in train mode, plain CE).

  The estimator turns the batch into dL/dalpha (binary gates "full"/"two" or "reinforce"); each
  block's alpha takes one step of its own arch-optimizer state, except blocks the estimator leaves
  out (Zero active): those keep alpha and state unchanged. "two" then shifts the pair's logits.

  Args:
    cost_fn: probs (one vector per block) -> expected latency/FLOPs (differentiable); e.g.
      functools.partial(expected_cost, macs_table(space)). REINFORCE calls it with one-hot probs.
    loss_fn: (ce, expected_cost) -> loss ("mul#log", "add#linear", ...); None: loss = CE.
    update_batch_stats: keep the BN running statistics of the forward (the reference does).
  """
  key = stream_key(state.key, ARCH_FAMILY, state.arch_step, GATES_STREAM)
  k_drop = device_dropout_key(
      stream_key(state.key, ARCH_FAMILY, state.arch_step, DROPOUT_STREAM), axis_name)

  def forward(sample, gates):
    logits, upd = model.apply(
        {"params": state.params, "batch_stats": state.batch_stats},
        batch["image"],
        sample,
        train=True,
        gates=gates,
        mutable=["batch_stats"],
        rngs={"dropout": k_drop},
    )
    return logits, upd["batch_stats"]

  res = estimator.grads(ArchBatch(
      space=model.space, alpha=state.alpha, key=key, forward=forward, labels=batch["label"],
      cost_fn=cost_fn, loss_fn=loss_fn, baseline=state.baseline, axis_name=axis_name))
  alpha, opt_states = [], []
  for i, (a, g, s) in enumerate(zip(state.alpha, res.grads, state.arch_opt_state, strict=True)):
    a_new, s_new = masked_tensor_update(tx, g, s, a, res.update[i])
    alpha.append(a_new)
    opt_states.append(s_new)
  alpha = estimator.post_update(state.alpha, tuple(alpha), res)
  batch_stats = state.batch_stats
  if update_batch_stats and res.batch_stats is not None:
    batch_stats = maybe_pmean(res.batch_stats, axis_name)
  new_state = state.replace(
      alpha=tuple(alpha),
      arch_opt_state=tuple(opt_states),
      batch_stats=batch_stats,
      arch_step=state.arch_step + 1,
      baseline=res.baseline,
  )
  return new_state, res.metrics


def jit_step(step_fn: Callable[..., Any], **collaborators: Any) -> Callable[..., Any]:
  """jax.jit(partial(step_fn, **collaborators), donate_argnums=0): compiled once per shape."""
  return jax.jit(functools.partial(step_fn, **collaborators), donate_argnums=0)
