"""BatchNorm (layers/batchnorm.py): each implementation against flax's BatchNorm and a float64
NumPy reference, in values, running statistics and gradients."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numeric_helpers import assert_close_to_scale

from pnas_jax.errors import UserValueError
from pnas_jax.layers import batchnorm, core, native

EPS = 1e-3
MOMENTUM = 0.9
IMPLS = ("xla", "native")


def _assert_close(actual, expected, rtol=2e-5):
  """Within rtol of the expected tensor's scale (float32 sums over a few hundred rows)."""
  assert_close_to_scale(actual, expected, rtol)


def _inputs(shape, seed=0):
  kx, ks, kb, kc = jax.random.split(jax.random.key(seed), 4)
  c = shape[-1]
  x = jax.random.normal(kx, shape) * 3.0 + 10.0  # a mean far from 0: the variance must not cancel
  scale = jax.random.normal(ks, (c,)) + 1.0
  bias = jax.random.normal(kb, (c,)) * 2.0  # ReLU6 clips on both sides
  ct = jax.random.normal(kc, shape)
  return x, scale, bias, ct


def _numpy_reference(x, scale, bias, ct, activation):
  """Forward and the gradients of sum(y * ct) by the chain rule, in float64 NumPy."""
  x, scale, bias, ct = (np.asarray(a, np.float64) for a in (x, scale, bias, ct))
  c = x.shape[-1]
  xf = x.reshape(-1, c)
  n = xf.shape[0]
  mean = xf.mean(0)
  var = (xf**2).mean(0) - mean**2
  sigma = np.sqrt(var + EPS)
  xhat = (xf - mean) / sigma
  z = xhat * scale + bias
  g = ct.reshape(-1, c)
  if activation == "relu6":
    y = np.clip(z, 0.0, 6.0)
    g = g * ((z > 0) & (z < 6))
  else:
    y = z
  dbias = g.sum(0)
  dscale = (g * xhat).sum(0)
  dx = scale / sigma * (g - dbias / n - xhat * dscale / n)
  return y.reshape(x.shape), mean, var, dx.reshape(x.shape), dscale, dbias


def _module_run(module, x, scale, bias, ct):
  """y, new running statistics and d/d(x, scale, bias) of sum(y * ct) in train mode."""
  stats = {"mean": jnp.zeros(x.shape[-1]), "var": jnp.ones(x.shape[-1])}

  def loss(x, scale, bias):
    y, new = module.apply({"params": {"scale": scale, "bias": bias}, "batch_stats": stats}, x,
                          mutable=["batch_stats"])
    return jnp.sum(y * ct), (y, new["batch_stats"])

  (_, (y, new)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(
      x, scale, bias)
  return y, new, grads


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("activation", [None, "relu6"])
# 4-D NHWC with 37 channels (not a multiple of a SIMD width), and a 2-D (N, C) input.
@pytest.mark.parametrize("shape", [(4, 5, 6, 37), (300, 8)])
def test_train_mode_matches_numpy_and_flax(impl, activation, shape):
  x, scale, bias, ct = _inputs(shape)
  mine = batchnorm.BatchNorm(momentum=MOMENTUM, epsilon=EPS, activation=activation, impl=impl)
  y, stats, (dx, dscale, dbias) = _module_run(mine, x, scale, bias, ct)

  y_np, mean_np, var_np, dx_np, dscale_np, dbias_np = _numpy_reference(x, scale, bias, ct, activation)
  _assert_close(y, y_np)
  _assert_close(stats["mean"], (1 - MOMENTUM) * mean_np)
  _assert_close(stats["var"], MOMENTUM + (1 - MOMENTUM) * var_np)
  _assert_close(dx, dx_np, rtol=1e-4)
  _assert_close(dscale, dscale_np, rtol=1e-4)
  _assert_close(dbias, dbias_np, rtol=1e-4)

  flax_bn = nn.BatchNorm(use_running_average=False, momentum=MOMENTUM, epsilon=EPS)
  act = jax.nn.relu6 if activation else (lambda v: v)
  flax_module = nn.Sequential([flax_bn, act])
  stats0 = {"mean": jnp.zeros(shape[-1]), "var": jnp.ones(shape[-1])}

  def flax_loss(x, scale, bias):
    variables = {"params": {"layers_0": {"scale": scale, "bias": bias}},
                 "batch_stats": {"layers_0": stats0}}
    y, new = flax_module.apply(variables, x, mutable=["batch_stats"])
    return jnp.sum(y * ct), (y, new["batch_stats"]["layers_0"])

  (_, (y_f, stats_f)), grads_f = jax.value_and_grad(flax_loss, argnums=(0, 1, 2), has_aux=True)(
      x, scale, bias)
  _assert_close(y, y_f)
  _assert_close(stats["var"], stats_f["var"])
  for mine_g, flax_g in zip((dx, dscale, dbias), grads_f, strict=True):
    _assert_close(mine_g, flax_g, rtol=1e-4)


@pytest.mark.parametrize("activation", [None, "relu6"])
def test_native_vjp_of_the_returned_statistics(activation):
  """The cotangents of mu and var (unused by a loss on y, but part of the VJP) go into dx."""
  x, scale, bias, ct = _inputs((3, 4, 4, 11), seed=1)
  w_mean, w_var = jax.random.normal(jax.random.key(7), (2, 11))

  def loss(fn):
    def f(x, scale, bias):
      y, mean, var = fn(x, scale, bias, EPS, activation)
      return jnp.sum(y * ct) + jnp.sum(mean * w_mean) + jnp.sum(var * w_var)
    return jax.grad(f, argnums=(0, 1, 2))(x, scale, bias)

  for mine, ref in zip(loss(batchnorm.batch_norm_train_native),
                       loss(batchnorm.batch_norm_train_xla), strict=True):
    _assert_close(mine, ref, rtol=1e-4)


def test_native_under_vmap():
  x, scale, bias, _ = _inputs((3, 2, 4, 4, 9), seed=2)
  f = lambda x: batchnorm.batch_norm_train_native(x, scale, bias, EPS, "relu6")[0]  # noqa: E731
  _assert_close(jax.vmap(f)(x), jnp.stack([f(xi) for xi in x]))


@pytest.mark.parametrize("impl", IMPLS)
def test_inference_uses_running_statistics(impl):
  x, scale, bias, _ = _inputs((2, 3, 3, 5), seed=3)
  mean, var = jnp.arange(5.0), jnp.arange(1.0, 6.0)
  mine = batchnorm.BatchNorm(use_running_average=True, epsilon=EPS, activation="relu6", impl=impl)
  y = mine.apply({"params": {"scale": scale, "bias": bias},
                  "batch_stats": {"mean": mean, "var": var}}, x)
  expected = np.clip((np.asarray(x) - mean) / np.sqrt(var + EPS) * scale + bias, 0.0, 6.0)
  _assert_close(y, expected)


def test_variables_are_named_as_flax_batchnorm():
  """Checkpoints and the PyTorch weight import address the same leaves as with flax's layer."""
  x = jnp.ones((2, 3, 3, 4))
  mine = batchnorm.BatchNorm().init(jax.random.key(0), x)
  theirs = nn.BatchNorm(use_running_average=False).init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, mine) == jax.tree.map(jnp.shape, theirs)
  assert jax.tree.map(lambda a: a.tolist(), mine) == jax.tree.map(lambda a: a.tolist(), theirs)


def test_resolve_impl():
  expected = "native" if jax.default_backend() == "cpu" else "xla"
  assert batchnorm.resolve_impl("auto") == expected, native.why_unavailable()
  assert batchnorm.resolve_impl("auto", jnp.bfloat16) == "xla"
  assert batchnorm.resolve_impl("auto", axis_name="data") == "xla"  # synchronised BN
  with pytest.raises(UserValueError, match="'nope'.*valid: auto, native, xla"):
    batchnorm.resolve_impl("nope")
  with pytest.raises(UserValueError, match="axis_name 'data'.*use impl='auto'"):
    batchnorm.resolve_impl("native", axis_name="data")
  with pytest.raises(UserValueError, match="'nope'"), core.batch_norm_impl("nope"):
    pass
  for impl in IMPLS:
    with pytest.raises(UserValueError, match="activation 'gelu'.*valid: None, relu6"):
      batchnorm.BatchNorm(activation="gelu", impl=impl).init(jax.random.key(0), jnp.ones((2, 3)))


def test_batch_norm_impl_selects_the_layers_built_inside():
  x = jnp.ones((2, 4, 4, 3))
  for impl in IMPLS:
    with core.batch_norm_impl(impl):
      layer = core.BatchNorm(use_running_average=False)
    assert layer.impl == impl and layer.momentum == core.BN_MOMENTUM
    assert layer.epsilon == core.BN_EPSILON
    layer.init(jax.random.key(0), x)
  assert core.BatchNorm().impl == "auto"


def test_synchronised_over_one_device_runs_native(monkeypatch):
  """A 'data' axis of size 1 (every single-device training) takes the native kernels."""
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  calls = []
  native_fn = batchnorm.batch_norm_train_native
  monkeypatch.setattr(batchnorm, "batch_norm_train_native",
                      lambda *a: calls.append(1) or native_fn(*a))
  mesh = jax.make_mesh((1,), ("data",))
  x, scale, bias, _ = _inputs((4, 3, 3, 5), seed=4)
  layer = batchnorm.BatchNorm(axis_name="data")
  variables = layer.init(jax.random.key(0), x)

  def per_device(x):
    return layer.apply(variables, x, mutable=["batch_stats"])[0]

  mapped = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=P("data"), out_specs=P("data"),
                                 check_vma=False))
  y = mapped(jax.device_put(x, NamedSharding(mesh, P("data"))))
  assert bool(calls) == (jax.default_backend() == "cpu")
  _assert_close(y, batchnorm.BatchNorm(impl="xla").apply(variables, x, mutable=["batch_stats"])[0])
