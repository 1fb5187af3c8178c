"""Deriving the final architecture from the learned logits (Cai et al. 2019, Sec. 3.2 / 4).

The derived path is argmax_j p_lj = argmax_j alpha_lj per block; a block whose argmax is Zero is
skipped in the child network (its identity shortcut carries the input).

`derive_within_budget` is our extension for short searches. There the argmax of still diffuse
probabilities can land far from the target on either side of E[LAT], and the binary-gate gradient
favours Zero in undertrained supernets (dL/dg of Zero is 0, while an undertrained op's output is
usually one the loss would rather shrink). It returns the most probable path whose latency under
an additive model LAT(a) = c0 + sum_l c_l[a_l] (a lookup table or the linear predictor) lies in
the band [(1 - band) T, T] below the target T:

    a* = argmax_a sum_l log p_l[a_l]   s.t.   (1 - band) T <= c0 + sum_l c_l[a_l] <= T.

band = 0 is the plain budget LAT <= T (then the argmax, when it fits, is the answer); band > 0 also
rules out nets much faster than asked for, whose accuracy the user did not need to give up.
Solved by dynamic programming over the blocks with partial latencies merged in bins of
resolution * T / L (L blocks): the result is in the band, and at least as probable as every
architecture whose latency is inside the band by resolution * T (tests/test_derive.py checks both
against exhaustive search).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pnas_jax.arch.sampling import empty_band_error
from pnas_jax.errors import UserValueError
from pnas_jax.search_space.space import Arch, SearchSpace


def derive(alpha: Sequence[np.ndarray], space: SearchSpace) -> Arch:
  """Arch with op argmax_j alpha_lj in every block (ties: the first candidate)."""
  if len(alpha) != space.n_blocks:
    raise ValueError(f"got {len(alpha)} alpha vectors for {space.n_blocks} searchable blocks")
  ops = []
  for b, a in zip(space.blocks, alpha, strict=True):
    a = np.asarray(a)
    if a.shape != (len(b.candidates),):
      raise ValueError(
          f"block {b.index}: alpha has shape {a.shape}, expected ({len(b.candidates)},) for "
          f"candidates {list(b.candidates)}"
      )
    ops.append(b.candidates[int(np.argmax(a))])
  return Arch(tuple(ops))


def derive_within_budget(alpha: Sequence[np.ndarray], space: SearchSpace, base_cost: float,
                         block_costs: Sequence[Sequence[float]], budget: float, band: float = 0.0,
                         resolution: float = 1e-4) -> Arch:
  """The most probable arch with latency in [(1 - band) budget, budget] (module docstring).

  Args:
    base_cost, block_costs: LAT(a) = base_cost + sum_l block_costs[l][a_l] (predictor.block_costs).
    budget: the target T; band: the fraction of T below it that is still acceptable (0: any).
    resolution: the latency resolution of the search, as a fraction of T.
  Raises ValueError naming the reachable latency range when no arch is in the band.
  """
  if len(block_costs) != len(alpha):
    raise ValueError(f"got {len(block_costs)} cost rows for {len(alpha)} alpha vectors")
  if not 0.0 <= band < 1.0:
    raise UserValueError(f"band = {band}: use a fraction in [0, 1) (0.1: within 10% below the target)")
  derive(alpha, space)  # shape checks
  rows = [np.asarray(c, np.float64) for c in block_costs]
  hi = budget - base_cost
  lo = (1.0 - band) * budget - base_cost if band > 0 else -np.inf
  # Cheapest / dearest completion after each block, to drop partial paths that cannot end in band.
  min_rest = np.append(np.cumsum([r.min() for r in rows][::-1])[::-1][1:], 0.0)
  max_rest = np.append(np.cumsum([r.max() for r in rows][::-1])[::-1][1:], 0.0)
  width = resolution * abs(budget) / len(rows)
  cost, score = np.zeros(1), np.zeros(1)  # one partial path per latency bin: exact cost, log p
  back: list[tuple[np.ndarray, np.ndarray]] = []  # per block: (parent index, op index)
  for a, c, rest_min, rest_max in zip(alpha, rows, min_rest, max_rest, strict=True):
    logp = np.log(probabilities([a])[0].astype(np.float64))
    if c.shape != logp.shape:
      raise ValueError(f"cost row of length {c.size} for a block with {logp.size} candidates")
    cand_cost = (cost[:, None] + c[None, :]).ravel()
    cand_score = (score[:, None] + logp[None, :]).ravel()
    parent, op = np.divmod(np.arange(cand_cost.size), logp.size)
    keep = (cand_cost + rest_min <= hi) & (cand_cost + rest_max >= lo)
    if not keep.any():
      raise empty_band_error(lo + base_cost, budget, base_cost + sum(r.min() for r in rows),
                             base_cost + sum(r.max() for r in rows))
    cand_cost, cand_score, parent, op = (x[keep] for x in (cand_cost, cand_score, parent, op))
    bins = np.floor(cand_cost / width).astype(np.int64)
    order = np.lexsort((-cand_score, bins))  # by bin, the most probable first
    first = np.ones(order.size, bool)
    first[1:] = bins[order][1:] != bins[order][:-1]
    sel = order[first]
    cost, score = cand_cost[sel], cand_score[sel]
    back.append((parent[sel], op[sel]))
  i = int(np.argmax(score))
  ops = []
  for (parent, op), b in zip(reversed(back), reversed(space.blocks), strict=True):
    ops.append(b.candidates[int(op[i])])
    i = int(parent[i])
  return Arch(tuple(reversed(ops)))


def probabilities(alpha: Sequence[np.ndarray]) -> list[np.ndarray]:
  """softmax(alpha_l) per block, in NumPy (for logging and export)."""
  out = []
  for a in alpha:
    a = np.asarray(a, np.float64)
    e = np.exp(a - a.max())
    out.append((e / e.sum()).astype(np.float32))
  return out
