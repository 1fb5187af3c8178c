"""ChildNet and the zoo: exact published counts, MAC formula, init, jitted forward/backward."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pnas_jax.models import zoo
from pnas_jax.models.child import ChildNet
from pnas_jax.models.cost import block_costs, net_cost
from pnas_jax.models.init import init_variables
from pnas_jax.search_space import Arch, SearchSpace, get_op

PUBLISHED = {
    "proxyless_mobile": (4_080_512, 320.4),
    "proxyless_mobile_14": (6_857_568, 580.9),
    "proxyless_gpu": (7_119_848, 465.3),
    "proxyless_cpu": (4_361_648, 439.2),
    "mobilenet_v2": (3_504_872, 300.8),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_zoo_counts_exact(name):
  e = zoo.get(name)
  cost = net_cost(e.space, e.arch)
  params, macs_m = PUBLISHED[name]
  assert cost.params == params
  assert round(cost.macs / 1e6, 1) == macs_m


def _mbconv_reference_cost(c_in, c_out, k, e, s_in, s_out):
  """Hand-counted MBConv params/MACs: expand 1x1, depthwise kxk, project 1x1, BN scale+bias."""
  mid = c_in * e
  params = k * k * mid + 2 * mid + mid * c_out + 2 * c_out
  macs = s_out * s_out * (k * k * mid + mid * c_out)
  if e != 1:
    params += c_in * mid + 2 * mid
    macs += s_in * s_in * c_in * mid
  return params, macs


def test_block_costs_match_hand_formula_and_network_total():
  space = SearchSpace()
  costs = block_costs(space)
  for b, p, m in zip(space.blocks, costs.params, costs.macs, strict=True):
    for op in b.candidates:
      spec = get_op(op)
      if spec.is_zero:
        assert p[op] == m[op] == 0
        continue
      assert (p[op], m[op]) == _mbconv_reference_cost(
          b.in_channels, b.out_channels, spec.kernel, spec.expand, b.in_size, b.out_size
      )
  rng = np.random.default_rng(0)
  for _ in range(3):
    arch = Arch(tuple(rng.choice(b.candidates) for b in space.blocks))
    assert costs.total(arch) == net_cost(space, arch)


def test_zero_blocks_have_no_parameters():
  e = zoo.get("proxyless_gpu")
  variables = jax.eval_shape(
      lambda: ChildNet(e.space, e.arch).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  )
  present = {k for k in variables["params"] if k.startswith("block")}
  expected = {f"block{i}" for i, op in enumerate(e.arch.ops) if op != "Zero"}
  assert present == expected


def test_initialisation_follows_reference():
  space = SearchSpace(n_classes=1000, resolution=32)
  net = ChildNet(space, Arch.uniform(space, "7x7_MBConv6"), dw_impl="lax")
  params = init_variables(net, jax.random.key(1), jnp.zeros((1, 32, 32, 3)))["params"]
  expand = params["block20"]["expand"]["kernel"]  # 1x1, 192 -> 1152
  np.testing.assert_allclose(np.std(expand), math.sqrt(2 / 1152), rtol=0.02)
  dw = params["block20"]["depthwise"]["kernel"]  # 7x7 depthwise, 1152 channels
  np.testing.assert_allclose(np.std(dw), math.sqrt(2 / (49 * 1152)), rtol=0.05)
  dense = params["head"]["classifier"]["dense"]
  bound = 1 / math.sqrt(1280)
  assert np.abs(dense["kernel"]).max() <= bound and np.abs(dense["kernel"]).max() > 0.95 * bound
  assert not np.any(dense["bias"])


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_zoo_forward_backward_jit(name):
  e = zoo.get(name)
  space = e.space.replace(resolution=32, n_classes=10)
  # Structure test: the lax depthwise kernel compiles fastest; the CPU kernel's equality with it,
  # ChildNet included, is tested in test_depthwise.py.
  net = ChildNet(space, e.arch, dropout_rate=e.dropout_rate, dw_impl="lax")
  x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  y = jnp.array([1, 7])
  variables = init_variables(net, jax.random.key(1), x)

  @jax.jit
  def loss_and_grad(params, batch_stats, key):
    def loss_fn(p):
      logits, new_state = net.apply(
          {"params": p, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"],
          rngs={"dropout": key},
      )
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_state

    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  (loss, new_state), grads = loss_and_grad(
      variables["params"], variables["batch_stats"], jax.random.key(2)
  )
  assert np.isfinite(loss)
  norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
  assert all(np.isfinite(norms)) and sum(n > 0 for n in norms) == len(norms)
  # BN running statistics moved towards the batch statistics.
  before = jax.tree.leaves(variables["batch_stats"])
  after = jax.tree.leaves(new_state["batch_stats"])
  assert any(not np.allclose(a, b) for a, b in zip(after, before, strict=True))
  logits = jax.jit(lambda v: net.apply(v, x))(variables)
  assert logits.shape == (2, 10)


def test_dropout_only_in_training():
  e = zoo.get("proxyless_mobile")
  space = e.space.replace(resolution=32, n_classes=10)
  net = ChildNet(space, e.arch, dropout_rate=0.5, dw_impl="lax")
  x = jax.random.normal(jax.random.key(3), (2, 32, 32, 3))
  v = init_variables(net, jax.random.key(0), x)
  evaluate = jax.jit(lambda v, x: net.apply(v, x))
  np.testing.assert_array_equal(evaluate(v, x), evaluate(v, x))
  train = jax.jit(
      lambda v, x, k: net.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": k})[0]
  )
  assert not np.allclose(train(v, x, jax.random.key(1)), train(v, x, jax.random.key(2)))
