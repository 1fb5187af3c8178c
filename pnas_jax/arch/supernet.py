"""The over-parameterised network: every searchable block is a mixed op over its candidates.

Cai et al. 2019, Sec. 3.1-3.2: block l computes y_l = sum_j g_lj o_lj(x) with binary gates
g_l = one_hot(a_l) drawn from p_l = softmax(alpha_l), so only the sampled candidate runs
(`pnas_jax.arch.mixed_op`: a lax.switch on a traced index whose backward keeps the memory of one
candidate whatever N is: per-branch rematerialisation for weight steps, a custom VJP that also
returns the gate gradients for arch steps). Where the block has an identity shortcut, the output
is x + y, so the Zero candidate skips the block (depth search).

Variables: `input` and `head` exactly as in ChildNet; `block{i}/{op name}` holds candidate `op`'s
variables with the same tree as ChildNet's `block{i}` when that op is chosen (parameter-free ops
such as Identity and Zero have none). `child_variables` extracts a ChildNet's variables.

    model = Supernet(space)
    variables = model.init(key, x, fixed_sample([0] * space.n_blocks))
    logits, upd = model.apply(variables, x, sample, train=True, mutable=["batch_stats"],
                              rngs={"dropout": k})
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from pnas_jax.arch import mixed_op as mixed_lib
from pnas_jax.arch.sampling import Sample
from pnas_jax.models.child import Head, build_op, stem_and_first_block
from pnas_jax.search_space import ops as ops_lib
from pnas_jax.search_space.space import Arch, BlockSpec, SearchSpace


def _candidate_fn(module: nn.Module, train: bool, has_stats: bool) -> mixed_lib.CandidateFn:
  """Wraps a candidate module as the pure fn(params, batch_stats, x) -> (y, new batch_stats)."""

  def fn(params, stats, x):
    variables = {}
    if params:
      variables["params"] = params
    if stats:
      variables["batch_stats"] = stats
    if train and has_stats:
      y, upd = module.apply(variables, x, train=True, mutable=["batch_stats"])
      return y, upd["batch_stats"]
    return module.apply(variables, x, train=train), stats

  return fn


class MixedOp(nn.Module):
  """One searchable block's candidates; runs the sampled one (or all, weighted, for DARTS)."""

  block: BlockSpec
  dw_impl: str = "auto"
  impl: str = "remat"

  @nn.compact
  def __call__(
      self,
      x: jax.Array,
      active: jax.Array,
      train: bool,
      gates: jax.Array | None = None,
      involved: jax.Array | None = None,
      weights: jax.Array | None = None,
  ) -> jax.Array:
    b = self.block
    modules = [build_op(op, b.in_channels, b.out_channels, b.stride, self.dw_impl)
               for op in b.candidates]
    params, stats, fns = [], [], []
    for op, module in zip(b.candidates, modules, strict=True):
      if self.is_initializing() and not self.has_variable("params", op):
        init = module.init(self.make_rng("params"), x, train=False)
        if init.get("params"):
          self.param(op, lambda _rng, v=init["params"]: v)
        if init.get("batch_stats"):
          self.variable("batch_stats", op, lambda v=init["batch_stats"]: v)
      p = self.get_variable("params", op, {})
      s = self.get_variable("batch_stats", op, {})
      params.append(p)
      stats.append(s)
      fns.append(_candidate_fn(module, train, bool(s)))
    if weights is not None:
      y, new_stats = mixed_lib.weighted_sum(fns, params, stats, x, weights)
    else:
      y, new_stats = mixed_lib.mixed_op(
          fns, params, stats, x, active, gates=gates, involved=involved, impl=self.impl
      )
    if train and self.is_mutable_collection("batch_stats") and not self.is_initializing():
      for op, s in zip(b.candidates, new_stats, strict=True):
        if s:
          self.put_variable("batch_stats", op, s)
    return y


class Supernet(nn.Module):
  """The supernet of a SearchSpace; `sample` (traced indices) chooses the path that runs.

  Attributes:
    space: the search space.
    dropout_rate: dropout before the classifier (active with train=True, rng "dropout").
    dw_impl: depthwise implementation (layers/depthwise.py).
    impl: weight-mode mixed-op backward ("remat", "packed" custom VJP, "plain"; see
      arch/mixed_op.py for the measurements behind the default).
  """

  space: SearchSpace
  dropout_rate: float = 0.0
  dw_impl: str = "auto"
  impl: str = "remat"

  @nn.compact
  def __call__(
      self,
      x: jax.Array,
      sample: Sample,
      train: bool = False,
      gates: Sequence[jax.Array] | None = None,
      weights: Sequence[jax.Array] | None = None,
  ) -> jax.Array:
    """Logits of the sampled architecture.

    Args:
      x: NHWC images.
      sample: the gate sample (`sample.active[l]` runs in block l).
      train: BN batch statistics (and running-stat updates when "batch_stats" is mutable), dropout.
      gates: per-block float gate vectors g_l; when given, their cotangents are the binary-gate
        gradients dL/dg_lj = <dL/dy_l, o_lj(x)> for the involved candidates (all, or
        `sample.involved[l]` in "two" mode) and no weight gradients flow.
      weights: per-block weights w_l; when given, every candidate runs and y_l = sum_j w_lj o_lj(x)
        (DARTS-style all-paths contrast; the sample is ignored).
    """
    s = self.space
    x = stem_and_first_block(s, self.dw_impl)(x, train)
    for b in s.blocks:
      i = b.index
      y = MixedOp(b, self.dw_impl, self.impl, name=f"block{i}")(
          x,
          sample.active[i],
          train,
          gates=None if gates is None else gates[i],
          involved=None if sample.involved is None else sample.involved[i],
          weights=None if weights is None else weights[i],
      )
      x = x + y if b.has_shortcut else y
    return Head(s.tail_channels, s.n_classes, self.dropout_rate, name="head")(x, train)


def init_supernet(model: Supernet, key: jax.Array, batch_size: int = 1) -> dict[str, Any]:
  """Variables of every candidate (each block's candidate 0 is traced for the shapes)."""
  s = model.space
  x = jnp.zeros((batch_size, s.resolution, s.resolution, s.in_channels), jnp.float32)
  sample = Sample(active=jnp.zeros((s.n_blocks,), jnp.int32))
  return jax.jit(lambda k: model.init({"params": k}, x, sample, train=False))(key)


def arch_indices(space: SearchSpace, arch: Arch) -> list[int]:
  """Candidate index of each block's op (arch must be a strict member of the space)."""
  space.check_arch(arch, strict=True)
  return [b.candidates.index(op) for b, op in zip(space.blocks, arch.ops, strict=True)]


def child_variables(variables: dict[str, Any], space: SearchSpace, arch: Arch) -> dict[str, Any]:
  """ChildNet(space, arch) variables inheriting the chosen path's supernet weights and BN stats."""
  space.check_arch(arch, strict=True)
  out: dict[str, Any] = {}
  for col, tree in variables.items():
    sub = {k: tree[k] for k in ("input", "head") if k in tree}
    for b, op in zip(space.blocks, arch.ops, strict=True):
      if ops_lib.get_op(op).is_zero:
        continue
      block = tree.get(f"block{b.index}", {})
      if op in block:
        sub[f"block{b.index}"] = block[op]
    out[col] = sub
  return out


def candidate_mask(params: dict[str, Any], space: SearchSpace, active: jax.Array) -> Any:
  """Bool pytree like `params`: True for the fixed layers and each block's active candidate."""
  mask = {}
  for name, sub in params.items():
    if name.startswith("block"):
      b = space.blocks[int(name[len("block"):])]
      mask[name] = {}
      for op, tree in sub.items():
        on = active[b.index] == b.candidates.index(op)
        mask[name][op] = jax.tree.map(lambda _, on=on: on, tree)
    else:
      mask[name] = jax.tree.map(lambda _: jnp.asarray(True), sub)
  return mask
