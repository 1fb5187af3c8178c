"""Arch-gradient estimators against brute-force references; gate sampling; derivation."""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from spaces import TINY_SPACE

from pnas_jax.arch import (
  Sample,
  derive,
  get_estimator,
  sample_gates,
)
from pnas_jax.arch.estimators import ArchBatch
from pnas_jax.arch.sampling import LatencyBand
from pnas_jax.arch.supernet import Supernet, init_supernet
from pnas_jax.errors import UnknownNameError, UserValueError
from pnas_jax.latency.expected import expected_cost, macs_table
from pnas_jax.models.child import Head, build_op, stem_and_first_block
from pnas_jax.train import arch_optimizer, arch_step, create_search_state, weight_optimizer

SPACE = TINY_SPACE
DW = "lax"  # compiles fastest; the mixed op does not depend on the depthwise kernel.
_TABLE = macs_table(SPACE)


def mul_log(ce, lat, target=50.0, a=0.2, b=0.3):
  """L = a * CE * (log E[LAT] / log T) ^ b (the paper's "mul#log")."""
  return a * ce * (jnp.log(lat) / jnp.log(target)) ** b


def add_linear(ce, lat, target=50.0, lam=0.1):
  """L = CE + lambda * (E[LAT] - T) / T (the paper's "add#linear")."""
  return ce + lam * (lat - target) / target


def kmacs(probs):
  """E[MACs] in thousands (so that log E[cost] > 0) from the space's MAC table."""
  return 1e3 * expected_cost(_TABLE, probs)


@pytest.fixture(scope="module")
def setup():
  model = Supernet(SPACE, dw_impl=DW)
  variables = init_supernet(model, jax.random.key(0))
  batch = {
      "image": jax.random.normal(jax.random.key(1), (6, 16, 16, 3)),
      "label": jnp.arange(6) % 10,
  }
  return model, variables, batch


def brute_force_loss(variables, image, labels, gates, probs, cost_fn, loss_fn):
  """L with y_l = sum_j g_lj o_lj(x) over ALL paths (DARTS-like, plain autodiff), BN in train mode.

  Built from ChildNet's pieces (not the Supernet module): an independent reference.
  """
  p, s = variables["params"], variables["batch_stats"]
  x, _ = stem_and_first_block(SPACE, DW).apply(
      {"params": p["input"], "batch_stats": s["input"]}, image, True, mutable=["batch_stats"])
  for b in SPACE.blocks:
    y = 0.0
    for j, op in enumerate(b.candidates):
      module = build_op(op, b.in_channels, b.out_channels, b.stride, DW)
      v = {}
      if op in p[f"block{b.index}"]:
        v = {"params": p[f"block{b.index}"][op], "batch_stats": s[f"block{b.index}"][op]}
      o, _ = module.apply(v, x, train=True, mutable=["batch_stats"])
      y = y + gates[b.index][j] * o
    x = x + y if b.has_shortcut else y
  logits, _ = Head(SPACE.tail_channels, SPACE.n_classes).apply(
      {"params": p["head"], "batch_stats": s["head"]}, x, True, mutable=["batch_stats"])
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  return loss_fn(ce, cost_fn(probs))


def estimator_grads(name, model, variables, batch, alpha, key, cost_fn, loss_fn):
  def forward(sample, gates):
    logits, upd = model.apply(variables, batch["image"], sample, train=True, gates=gates,
                              mutable=["batch_stats"])
    return logits, upd["batch_stats"]

  return get_estimator(name).grads(ArchBatch(
      space=SPACE, alpha=alpha, key=key, forward=forward, labels=batch["label"],
      cost_fn=cost_fn, loss_fn=loss_fn))


def _alpha(seed=3, scale=0.7):
  return tuple(
      scale * jax.random.normal(jax.random.key(seed + b.index), (len(b.candidates),))
      for b in SPACE.blocks
  )


@pytest.mark.parametrize(("mode", "loss_fn"), [("full", mul_log), ("two", add_linear)])
def test_alpha_gradient_equals_brute_force_all_paths(setup, mode, loss_fn):
  """dL/dalpha_i = sum_j dL/dg_j p_j (delta_ij - p_i) + the latency term's direct gradient."""
  model, variables, batch = setup
  alpha = _alpha()
  cost_fn = kmacs
  res = jax.jit(lambda a: estimator_grads(mode, model, variables, batch, a, jax.random.key(7),
                                          cost_fn, loss_fn))(alpha)
  active = np.asarray(res.sample.active)
  pairs = None if mode == "full" else np.asarray(res.sample.involved)

  def probs_of(alpha):  # p over all candidates ("full") or renormalised over the pair ("two").
    out = []
    for i, a in enumerate(alpha):
      if mode == "full":
        out.append(jax.nn.softmax(a))
      else:
        pair = pairs[i]
        assert pair[0] == active[i] and pair[0] != pair[1]
        m = np.zeros(a.shape, bool)
        m[pair] = True
        e = jnp.where(m, jnp.exp(a - a.max()), 0.0)
        out.append(e / e.sum())
    return tuple(out)

  onehot = tuple(jnp.eye(len(b.candidates))[active[b.index]] for b in SPACE.blocks)
  probs = probs_of(alpha)
  dl_dg = jax.jit(jax.grad(lambda g: brute_force_loss(
      variables, batch["image"], batch["label"], g, probs, cost_fn, loss_fn)))(onehot)
  direct = jax.jit(jax.grad(lambda a: brute_force_loss(
      variables, batch["image"], batch["label"], onehot, probs_of(a), cost_fn, loss_fn)))(alpha)
  for i in range(SPACE.n_blocks):
    p, g = np.asarray(probs[i], np.float64), np.asarray(dl_dg[i], np.float64)
    if mode == "two":  # only the pair's gates enter: the formula over the pair.
      g = np.where(p > 0, g, 0.0)
    expected = p * (g - np.dot(p, g)) + np.asarray(direct[i])
    np.testing.assert_allclose(res.grads[i], expected, rtol=1e-4, atol=1e-7)
    assert np.abs(expected).max() > 0
  if mode == "two":
    for i in range(SPACE.n_blocks):
      off = np.ones(len(alpha[i]), bool)
      off[np.asarray(res.sample.involved[i])] = False
      assert np.all(np.asarray(res.grads[i])[off] == 0)


@functools.cache
def _arch_step(model, name):
  """One compiled arch step per estimator, shared by the tests (lr 0.3: visible moves)."""
  return jax.jit(functools.partial(arch_step, model=model, tx=arch_optimizer(lr=0.3),
                                   estimator=get_estimator(name)))


def _state_with_alpha(model, alpha):
  state = create_search_state(model, jax.random.key(0), weight_optimizer(), arch_optimizer())
  return state.replace(alpha=tuple(alpha), arch_opt_state=tuple(
      arch_optimizer().init(a) for a in alpha))


def test_two_mode_shift_leaves_uninvolved_probabilities_unchanged(setup):
  model, _, batch = setup
  state = _state_with_alpha(model, _alpha(seed=11, scale=1.0))
  step = _arch_step(model, "two")
  for _ in range(3):
    old = [np.asarray(jax.nn.softmax(a)) for a in state.alpha]
    state, metrics = step(state, batch)
    new = [np.asarray(jax.nn.softmax(a)) for a in state.alpha]
    moved = 0
    for i in range(SPACE.n_blocks):
      pair = np.asarray(metrics["involved"][i])
      off = np.ones(len(old[i]), bool)
      off[pair] = False
      np.testing.assert_allclose(new[i][off], old[i][off], atol=1e-6, rtol=0)
      np.testing.assert_allclose(new[i][pair].sum(), old[i][pair].sum(), atol=1e-6)
      moved += np.abs(new[i][pair] - old[i][pair]).max() > 1e-4
    assert moved > 0


def test_zero_active_block_gets_no_alpha_update(setup):
  model, _, batch = setup
  alpha = list(_alpha(seed=5, scale=0.1))
  zero0 = SPACE.blocks[0].candidates.index("Zero")
  alpha[0] = alpha[0].at[zero0].set(30.0)  # block 0 samples Zero (p ~ 1 - 1e-12).
  for name in ("full", "two"):
    if name == "two":  # the pair is {Zero, candidate 0} and its active one is Zero.
      a0 = np.full(len(SPACE.blocks[0].candidates), -30.0, np.float32)
      a0[zero0], a0[0] = 30.0, -1.0
      alpha[0] = jnp.asarray(a0)
    state = _state_with_alpha(model, alpha)
    old_alpha, old_opt = state.alpha, state.arch_opt_state
    old_alpha = jax.tree.map(np.array, old_alpha)  # copies: nothing is donated here, but be safe
    old_opt = jax.tree.map(np.array, old_opt)
    new, metrics = _arch_step(model, name)(state, batch)
    np.testing.assert_array_equal(new.alpha[0], old_alpha[0])
    jax.tree.map(np.testing.assert_array_equal, new.arch_opt_state[0], old_opt[0])
    assert not np.array_equal(new.alpha[1], old_alpha[1])  # block 1 has no Zero: updated.
    assert int(metrics["active"][0]) == zero0
    assert int(metrics["n_updated_blocks"]) <= SPACE.n_blocks - 1


def test_reinforce_raises_probability_of_rewarded_path():
  """Toy problem: the path whose block 0 runs candidate 2 classifies correctly, others do not."""
  space = SPACE
  alpha = tuple(jnp.zeros(len(b.candidates)) for b in space.blocks)
  labels = jnp.arange(8) % 10

  def forward(sample, gates):
    assert gates is None
    good = jax.nn.one_hot(labels, 10) * 10.0
    return jnp.where(sample.active[0] == 2, good, -good), None

  est = get_estimator("reinforce", k=8)
  tx = arch_optimizer(lr=0.05)
  opt = tuple(tx.init(a) for a in alpha)

  @jax.jit
  def step(alpha, opt, baseline, key):
    res = est.grads(ArchBatch(space=space, alpha=alpha, key=key, forward=forward, labels=labels,
                              baseline=baseline))
    out = [tx.update(g, s, a) for a, g, s in zip(alpha, res.grads, opt, strict=True)]
    alpha = tuple(optax.apply_updates(a, u) for a, (u, _) in zip(alpha, out, strict=True))
    return alpha, tuple(s for _, s in out), res.baseline

  baseline = jnp.asarray(jnp.nan)
  p0 = float(jax.nn.softmax(alpha[0])[2])
  for t in range(40):
    alpha, opt, baseline = step(alpha, opt, baseline, jax.random.key(t))
  p1 = jax.nn.softmax(alpha[0])
  assert float(p1[2]) > p0 + 0.2
  assert int(jnp.argmax(p1)) == 2
  assert np.isfinite(float(baseline))


def _reinforce_grads(baseline: str, offset: float, k: int = 5, stored_baseline: float = 0.3):
  """One REINFORCE update on a toy forward whose accuracy is a function of the sampled path plus
  `offset` (how easy the batch is): returns the grads, the samples and their rewards."""
  space = SPACE
  alpha = tuple(jnp.linspace(-0.5, 0.5, len(b.candidates)) for b in space.blocks)
  labels = jnp.arange(20) % 10
  n_right = {0: 4, 1: 9, 2: 13}  # images right out of 20, by block 0's op; block 1's op adds 0-2

  def forward(sample, gates):
    del gates
    right = jnp.asarray([n_right.get(i, 6) for i in range(len(space.blocks[0].candidates))])[
        sample.active[0]] + sample.active[1] % 3 + int(offset * 20)
    correct = jnp.arange(20) < right
    logits = jax.nn.one_hot(jnp.where(correct, labels, (labels + 1) % 10), 10)
    return logits, None

  est = get_estimator("reinforce", k=k, baseline=baseline, baseline_decay=0.5)
  key = jax.random.key(3)
  res = est.grads(ArchBatch(space=space, alpha=alpha, key=key, forward=forward, labels=labels,
                            baseline=jnp.asarray(stored_baseline)))
  actives = [np.asarray(sample_gates(kk, alpha, "single").active)
             for kk in jax.random.split(key, k)]
  rewards = np.array([float(jnp.mean(jnp.argmax(forward(Sample(active=jnp.asarray(a)), None)[0],
                                                 -1) == labels)) for a in actives])
  return alpha, res, actives, rewards


def test_reinforce_leave_one_out_baseline_against_brute_force():
  """grad_l = mean_k (R_k - mean_{j != k} R_j) (p_l - onehot(a_lk)), by hand in NumPy."""
  k = 5
  alpha, res, actives, rewards = _reinforce_grads("leave_one_out", 0.0, k=k)
  assert len(set(map(tuple, actives))) > 1 and np.ptp(rewards) > 0  # the check has teeth
  adv = rewards - (rewards.sum() - rewards) / (k - 1)
  for block, a in enumerate(alpha):
    p = np.exp(a - a.max()) / np.exp(a - a.max()).sum()
    want = np.mean([adv[i] * (p - np.eye(len(p))[actives[i][block]]) for i in range(k)], axis=0)
    np.testing.assert_allclose(res.grads[block], want, rtol=1e-5, atol=1e-7)
  # The moving average is still kept (for logging): b + d (mean R - b).
  np.testing.assert_allclose(res.baseline, 0.3 + 0.5 * (rewards.mean() - 0.3), rtol=1e-6)


def test_leave_one_out_ignores_how_hard_the_batch_is_and_moving_average_does_not():
  """A batch on which every path scores 0.2 higher moves no leave-one-out gradient."""
  for baseline, same in (("leave_one_out", True), ("moving_average", False)):
    _, easy, _, r_easy = _reinforce_grads(baseline, 0.2)
    _, hard, _, r_hard = _reinforce_grads(baseline, 0.0)
    np.testing.assert_allclose(r_easy - r_hard, 0.2, atol=1e-6)
    close = all(np.allclose(a, b, atol=1e-7) for a, b in zip(easy.grads, hard.grads, strict=True))
    assert close == same, baseline


def test_reinforce_baseline_option_is_checked():
  with pytest.raises(UserValueError, match="baseline = 'median'.*moving_average"):
    get_estimator("reinforce", baseline="median")
  with pytest.raises(UserValueError, match="needs k >= 2.*k = 1"):
    get_estimator("reinforce", baseline="leave_one_out", k=1)


def test_reinforce_reward_uses_latency_target():
  est = get_estimator("reinforce", reward_fn=__import__(
      "pnas_jax.arch", fromlist=["reference_reward"]).reference_reward(target=10.0, tradeoff=0.1))
  r = est.reward_fn(jnp.asarray(0.5), jnp.asarray(20.0))
  np.testing.assert_allclose(r, 0.5 * 0.5 ** 0.1, rtol=1e-6)


def test_constraint_reward_counts_latency_only_above_the_target():
  est = get_estimator("reinforce", target=10.0, tradeoff=2.0, reward="constraint")
  for lat in (2.0, 9.0, 10.0):  # at or below T: accuracy alone, whatever the latency
    np.testing.assert_allclose(est.reward_fn(jnp.asarray(0.8), jnp.asarray(lat)), 0.8, rtol=1e-6)
  np.testing.assert_allclose(est.reward_fn(jnp.asarray(0.8), jnp.asarray(12.5)), 0.8 * 0.8 ** 2,
                             rtol=1e-6)
  # The reference reward (the default) pays for every bit of latency below T as well.
  ref = get_estimator("reinforce", target=10.0, tradeoff=2.0)
  np.testing.assert_allclose(ref.reward_fn(jnp.asarray(0.8), jnp.asarray(5.0)), 0.8 * 4.0, rtol=1e-6)
  with pytest.raises(UnknownNameError, match="constraint, reference|reference, constraint"):
    get_estimator("reinforce", target=10.0, reward="hard")


def test_constraint_reward_below_the_target_asks_for_the_latency_given():
  est = get_estimator("reinforce", target=10.0, tradeoff=2.0, tradeoff_below=0.5,
                      reward="constraint")
  for lat, factor in ((10.0, 1.0), (8.0, 0.8 ** 0.5), (2.5, 0.25 ** 0.5), (12.5, 0.8 ** 2)):
    np.testing.assert_allclose(est.reward_fn(jnp.asarray(0.8), jnp.asarray(lat)), 0.8 * factor,
                               rtol=1e-6)
  no_target = get_estimator("reinforce", tradeoff_below=0.5, reward="constraint")
  np.testing.assert_allclose(no_target.reward_fn(jnp.asarray(0.8), jnp.asarray(3.0)), 0.8)
  with pytest.raises(UserValueError, match="tradeoff_below = 0.5: only the 'constraint' reward"):
    get_estimator("reinforce", target=10.0, tradeoff_below=0.5, reward="reference")


def test_latency_band_draws_from_p_restricted_to_the_band():
  """Exhaustive: 18 archs, costs on the bin grid (0.1 = 0.04 * 7.5 / 3), frequencies of 40000
  draws against p(a) 1[lo <= LAT(a) <= hi] / Z."""
  rows = ((1.0, 2.0, 3.0), (0.0, 1.0), (2.0, 4.0, 5.0))
  alpha = (jnp.asarray([0.3, -0.2, 0.5]), jnp.asarray([0.4, -0.4]), jnp.asarray([-0.6, 0.2, 0.7]))
  logp = [np.asarray(jax.nn.log_softmax(a)) for a in alpha]
  archs = list(itertools.product(range(3), range(2), range(3)))
  for lo in (4.5, -np.inf):
    band = LatencyBand(0.5, rows, lo=lo, hi=7.5, resolution=0.04)
    lat = np.array([0.5 + sum(rows[b][a[b]] for b in range(3)) for a in archs])
    inside = (lat >= lo) & (lat <= 7.5)
    assert 0 < inside.sum() < len(archs)  # the band cuts both ways (or from above)
    p = np.exp([sum(logp[b][a[b]] for b in range(3)) for a in archs]) * inside
    keys = jax.random.split(jax.random.key(0), 40000)
    draws = np.asarray(jax.jit(jax.vmap(lambda k, band=band: band.sample(k, alpha).active))(keys))
    index = {a: i for i, a in enumerate(archs)}
    freq = np.bincount([index[tuple(d)] for d in draws], minlength=len(archs)) / len(keys)
    assert freq[~inside].sum() == 0
    np.testing.assert_allclose(freq, p / p.sum(), atol=0.01)


def test_latency_band_names_the_reachable_range_when_empty():
  band = LatencyBand(0.5, ((1.0, 2.0), (1.0, 3.0)), lo=5.6, hi=5.9)
  with pytest.raises(UserValueError, match=r"in \[5.6, 5.9\].*range from 2.5 to 5.5"):
    band.bins()
  with pytest.raises(UserValueError, match="needs arch.reinforce.baseline = 'leave_one_out'"):
    get_estimator("reinforce", within_target=True, band=LatencyBand(0.0, ((1.0,),), 0.5, 1.5))
  with pytest.raises(UserValueError, match="needs a latency target and a latency model"):
    get_estimator("reinforce", within_target=True, baseline="leave_one_out")
  with pytest.raises(UserValueError, match="range from 2.5 to 5.5"):
    get_estimator("reinforce", within_target=True, baseline="leave_one_out", band=band)


def test_reinforce_within_target_scores_only_nets_in_the_band():
  """The toy forward classifies right exactly when the sampled net's latency is in the band: the
  mean accuracy of the K scored nets is 1 with within_target, below 1 when sampling from p."""
  rows = tuple(tuple(float(i + 1) for i in range(len(b.candidates))) for b in SPACE.blocks)
  alpha = tuple(jnp.zeros(len(b.candidates)) for b in SPACE.blocks)
  band = LatencyBand(0.0, rows, lo=5.0, hi=6.0)
  labels = jnp.arange(8) % 10

  def forward(sample, gates):
    del gates
    lat = sum(jnp.asarray(r)[sample.active[i]] for i, r in enumerate(rows))
    good = jax.nn.one_hot(labels, 10)
    return jnp.where((lat >= 5.0) & (lat <= 6.0), good, -good), None

  for within, all_in in ((True, True), (False, False)):
    est = get_estimator("reinforce", k=16, baseline="leave_one_out", within_target=within,
                        band=band)
    res = jax.jit(lambda key, est=est: est.grads(ArchBatch(
        space=SPACE, alpha=alpha, key=key, forward=forward, labels=labels)))(jax.random.key(0))
    assert (float(res.metrics["arch_acc"]) == 1.0) == all_in


def test_sampling_distributions():
  alpha = (jnp.log(jnp.asarray([0.5, 0.3, 0.15, 0.05])),)
  p = np.asarray([0.5, 0.3, 0.15, 0.05])
  keys = jax.random.split(jax.random.key(0), 20000)
  single = jax.vmap(lambda k: sample_gates(k, alpha, "single").active[0])(keys)
  np.testing.assert_allclose(np.bincount(single, minlength=4) / len(keys), p, atol=0.015)
  two = jax.vmap(lambda k: sample_gates(k, alpha, "two"))(keys)
  inv = np.asarray(two.involved[:, 0])
  assert np.all(inv[:, 0] != inv[:, 1]) and np.all(inv[:, 0] == np.asarray(two.active[:, 0]))
  # P(i in pair) for two draws without replacement: p_i + sum_{j != i} p_j p_i / (1 - p_j).
  in_pair = np.array([p[i] + sum(p[j] * p[i] / (1 - p[j]) for j in range(4) if j != i)
                      for i in range(4)])
  freq = np.array([np.mean(np.any(inv == i, axis=1)) for i in range(4)])
  np.testing.assert_allclose(freq, in_pair, atol=0.015)
  # Active given the pair: P(active = i | {i, j}) = p_i / (p_i + p_j).
  sel = np.all(np.sort(inv, axis=1) == [0, 1], axis=1)
  np.testing.assert_allclose(np.mean(inv[sel, 0] == 0), 0.5 / 0.8, atol=0.02)
  uni = jax.vmap(lambda k: sample_gates(k, alpha, "uniform").active[0])(keys)
  np.testing.assert_allclose(np.bincount(uni, minlength=4) / len(keys), 0.25, atol=0.015)
  with pytest.raises(ValueError, match="uniform, single, two, full"):
    sample_gates(keys[0], alpha, "three")


def test_registry_lists_valid_names():
  assert get_estimator("two").name == "two"
  with pytest.raises(UnknownNameError, match="full, two, reinforce"):
    get_estimator("darts")


def test_derive_argmax_and_zero_skip():
  alpha = [np.zeros(len(b.candidates)) for b in SPACE.blocks]
  alpha[0][SPACE.blocks[0].candidates.index("Zero")] = 1.0
  alpha[1][2] = 0.5
  arch = derive(alpha, SPACE)
  assert arch.ops == ("Zero", SPACE.blocks[1].candidates[2], SPACE.blocks[2].candidates[0])
  with pytest.raises(ValueError, match="block 1"):
    derive([alpha[0], alpha[1][:2], alpha[2]], SPACE)


def test_sample_is_a_pytree():
  s = Sample(active=jnp.zeros(3, jnp.int32))
  assert len(jax.tree.leaves(s)) == 1
