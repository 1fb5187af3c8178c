"""Convolution, batch-norm and dense layers with the reference initialisation and BN settings.

DESIGN.md §1: conv weights ~ N(0, 2 / (k * k * out_channels)) (depthwise too), dense weights
~ U(+-1/sqrt(in)), dense bias 0, BN momentum 0.1 in PyTorch terms (0.9 here), eps 1e-3, no conv
biases. 1x1 convolutions are written as dot_general: XLA:CPU runs lax.conv inside lax.switch
branches ~10x slower in reverse mode, and a 1x1 conv is a matmul anyway.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from pnas_jax.models import depthwise

BN_MOMENTUM = 0.9  # Flax convention: running = momentum * running + (1 - momentum) * batch.
BN_EPSILON = 1e-3

BatchNorm = functools.partial(nn.BatchNorm, momentum=BN_MOMENTUM, epsilon=BN_EPSILON)


def conv_init(kernel_size: int, out_channels: int) -> nn.initializers.Initializer:
  """N(0, sqrt(2 / (k * k * out))): He init in fan-out mode, as the reference implementation."""
  return nn.initializers.normal(stddev=math.sqrt(2.0 / (kernel_size * kernel_size * out_channels)))


def dense_kernel_init(key: jax.Array, shape: tuple[int, int], dtype=jnp.float32) -> jax.Array:
  bound = 1.0 / math.sqrt(shape[0])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


class Pointwise(nn.Module):
  """1x1 convolution without bias, as an einsum over channels."""

  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", conv_init(1, self.features), (x.shape[-1], self.features))
    return jnp.einsum("bhwc,cd->bhwd", x, kernel.astype(x.dtype))


class Depthwise(nn.Module):
  """kxk depthwise convolution without bias, symmetric padding k // 2, backend-chosen kernel."""

  kernel_size: int
  stride: int = 1
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    k = self.kernel_size
    kernel = self.param("kernel", conv_init(k, c), (k, k, c))
    return depthwise.depthwise_conv(x, kernel.astype(x.dtype), self.stride, self.impl)


class Conv(nn.Module):
  """Dense kxk convolution without bias (the stem), symmetric padding k // 2."""

  features: int
  kernel_size: int = 3
  stride: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    if k == 1 and self.stride == 1:
      return Pointwise(self.features, name="pointwise")(x)
    kernel = self.param("kernel", conv_init(k, self.features), (k, k, x.shape[-1], self.features))
    pad = k // 2
    return lax.conv_general_dilated(
        x,
        kernel.astype(x.dtype),
        window_strides=(self.stride, self.stride),
        padding=((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


class ConvBNReLU6(nn.Module):
  """conv -> BN -> ReLU6 (the stem and the 1x1 feature-mix layer before pooling)."""

  features: int
  kernel_size: int = 3
  stride: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = Conv(self.features, self.kernel_size, self.stride, name="conv")(x)
    x = BatchNorm(use_running_average=not train, name="bn")(x)
    return jax.nn.relu6(x)


class Classifier(nn.Module):
  """Dropout then a dense layer with bias (reference init: U(+-1/sqrt(in)) weights, zero bias)."""

  n_classes: int
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.dropout_rate > 0:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(
        self.n_classes,
        kernel_init=dense_kernel_init,
        bias_init=nn.initializers.zeros,
        name="dense",
    )(x)
