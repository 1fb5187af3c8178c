"""Parameter and multiply-accumulate (MAC) counts for any architecture, counted the reference way.

MACs are read off the traced computation (jaxpr) of a module at batch 1, so every registered op is
counted without a hand-written formula: each convolution contributes
prod(output shape) * kh * kw * in_channels / groups, each dot_general prod(output) * contracted
size; batch-norm, activations, pooling and additions are not counted (as in the paper's tables).
Parameters are the 'params' collection (BN scale + bias included; BN running stats are not).

For FLOPs-aware search the per-block, per-candidate table `block_macs(space)` gives
E[MACs] = fixed + sum_l sum_j p_lj * MACs(o_lj) (docs/design.md §2.7, latency-aware loss).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.extend import core as jex_core

from pnas_jax.models import child as child_lib
from pnas_jax.models.child import build_op
from pnas_jax.search_space import ops as ops_lib
from pnas_jax.search_space.space import Arch, SearchSpace


def _subjaxprs(value: Any):
  if isinstance(value, jex_core.ClosedJaxpr):
    yield value.jaxpr
  elif isinstance(value, jex_core.Jaxpr):
    yield value
  elif isinstance(value, (tuple, list)):
    for v in value:
      yield from _subjaxprs(v)


def jaxpr_macs(jaxpr: jex_core.Jaxpr) -> int:
  """Sums the MACs of every conv_general_dilated and dot_general in a jaxpr (recursively)."""
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      rhs = eqn.invars[1].aval.shape
      out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
      total += math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs) // rhs[out_feature_dim]
    elif name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in lhs_contract)
    for v in eqn.params.values():
      for sub in _subjaxprs(v):
        total += jaxpr_macs(sub)
  return total


def module_cost(module: nn.Module, input_shape: tuple[int, ...], **call_kw: Any) -> tuple[int, int]:
  """(params, MACs) of a module applied to one input of `input_shape` (batch dim included)."""
  x = jax.ShapeDtypeStruct(input_shape, jnp.float32)
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros(input_shape), **call_kw))
  params = sum(math.prod(p.shape) for p in jax.tree.leaves(variables.get("params", {})))
  jaxpr = jax.make_jaxpr(lambda v, x: module.apply(v, x, **call_kw))(variables, x).jaxpr
  return params, jaxpr_macs(jaxpr)


@dataclasses.dataclass(frozen=True)
class NetCost:
  params: int
  macs: int

  @property
  def macs_m(self) -> float:
    return self.macs / 1e6


def net_cost(space: SearchSpace, arch: Arch) -> NetCost:
  """Params and MACs of the ChildNet for (space, arch) at the space's resolution, batch 1."""
  space.check_arch(arch)
  net = child_lib.ChildNet(space, arch, dw_impl="lax")
  p, m = module_cost(net, (1, space.resolution, space.resolution, space.in_channels), train=False)
  return NetCost(p, m)


@dataclasses.dataclass(frozen=True)
class BlockCosts:
  """Per-candidate costs of every searchable block plus the fixed layers' cost."""

  fixed_params: int
  fixed_macs: int
  params: tuple[dict[str, int], ...]  # block -> op -> params
  macs: tuple[dict[str, int], ...]  # block -> op -> MACs

  def total(self, arch: Arch) -> NetCost:
    return NetCost(
        self.fixed_params + sum(p[o] for p, o in zip(self.params, arch.ops, strict=True)),
        self.fixed_macs + sum(m[o] for m, o in zip(self.macs, arch.ops, strict=True)),
    )


@functools.lru_cache(maxsize=64)
def block_costs(space: SearchSpace, extra_ops: tuple[str, ...] = ()) -> BlockCosts:
  """Costs of each block's candidates (and of `extra_ops` where valid) and of the fixed layers."""
  inp = child_lib.stem_and_first_block(space, "lax")
  fp, fm = module_cost(inp, (1, space.resolution, space.resolution, space.in_channels), train=False)
  head = child_lib.Head(space.tail_channels, space.n_classes)
  last = space.blocks[-1]
  hp, hm = module_cost(head, (1, last.out_size, last.out_size, last.out_channels), train=False)
  params, macs = [], []
  for b in space.blocks:
    bp, bm = {}, {}
    names = list(b.candidates) + [
        o for o in extra_ops
        if o not in b.candidates and (b.has_shortcut or not ops_lib.get_op(o).needs_identity_position)
    ]
    for op in names:
      if ops_lib.get_op(op).is_zero:
        bp[op], bm[op] = 0, 0
        continue
      module = build_op(op, b.in_channels, b.out_channels, b.stride, "lax")
      bp[op], bm[op] = module_cost(
          module, (1, b.in_size, b.in_size, b.in_channels), train=False
      )
    params.append(bp)
    macs.append(bm)
  return BlockCosts(fp + hp, fm + hm, tuple(params), tuple(macs))
