"""Deriving the final architecture from the learned logits (Cai et al. 2019, Sec. 3.2 / 4).

The derived path is argmax_j p_lj = argmax_j alpha_lj per block; a block whose argmax is Zero is
skipped in the child network (its identity shortcut carries the input).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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


def probabilities(alpha: Sequence[np.ndarray]) -> list[np.ndarray]:
  """softmax(alpha_l) per block, in NumPy (for logging and export)."""
  out = []
  for a in alpha:
    a = np.asarray(a, np.float64)
    e = np.exp(a - a.max())
    out.append((e / e.sum()).astype(np.float32))
  return out
