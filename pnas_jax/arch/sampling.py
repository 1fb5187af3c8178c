"""Binary-gate sampling: pure functions of (key, alpha, mode) -> Sample, run inside the jitted step.

p_l = softmax(alpha_l) per searchable block l (Cai et al. 2019, Sec. 3.2, Eq. 2); the gates are
g_l = one_hot(a_l). Modes:

* "uniform": a_l ~ Uniform(candidates of l) (weight warm-up).
* "single" / "full": a_l ~ Categorical(p_l) (the weight step; the "full" arch step).
* "two": two distinct candidates {i, j} drawn from p_l without replacement, then the active one
  from the renormalised pair softmax(alpha_l[[i, j]]) (Sec. 3.2, "learning binarized architecture
  parameters"); `Sample.involved[l] = [active, other]`.

Indices are traced int32 values, so a new sample never recompiles the step. Block l draws from
`fold_in(key, l)`: the same key gives the same gates on every device.

`LatencyBand.sample` draws a_l from p restricted to the architectures whose modelled latency lies
in a band (our extension, for REINFORCE with `within_target`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from pnas_jax.errors import UserValueError

MODES = ("uniform", "single", "two", "full")


@flax.struct.dataclass
class Sample:
  """The sampled gates of every searchable block.

  Attributes:
    active: int32 (L,): the candidate that runs in block l (g_l = one_hot(active[l])).
    involved: int32 (L, 2) in "two" mode, [active, other]; None otherwise (all candidates are
      involved in the "full" gate gradient).
  """

  active: jax.Array
  involved: jax.Array | None = None


def check_mode(mode: str) -> None:
  if mode not in MODES:
    raise UserValueError(f"unknown gate sampling mode {mode!r}; valid: {', '.join(MODES)}")


def sample_gates(key: jax.Array, alpha: Sequence[jax.Array], mode: str) -> Sample:
  """Draws one gate sample; `alpha` is one logit vector per block (lengths may differ)."""
  check_mode(mode)
  active, involved = [], []
  for i, a in enumerate(alpha):
    k = jax.random.fold_in(key, i)
    n = a.shape[0]
    if mode == "uniform":
      active.append(jax.random.randint(k, (), 0, n, dtype=jnp.int32))
    elif mode in ("single", "full"):
      active.append(jax.random.categorical(k, a).astype(jnp.int32))
    elif n == 1:  # a single candidate: the "pair" is that candidate twice (p = 1, no gradient).
      active.append(jnp.zeros((), jnp.int32))
      involved.append(jnp.zeros((2,), jnp.int32))
    else:
      k_pair, k_pick = jax.random.split(k)
      # Gumbel top-2 = two sequential draws without replacement from softmax(a).
      g = a + jax.random.gumbel(k_pair, a.shape, a.dtype)
      _, pair = jax.lax.top_k(g, 2)
      pick = jax.random.categorical(k_pick, a[pair]).astype(jnp.int32)
      act = pair[pick].astype(jnp.int32)
      active.append(act)
      involved.append(jnp.stack([act, pair[1 - pick].astype(jnp.int32)]))
  return Sample(
      active=jnp.stack(active),
      involved=jnp.stack(involved) if mode == "two" else None,
  )


def one_hot_gates(alpha: Sequence[jax.Array], sample: Sample) -> tuple[jax.Array, ...]:
  """g_l = one_hot(a_l) per block, with the length of alpha_l."""
  return tuple(
      jax.nn.one_hot(sample.active[i], a.shape[0], dtype=a.dtype) for i, a in enumerate(alpha)
  )


def fixed_sample(indices: Sequence[int]) -> Sample:
  """A Sample that runs the given candidate index in every block (tests, child extraction)."""
  return Sample(active=jnp.asarray(indices, jnp.int32))


def empty_band_error(lo: float, hi: float, cheapest: float, dearest: float) -> UserValueError:
  """The error for a latency band [lo, hi] (lo = -inf: <= hi) that no architecture reaches."""
  bounded = np.isfinite(lo)
  want = f"in [{lo:.4g}, {hi:.4g}]" if bounded else f"<= {hi:.4g}"
  return UserValueError(f"no architecture of the space has a latency {want}: they range from "
                        f"{cheapest:.4g} to {dearest:.4g}; change the target (or target_ratio)"
                        + (" or widen latency.derive_band" if bounded else ""))


@dataclasses.dataclass(frozen=True)
class LatencyBand:
  """The architectures whose latency under an additive model lies in [lo, hi], and sampling from
  p restricted to them (REINFORCE's `within_target`; arch/estimators.py).

  LAT(a) = base_cost + sum_l block_costs[l][a_l] (the latency predictor's `block_costs`). A draw
  from pi(a) = p(a) 1[lo <= LAT(a) <= hi] / Z, p(a) = prod_l p_l[a_l], is exact up to latencies
  binned at `resolution` * hi / L per block (so LAT may leave the band by L / 2 bins, 0.5% of hi
  at the default): with R_l(b) = log P_p(blocks l.. bring a path that has spent b bins into the
  band),

      R_L(b) = 0 if b's total latency is in the band else -inf,
      R_l(b) = logsumexp_j (log p_l[j] + R_{l+1}(b + c_l[j])),

  block l draws a_l ~ softmax_j(log p_l[j] + R_{l+1}(b + c_l[j])) and moves b on by c_l[a_l].
  """

  base_cost: float
  block_costs: tuple[tuple[float, ...], ...]
  lo: float  # -inf: every latency up to hi
  hi: float
  resolution: float = 0.01

  def bins(self) -> tuple[list[np.ndarray], np.ndarray]:
    """(per-block costs in bins above the block's cheapest op, allowed[b] for the total bin b).

    Raises UserValueError naming the reachable range when no architecture is in the band."""
    rows = [np.asarray(c, np.float64) for c in self.block_costs]
    width = self.resolution * abs(self.hi) / len(rows)
    costs = [np.rint((r - r.min()) / width).astype(np.int64) for r in rows]
    base = self.base_cost + sum(r.min() for r in rows)
    total = base + width * np.arange(sum(int(c.max()) for c in costs) + 1)
    allowed = (total >= self.lo) & (total <= self.hi)
    reachable = np.zeros(total.size, bool)
    reachable[0] = True
    for c in costs:  # the total bins some path through blocks 0..l can have spent
      spent = np.zeros_like(reachable)
      for s in np.unique(c):
        spent[s:] |= reachable[:reachable.size - s]
      reachable = spent
    if not (reachable & allowed).any():
      raise empty_band_error(self.lo, self.hi, base, base + sum(r.max() - r.min() for r in rows))
    return costs, allowed

  def sample(self, key: jax.Array, alpha: Sequence[jax.Array]) -> Sample:
    """One draw from p restricted to the band (class docstring); block l uses fold_in(key, l)."""
    costs, allowed = self.bins()
    if len(costs) != len(alpha):
      raise ValueError(f"got {len(alpha)} alpha vectors for {len(costs)} rows of block costs")
    log_p = [jax.nn.log_softmax(a) for a in alpha]
    suffix = [jnp.where(jnp.asarray(allowed), 0.0, -jnp.inf)]  # R_L
    for lp, c in zip(reversed(log_p), reversed(costs), strict=True):
      r = suffix[-1]
      shifted = jnp.stack([jnp.concatenate([r[s:], jnp.full((s,), -jnp.inf)]) for s in c.tolist()])
      suffix.append(jax.nn.logsumexp(lp[:, None] + shifted, axis=0))
    suffix.reverse()  # suffix[l] = R_l
    spent, active = jnp.zeros((), jnp.int32), []
    for i, (lp, c) in enumerate(zip(log_p, costs, strict=True)):
      c = jnp.asarray(c, jnp.int32)
      a = jax.random.categorical(jax.random.fold_in(key, i), lp + suffix[i + 1][spent + c])
      active.append(a.astype(jnp.int32))
      spent = spent + c[a]
    return Sample(active=jnp.stack(active))
