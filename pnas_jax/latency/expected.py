"""Expected cost of a stochastic architecture: E[cost] = fixed + sum_l sum_j p_lj * F(o_lj).

This is the differentiable latency (or FLOPs) term of ProxylessNAS (Sec. 3.3, Eq. 5 of Cai et al.
2019): with p_l = softmax(alpha_l) the expectation is linear in p, so its gradient reaches alpha
through p only: dE/dalpha_li = p_li * (F_li - sum_j p_lj F_lj). Zero costs 0.

A CostTable is aligned with a SearchSpace: `per_block[l][j]` is the cost of `space.blocks[l]
.candidates[j]`; latency tables (ms) and MAC tables both produce one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pnas_jax.models.cost import block_costs
from pnas_jax.search_space.space import Arch, SearchSpace


@dataclasses.dataclass(frozen=True)
class CostTable:
  """Per-candidate costs aligned with a space's blocks and candidates, plus the fixed layers."""

  fixed: float
  per_block: tuple[tuple[float, ...], ...]
  candidates: tuple[tuple[str, ...], ...]
  unit: str = "ms"

  def __post_init__(self):
    if len(self.per_block) != len(self.candidates):
      raise ValueError(
          f"CostTable has {len(self.per_block)} cost rows for {len(self.candidates)} blocks"
      )
    for i, (c, n) in enumerate(zip(self.per_block, self.candidates, strict=True)):
      if len(c) != len(n):
        raise ValueError(f"CostTable block {i}: {len(c)} costs for candidates {list(n)}")

  def arrays(self) -> tuple[jax.Array, ...]:
    return tuple(jnp.asarray(c, jnp.float32) for c in self.per_block)

  def of_arch(self, arch: Arch) -> float:
    """Cost of one fixed architecture (the one-hot case)."""
    return float(
        self.fixed
        + sum(c[n.index(op)] for c, n, op in zip(self.per_block, self.candidates, arch.ops,
                                                 strict=True))
    )

  def check_space(self, space: SearchSpace) -> None:
    """Raises ValueError unless this table's candidates are the space's, block by block."""
    got = tuple(b.candidates for b in space.blocks)
    if got != self.candidates:
      raise ValueError(
          f"cost table does not match the search space: table has {len(self.candidates)} blocks "
          f"with candidates {[list(c) for c in self.candidates[:2]]}..., space has {len(got)} "
          f"with {[list(c) for c in got[:2]]}..."
      )


def expected_cost(
    table: CostTable, probs: Sequence[jax.Array], costs: Sequence[jax.Array] | None = None
) -> jax.Array:
  """E[cost] = fixed + sum_l <p_l, c_l>; differentiable in `probs` (one vector per block)."""
  costs = table.arrays() if costs is None else costs
  if len(probs) != len(costs):
    raise ValueError(f"got {len(probs)} probability vectors for {len(costs)} blocks")
  total = jnp.asarray(table.fixed, jnp.float32)
  for p, c in zip(probs, costs, strict=True):
    total = total + jnp.dot(p, c)
  return total


def uniform_probs(space: SearchSpace) -> list[np.ndarray]:
  return [np.full(len(b.candidates), 1.0 / len(b.candidates), np.float32) for b in space.blocks]


def one_hot_probs(space: SearchSpace, arch: Arch) -> list[np.ndarray]:
  space.check_arch(arch, strict=True)
  return [
      np.eye(len(b.candidates), dtype=np.float32)[b.candidates.index(op)]
      for b, op in zip(space.blocks, arch.ops, strict=True)
  ]


def macs_table(space: SearchSpace) -> CostTable:
  """MACs (millions) per candidate: the FLOPs-constrained variant of the latency term."""
  bc = block_costs(space)
  return CostTable(
      fixed=bc.fixed_macs / 1e6,
      per_block=tuple(
          tuple(m[op] / 1e6 for op in b.candidates) for b, m in zip(space.blocks, bc.macs,
                                                                    strict=True)
      ),
      candidates=tuple(b.candidates for b in space.blocks),
      unit="MMACs",
  )
