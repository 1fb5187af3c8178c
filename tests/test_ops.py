"""Op registry: lookup, errors that list valid names, and extending the space with one registration."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from pnas_jax.errors import UnknownNameError
from pnas_jax.layers import core as layers
from pnas_jax.models.child import ChildNet
from pnas_jax.models.cost import block_costs, net_cost
from pnas_jax.models.init import init_variables
from pnas_jax.search_space import (
  Arch,
  SearchSpace,
  SearchSpaceError,
  get_op,
  register_op,
  to_net_config,
  unregister_op,
)


def test_builtin_ops():
  op = get_op("5x5_MBConv6")
  assert (op.kernel, op.expand, op.is_zero, op.needs_identity_position) == (5, 6, False, False)
  assert get_op("9x9_MBConv2").kernel == 9  # any odd kernel / expand ratio by pattern
  assert get_op("Zero").is_zero and get_op("Zero").needs_identity_position
  assert get_op("Identity").needs_identity_position and not get_op("Identity").is_zero


def test_unknown_op_lists_valid_names():
  with pytest.raises(UnknownNameError) as e:
    get_op("3x3_DWConv")
  msg = str(e.value)
  for name in ("Identity", "Zero", "3x3_MBConv3", "7x7_MBConv6", "KxK_MBConvE"):
    assert name in msg
  with pytest.raises(UnknownNameError, match="kernel must be square and odd"):
    get_op("3x5_MBConv3")
  with pytest.raises(UnknownNameError, match="expand ratio >= 1"):
    get_op("3x3_MBConv0")


def test_registration_clashes():
  with pytest.raises(ValueError, match="already registered"):
    register_op("Zero")(lambda i, o, s: None)
  with pytest.raises(ValueError, match="collides with the built-in"):
    register_op("3x3_MBConv3")(lambda i, o, s: None)


class ConvBNReLU(nn.Module):
  """A plain 3x3 conv op: the README's example of a user-registered candidate."""

  out_channels: int
  stride: int

  @nn.compact
  def __call__(self, x, train=False):
    x = layers.Conv(self.out_channels, 3, self.stride)(x)
    x = layers.BatchNorm(use_running_average=not train)(x)
    return jax.nn.relu6(x)


@pytest.fixture
def conv_op():
  register_op("3x3_Conv")(lambda in_ch, out_ch, stride: ConvBNReLU(out_ch, stride))
  yield "3x3_Conv"
  unregister_op("3x3_Conv")


def test_user_op_in_space_net_and_costs(conv_op):
  space = SearchSpace(
      stage_widths=(16, 24), stage_depths=(2, 2), stage_strides=(2, 2),
      candidates=("3x3_MBConv3", conv_op), stem_width=16, first_block_width=8, tail_width=64,
      n_classes=10, resolution=32,
  )
  assert all(conv_op in b.candidates for b in space.blocks)
  arch = Arch((conv_op, "Zero", "3x3_MBConv3", conv_op))
  space.check_arch(arch, strict=True)
  net = ChildNet(space, arch)
  x = jnp.ones((2, 32, 32, 3))
  variables = init_variables(net, jax.random.key(0), x)
  assert jax.jit(net.apply)(variables, x).shape == (2, 10)
  # Counted without a hand-written formula: MACs = H_out * W_out * 3 * 3 * in * out.
  b = space.blocks[0]
  costs = block_costs(space)
  assert costs.macs[0][conv_op] == b.out_size**2 * 9 * b.in_channels * b.out_channels
  assert costs.params[0][conv_op] == 9 * b.in_channels * b.out_channels + 2 * b.out_channels
  assert costs.total(arch) == net_cost(space, arch)
  # No reference net.config representation was registered for it.
  with pytest.raises(SearchSpaceError, match="'3x3_Conv' has no reference net.config"):
    to_net_config(space, arch)


def test_unregister_unknown():
  with pytest.raises(UnknownNameError, match="unknown candidate op 'never_registered'; valid: "):
    unregister_op("never_registered")
