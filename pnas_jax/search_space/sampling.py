"""Drawing architectures of a space: uniformly, inside a latency band, spread over the latency range.

- `sample_archs`: each block's op uniform over its candidates (Zero included);
- `sample_in_band`: uniform draws conditioned on a predicted latency in [(1 - band) T, T]
  (rejection sampling: the random-search baseline at target T, and the candidates of the
  supernet-scored derivation, train/derive_by_supernet.py);
- `sample_spread`: architectures spread evenly over the space's predicted latency range.

The latency comes from any `LatencyFn` (e.g. latency.predictor.Predictor.of_archs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from pnas_jax.errors import UserValueError
from pnas_jax.search_space.space import Arch, SearchSpace

# predicted latency of each architecture (e.g. Predictor.of_archs)
LatencyFn = Callable[[Sequence[Arch]], np.ndarray]


def sample_archs(space: SearchSpace, n: int, seed: int = 0) -> list[Arch]:
  """`n` architectures with each block's op drawn uniformly from its candidates (Zero included)."""
  rng = np.random.default_rng(seed)
  return [
      Arch(tuple(b.candidates[int(rng.integers(len(b.candidates)))] for b in space.blocks))
      for _ in range(n)
  ]


def _draws(space: SearchSpace, latency_fn: LatencyFn, seed: int, chunk: int, max_draws: int):
  """Chunks of (archs, predicted latencies) of uniformly drawn architectures (sample_archs)."""
  for i in range(-(-max_draws // chunk)):
    archs = sample_archs(space, chunk, seed=seed * 1_000_003 + i)
    yield archs, np.asarray(latency_fn(archs), np.float64)


def sample_in_band(space: SearchSpace, latency_fn: LatencyFn, target: float, band: float, n: int,
                   seed: int = 0, exclude: Sequence[Arch] = (), max_draws: int = 200_000) -> list[Arch]:
  """`n` distinct architectures drawn uniformly from the space (each block's op uniform over its
  candidates) conditioned on the predicted latency lying in [(1 - band) T, T]: rejection sampling,
  the random-search baseline at latency target T. Architectures in `exclude` are not returned.
  """
  if not 0.0 < band < 1.0:
    raise UserValueError(f"band = {band!r}: give a fraction in (0, 1)")
  lo, out, seen = (1.0 - band) * target, [], set(exclude)
  for archs, lat in _draws(space, latency_fn, seed, 4096, max_draws):
    for a, t in zip(archs, lat, strict=True):
      if lo <= t <= target and a not in seen:
        out.append(a)
        seen.add(a)
        if len(out) == n:
          return out
  raise UserValueError(
      f"only {len(out)} of {n} distinct architectures found with predicted latency in "
      f"[{lo:.4g}, {target:.4g}] after {max_draws} draws; widen the band or lower n")


def sample_spread(space: SearchSpace, latency_fn: LatencyFn, n: int, seed: int = 0,
                  n_draws: int = 20_000) -> list[Arch]:
  """`n` distinct architectures spread over the latency range of the space: `n_draws` uniform
  draws, their predicted latencies cut into n equal-width bins between the 1st and 99th percentile,
  one architecture drawn from each bin (from the nearest bins' leftovers where a bin is empty)."""
  archs, lat = [], []
  for a, t in _draws(space, latency_fn, seed, min(4096, n_draws), n_draws):
    archs += a
    lat.append(t)
  unique = {a: float(t) for a, t in zip(archs, np.concatenate(lat), strict=True)}
  if len(unique) < n:
    raise UserValueError(f"the space holds only {len(unique)} distinct architectures; lower n ({n})")
  cands, lat = list(unique), np.asarray(list(unique.values()))
  edges = np.linspace(*np.percentile(lat, [1, 99]), n + 1)
  centre = (edges[:-1] + edges[1:]) / 2
  rng, free, picked = np.random.default_rng(seed), np.ones(len(cands), bool), []
  for c in centre:  # in each bin; where it is empty (or used up), the nearest free latency
    in_bin = np.flatnonzero(free & (np.abs(lat - c) <= (edges[1] - edges[0]) / 2))
    i = rng.choice(in_bin) if len(in_bin) else np.flatnonzero(free)[np.argmin(np.abs(lat[free] - c))]
    free[i] = False
    picked.append(cands[i])
  return picked
