"""Entangled candidate weights: a block's MBConv candidates as views of one largest MBConv.

With separate weights (the paper's supernet, Cai et al. 2019 Sec. 3.1) each candidate of a block
owns its weights, so a warm-up step trains one of a block's N candidates and each gets ~1/N of the
updates. With `weight_sharing="mbconv"` a block's MBConv candidates with expand ratio > 1 are
slices of one master MBConv of the largest kernel K and expand ratio E among them (the
"superkernel" of Single-Path NAS, Stamoulis et al. 2019, and the elastic kernel and width of
Once-for-All, Cai et al. 2020): candidate kxk_MBConv(e) on C input channels uses

  expand/kernel      W_e[:, :m]                     m = round(C * e) expanded channels
  expand_bn          scale[:m], bias[:m]
  depthwise/kernel   W_d[o:o+k, o:o+k, :m]          o = (K - k) / 2: the centred kxk window
  depthwise_bn       scale[:m], bias[:m]
  project/kernel     W_p[:m, :]
  project_bn         scale, bias                    (the output width is the same for all)

so every update of any of them trains the shared centre, and the ops of a block differ only in
what they add to it. BN running statistics stay per candidate (each sees its own distribution;
they are re-estimated before a path is scored anyway). Other ops (Zero, Identity, MBConv1,
registered ops) keep their own weights. A child network inherits its op's slice
(`supernet.child_variables`), so retraining and export see ordinary MBConv weights.
"""

from __future__ import annotations

from typing import Any

import jax

from pnas_jax.errors import UserValueError
from pnas_jax.search_space import ops as ops_lib
from pnas_jax.search_space.space import BlockSpec

MODES = ("none", "mbconv")
SHARED = "shared_mbconv"  # the params key of a block's master MBConv (beside per-op keys)


def check_mode(mode: str) -> str:
  if mode not in MODES:
    raise UserValueError(f"unknown weight_sharing {mode!r}: use one of {', '.join(MODES)} "
                         "(model.weight_sharing in the search config)")
  return mode


def shared_ops(block: BlockSpec, mode: str) -> tuple[str, ...]:
  """The block's candidates that are views of its master MBConv (empty when fewer than two)."""
  if check_mode(mode) == "none":
    return ()
  ops = tuple(op for op in block.candidates
              if ops_lib.get_op(op).is_mbconv and ops_lib.get_op(op).expand > 1)
  return ops if len(ops) > 1 else ()


def master_op(ops: tuple[str, ...]) -> str:
  """The MBConv every op of `ops` is a slice of: the largest kernel and expand ratio among them."""
  specs = [ops_lib.get_op(op) for op in ops]
  return ops_lib.mbconv_name(max(s.kernel for s in specs), max(s.expand for s in specs))


def slice_params(master: Any, op: str, master_name: str, in_channels: int) -> Any:
  """Candidate `op`'s params (the tree of its own MBConv) cut from the master MBConv's params."""
  spec, big = ops_lib.get_op(op), ops_lib.get_op(master_name)
  mid = round(in_channels * spec.expand)
  off = (big.kernel - spec.kernel) // 2
  k = spec.kernel

  def bn(tree: Any, n: int | None) -> Any:
    return jax.tree.map(lambda v: v if n is None else v[:n], tree)

  return {
      "expand": {"kernel": master["expand"]["kernel"][:, :mid]},
      "expand_bn": bn(master["expand_bn"], mid),
      "depthwise": {"kernel": master["depthwise"]["kernel"][off:off + k, off:off + k, :mid]},
      "depthwise_bn": bn(master["depthwise_bn"], mid),
      "project": {"kernel": master["project"]["kernel"][:mid, :]},
      "project_bn": bn(master["project_bn"], None),
  }
