"""Entangled MBConv weights (arch/weight_sharing.py): layout, slices, inheritance, gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pnas_jax.arch import weight_sharing as sharing
from pnas_jax.arch.sampling import fixed_sample
from pnas_jax.arch.supernet import (
    Supernet,
    arch_indices,
    candidate_mask,
    child_variables,
    init_supernet,
)
from pnas_jax.errors import UserValueError
from pnas_jax.models.child import ChildNet
from pnas_jax.search_space import Arch, SearchSpace

# Block 0: three shared MBConvs, the separate MBConv1 and Identity; blocks 1-2 (stride 2 then 1).
SPACE = SearchSpace(
    stage_widths=(8, 16), stage_depths=(1, 2), stage_strides=(1, 2), candidates=(
        "3x3_MBConv3", "7x7_MBConv3", "5x5_MBConv6", "3x3_MBConv1", "Identity"), stem_width=8,
    first_block_width=8, tail_width=16, n_classes=10, resolution=16,
)
MODEL = Supernet(SPACE, weight_sharing="mbconv", dw_impl="lax")
ARCHS = [Arch(("3x3_MBConv3", "5x5_MBConv6", "Zero")),
         Arch(("5x5_MBConv6", "7x7_MBConv3", "3x3_MBConv1")),
         Arch(("Identity", "3x3_MBConv3", "7x7_MBConv3"))]


@pytest.fixture(scope="module")
def variables():
  v = init_supernet(MODEL, jax.random.key(0))
  # Non-trivial BN parameters, so a wrong slice of them would show in the outputs.
  return {"params": jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(7), a.shape),
                                 v["params"]),
          "batch_stats": v["batch_stats"]}


def test_layout_one_master_per_block_and_per_op_statistics(variables):
  p, s = variables["params"], variables["batch_stats"]
  shared = ("3x3_MBConv3", "7x7_MBConv3", "5x5_MBConv6")
  assert sharing.shared_ops(SPACE.blocks[0], "mbconv") == shared
  assert sharing.master_op(shared) == "7x7_MBConv6"
  assert set(p["block0"]) == {sharing.SHARED, "3x3_MBConv1"}
  master = p["block1"][sharing.SHARED]
  assert master["depthwise"]["kernel"].shape == (7, 7, 48)  # 8 input channels x 6
  assert master["expand"]["kernel"].shape == (8, 48)
  assert set(s["block0"]) == {*shared, "3x3_MBConv1"}
  assert s["block0"]["3x3_MBConv3"]["expand_bn"]["mean"].shape == (24,)
  assert sharing.shared_ops(SPACE.blocks[0], "none") == ()


def test_slices_are_the_centred_window_and_the_first_channels():
  rng = np.random.default_rng(0)
  master = {"expand": {"kernel": rng.normal(size=(4, 24))},
            "expand_bn": {"scale": rng.normal(size=24), "bias": rng.normal(size=24)},
            "depthwise": {"kernel": rng.normal(size=(7, 7, 24))},
            "depthwise_bn": {"scale": rng.normal(size=24), "bias": rng.normal(size=24)},
            "project": {"kernel": rng.normal(size=(24, 5))},
            "project_bn": {"scale": rng.normal(size=5), "bias": rng.normal(size=5)}}
  got = sharing.slice_params(master, "3x3_MBConv3", "7x7_MBConv6", 4)
  np.testing.assert_array_equal(got["depthwise"]["kernel"], master["depthwise"]["kernel"][2:5, 2:5, :12])
  np.testing.assert_array_equal(got["expand"]["kernel"], master["expand"]["kernel"][:, :12])
  np.testing.assert_array_equal(got["project"]["kernel"], master["project"]["kernel"][:12])
  np.testing.assert_array_equal(got["expand_bn"]["bias"], master["expand_bn"]["bias"][:12])
  np.testing.assert_array_equal(got["project_bn"]["scale"], master["project_bn"]["scale"])
  got5 = sharing.slice_params(master, "5x5_MBConv6", "7x7_MBConv6", 4)
  np.testing.assert_array_equal(got5["depthwise"]["kernel"], master["depthwise"]["kernel"][1:6, 1:6])


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: " ".join(a.ops))
def test_child_inherits_its_slice_and_matches_the_supernet(variables, arch):
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  child = ChildNet(SPACE, arch, dw_impl="lax")
  cv = child_variables(variables, SPACE, arch, "mbconv")
  fresh = jax.eval_shape(child.init, jax.random.key(0), x)
  assert jax.tree.structure(fresh) == jax.tree.structure(cv)
  sample = fixed_sample(arch_indices(SPACE, arch))
  for train in (False, True):
    y_child = child.apply(cv, x, train=train, mutable=["batch_stats"] if train else False)
    y_super = jax.jit(lambda v, s, t=train: MODEL.apply(
        v, x, s, train=t, mutable=["batch_stats"] if t else False))(variables, sample)
    if train:
      y_child, y_super = y_child[0], y_super[0]
    np.testing.assert_allclose(y_child, y_super, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", ["remat", "packed"])
def test_master_gradient_is_the_childs_gradient_scattered_into_its_slice(variables, impl):
  """Brute force: the child's gradient w.r.t. its own (sliced) weights, written into a zero master
  at the slice's positions, is the supernet's gradient w.r.t. the master."""
  arch = ARCHS[1]
  x = jax.random.normal(jax.random.key(2), (4, 16, 16, 3))
  child = ChildNet(SPACE, arch, dw_impl="lax")
  cv = child_variables(variables, SPACE, arch, "mbconv")
  model = Supernet(SPACE, weight_sharing="mbconv", dw_impl="lax", impl=impl)

  def child_loss(p):
    y, _ = child.apply({"params": p, "batch_stats": cv["batch_stats"]}, x, train=True,
                       mutable=["batch_stats"])
    return jnp.sum(jnp.sin(y))

  def super_loss(p):
    y, _ = model.apply({"params": p, "batch_stats": variables["batch_stats"]}, x,
                       fixed_sample(arch_indices(SPACE, arch)), train=True, mutable=["batch_stats"])
    return jnp.sum(jnp.sin(y))

  gc = jax.jit(jax.grad(child_loss))(cv["params"])
  gs = jax.jit(jax.grad(super_loss))(variables["params"])
  for i, op in enumerate(arch.ops):
    block, want, b = gs[f"block{i}"], gc[f"block{i}"], SPACE.blocks[i]
    if op in sharing.shared_ops(b, "mbconv"):
      for path, m in _leaves(block[sharing.SHARED]):
        np.testing.assert_allclose(m, _scattered(m, _get(want, path), path, op, b),
                                   rtol=2e-4, atol=1e-6)
    else:
      jax.tree.map(lambda a, c: np.testing.assert_allclose(a, c, rtol=2e-4, atol=1e-6),
                   block[op], want)


def _scattered(master_leaf, grad, path, op, block):
  """`grad` (of op's own leaf at `path`) written into zeros shaped like the master's leaf, at the
  entries op's slice reads: slicing an index array of the master's shape gives those entries."""
  master = sharing.master_op(sharing.shared_ops(block, "mbconv"))
  idx = np.arange(master_leaf.size).reshape(master_leaf.shape)
  sel = sharing.slice_params(_at(path, idx), op, master, block.in_channels)
  out = np.zeros(master_leaf.size)
  out[np.asarray(_get(sel, path)).ravel()] = np.asarray(grad).ravel()
  return out.reshape(master_leaf.shape)


def _leaves(tree):
  return [(tuple(k.key for k in path), leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _at(path, value):
  """A master-shaped tree of zeros-like placeholders with `value` at `path` (for slicing)."""
  names = {"expand": ("kernel",), "depthwise": ("kernel",), "project": ("kernel",),
           "expand_bn": ("scale", "bias"), "depthwise_bn": ("scale", "bias"),
           "project_bn": ("scale", "bias")}
  tree = {layer: {leaf: np.zeros((1,) * 3) for leaf in leaves} for layer, leaves in names.items()}
  tree[path[0]][path[1]] = value
  return tree


def test_candidate_mask_marks_the_master_when_a_view_is_active(variables):
  for arch, master_on in ((ARCHS[0], True), (ARCHS[2], False)):
    mask = candidate_mask(variables["params"], SPACE, jnp.asarray(arch_indices(SPACE, arch)))
    assert all(bool(m) == master_on for m in jax.tree.leaves(mask["block0"][sharing.SHARED]))
    assert not any(bool(m) for m in jax.tree.leaves(mask["block0"]["3x3_MBConv1"]))


def test_unknown_mode_names_the_config_key():
  with pytest.raises(UserValueError, match="model.weight_sharing"):
    sharing.shared_ops(SPACE.blocks[0], "kernels")
