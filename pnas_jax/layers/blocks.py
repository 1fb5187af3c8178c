"""The candidate ops of the ProxylessNAS search space (Sec. 4 of Cai et al. 2019).

MBConv(k, e) (MobileNetV2's inverted bottleneck): [1x1 expand -> BN -> ReLU6, omitted when e == 1]
-> kxk depthwise, stride s -> BN -> ReLU6 -> 1x1 project -> BN (no activation). The residual add is
not part of the op: the block around it (models/child.py) adds the identity shortcut where stride is
1 and in == out, and skips the op when it is Zero.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from pnas_jax.layers import core as layers


class MBConv(nn.Module):
  """Mobile inverted bottleneck conv; mid width = round(in * expand_ratio)."""

  out_channels: int
  kernel_size: int
  expand_ratio: int
  stride: int = 1
  dw_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    mid = round(x.shape[-1] * self.expand_ratio)
    if self.expand_ratio != 1:
      x = layers.Pointwise(mid, name="expand")(x)
      x = layers.BatchNorm(use_running_average=not train, activation="relu6", name="expand_bn")(x)
    x = layers.Depthwise(self.kernel_size, self.stride, self.dw_impl, name="depthwise")(x)
    x = layers.BatchNorm(use_running_average=not train, activation="relu6", name="depthwise_bn")(x)
    x = layers.Pointwise(self.out_channels, name="project")(x)
    return layers.BatchNorm(use_running_average=not train, name="project_bn")(x)


class Identity(nn.Module):
  """Returns its input (valid only where in == out and stride 1)."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    return x


class Zero(nn.Module):
  """Returns zeros of the output shape; with the identity shortcut the block is skipped."""

  out_channels: int
  stride: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    b, h, w, _ = x.shape
    s = self.stride
    return jnp.zeros((b, -(-h // s), -(-w // s), self.out_channels), x.dtype)
