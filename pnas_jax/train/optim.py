"""The two optimisers of the search (docs/design.md §2.8) and a masked update for binarized paths.

Weights: SGD, Nesterov momentum 0.9, weight decay 4e-5 (added to the gradient, as torch.optim.SGD),
cosine learning rate per step. Architecture parameters: Adam, lr 1e-3, betas (0, 0.999), eps 1e-8,
no weight decay, one state per block (torch keeps one per alpha tensor, with its own step count, and
skips a tensor whose gradient is None: `masked_update` reproduces that).

Only the sampled path is updated (Cai et al. 2019, Sec. 3.2): `masked_update` leaves every
masked-out parameter AND its optimizer state (momentum, Adam moments) bit-identical, as the
reference does by dropping the gradients of unsampled candidates entirely.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax


def weight_optimizer(
    base_lr: float | optax.Schedule = 0.025,
    total_steps: int = 1,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 4e-5,
    decay_mask: Any = None,
) -> optax.GradientTransformation:
  """SGD (Nesterov) with weight decay added to the gradient (as torch.optim.SGD).

  base_lr: a float gives a per-step cosine from it over `total_steps`; a schedule is used as is.
  decay_mask: which parameters get weight decay (a pytree of bools or a function of the params;
  None: all).
  """
  schedule = (base_lr if callable(base_lr)
              else optax.cosine_decay_schedule(base_lr, max(1, int(total_steps))))
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask=decay_mask),
      optax.sgd(schedule, momentum=momentum, nesterov=nesterov),
  )


def arch_optimizer(
    lr: float = 1e-3, b1: float = 0.0, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
  """Adam on the architecture logits (reference: betas (0, 0.999), eps 1e-8)."""
  return optax.adam(lr, b1=b1, b2=b2, eps=eps)


def _select_like(mask: Any, new: Any, old: Any) -> Any:
  """where(mask, new, old) on every sub-tree of an optimizer state shaped like the params."""
  treedef = jax.tree.structure(mask)
  if jax.tree.structure(new) == treedef and all(
      jnp.shape(n) == m.shape for n, m in zip(jax.tree.leaves(new), jax.tree.leaves(mask),
                                               strict=True)
  ):
    return jax.tree.map(jnp.where, mask, new, old)
  if isinstance(new, tuple) and isinstance(old, tuple) and len(new) == len(old):
    items = [_select_like(mask, n, o) for n, o in zip(new, old, strict=True)]
    return type(new)(*items) if hasattr(new, "_fields") else type(new)(items)
  return new  # step counts, schedules' state: shared by all parameters.


def masked_update(
    tx: optax.GradientTransformation, grads: Any, opt_state: Any, params: Any, mask: Any
) -> tuple[Any, Any]:
  """One optimizer step applied only where `mask` (bool pytree like params, leaves broadcastable).

  Masked-out parameters and their per-parameter optimizer state keep their exact old values; global
  counters (schedule step) advance.
  """
  mask = jax.tree.map(
      lambda m, p: jnp.broadcast_to(jnp.asarray(m, bool), p.shape), mask, params
  )
  updates, new_state = tx.update(grads, opt_state, params)
  new_params = jax.tree.map(
      lambda m, p, u: jnp.where(m, (p + u).astype(p.dtype), p), mask, params, updates
  )
  new_state = _select_like(mask, new_state, opt_state)
  return new_params, new_state


def masked_tensor_update(
    tx: optax.GradientTransformation,
    grads: jax.Array,
    opt_state: Any,
    params: jax.Array,
    update: jax.Array,
) -> tuple[jax.Array, Any]:
  """One step of a per-tensor optimizer state, or none at all (`update` a traced bool scalar).

  torch skips a parameter whose gradient is None, step count included; with one optax state per
  block's alpha this is exact (the arch optimizer's per-block Adam).
  """
  updates, new_state = tx.update(grads, opt_state, params)
  new_params = jnp.where(update, (params + updates).astype(params.dtype), params)
  new_state = jax.tree.map(lambda n, o: jnp.where(update, n, o), new_state, opt_state)
  return new_params, new_state
