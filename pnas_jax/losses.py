"""The classification loss and accuracy every step and evaluator uses (one home for both)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float = 0.0, *,
                  mean: bool = True) -> jax.Array:
  """CE(softmax(logits), y) with y = (1 - eps) one_hot + eps / C (eps = smoothing, the reference's
  label smoothing); the batch mean, or per example with mean=False. Computed in float32."""
  logits = logits.astype(jnp.float32)
  if smoothing > 0:
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32),
                                  smoothing)
    ce = optax.softmax_cross_entropy(logits, targets)
  else:
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return ce.mean() if mean else ce


def correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per example: is the top-1 class the label."""
  return jnp.argmax(logits, -1) == labels


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Top-1 accuracy of the batch, in [0, 1]."""
  return jnp.mean(correct(logits, labels))
