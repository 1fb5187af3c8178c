"""Convolution, batch-norm and dense layers with the reference initialisation and BN settings.

docs/design.md §2.11: conv weights ~ N(0, 2 / (k * k * out_channels)) (depthwise too), dense weights
~ U(+-1/sqrt(in)), dense bias 0, BN momentum 0.1 in PyTorch terms (0.9 here), eps 1e-3, no conv
biases. 1x1 convolutions are written as dot_general: XLA:CPU runs lax.conv inside lax.switch
branches ~10x slower in reverse mode, and a 1x1 conv is a matmul anyway.

Tried on XLA:CPU (batch 32, 128px proxyless_mobile shapes, loaded 2-core machine, fwd+bwd):
  - 1x1 conv as a 2-D (B*H*W, C) x (C, D) dot_general instead of the 4-D einsum: 1.3-2.5x faster
    (64x64 16->96: ~380 -> ~180 ms; 32x32 24->144: 134 -> 56 ms). Kept.
  - stem (3x3, 3 -> 32, stride 2) as im2col + one matmul instead of lax.conv: kernel gradient
    ~97 -> ~78 ms. Kept (sums in a different order: equal to lax.conv to ~1e-5).
  - fused BN with a custom VJP in jnp: slower than flax BatchNorm. Not kept; BN now has native CPU
    kernels instead (layers/batchnorm.py).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from pnas_jax.layers import batchnorm, depthwise

BN_MOMENTUM = 0.9  # Flax convention: running = momentum * running + (1 - momentum) * batch.
BN_EPSILON = 1e-3

_BN_AXIS: contextvars.ContextVar[str | None] = contextvars.ContextVar("pnas_bn_axis", default=None)
_BN_IMPL: contextvars.ContextVar[str] = contextvars.ContextVar("pnas_bn_impl", default="auto")


@contextlib.contextmanager
def batch_norm_axis(axis_name: str | None) -> Iterator[None]:
  """BN layers built (traced) inside compute their batch statistics across `axis_name`.

  Under shard_map over a 'data' mesh axis this is synchronised BN (as flax/examples/imagenet): the
  statistics are those of the global batch, so N devices train exactly like one device on the same
  global batch. It is a trace-time setting (read when the modules are constructed during apply),
  like flax's logical axis rules; None restores per-device statistics.
  """
  token = _BN_AXIS.set(axis_name)
  try:
    yield
  finally:
    _BN_AXIS.reset(token)


@contextlib.contextmanager
def batch_norm_impl(impl: str) -> Iterator[None]:
  """BN layers built (traced) inside use `impl` (layers/batchnorm.IMPLS); for A/B benchmarks."""
  batchnorm.resolve_impl(impl)  # an unknown name fails here, not at the first trace
  token = _BN_IMPL.set(impl)
  try:
    yield
  finally:
    _BN_IMPL.reset(token)


def current_batch_norm_axis() -> str | None:
  """The axis name BN layers built now synchronise their statistics over (see batch_norm_axis)."""
  return _BN_AXIS.get()


def current_batch_norm_impl() -> str:
  """The implementation BN layers built now use (see batch_norm_impl)."""
  return _BN_IMPL.get()


def BatchNorm(**kwargs) -> batchnorm.BatchNorm:  # noqa: N802 (a layer constructor, named like one)
  """layers/batchnorm.BatchNorm with the reference momentum / epsilon, the current
  batch_norm_axis and the current batch_norm_impl; kwargs: use_running_average, activation, name."""
  return batchnorm.BatchNorm(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, axis_name=_BN_AXIS.get(),
                             impl=_BN_IMPL.get(), **kwargs)


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
    # A 2-D (B*H*W, C) x (C, D) matmul: XLA:CPU runs it and its gradients 1.3-2.5x faster than the
    # 4-D einsum "bhwc,cd->bhwd" (fwd+bwd, batch 32, proxyless_mobile shapes, loaded machine).
    *lead, c = x.shape
    y = lax.dot_general(x.reshape(-1, c), kernel.astype(x.dtype), (((1,), (0,)), ((), ())))
    return y.reshape(*lead, self.features)


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
    # im2col: k*k strided slices concatenated to k*k*C_in channels, then one 2-D matmul. For the
    # stem (3 -> 32, stride 2, batch 32, 128px) its kernel gradient is ~20% faster than lax.conv's
    # on XLA:CPU.
    pad = k // 2
    s = self.stride
    b, h, wd, c = x.shape
    ho, wo = (h + 2 * pad - k) // s + 1, (wd + 2 * pad - k) // s + 1
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    cols = [
        lax.slice(xp, (0, u, v, 0), (b, u + (ho - 1) * s + 1, v + (wo - 1) * s + 1, c), (1, s, s, 1))
        for u in range(k)
        for v in range(k)
    ]
    patches = jnp.concatenate(cols, axis=-1).reshape(-1, k * k * c)
    w2 = kernel.astype(x.dtype).reshape(k * k * c, self.features)
    y = lax.dot_general(patches, w2, (((1,), (0,)), ((), ())))
    return y.reshape(b, ho, wo, self.features)


class ConvBNReLU6(nn.Module):
  """conv -> BN -> ReLU6 (the stem and the 1x1 feature-mix layer before pooling)."""

  features: int
  kernel_size: int = 3
  stride: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = Conv(self.features, self.kernel_size, self.stride, name="conv")(x)
    return BatchNorm(use_running_average=not train, activation="relu6", name="bn")(x)


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
