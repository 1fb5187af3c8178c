"""A PyTorch twin of `pnas_jax.models.child.ChildNet`, built from the same SearchSpace and Arch.

Used only by experiments/bench_ops.py to compare our jitted JAX training step with PyTorch eager
(oneDNN) on the same CPU, same network, same batch. The network is built by iterating
`space.blocks` and `arch.ops` exactly as ChildNet does, so both are the same architecture by
construction; bench_ops.py also asserts that the parameter counts are equal.

  stem: conv3x3 s2 (3 -> C0), BN, ReLU6 -> first block MBConv(k3, e1) -> per block
  MBConv(k, e) [+ x where stride 1 and in == out; skipped when Zero] -> 1x1 conv to the tail width,
  BN, ReLU6 -> global average pool -> dropout -> linear (with bias).

BN: momentum 0.1 (PyTorch convention), eps 1e-3, as the JAX model (docs/design.md §2.11).

Requires torch (`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import torch
from torch import nn

from pnas_jax.search_space import ops as ops_lib
from pnas_jax.search_space.space import Arch, SearchSpace

BN_MOMENTUM = 0.1
BN_EPS = 1e-3


def _bn(c: int) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(c, momentum=BN_MOMENTUM, eps=BN_EPS)


class MBConv(nn.Module):
  """[1x1 expand, BN, ReLU6] -> kxk depthwise (stride s, pad k//2), BN, ReLU6 -> 1x1, BN."""

  def __init__(self, in_ch: int, out_ch: int, kernel: int, expand: int, stride: int):
    super().__init__()
    mid = round(in_ch * expand)
    layers: list[nn.Module] = []
    if expand != 1:
      layers += [nn.Conv2d(in_ch, mid, 1, bias=False), _bn(mid), nn.ReLU6(inplace=True)]
    layers += [
        nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False),
        _bn(mid),
        nn.ReLU6(inplace=True),
        nn.Conv2d(mid, out_ch, 1, bias=False),
        _bn(out_ch),
    ]
    self.body = nn.Sequential(*layers)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.body(x)


class Block(nn.Module):
  """One searchable block: op(x) + x where it has an identity shortcut, else op(x)."""

  def __init__(self, op: nn.Module, shortcut: bool):
    super().__init__()
    self.op = op
    self.shortcut = shortcut

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = self.op(x)
    return y + x if self.shortcut else y


def _mbconv(name: str, in_ch: int, out_ch: int, stride: int) -> MBConv:
  spec = ops_lib.get_op(name)
  if not spec.is_mbconv:
    raise ValueError(f"the torch twin supports MBConv ops and Zero only, got {name!r}")
  return MBConv(in_ch, out_ch, spec.kernel, spec.expand, stride)


class TorchChildNet(nn.Module):
  """The PyTorch twin of ChildNet(space, arch, dropout_rate)."""

  def __init__(self, space: SearchSpace, arch: Arch, dropout_rate: float = 0.0):
    super().__init__()
    space.check_arch(arch)
    s = space
    self.stem = nn.Sequential(
        nn.Conv2d(s.in_channels, s.stem_channels, 3, s.stem_stride, 1, bias=False),
        _bn(s.stem_channels),
        nn.ReLU6(inplace=True),
    )
    self.first_block = _mbconv(s.first_block_op, s.stem_channels, s.first_block_channels, 1)
    blocks = []
    for b, op in zip(s.blocks, arch.ops, strict=True):
      if ops_lib.get_op(op).is_zero:
        continue  # Zero + identity shortcut: the block is skipped.
      blocks.append(Block(_mbconv(op, b.in_channels, b.out_channels, b.stride), b.has_shortcut))
    self.blocks = nn.Sequential(*blocks)
    last = s.blocks[-1].out_channels
    self.feature_mix = nn.Sequential(
        nn.Conv2d(last, s.tail_channels, 1, bias=False),
        _bn(s.tail_channels),
        nn.ReLU6(inplace=True),
    )
    self.dropout = nn.Dropout(dropout_rate)
    self.classifier = nn.Linear(s.tail_channels, s.n_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.first_block(self.stem(x))
    x = self.feature_mix(self.blocks(x))
    x = x.mean(dim=(2, 3))
    return self.classifier(self.dropout(x))


def n_params(net: nn.Module) -> int:
  """Trainable parameters (BN scale and bias included, running statistics not)."""
  return sum(p.numel() for p in net.parameters() if p.requires_grad)
