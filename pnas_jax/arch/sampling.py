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
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp

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
