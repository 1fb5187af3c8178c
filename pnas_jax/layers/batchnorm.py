"""BatchNorm over the channel (last) axis, with an optional fused ReLU6, and its native CPU kernels.

Training mode (Ioffe & Szegedy 2015), per channel c over the N = B*H*W positions i:

  mu_c = (1/N) sum_i x_ic,   var_c = (1/N) sum_i x_ic^2 - mu_c^2   (biased; flax's fast variance)
  y_ic = act((x_ic - mu_c) * gamma_c / sqrt(var_c + eps) + beta_c),   act = identity or ReLU6,

and the running statistics r <- m r + (1 - m) (mu, var). Inference uses the running statistics.
The parameters ("scale", "bias") and statistics ("batch_stats": "mean", "var") are named as in
flax.linen.BatchNorm, so checkpoints and the PyTorch weight import are unchanged.

Implementations (`impl`; "auto" = "native" on CPU for float32 where its kernels built, unless the
statistics are synchronised across more than one device (`axis_name`), else "xla"):
  xla     jnp with autodiff, as flax.linen.BatchNorm computes it (with `axis_name`, the statistics
          are averaged across that mapped axis: synchronised BN).
  native  two C++ passes per direction (layers/native/batchnorm_cpu.cc, XLA FFI custom calls) with
          a hand-written VJP; with xhat = (x - mu) / sigma and g = dL/dy masked by act':
            dbeta = sum_i g,  dgamma = sum_i g xhat,
            dx = gamma / sigma (g - dbeta / N - xhat dgamma / N) + dmu / N + 2 dvar xhat sigma / N.
          XLA:CPU splits the same graph into several loop fusions and column reductions; BN and
          the element-wise work around it were 37% of the child training step's op time
          (experiments/profile_step.py).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from pnas_jax.errors import UserValueError
from pnas_jax.layers import native

IMPLS = ("auto", "native", "xla")
ACTIVATIONS = (None, "relu6")


def _check_activation(activation: str | None) -> None:
  if activation not in ACTIVATIONS:
    raise UserValueError(f"unknown BatchNorm activation {activation!r}; valid: "
                         f"{', '.join(map(str, ACTIVATIONS))}")


def _activate(y: jax.Array, activation: str | None) -> jax.Array:
  _check_activation(activation)
  return jax.nn.relu6(y) if activation == "relu6" else y


def _normalize(x, mean, var, scale, bias, epsilon, activation):
  mul = lax.rsqrt(var + epsilon) * scale
  return _activate((x - mean) * mul + bias, activation)


def batch_norm_train_xla(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                         activation: str | None = None, axis_name: str | None = None
                         ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(y, mu, var) of training-mode BN over the last axis in jnp (see the module docstring)."""
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axes)
  mean2 = jnp.mean(lax.square(x), axes)
  if axis_name is not None:
    mean, mean2 = lax.pmean((mean, mean2), axis_name)
  var = jnp.maximum(0.0, mean2 - lax.square(mean))
  return _normalize(x, mean, var, scale, bias, epsilon, activation), mean, var


def _relu6_flag(activation: str | None) -> np.int64:
  _check_activation(activation)
  return np.int64(activation == "relu6")


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train_native(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                            activation: str | None = None
                            ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(y, mu, var) as batch_norm_train_xla, from the C++ kernels (float32, CPU)."""
  resolve_impl("native", x.dtype)  # registers the kernels, or says why they cannot run
  c = x.shape[-1]
  stat = jax.ShapeDtypeStruct((c,), jnp.float32)
  call = jax.ffi.ffi_call("pnas_batch_norm_forward",
                          (jax.ShapeDtypeStruct(x.shape, jnp.float32), stat, stat),
                          vmap_method="sequential")
  return call(x, scale, bias, epsilon=np.float32(epsilon), relu6=_relu6_flag(activation))


def _native_fwd(x, scale, bias, epsilon, activation):
  y, mean, var = batch_norm_train_native(x, scale, bias, epsilon, activation)
  return (y, mean, var), (x, mean, var, scale, bias)


def _native_bwd(epsilon, activation, res, cotangents):
  x, mean, var, scale, bias = res
  dy, dmean, dvar = cotangents
  stat = jax.ShapeDtypeStruct(scale.shape, jnp.float32)
  call = jax.ffi.ffi_call("pnas_batch_norm_backward",
                          (jax.ShapeDtypeStruct(x.shape, jnp.float32), stat, stat),
                          vmap_method="sequential")
  dx, dscale, dbias = call(x, dy, mean, var, scale, bias, dmean, dvar,
                           epsilon=np.float32(epsilon), relu6=_relu6_flag(activation))
  return dx, dscale, dbias


batch_norm_train_native.defvjp(_native_fwd, _native_bwd)


def resolve_impl(impl: str, dtype: jnp.dtype = jnp.float32, axis_name: str | None = None) -> str:
  """'auto' -> 'native' on CPU for float32 where the kernels built and no axis_name, else 'xla'.

  An explicit 'native' that cannot run raises, saying why.
  """
  if impl not in IMPLS:
    raise UserValueError(f"unknown BatchNorm impl {impl!r}; valid: {', '.join(IMPLS)}")
  if impl == "xla":
    return impl
  runnable = jax.default_backend() == "cpu" and jnp.dtype(dtype) == jnp.float32 and axis_name is None
  if impl == "auto":
    return "native" if runnable and native.available() else "xla"
  if not (runnable and native.available()):
    why = native.why_unavailable() or (
        f"it runs float32 on CPU without a cross-device axis only (backend "
        f"{jax.default_backend()}, dtype {jnp.dtype(dtype)}, axis_name {axis_name!r})")
    raise UserValueError(f"BatchNorm impl 'native' cannot run: {why}; use impl='auto'")
  return impl


class BatchNorm(nn.Module):
  """BN over the last axis with an optional fused activation (see the module docstring).

  Attributes:
    use_running_average: inference mode (the running statistics) instead of batch statistics.
    momentum: running = momentum * running + (1 - momentum) * batch (flax's convention).
    epsilon: added to the variance.
    axis_name: a mapped axis to average the batch statistics over (synchronised BN), or None.
    activation: None or "relu6", applied after the affine transform.
    impl: one of IMPLS.
  """

  use_running_average: bool = False
  momentum: float = 0.99
  epsilon: float = 1e-5
  axis_name: str | None = None
  activation: str | None = None
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    if self.use_running_average:
      return _normalize(x, ra_mean.value, ra_var.value, scale, bias, self.epsilon, self.activation)
    initializing = self.is_initializing()
    axis_name = None if initializing else self.axis_name
    if axis_name is not None and lax.axis_size(axis_name) == 1:
      axis_name = None  # the mean over one device is the identity: the native kernels can run
    if resolve_impl(self.impl, x.dtype, axis_name) == "native":
      y, mean, var = batch_norm_train_native(x, scale, bias, self.epsilon, self.activation)
    else:
      y, mean, var = batch_norm_train_xla(x, scale, bias, self.epsilon, self.activation, axis_name)
    if not initializing:
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y
