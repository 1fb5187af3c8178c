"""The mixed op: one searchable block with its N candidates, of which only the sampled ones run.

Path binarization (Cai et al. 2019, Sec. 3.2, Eq. 3): the block output is y = sum_j g_j o_j(x) with
one-hot gates g = one_hot(a), a ~ Categorical(p), so numerically y = o_a(x) and only candidate `a`
runs (`lax.switch` on a traced index: a new sample never recompiles).

Memory. Reverse mode through `lax.switch` keeps a residual slot for every branch, so plain autodiff
grows with N (`impl="plain"`, kept for comparison). Two flat alternatives:
* `impl="remat"` (the default): jax.checkpoint around each branch; only the branch inputs are kept
  and the chosen branch's forward is recomputed inside the backward switch.
* `impl="packed"`: a custom VJP whose forward returns the chosen branch's `jax.vjp` residuals (the
  closure's leaves) packed into one buffer per dtype, sized for the largest branch; the backward
  unpacks them inside the same branch and runs its pullback. Residuals that are the branch's own
  inputs (x, weights) are not copied, and only matmul / conv / reduction results are saved (a
  jax.checkpoint policy): elementwise ops and data movement are redone in the backward, as XLA's
  fusion does in plain autodiff (a packed buffer is always materialised: the shifted
  multiply-add depthwise would otherwise store k*k shifted copies of its input).
Measured on XLA:CPU (2-block 7x7_MBConv6 probe, 64px, batch 8 for memory, 16 for time): temp
memory N=1 (no switch) 103 MiB; N=3: plain 130, packed saving every arithmetic result 130, packed
saving matmuls 79, remat 73. Gradient time over the same child network: remat 1.08x, plain 1.13x,
packed 1.20x (matmuls saved) / 1.28x (all arithmetic saved). Hence remat for the weight step;
experiments/bench_supernet.py re-measures both on the full space. The gate-gradient mode below
always uses the packed custom VJP (it has to define the gate cotangent).

Gate gradients (Sec. 3.2, "learning binarized architecture parameters"): with `gates` given, the
custom VJP returns dL/dg_j = <dL/dy, o_j(x)> (a sum over the whole tensor, batch included) for every
j in `involved`, and 0 for the others. o_j(x) is recomputed in the backward pass forward-only (no
weight-gradient residuals are kept: the reference's "full_v2"), one candidate at a time (lax.scan);
the active one reuses y. dL/dx goes through the active candidate's pullback w.r.t. x only.
The gates' values are not used in the forward: y = o_a(x) exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from pnas_jax.errors import UserValueError

# fn(params_j, batch_stats_j, x) -> (y, new_batch_stats_j)
CandidateFn = Callable[[Any, Any, jax.Array], tuple[jax.Array, Any]]
IMPLS = ("packed", "remat", "plain")

# Results worth keeping for the backward pass; everything else is recomputed from them.
_SAVED = frozenset({"dot_general", "conv_general_dilated", "reduce_sum", "reduce_max", "reduce_min"})


def _save_matmuls(prim: Any, *_: Any, **__: Any) -> bool:
  """jax.checkpoint policy: save matmul / conv / reduction results only."""
  return prim.name in _SAVED


def _lean(fn: CandidateFn) -> CandidateFn:
  return jax.checkpoint(fn, policy=_save_matmuls)


@dataclasses.dataclass(frozen=True)
class _Layout:
  """Where each leaf of one branch's pullback lives: an input of the branch or a buffer slice."""

  treedef: Any
  slots: tuple[tuple[Any, ...], ...]  # ("in", k) | ("buf", dtype_name, offset, shape)
  sizes: dict[str, int]


def _pullback_layout(make_vjp: Callable[..., Any], args: tuple[Any, ...]) -> _Layout:
  """Traces `make_vjp(*args)` abstractly and records where its residuals come from."""
  box = {}

  def probe(*args):
    y, vjp, _ = make_vjp(*args)
    in_leaves = jax.tree.leaves(args)
    leaves, treedef = jax.tree.flatten(vjp)
    slots, sizes = [], {}
    for leaf in leaves:
      k = next((i for i, a in enumerate(in_leaves) if leaf is a), None)
      if k is not None:
        slots.append(("in", k))
      else:
        leaf = jnp.asarray(leaf)
        dt = leaf.dtype.name
        slots.append(("buf", dt, sizes.get(dt, 0), leaf.shape))
        sizes[dt] = sizes.get(dt, 0) + leaf.size
    box["layout"] = _Layout(treedef, tuple(slots), sizes)
    return y

  jax.eval_shape(probe, *args)
  return box["layout"]


def _pack(vjp: Any, layout: _Layout, sizes: dict[str, int]) -> dict[str, jax.Array]:
  leaves = jax.tree.leaves(vjp)
  if len(leaves) != len(layout.slots):
    raise AssertionError("mixed op: pullback residuals differ between the probe and the trace")
  parts: dict[str, list[jax.Array]] = {dt: [] for dt in sizes}
  for leaf, slot in zip(leaves, layout.slots, strict=True):
    if slot[0] == "buf":
      parts[slot[1]].append(jnp.ravel(leaf))
  bufs = {}
  for dt, total in sizes.items():
    used = layout.sizes.get(dt, 0)
    if used < total:
      parts[dt].append(jnp.zeros((total - used,), dt))
    bufs[dt] = jnp.concatenate(parts[dt]) if len(parts[dt]) > 1 else parts[dt][0]
  return bufs


def _unpack(bufs: dict[str, jax.Array], layout: _Layout, args: tuple[Any, ...]) -> Any:
  in_leaves = jax.tree.leaves(args)
  leaves = []
  for slot in layout.slots:
    if slot[0] == "in":
      leaves.append(in_leaves[slot[1]])
    else:
      _, dt, off, shape = slot
      size = int(np.prod(shape, dtype=np.int64))
      leaves.append(lax.slice(bufs[dt], (off,), (off + size,)).reshape(shape))
  return jax.tree.unflatten(layout.treedef, leaves)


def _max_sizes(layouts: Sequence[_Layout]) -> dict[str, int]:
  sizes: dict[str, int] = {}
  for lay in layouts:
    for dt, n in lay.sizes.items():
      sizes[dt] = max(sizes.get(dt, 0), n)
  return {dt: max(n, 1) for dt, n in sorted(sizes.items())}


def _replace(items: Sequence[Any], j: int, value: Any) -> tuple[Any, ...]:
  return tuple(value if k == j else v for k, v in enumerate(items))


def _zeros_except(params: Sequence[Any], j: int, value: Any) -> tuple[Any, ...]:
  return tuple(
      value if k == j else jax.tree.map(jnp.zeros_like, p) for k, p in enumerate(params)
  )


def _switch_primal(fns, params, stats, x, active):
  def branch(j):
    def run(params, stats, x):
      y, s = fns[j](params[j], stats[j], x)
      return y, _replace(stats, j, s)

    return run

  return lax.switch(active, [branch(j) for j in range(len(fns))], params, stats, x)


def _packed_forward(make_vjp, layouts, sizes, params, stats, x, active):
  """Runs the active branch under lax.switch: (y, new stats, its residuals packed into buffers
  sized for the largest branch), so the residual memory is one branch's, whatever N is."""

  def branch(j):
    def run(params, stats, x):
      y, vjp, s = make_vjp(j)(params[j], stats[j], x)
      return y, _replace(stats, j, s), _pack(vjp, layouts[j], sizes)

    return run

  return lax.switch(active, [branch(j) for j in range(len(layouts))], params, stats, x)


def _vjp_params_x(fn, s):
  return lambda p, x: fn(p, s, x)


def _single_packed(fns, params, stats, x, active):
  """Binary-gated forward with a custom VJP: weight and input gradients of the active path only."""
  n = len(fns)

  def make_vjp(j):
    return lambda p, s, x: jax.vjp(_vjp_params_x(_lean(fns[j]), s), p, x, has_aux=True)

  layouts = [_pullback_layout(make_vjp(j), (params[j], stats[j], x)) for j in range(n)]
  sizes = _max_sizes(layouts)

  @jax.custom_vjp
  def op(params, stats, x, active):
    return _switch_primal(fns, params, stats, x, active)

  def fwd(params, stats, x, active):
    y, new_stats, bufs = _packed_forward(make_vjp, layouts, sizes, params, stats, x, active)
    return (y, new_stats), (bufs, params, stats, x, active)

  def bwd(res, cts):
    bufs, params, stats, x, active = res
    ct_y = cts[0]

    def branch(j):
      def run(bufs, params, stats, x, ct_y):
        vjp = _unpack(bufs, layouts[j], (params[j], stats[j], x))
        dp, dx = vjp(ct_y)
        return _zeros_except(params, j, dp), dx

      return run

    dparams, dx = lax.switch(active, [branch(j) for j in range(n)], bufs, params, stats, x, ct_y)
    return dparams, None, dx, None

  op.defvjp(fwd, bwd)
  return op(params, stats, x, active)


def _single_autodiff(fns, params, stats, x, active, remat: bool):
  def branch(j):
    def run(params, stats, x):
      y, s = fns[j](params[j], stats[j], x)
      return y, _replace(stats, j, s)

    return jax.checkpoint(run) if remat else run

  return lax.switch(active, [branch(j) for j in range(len(fns))], params, stats, x)


def _gated(fns, params, stats, x, active, gates, involved):
  """Forward o_active(x); backward dL/dx through o_active and dL/dg_j = <dL/dy, o_j(x)>."""
  n = len(fns)
  gates_dtype = gates.dtype

  def make_vjp(j):
    return lambda p, s, x: jax.vjp(lambda x: _lean(fns[j])(p, s, x), x, has_aux=True)

  layouts = [_pullback_layout(make_vjp(j), (params[j], stats[j], x)) for j in range(n)]
  sizes = _max_sizes(layouts)

  @jax.custom_vjp
  def op(params, stats, x, gates, active, involved):
    del gates, involved
    return _switch_primal(fns, params, stats, x, active)

  def fwd(params, stats, x, gates, active, involved):
    del gates
    y, new_stats, bufs = _packed_forward(make_vjp, layouts, sizes, params, stats, x, active)
    return (y, new_stats), (bufs, params, stats, x, y, active, involved)

  def bwd(res, cts):
    bufs, params, stats, x, y, active, involved = res
    ct_y = cts[0]

    def pullback(j):
      def run(bufs, params, stats, x, ct_y):
        (dx,) = _unpack(bufs, layouts[j], (params[j], stats[j], x))(ct_y)
        return dx

      return run

    dx = lax.switch(active, [pullback(j) for j in range(n)], bufs, params, stats, x, ct_y)

    def inner(j):
      # Forward only (nothing here is differentiated): no weight-gradient residuals.
      def run(params, stats, x, y, ct_y):
        o = fns[j](params[j], stats[j], x)[0]
        return jnp.sum(ct_y.astype(jnp.float32) * o.astype(jnp.float32))

      return run

    def reuse_y(params, stats, x, y, ct_y):
      return jnp.sum(ct_y.astype(jnp.float32) * y.astype(jnp.float32))

    def body(carry, j):
      idx = jnp.where(j == active, n, j)
      val = lax.switch(idx, [inner(k) for k in range(n)] + [reuse_y], params, stats, x, y, ct_y)
      return carry, val

    _, vals = lax.scan(body, None, involved)
    dg = jnp.zeros((n,), jnp.float32).at[involved].set(vals).astype(gates_dtype)
    return None, None, dx, dg, None, None

  op.defvjp(fwd, bwd)
  return op(params, stats, x, gates, active, involved)


def mixed_op(
    fns: Sequence[CandidateFn],
    params: Sequence[Any],
    stats: Sequence[Any],
    x: jax.Array,
    active: jax.Array,
    *,
    gates: jax.Array | None = None,
    involved: jax.Array | None = None,
    impl: str = "remat",
) -> tuple[jax.Array, tuple[Any, ...]]:
  """Runs the sampled candidate of one block; returns (y, every candidate's new batch stats).

  Args:
    fns: fns[j](params_j, batch_stats_j, x) -> (o_j(x), new batch stats of j).
    params, stats: per-candidate variables (empty dicts for parameter-free ops).
    x: the block input.
    active: traced int32 scalar, the sampled candidate a (g = one_hot(a)).
    gates: float (N,) vector; when given, its cotangent is the gate gradient
      dL/dg_j = <dL/dy, o_j(x)> for j in `involved` (0 elsewhere) and no weight gradients flow.
    involved: int32 (K,) candidate indices whose gate gradient is computed ("full": all N,
      "two": the sampled pair); defaults to all.
    impl: weight-mode backward: "remat" (default), "packed" (custom VJP) or "plain" (autodiff
      through the switch). The gate mode always uses the packed custom VJP.
  """
  if impl not in IMPLS:
    raise UserValueError(f"unknown mixed-op impl {impl!r}; valid: {', '.join(IMPLS)}")
  params, stats = tuple(params), tuple(stats)
  active = jnp.asarray(active, jnp.int32)
  if gates is not None:
    if involved is None:
      involved = jnp.arange(len(fns), dtype=jnp.int32)
    return _gated(fns, params, stats, x, active, gates, jnp.asarray(involved, jnp.int32))
  if impl == "packed":
    return _single_packed(fns, params, stats, x, active)
  return _single_autodiff(fns, params, stats, x, active, remat=impl == "remat")


def weighted_sum(
    fns: Sequence[CandidateFn],
    params: Sequence[Any],
    stats: Sequence[Any],
    x: jax.Array,
    weights: jax.Array,
) -> tuple[jax.Array, tuple[Any, ...]]:
  """All paths run: y = sum_j w_j o_j(x) (DARTS-style; the memory the binarization avoids)."""
  y, new_stats = None, []
  for j, fn in enumerate(fns):
    o, s = fn(params[j], stats[j], x)
    term = weights[j].astype(o.dtype) * o
    y = term if y is None else y + term
    new_stats.append(s)
  return y, tuple(new_stats)
