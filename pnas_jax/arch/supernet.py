"""The over-parameterised network: every searchable block is a mixed op over its candidates.

Cai et al. 2019, Sec. 3.1-3.2: block l computes y_l = sum_j g_lj o_lj(x) with binary gates
g_l = one_hot(a_l) drawn from p_l = softmax(alpha_l), so only the sampled candidate runs
(`pnas_jax.arch.mixed_op`: a lax.switch on a traced index whose backward keeps the memory of one
candidate whatever N is: per-branch rematerialisation for weight steps, a custom VJP that also
returns the gate gradients for arch steps). Where the block has an identity shortcut, the output
is x + y, so the Zero candidate skips the block (depth search).

Variables: `input` and `head` exactly as in ChildNet; `block{i}/{op name}` holds candidate `op`'s
variables with the same tree as ChildNet's `block{i}` when that op is chosen (parameter-free ops
such as Identity and Zero have none). With `weight_sharing="mbconv"` a block's MBConv candidates
have no params of their own but views of `block{i}/shared_mbconv` (arch/weight_sharing.py).
`child_variables` extracts a ChildNet's variables.

Compile time. A step's jaxpr holds every candidate of every block (the paper's ImageNet space: 21
blocks x 6-7 candidates), and JAX's tracing and autodiff of it took most of a warm start (the
persistent compilation cache skips XLA, not the trace). Two things cut it without changing the
variables: consecutive blocks with identical shapes and candidates (`repeated_runs`: 5 runs of 3
in that space) run as one `lax.scan` over their stacked variables, so each run is traced and
compiled once (11 block bodies instead of 21); and each candidate is a cached `jax.jit` function
(`_jitted_candidate`), so its repeated traces within a step hit JAX's trace caches. Measured on
the ImageNet space's weight step (128x128, batch 32, process CPU time on a loaded 2-core machine):
trace 23.6 s -> 13.9 s (scan) -> 11.2 s (both), lowering 3.0 s -> 2.1 s, StableHLO 19.2 MB ->
12.0 MB.

    model = Supernet(space)
    variables = model.init(key, x, fixed_sample([0] * space.n_blocks))
    logits, upd = model.apply(variables, x, sample, train=True, mutable=["batch_stats"],
                              rngs={"dropout": k})
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from pnas_jax.arch import mixed_op as mixed_lib
from pnas_jax.arch import weight_sharing as sharing
from pnas_jax.arch.sampling import Sample
from pnas_jax.layers import core as layers_core
from pnas_jax.models.child import Head, build_op, stem_and_first_block
from pnas_jax.search_space import ops as ops_lib
from pnas_jax.search_space.space import Arch, BlockSpec, SearchSpace


@functools.cache
def _jitted_candidate(op: str, in_ch: int, out_ch: int, stride: int, dw_impl: str, train: bool,
                      has_stats: bool, bn_axis: str | None, bn_impl: str,
                      master: str | None = None) -> mixed_lib.CandidateFn:
  """One jitted function per candidate kind, so JAX traces and differentiates it once per shape.

  A step traces each candidate several times (the switch branch, its linearisation, the backward;
  every block of the same shapes; the weight and arch steps): jax.jit's trace cache and the
  jaxpr-level caches of its transformations make the repeats cheap. XLA inlines the calls.
  `bn_axis` and `bn_impl` (read by BatchNorm at trace time) are part of the key, so a cached
  trace never outlives a change of batch_norm_axis or batch_norm_impl. With `master`, the
  function takes that master MBConv's params and runs its slice (arch/weight_sharing.py).
  """
  del bn_axis, bn_impl
  return jax.jit(_candidate_fn(op, in_ch, out_ch, stride, dw_impl, train, has_stats, master))


def _candidate_fn(op: str, in_ch: int, out_ch: int, stride: int, dw_impl: str, train: bool,
                  has_stats: bool, master: str | None) -> mixed_lib.CandidateFn:
  """Candidate `op` as the pure fn(params, batch_stats, x) -> (y, new batch_stats); with `master`,
  `params` are the master MBConv's and the op runs on its slice of them."""
  module = build_op(op, in_ch, out_ch, stride, dw_impl)

  def fn(params, stats, x):
    if master is not None:
      params = sharing.slice_params(params, op, master, in_ch)
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


def _stacked(trees: Sequence[Any]) -> Any:
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _unstacked(tree: Any, n: int) -> list[Any]:
  return [jax.tree.map(lambda leaf, k=k: leaf[k], tree) for k in range(n)]


def block_apply(
    block: BlockSpec,
    params: dict[str, Any],
    stats: dict[str, Any],
    x: jax.Array,
    active: jax.Array,
    train: bool,
    *,
    dw_impl: str = "auto",
    impl: str = "remat",
    gates: jax.Array | None = None,
    involved: jax.Array | None = None,
    weights: jax.Array | None = None,
    weight_sharing: str = "none",
) -> tuple[jax.Array, dict[str, Any]]:
  """One searchable block as a pure function of its variables: (y, new batch stats).

  `params` / `stats` hold one subtree per candidate op (the `block{i}` layout; parameter-free ops
  have none), and with weight_sharing="mbconv" one `SHARED` master for the block's MBConv
  candidates (arch/weight_sharing.py). Runs the sampled candidate (`mixed_op`) or, with
  `weights`, all of them.
  """
  # The packed custom VJPs (impl="packed", gate gradients) find the residuals that are the
  # candidate's own inputs by identity, which a jit boundary hides (they would be copied).
  jitted = gates is None and weights is None and impl != "packed"
  shared = sharing.shared_ops(block, weight_sharing)
  master = sharing.master_op(shared) if shared else None
  ps, ss, fns = [], [], []
  for op in block.candidates:
    view = master if op in shared else None
    p = params[sharing.SHARED] if view else params.get(op, {})
    s = stats.get(op, {})
    ps.append(p)
    ss.append(s)
    args = (op, block.in_channels, block.out_channels, block.stride, dw_impl, train, bool(s))
    if jitted:
      fns.append(_jitted_candidate(*args, layers_core.current_batch_norm_axis(),
                                   layers_core.current_batch_norm_impl(), view))
    else:
      fns.append(_candidate_fn(*args, view))
  if weights is not None:
    y, new_stats = mixed_lib.weighted_sum(fns, ps, ss, x, weights)
  else:
    y, new_stats = mixed_lib.mixed_op(fns, ps, ss, x, active, gates=gates, involved=involved,
                                      impl=impl)
  return y, {op: s for op, s in zip(block.candidates, new_stats, strict=True) if s}


class MixedOp(nn.Module):
  """One searchable block's candidates; runs the sampled one (or all, weighted, for DARTS)."""

  block: BlockSpec
  dw_impl: str = "auto"
  impl: str = "remat"
  weight_sharing: str = "none"

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
    if self.is_initializing():
      self._init_variables(x)
    names = (*b.candidates, sharing.SHARED)
    params = {op: self.get_variable("params", op) for op in names
              if self.has_variable("params", op)}
    stats = {op: self.get_variable("batch_stats", op) for op in b.candidates
             if self.has_variable("batch_stats", op)}
    y, new_stats = block_apply(b, params, stats, x, active, train, dw_impl=self.dw_impl,
                               impl=self.impl, gates=gates, involved=involved, weights=weights,
                               weight_sharing=self.weight_sharing)
    if train and self.is_mutable_collection("batch_stats") and not self.is_initializing():
      for op, s in new_stats.items():
        self.put_variable("batch_stats", op, s)
    return y

  def _init_variables(self, x: jax.Array) -> None:
    """Each candidate's BN statistics, and params: its own, or (shared ops) the block master's."""
    b = self.block
    shared = sharing.shared_ops(b, self.weight_sharing)
    if shared and not self.has_variable("params", sharing.SHARED):
      master = build_op(sharing.master_op(shared), b.in_channels, b.out_channels, b.stride,
                        self.dw_impl)
      init = master.init(self.make_rng("params"), x, train=False)
      self.param(sharing.SHARED, lambda _rng, v=init["params"]: v)
    for op in b.candidates:
      if self.has_variable("params", op) or self.has_variable("batch_stats", op):
        continue
      module = build_op(op, b.in_channels, b.out_channels, b.stride, self.dw_impl)
      init = module.init(self.make_rng("params"), x, train=False)
      if init.get("params") and op not in shared:
        self.param(op, lambda _rng, v=init["params"]: v)
      if init.get("batch_stats"):
        self.variable("batch_stats", op, lambda v=init["batch_stats"]: v)


def repeated_runs(space: SearchSpace) -> list[tuple[BlockSpec, ...]]:
  """The blocks in order, consecutive ones with identical shapes and candidates grouped.

  Blocks of a group all have the identity shortcut (stride 1, in == out), so one block's body can
  run them in a `lax.scan` over their stacked variables.
  """
  runs: list[list[BlockSpec]] = []
  for b in space.blocks:
    prev = runs[-1][-1] if runs else None
    if (prev is not None and b.has_shortcut and prev.has_shortcut
        and _shape_key(b) == _shape_key(prev)):
      runs[-1].append(b)
    else:
      runs.append([b])
  return [tuple(r) for r in runs]


def _shape_key(b: BlockSpec) -> tuple[Any, ...]:
  return (b.in_channels, b.out_channels, b.stride, b.in_size, b.candidates)


class Supernet(nn.Module):
  """The supernet of a SearchSpace; `sample` (traced indices) chooses the path that runs.

  Attributes:
    space: the search space.
    dropout_rate: dropout before the classifier (active with train=True, rng "dropout").
    dw_impl: depthwise implementation (layers/depthwise.py).
    impl: weight-mode mixed-op backward ("remat", "packed" custom VJP, "plain"; see
      arch/mixed_op.py for the measurements behind the default).
    weight_sharing: "none" (each candidate its own weights, as the paper) or "mbconv" (a block's
      MBConv candidates are slices of one master MBConv; arch/weight_sharing.py).
    scan_blocks: run each group of consecutive identical blocks (`repeated_runs`) as one
      `lax.scan` over their stacked variables, so JAX traces and XLA compiles one body per group
      instead of one per block. The variables keep the `block{i}` layout (stacked inside the
      step only).
  """

  space: SearchSpace
  dropout_rate: float = 0.0
  dw_impl: str = "auto"
  impl: str = "remat"
  scan_blocks: bool = True
  weight_sharing: str = "none"

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
    for run in repeated_runs(s):
      if len(run) > 1 and len(run[0].candidates) > 1 and self._scans(gates, weights):
        x = self._scan_run(run, x, sample, train, gates)
        continue
      for b in run:
        i = b.index
        y = MixedOp(b, self.dw_impl, self.impl, self.weight_sharing, name=f"block{i}")(
            x,
            sample.active[i],
            train,
            gates=None if gates is None else gates[i],
            involved=None if sample.involved is None else sample.involved[i],
            weights=None if weights is None else weights[i],
        )
        x = x + y if b.has_shortcut else y
    return Head(s.tail_channels, s.n_classes, self.dropout_rate, name="head")(x, train)


  def _scans(self, gates: Sequence[jax.Array] | None, weights: Sequence[jax.Array] | None) -> bool:
    """Whether repeated blocks run as a scan: not at init (variables are created per block), not
    for all-paths weights, not for the "packed" weight mode (XLA copies the branch's packed residual
    buffer into the scan's stacked residuals: +22% temp memory on a 2-block probe). Blocks with a
    single candidate (no mixed op) are not scanned either (see the README's CPU performance)."""
    if not self.scan_blocks or self.is_initializing() or weights is not None:
      return False
    return gates is not None or self.impl != "packed"

  def _scan_run(self, run: Sequence[BlockSpec], x: jax.Array, sample: Sample, train: bool,
                gates: Sequence[jax.Array] | None) -> jax.Array:
    """x after the blocks of `run` (identical, with shortcuts), as one scan over their variables."""
    names = [f"block{b.index}" for b in run]
    params = _stacked([self.get_variable("params", n, {}) for n in names])
    stats = _stacked([self.get_variable("batch_stats", n, {}) for n in names])
    lo, hi = run[0].index, run[-1].index + 1
    xs = {
        "params": params,
        "stats": stats,
        "active": sample.active[lo:hi],
        "gates": None if gates is None else jnp.stack(gates[lo:hi]),
        "involved": None if sample.involved is None else sample.involved[lo:hi],
    }

    def body(x, xs):
      y, new_stats = block_apply(run[0], xs["params"], xs["stats"], x, xs["active"], train,
                                 dw_impl=self.dw_impl, impl=self.impl, gates=xs["gates"],
                                 involved=xs["involved"], weight_sharing=self.weight_sharing)
      return x + y, new_stats

    x, new_stats = jax.lax.scan(body, x, xs)
    if train and self.is_mutable_collection("batch_stats"):
      for n, st in zip(names, _unstacked(new_stats, len(run)), strict=True):
        self.put_variable("batch_stats", n, st)
    return x


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


def child_variables(variables: dict[str, Any], space: SearchSpace, arch: Arch,
                    weight_sharing: str = "none") -> dict[str, Any]:
  """ChildNet(space, arch) variables inheriting the chosen path's supernet weights and BN stats
  (with weight_sharing="mbconv", a shared op's params are its slice of the block's master)."""
  space.check_arch(arch, strict=True)
  out: dict[str, Any] = {}
  for col, tree in variables.items():
    sub = {k: tree[k] for k in ("input", "head") if k in tree}
    for b, op in zip(space.blocks, arch.ops, strict=True):
      if ops_lib.get_op(op).is_zero:
        continue
      block = tree.get(f"block{b.index}", {})
      shared = sharing.shared_ops(b, weight_sharing)
      if col == "params" and op in shared:
        sub[f"block{b.index}"] = sharing.slice_params(block[sharing.SHARED], op,
                                                      sharing.master_op(shared), b.in_channels)
      elif op in block:
        sub[f"block{b.index}"] = block[op]
    out[col] = sub
  return out


def candidate_mask(params: dict[str, Any], space: SearchSpace, active: jax.Array) -> Any:
  """Bool pytree like `params`: True for the fixed layers and each block's active candidate (and
  its block's shared master, arch/weight_sharing.py, when the active op is one of its views)."""
  mask = {}
  for name, sub in params.items():
    if name.startswith("block"):
      b = space.blocks[int(name[len("block"):])]
      mask[name] = {}
      for op, tree in sub.items():
        ops = sharing.shared_ops(b, "mbconv") if op == sharing.SHARED else (op,)
        on = functools.reduce(jnp.logical_or,
                              [active[b.index] == b.candidates.index(o) for o in ops])
        mask[name][op] = jax.tree.map(lambda _, on=on: on, tree)
    else:
      mask[name] = jax.tree.map(lambda _: jnp.asarray(True), sub)
  return mask
