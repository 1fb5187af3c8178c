"""Supernet: layout, inheritance by ChildNet, binarized-path gradients, memory flat in N."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pnas_jax.arch.sampling import fixed_sample
from pnas_jax.arch.supernet import Supernet, arch_indices, child_variables, init_supernet
from pnas_jax.layers import core as layers_core
from pnas_jax.models.child import ChildNet
from pnas_jax.search_space import Arch, SearchSpace

SPACE = SearchSpace(
    stage_widths=(8, 16), stage_depths=(1, 2), stage_strides=(1, 2), candidates=(
        "3x3_MBConv3", "5x5_MBConv3", "3x3_MBConv6", "Identity"), stem_width=8,
    first_block_width=8, tail_width=16, n_classes=10, resolution=16,
)
ARCH = Arch(("Identity", "5x5_MBConv3", "Zero"))


@pytest.fixture(scope="module")
def variables():
  return init_supernet(Supernet(SPACE), jax.random.key(0))


def test_layout_one_subtree_per_candidate(variables):
  p = variables["params"]
  assert set(p) == {"input", "head", "block0", "block1", "block2"}
  assert set(p["block0"]) == {"3x3_MBConv3", "5x5_MBConv3", "3x3_MBConv6"}  # Identity, Zero: none
  assert SPACE.blocks[0].candidates[-2:] == ("Identity", "Zero")
  assert "Identity" not in SPACE.blocks[1].candidates
  assert p["block2"]["3x3_MBConv6"]["expand"]["kernel"].shape == (16, 96)
  assert set(variables["batch_stats"]["block1"]) == set(p["block1"])


@pytest.mark.parametrize("arch", [ARCH, Arch(("3x3_MBConv6", "3x3_MBConv3", "5x5_MBConv3"))])
def test_child_inherits_path_and_matches_one_hot_supernet(variables, arch):
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  child = ChildNet(SPACE, arch)
  cv = child_variables(variables, SPACE, arch)
  # Same tree as a freshly initialised ChildNet.
  fresh = jax.eval_shape(child.init, jax.random.key(0), x)
  assert jax.tree.structure(fresh) == jax.tree.structure(cv)
  y_child = child.apply(cv, x)
  y_super = jax.jit(lambda v, s: Supernet(SPACE).apply(v, x, s))(
      variables, fixed_sample(arch_indices(SPACE, arch)))
  np.testing.assert_allclose(y_child, y_super, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the native BatchNorm is CPU-only")
def test_batch_norm_impl_is_part_of_the_cached_candidate_traces(variables):
  """The supernet caches one jitted function per candidate kind; a trace made under one
  batch_norm_impl must not be reused under another (same values, other kernels)."""
  x = jax.random.normal(jax.random.key(3), (4, 16, 16, 3))
  sample = fixed_sample(arch_indices(SPACE, Arch(("3x3_MBConv6", "5x5_MBConv3", "3x3_MBConv3"))))

  out, hlo = {}, {}
  for impl in ("native", "xla", "native"):

    def forward(v):  # a new function each time: jax.jit's own cache is keyed by it
      return Supernet(SPACE).apply(v, x, sample, train=True, mutable=["batch_stats"])[0]

    with layers_core.batch_norm_impl(impl):
      out[impl] = jax.jit(forward)(variables)
      hlo[impl] = jax.jit(forward).lower(variables).as_text()
  assert "pnas_batch_norm_forward" in hlo["native"]
  assert "pnas_batch_norm_forward" not in hlo["xla"]
  np.testing.assert_allclose(out["native"], out["xla"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", ["packed", "remat", "plain"])
def test_weight_gradients_are_the_childs_and_zero_elsewhere(variables, impl):
  x = jax.random.normal(jax.random.key(2), (4, 16, 16, 3))
  arch = Arch(("3x3_MBConv6", "5x5_MBConv3", "3x3_MBConv3"))
  idx = arch_indices(SPACE, arch)
  child = ChildNet(SPACE, arch)
  cv = child_variables(variables, SPACE, arch)

  def child_loss(p):
    y, upd = child.apply({"params": p, "batch_stats": cv["batch_stats"]}, x, train=True,
                         mutable=["batch_stats"])
    return jnp.sum(jnp.sin(y)), upd["batch_stats"]

  def super_loss(p, sample):
    y, upd = Supernet(SPACE, impl=impl).apply(
        {"params": p, "batch_stats": variables["batch_stats"]}, x, sample, train=True,
        mutable=["batch_stats"])
    return jnp.sum(jnp.sin(y)), upd["batch_stats"]

  (lc, sc), gc = jax.jit(jax.value_and_grad(child_loss, has_aux=True))(cv["params"])
  (ls, ss), gs = jax.jit(jax.value_and_grad(super_loss, has_aux=True))(
      variables["params"], fixed_sample(idx))
  np.testing.assert_allclose(lc, ls, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6), gc,
               child_variables({"params": gs}, SPACE, arch)["params"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), sc,
               child_variables({"batch_stats": ss}, SPACE, arch)["batch_stats"])
  for b, i in zip(SPACE.blocks, idx, strict=True):
    for op, tree in gs[f"block{b.index}"].items():
      if op != b.candidates[i]:
        assert all(np.all(np.asarray(leaf) == 0) for leaf in jax.tree.leaves(tree))
        # Unsampled candidates' BN statistics are untouched.
        jax.tree.map(np.testing.assert_array_equal, ss[f"block{b.index}"][op],
                     variables["batch_stats"][f"block{b.index}"][op])


def _grad_temp_mib(candidates, impl):
  space = SearchSpace(stage_widths=(16,), stage_depths=(2,), stage_strides=(1,),
                      candidates=candidates, zero_allowed=False, stem_width=16,
                      first_block_width=16, tail_width=16, n_classes=10, resolution=32)
  model = Supernet(space, impl=impl, dw_impl="lax")
  v = jax.eval_shape(lambda: init_supernet(model, jax.random.key(0)))
  x = jax.ShapeDtypeStruct((8, 32, 32, 3), jnp.float32)
  s = jax.eval_shape(lambda: fixed_sample([0, 0]))

  def loss(p, bs, x, s):
    y, _ = model.apply({"params": p, "batch_stats": bs}, x, s, train=True,
                       mutable=["batch_stats"])
    return jnp.sum(y)

  compiled = jax.jit(jax.grad(loss)).lower(v["params"], v["batch_stats"], x, s).compile()
  return compiled.memory_analysis().temp_size_in_bytes / 2**20


def test_memory_is_flat_in_the_number_of_candidates():
  one = ("7x7_MBConv6",)
  five = ("7x7_MBConv6", "5x5_MBConv6", "3x3_MBConv6", "7x7_MBConv3", "Identity")
  base = _grad_temp_mib(one, "remat")  # N = 1: lax.switch calls its only branch, any impl
  remat = _grad_temp_mib(five, "remat") / base
  packed = _grad_temp_mib(five, "packed") / base
  plain = _grad_temp_mib(five, "plain") / base
  assert remat <= 1.15, remat
  assert packed <= 1.15, packed
  assert plain > 1.3 * max(remat, packed)  # what they avoid
