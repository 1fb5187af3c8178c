"""ChildNet: the stand-alone network for one fixed architecture (what search derives and we retrain).

stem (3x3 conv s2, BN, ReLU6) -> fixed first block -> one block per searchable position, each
`op(x) + x` where the block has an identity shortcut (stride 1, in == out), `x` alone when the op is
Zero, `op(x)` otherwise -> 1x1 conv to the tail width (BN, ReLU6) -> global average pool -> dropout ->
dense (Sec. 4 of Cai et al. 2019; MobileNetV2's macro-structure).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from pnas_jax.layers.core import Classifier, ConvBNReLU6
from pnas_jax.search_space import ops as ops_lib
from pnas_jax.search_space.space import Arch, SearchSpace


def build_op(name: str, in_ch: int, out_ch: int, stride: int, dw_impl: str) -> nn.Module:
  """Instantiates a registered op; MBConv ops get the depthwise implementation choice."""
  spec = ops_lib.get_op(name)
  if spec.is_mbconv:
    return spec.build(in_ch, out_ch, stride, dw_impl=dw_impl)
  return spec.build(in_ch, out_ch, stride)


class ChildNet(nn.Module):
  """A fixed-architecture network. `space.check_arch(arch)` is enforced at call time."""

  space: SearchSpace
  arch: Arch
  dropout_rate: float = 0.0
  dw_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    self.space.check_arch(self.arch)
    s = self.space
    x = stem_and_first_block(s, self.dw_impl)(x, train)
    for b, op in zip(s.blocks, self.arch.ops, strict=True):
      spec = ops_lib.get_op(op)
      if spec.is_zero:
        continue  # Zero + identity shortcut: the block is skipped.
      y = build_op(op, b.in_channels, b.out_channels, b.stride, self.dw_impl).copy(
          name=f"block{b.index}"
      )(x, train)
      x = x + y if b.has_shortcut else y
    return Head(s.tail_channels, s.n_classes, self.dropout_rate, name="head")(x, train)


class StemAndFirstBlock(nn.Module):
  """The fixed input layers shared by every architecture of a space."""

  stem_channels: int
  stem_stride: int
  first_block_op: str
  first_block_channels: int
  dw_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = ConvBNReLU6(self.stem_channels, 3, self.stem_stride, name="stem")(x, train)
    op = build_op(
        self.first_block_op, self.stem_channels, self.first_block_channels, 1, self.dw_impl
    )
    return op.copy(name="first_block")(x, train)


def stem_and_first_block(space: SearchSpace, dw_impl: str = "auto") -> StemAndFirstBlock:
  return StemAndFirstBlock(
      space.stem_channels,
      space.stem_stride,
      space.first_block_op,
      space.first_block_channels,
      dw_impl,
      name="input",
  )


class Head(nn.Module):
  """1x1 conv to the tail width (BN, ReLU6), global average pool, dropout, dense."""

  tail_channels: int
  n_classes: int
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = ConvBNReLU6(self.tail_channels, 1, 1, name="feature_mix")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return Classifier(self.n_classes, self.dropout_rate, name="classifier")(x, train)
