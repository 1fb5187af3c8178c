"""Architecture-gradient estimators behind one registry: "full", "two" (binary gates), "reinforce".

Adding one: a module with a class following `Estimator` and `@register_estimator("name")` on its
factory (see the Estimator docstring); tests/test_arch_estimators.py registers a toy one.

Binary gates (Cai et al. 2019, Sec. 3.2, "learning binarized architecture parameters", Eq. 3-4):
with y_l = sum_j g_lj o_lj(x), g_l = one_hot(a_l), the gate gradient is
dL/dg_lj = <dL/dy_l, o_lj(x)> (computed by the mixed op's custom VJP) and

    dL/dalpha_li = sum_j dL/dg_lj p_lj (delta_ij - p_li) = p_li (dL/dg_li - sum_j p_lj dL/dg_lj).

This is obtained by feeding the network the gates g = one_hot(a) + p - stop_gradient(p): their value
is irrelevant to the binarized forward, and reverse mode then multiplies dL/dg by dp/dalpha.
* "full": p_l = softmax(alpha_l), all N candidates' gate gradients.
* "two": two candidates {i, j} sampled without replacement, p renormalised over the pair
  (softmax(alpha_l[[i, j]]), zero elsewhere), only those two paths run; after the optimizer step
  both logits are shifted by -offset, offset = log(sum_pair exp(alpha_new) / sum_pair
  exp(alpha_old)), so the probabilities of the uninvolved candidates are unchanged.
* A block whose active op is Zero gets no update at that step (its alpha and Adam state are kept).
The latency / FLOPs term (Sec. 3.3.1, Eq. 5-7) uses the same mode probabilities:
E[cost] = cost_fn(p), and the loss is loss_fn(CE, E[cost]) (e.g. "mul#log":
a CE (log E[LAT] / log T)^b).

REINFORCE (Sec. 3.3.2, Eq. 8; for non-differentiable objectives such as measured latency):
K architectures sampled from p, reward R_k = acc_k (T / lat_k)^w (w = 0.1, acc a fraction),
baseline b <- b + d (mean_k R_k - b) (b = mean R on the first step; d = 0.99, the reference's decay
weight), gradient mean_k (R_k - b) grad(-log p(arch_k)), then the same Adam.
Or, with baseline = "leave_one_out" (Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for
free"), each sample's baseline is the mean reward of the other K - 1 samples scored on the same
batch, b_k = (sum_j R_j - R_k) / (K - 1): still unbiased, and it cancels how hard the batch was,
which the moving average (over earlier batches) leaves in every advantage.

within_target (our extension, with the leave-one-out baseline): the K nets are drawn from p
restricted to the latency band the final architecture must lie in, pi(a) = p(a) 1[a in band] / Z
(sampling.LatencyBand), and the reward is the accuracy. Its score function is
grad log pi(a_k) = grad log p(a_k) - grad log Z, and the leave-one-out advantages sum to zero, so
the grad log Z term drops out of mean_k adv_k grad log pi(a_k) exactly. The search then compares
only nets of the latency it will deliver, as the budgeted derivation (derive.py) picks among
them, instead of learning a policy below the target whose budget the derivation must fill with
ops the policy rejected.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import flax.struct
import jax
import jax.numpy as jnp
from jax import lax

from pnas_jax.arch.sampling import LatencyBand, Sample, one_hot_gates, sample_gates
from pnas_jax.collectives import maybe_pmean
from pnas_jax.errors import UserValueError
from pnas_jax.losses import accuracy, cross_entropy
from pnas_jax.registry import Registry
from pnas_jax.search_space import ops as ops_lib
from pnas_jax.search_space.space import SearchSpace

Alpha = tuple[jax.Array, ...]
# forward(sample, gates or None) -> (logits, new batch_stats); BN in train mode.
Forward = Callable[[Sample, Sequence[jax.Array] | None], tuple[jax.Array, Any]]
CostFn = Callable[[Sequence[jax.Array]], jax.Array]
LossFn = Callable[[jax.Array, jax.Array], jax.Array]


@flax.struct.dataclass
class ArchGrads:
  """What an estimator returns to the arch step.

  Attributes:
    grads: dL/dalpha per block.
    update: bool (L,): which blocks' alpha (and Adam state) change at this step.
    sample: the gate sample (for the post-update shift and logging).
    batch_stats: BN running stats after the forward (None: unchanged).
    baseline: the REINFORCE moving-average baseline (passed through by the binary-gate modes).
    metrics: scalars for logging.
  """

  grads: Alpha
  update: jax.Array
  sample: Sample
  batch_stats: Any
  baseline: jax.Array
  metrics: dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class ArchBatch:
  """What an estimator gets at one arch step.

  Attributes:
    space, alpha: the search space and the architecture logits (one vector per block).
    key: the step's gate key (identical on every device).
    forward: forward(sample, gates or None) -> (logits, new batch_stats), BN in train mode, on the
      held-out batch; gates' cotangents are the gate gradients dL/dg.
    labels: the held-out batch's labels.
    cost_fn: probs -> E[LAT] (None: no latency term); loss_fn: (ce, cost) -> loss (None: ce).
    baseline: the stored REINFORCE baseline (NaN before the first update).
    axis_name: the data-parallel axis to pmean over (None on one device).
  """

  space: SearchSpace
  alpha: Alpha
  key: jax.Array
  forward: Forward
  labels: jax.Array
  cost_fn: CostFn | None = None
  loss_fn: LossFn | None = None
  baseline: jax.Array | None = None
  axis_name: str | None = None


class Estimator(Protocol):
  """What the arch step needs of an estimator; register a factory with `register_estimator`.

  A new estimator is one module: a class with these members, a factory registered by name, and
  its options as a section `arch.<name>` of the search config (passed to the factory as keywords,
  with `target`, the latency target T or None, and `band`, the sampling.LatencyBand the derived
  net must lie in or None).
  """

  name: str
  sample_mode: str  # the gate-sampling mode its forward passes use ("single", "two", "full")
  batch_size: int  # held-out examples per arch step (0: the config's data.arch_batch_size)

  def grads(self, batch: ArchBatch) -> ArchGrads:
    """dL/dalpha per block (and which blocks to update) from one held-out batch."""

  def post_update(self, old: Alpha, new: Alpha, result: ArchGrads) -> Alpha:
    """alpha after the optimizer step (e.g. "two"'s logit shift); usually `new`."""


def zero_active(space: SearchSpace, active: jax.Array) -> jax.Array:
  """bool (L,): the active op of block l is Zero."""
  out = []
  for b in space.blocks:
    z = [j for j, op in enumerate(b.candidates) if ops_lib.get_op(op).is_zero]
    out.append(jnp.isin(active[b.index], jnp.asarray(z, jnp.int32)) if z else jnp.asarray(False))
  return jnp.stack(out)


def mode_probs(alpha: Sequence[jax.Array], sample: Sample, mode: str) -> Alpha:
  """p per block: softmax(alpha_l) ("full"), or the pair-renormalised p ("two", 0 off the pair)."""
  if mode == "full":
    return tuple(jax.nn.softmax(a) for a in alpha)
  if mode != "two":
    raise ValueError(f"mode_probs: mode must be 'full' or 'two', got {mode!r}")
  out = []
  for i, a in enumerate(alpha):
    pair = sample.involved[i]
    if a.shape[0] == 1:  # one candidate: p = 1 whatever alpha is.
      out.append(jnp.ones_like(a) + 0.0 * a)
      continue
    out.append(jnp.zeros_like(a).at[pair].set(jax.nn.softmax(a[pair])))
  return tuple(out)


def two_mode_shift(old: Alpha, new: Alpha, sample: Sample, update: jax.Array) -> Alpha:
  """alpha_pair -= log(sum_pair exp(new) / sum_pair exp(old)): uninvolved p_l stay unchanged."""
  out = []
  for i, (a_old, a_new) in enumerate(zip(old, new, strict=True)):
    pair = sample.involved[i]
    offset = jax.nn.logsumexp(a_new[pair]) - jax.nn.logsumexp(a_old[pair])
    shifted = a_new.at[pair].add(-offset)
    out.append(jnp.where(update[i], shifted, a_new))
  return tuple(out)


@dataclasses.dataclass(frozen=True)
class BinaryGateEstimator:
  """The "full" / "two" binary-gate estimators (see the module docstring)."""

  name: str
  batch_size: int = 0  # the arch step's batch: data.arch_batch_size

  @property
  def sample_mode(self) -> str:
    return self.name

  def grads(self, batch: ArchBatch) -> ArchGrads:
    forward, labels, cost_fn, loss_fn = batch.forward, batch.labels, batch.cost_fn, batch.loss_fn
    sample = sample_gates(batch.key, batch.alpha, self.name)
    hot = one_hot_gates(batch.alpha, sample)

    def loss_of(alpha):
      probs = mode_probs(alpha, sample, self.name)
      gates = tuple(h + p - lax.stop_gradient(p) for h, p in zip(hot, probs, strict=True))
      logits, new_stats = forward(sample, gates)
      ce, acc = cross_entropy(logits, labels), accuracy(logits, labels)
      cost = cost_fn(probs) if cost_fn is not None else jnp.zeros((), jnp.float32)
      loss = loss_fn(ce, cost) if loss_fn is not None else ce
      return loss, (ce, acc, cost, new_stats)

    (loss, (ce, acc, cost, new_stats)), grads = jax.value_and_grad(loss_of, has_aux=True)(
        batch.alpha)
    grads = maybe_pmean(grads, batch.axis_name)
    update = jnp.logical_not(zero_active(batch.space, sample.active))
    metrics = maybe_pmean({"arch_loss": loss, "arch_ce": ce, "arch_acc": acc}, batch.axis_name)
    metrics["expected_cost"] = cost
    metrics["n_updated_blocks"] = jnp.sum(update)
    metrics["active"] = sample.active
    if sample.involved is not None:
      metrics["involved"] = sample.involved
    return ArchGrads(grads, update, sample, new_stats,
                     jnp.asarray(jnp.nan) if batch.baseline is None else batch.baseline, metrics)

  def post_update(self, old: Alpha, new: Alpha, result: ArchGrads) -> Alpha:
    if self.name == "two":
      return two_mode_shift(old, new, result.sample, result.update)
    return new


def reference_reward(target: float | None = None, tradeoff: float = 0.1) -> Callable[..., Any]:
  """R = acc * (T / lat) ^ w (acc a fraction in [0, 1]); R = acc without a target."""

  def reward(acc: jax.Array, lat: jax.Array | None) -> jax.Array:
    if target is None or lat is None:
      return acc
    return acc * (target / lat) ** tradeoff

  return reward


def constraint_reward(target: float | None = None, tradeoff: float = 2.0,
                      tradeoff_below: float = 0.0) -> Callable[..., Any]:
  """R = acc * min(1, T / lat) ^ w * min(1, lat / T) ^ w_below: MnasNet's reward (Tan et al. 2019,
  Eq. 2: acc * (lat / T) ^ alpha at or below T, ^ beta above) with beta = -w, alpha = w_below.

  w_below = 0 is MnasNet's hard constraint, instead of the reference's reward, which favours a
  lower latency everywhere: below the target only accuracy counts, so the search does not give
  accuracy away for latency the target does not ask for. But a one-sided penalty also moves a
  still diffuse policy down until the upper tail of its sampled latencies clears T: measured in a
  4-target sweep (Fashion-MNIST, batch 16, one core), E[LAT] fell from 0.93 ms (the uniform
  policy, already below T = 1.03 and 1.17 ms at 0.75 and 0.85 x the baseline) to 0.73 and 0.84 ms,
  so the derived net's budget was filled with ops the policy had barely tried. w_below > 0 also
  asks the search to use the latency it is given (R = acc without a target); with 0.5 the same
  sweep's E[LAT] stayed at 0.87-0.95 T, though its retrained nets were not more accurate
  (docs/design.md §2.14).
  """

  def reward(acc: jax.Array, lat: jax.Array | None) -> jax.Array:
    if target is None or lat is None:
      return acc
    return (acc * jnp.minimum(1.0, target / lat) ** tradeoff
            * jnp.minimum(1.0, lat / target) ** tradeoff_below)

  return reward


# reward name -> factory(target, tradeoff) (config: arch.reinforce.reward)
REWARDS: Registry[Callable[..., Callable[..., Any]]] = Registry("REINFORCE reward")
REWARDS.add("reference", reference_reward)
REWARDS.add("constraint", constraint_reward)


REINFORCE_BASELINES = ("moving_average", "leave_one_out")


@dataclasses.dataclass(frozen=True)
class ReinforceEstimator:
  """REINFORCE over K sampled architectures (drawn from p, or from p within `band`), with a
  moving-average or leave-one-out baseline (module docstring)."""

  k: int = 10
  baseline_decay: float = 0.99
  baseline: str = "moving_average"  # or "leave_one_out" (module docstring)
  band: LatencyBand | None = None  # within_target: sample only nets in this band
  reward_fn: Callable[[jax.Array, jax.Array | None], jax.Array] = reference_reward()
  batch_size: int = 0  # the reward batch (0: data.arch_batch_size)
  name: str = "reinforce"
  sample_mode: str = "single"

  def grads(self, batch: ArchBatch) -> ArchGrads:
    alpha, forward, labels, cost_fn = batch.alpha, batch.forward, batch.labels, batch.cost_fn
    axis_name, baseline = batch.axis_name, batch.baseline

    def one(k):
      sample = sample_gates(k, alpha, "single") if self.band is None else self.band.sample(k, alpha)
      logits, _ = forward(sample, None)
      acc = accuracy(logits, labels)
      acc = maybe_pmean(acc, axis_name)
      lat = cost_fn(one_hot_gates(alpha, sample)) if cost_fn is not None else None
      reward = self.reward_fn(acc, lat)

      def neg_log_p(alpha):
        return -sum(jax.nn.log_softmax(a)[sample.active[i]] for i, a in enumerate(alpha))

      return reward, jax.grad(neg_log_p)(alpha), acc, sample.active

    keys = jax.random.split(batch.key, self.k)
    rewards, score_grads, accs, actives = lax.map(one, keys)
    avg = jnp.mean(rewards)
    b0 = jnp.asarray(jnp.nan, jnp.float32) if baseline is None else baseline
    b = jnp.where(jnp.isnan(b0), avg, b0 + self.baseline_decay * (avg - b0))
    if self.baseline == "leave_one_out":
      adv = rewards - (jnp.sum(rewards) - rewards) / (self.k - 1)
    else:
      adv = rewards - b
    grads = tuple(jnp.mean(adv[:, None] * g, axis=0) for g in score_grads)
    metrics = {"reward": avg, "baseline": b, "arch_acc": jnp.mean(accs)}
    return ArchGrads(
        grads, jnp.ones((len(alpha),), bool), Sample(active=actives[0]), None, b, metrics
    )

  def post_update(self, old: Alpha, new: Alpha, result: ArchGrads) -> Alpha:
    del old, result
    return new


# name -> factory(*, target=None, **options) -> Estimator. The options of estimator NAME come from
# the search config's `arch.NAME` section (absent: the factory's defaults).
ESTIMATORS: Registry[Callable[..., Estimator]] = Registry("arch-gradient estimator")
register_estimator = ESTIMATORS.register


@register_estimator("full")
def _full(*, target: float | None = None, band: LatencyBand | None = None) -> BinaryGateEstimator:
  del target, band
  return BinaryGateEstimator("full")


@register_estimator("two")
def _two(*, target: float | None = None, band: LatencyBand | None = None) -> BinaryGateEstimator:
  del target, band
  return BinaryGateEstimator("two")


@register_estimator("reinforce")
def _reinforce(*, target: float | None = None, k: int = 10, baseline_decay: float = 0.99,
               baseline: str = "moving_average", within_target: bool = False,
               band: LatencyBand | None = None, tradeoff: float = 0.1, tradeoff_below: float = 0.0,
               batch_size: int = 0,
               reward: str = "reference", reward_fn: Callable[..., Any] | None = None
               ) -> ReinforceEstimator:
  """K sampled nets per update, each scored on one reward batch of `batch_size` held-out images;
  reward REWARDS[reward](T, tradeoff) ("reference": acc (T / lat)^tradeoff; "constraint": the same
  only above T, times (lat / T)^tradeoff_below below it) unless `reward_fn` is given. The
  reference's defaults: K = 10, the reward batch its test batch (1000), one update every 5 weight
  steps. baseline: "moving_average" (the reference's, decay `baseline_decay`) or "leave_one_out"
  (the mean reward of the other K - 1 samples on the same batch; needs K >= 2). within_target:
  sample only nets in `band` (the search passes the derivation's latency band)."""
  if baseline not in REINFORCE_BASELINES:
    raise UserValueError(f"arch.reinforce.baseline = {baseline!r}: use one of "
                         f"{', '.join(map(repr, REINFORCE_BASELINES))}")
  if baseline == "leave_one_out" and k < 2:
    raise UserValueError(f"arch.reinforce.baseline = 'leave_one_out' needs k >= 2 samples per "
                         f"update (k = {k}); raise arch.reinforce.k or use 'moving_average'")
  if within_target:
    if baseline != "leave_one_out":
      raise UserValueError("arch.reinforce.within_target needs arch.reinforce.baseline = "
                           f"'leave_one_out' (got {baseline!r}): with samples restricted to the "
                           "band only its advantages, which sum to zero, keep the gradient unbiased")
    if band is None:
      raise UserValueError("arch.reinforce.within_target needs a latency target and a latency "
                           "model with per-block costs (latency.model: 'measure', a table or a "
                           "predictor file, or 'macs')")
    band.bins()  # fails here, naming the reachable range, if no net is in the band
  if reward_fn is None:
    extra = {}
    if tradeoff_below:
      if reward != "constraint":
        raise UserValueError(f"arch.reinforce.tradeoff_below = {tradeoff_below}: only the "
                             f"'constraint' reward has a below-target term (reward = {reward!r})")
      extra["tradeoff_below"] = tradeoff_below
    reward_fn = REWARDS.get(reward)(target, tradeoff, **extra)
  return ReinforceEstimator(k=k, baseline_decay=baseline_decay, baseline=baseline,
                            band=band if within_target else None, batch_size=batch_size,
                            reward_fn=reward_fn)


def get_estimator(name: str, **options: Any) -> Estimator:
  """The estimator registered as `name`, built with `options` (e.g. k=10 for "reinforce")."""
  return ESTIMATORS.get(name)(**options)


def estimator_from_config(arch_config: Mapping[str, Any], target: float | None,
                          band: LatencyBand | None = None) -> Estimator:
  """The estimator of a search config's `arch` section: arch.estimator, options from arch.<name>;
  `target` and `band` (the latency band of the derived net) from the search's latency objective."""
  name = arch_config["estimator"]
  factory = ESTIMATORS.get(name)
  return factory(target=target, band=band, **dict(arch_config.get(name) or {}))


def estimator_names() -> list[str]:
  return ESTIMATORS.names()
