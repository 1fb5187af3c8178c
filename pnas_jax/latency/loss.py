"""Latency-aware losses (Sec. 3.3 of Cai et al. 2019, and the reference implementation's variants).

The search objective adds the expected latency E[LAT] (or E[FLOPs]) of the stochastic architecture
to the cross-entropy CE of the architecture step. E[LAT] is linear in the path probabilities p, so
the gradient reaches alpha through p only (pnas_jax.latency.expected). Registered losses, with the
defaults of docs/design.md §2.7 (target T from the search config):

  "mul#log":    L = a * CE * (log E[LAT] / log T) ^ b        a = 0.2, b = 0.3
  "add#linear": L = CE + lambda * (E[LAT] - T) / T           lambda = 0.1

`latency_loss(name, **hyper)` returns `loss(ce, expected_latency, target) -> scalar`, a pure JAX
function that the architecture step jits.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from pnas_jax.errors import UserValueError
from pnas_jax.registry import Registry


class UnknownHyperParameterError(UserValueError, TypeError):
  """latency.loss_params names a hyper-parameter the loss does not have."""


LossFn = Callable[[jax.Array, jax.Array, jax.Array | float], jax.Array]
# name -> (factory(**hyper) -> LossFn, default hyper-parameters)
LOSSES: Registry[tuple[Callable[..., LossFn], dict[str, float]]] = Registry("latency loss")


def register_loss(
    name: str, **defaults: float
) -> Callable[[Callable[..., LossFn]], Callable[..., LossFn]]:
  """Decorator registering `factory(**hyper) -> loss(ce, expected_latency, target)` by name."""

  def decorator(factory: Callable[..., LossFn]) -> Callable[..., LossFn]:
    LOSSES.add(name, (factory, dict(defaults)))
    return factory

  return decorator


def loss_names() -> list[str]:
  return LOSSES.names()


def loss_defaults(name: str) -> dict[str, float]:
  """The default hyper-parameters of a registered loss."""
  return dict(LOSSES.get(name)[1])


def latency_loss(name: str, **hyper: float) -> LossFn:
  """Builds the named loss; unset hyper-parameters take their defaults, unknown ones are errors."""
  factory, defaults = LOSSES.get(name)
  unknown = sorted(set(hyper) - set(defaults))
  if unknown:
    raise UnknownHyperParameterError(
        f"latency loss {name!r} has no hyper-parameter(s) {unknown}; valid: {sorted(defaults)}"
    )
  return factory(**{**defaults, **hyper})


@register_loss("mul#log", a=0.2, b=0.3)
def _mul_log(a: float, b: float) -> LossFn:
  """L = a * CE * (log E[LAT] / log T) ^ b (T > 1 in the latency's unit)."""

  def loss(ce: jax.Array, expected_latency: jax.Array, target: jax.Array | float) -> jax.Array:
    if isinstance(target, (int, float)) and target <= 1.0:
      raise UserValueError(
          f"'mul#log' needs a target T > 1 (log T is the denominator), got T = {target}; express "
          "the latency in a smaller unit (e.g. us) or use 'add#linear'"
      )
    ratio = jnp.log(expected_latency) / jnp.log(jnp.asarray(target, jnp.float32))
    return a * ce * ratio**b

  return loss


@register_loss("add#linear", lam=0.1)
def _add_linear(lam: float) -> LossFn:
  """L = CE + lambda * (E[LAT] - T) / T."""

  def loss(ce: jax.Array, expected_latency: jax.Array, target: jax.Array | float) -> jax.Array:
    target = jnp.asarray(target, jnp.float32)
    return ce + lam * (expected_latency - target) / target

  return loss
