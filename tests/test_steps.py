"""Weight and arch steps: masked updates, one compilation for any sample, pluggable latency term."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from spaces import TINY_SPACE

from pnas_jax.arch import get_estimator
from pnas_jax.arch.supernet import Supernet, child_variables
from pnas_jax.latency.expected import expected_cost, macs_table
from pnas_jax.models.child import ChildNet
from pnas_jax.search_space import Arch
from pnas_jax.train import (
  arch_optimizer,
  arch_step,
  create_search_state,
  cross_entropy,
  jit_step,
  masked_update,
  weight_optimizer,
  weight_step,
)

SPACE = TINY_SPACE
MODEL = Supernet(SPACE, dw_impl="lax")
WTX = weight_optimizer(base_lr=0.1, total_steps=100)
ATX = arch_optimizer()
BATCH = {
    "image": jax.random.normal(jax.random.key(1), (6, 16, 16, 3)),
    "label": jnp.arange(6) % 10,
}


TRACES = {"weight": 0, "arch": 0}


def _counted(fn, name):
  @functools.wraps(fn)
  def wrapper(*args, **kw):
    TRACES[name] += 1  # runs once per trace (= per compilation), never per call
    return fn(*args, **kw)

  return wrapper


# Compiled once for the whole module, shared by the tests (they all use the same shapes).
WEIGHT_STEP = jax.jit(functools.partial(_counted(weight_step, "weight"), model=MODEL, tx=WTX),
                      donate_argnums=0)
TWO_STEP = jax.jit(functools.partial(_counted(arch_step, "arch"), model=MODEL, tx=ATX,
                                     estimator=get_estimator("two")), donate_argnums=0)


def mul_log(ce, lat, target, a=0.2, b=0.3):
  return a * ce * (jnp.log(lat) / jnp.log(target)) ** b


def add_linear(ce, lat, target, lam=0.1):
  return ce + lam * (lat - target) / target


def _state(seed=0):
  return create_search_state(MODEL, jax.random.key(seed), WTX, ATX)


def _np(tree):
  """A host copy (the step donates its input state); PRNG keys stay as they are."""
  return jax.tree.map(
      lambda x: x if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else np.array(x), tree)


def test_masked_update_keeps_momentum_and_counts_shared():
  params = {"a": jnp.ones(3), "b": jnp.ones(2)}
  state = WTX.init(params)
  grads = {"a": jnp.full(3, 0.5), "b": jnp.full(2, 0.5)}
  for _ in range(2):
    params, state = masked_update(WTX, grads, state, params, {"a": True, "b": False})
  np.testing.assert_array_equal(params["b"], 1.0)
  np.testing.assert_array_equal(state[1][0].trace["b"], 0.0)  # momentum never started
  assert not np.allclose(params["a"], 1.0)
  assert int(state[1][1].count) == 2  # the schedule advances every step


def test_weight_step_touches_only_the_sampled_path():
  state = _state()
  # Make the momentum buffers non-zero everywhere so "unchanged" is a real check.
  state = state.replace(weight_opt_state=jax.tree.map(
      lambda t: t + 0.01 if t.dtype == jnp.float32 and t.ndim > 0 else t, state.weight_opt_state))
  before = _np(state)
  new, metrics = WEIGHT_STEP(state, BATCH)
  active = np.asarray(metrics["active"])
  trace_new = new.weight_opt_state[1][0].trace
  trace_old = before.weight_opt_state[1][0].trace
  for b in SPACE.blocks:
    for j, op in enumerate(b.candidates):
      name = f"block{b.index}"
      if op not in before.params[name]:
        continue
      leaves = zip(jax.tree.leaves(new.params[name][op]),
                   jax.tree.leaves(before.params[name][op]), strict=True)
      moms = zip(jax.tree.leaves(trace_new[name][op]), jax.tree.leaves(trace_old[name][op]),
                 strict=True)
      stats = zip(jax.tree.leaves(new.batch_stats[name][op]),
                  jax.tree.leaves(before.batch_stats[name][op]), strict=True)
      if j == active[b.index]:
        assert all(not np.array_equal(a, o) for a, o in leaves)
        assert all(not np.array_equal(a, o) for a, o in moms)
        assert any(not np.array_equal(a, o) for a, o in stats)
      else:  # bit-identical weights, momentum and BN statistics
        assert all(np.array_equal(a, o) for a, o in leaves)
        assert all(np.array_equal(a, o) for a, o in moms)
        assert all(np.array_equal(a, o) for a, o in stats)
  assert int(new.step) == 1
  jax.tree.map(np.testing.assert_array_equal, new.alpha, before.alpha)


def test_weight_step_equals_child_sgd_step_on_the_sampled_path():
  """Independent reference: ChildNet + optax on the sampled architecture, label smoothing 0.1."""
  state = _state(seed=3)
  before = _np(state)
  new, metrics = WEIGHT_STEP(state, BATCH)
  active = np.asarray(metrics["active"])
  arch = Arch(tuple(b.candidates[i] for b, i in zip(SPACE.blocks, active, strict=True)))
  child = ChildNet(SPACE, arch, dw_impl="lax")
  cv = child_variables({"params": before.params, "batch_stats": before.batch_stats}, SPACE, arch)

  def loss(p):
    y, upd = child.apply({"params": p, "batch_stats": cv["batch_stats"]}, BATCH["image"],
                         train=True, mutable=["batch_stats"])
    return cross_entropy(y, BATCH["label"], 0.1), upd["batch_stats"]

  (lval, stats), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(cv["params"])
  upd, _ = WTX.update(g, WTX.init(cv["params"]), cv["params"])
  expected = optax.apply_updates(cv["params"], upd)
  got = child_variables({"params": new.params, "batch_stats": new.batch_stats}, SPACE, arch)
  np.testing.assert_allclose(metrics["loss"], lval, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), expected,
               got["params"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), stats,
               got["batch_stats"])


def test_no_recompilation_across_50_samples():
  wstep, astep = WEIGHT_STEP, TWO_STEP
  state = _state()
  seen_w, seen_a = set(), set()
  for _ in range(50):
    state, m = wstep(state, BATCH)
    seen_w.add(tuple(np.asarray(m["active"])))
    state, m = astep(state, BATCH)
    seen_a.add(tuple(np.asarray(m["involved"]).ravel()))
  assert len(seen_w) > 20 and len(seen_a) > 20  # the samples really differed
  assert TRACES == {"weight": 1, "arch": 1}
  assert wstep._cache_size() == 1 and astep._cache_size() == 1
  assert int(state.step) == 50 and int(state.arch_step) == 50


def _kmacs(probs, table):
  return 1e3 * expected_cost(table, probs)  # thousands of MACs: log(E[cost]) > 0 for "mul#log"


@pytest.mark.parametrize("loss_name", ["mul#log"])
def test_arch_step_with_latency_term_moves_alpha_towards_cheaper_ops(loss_name):
  """With a dominant FLOPs term (target half the uniform E[MACs]), E[MACs] must fall."""
  cost_fn = functools.partial(_kmacs, table=macs_table(SPACE))
  uniform = float(cost_fn([jnp.full(len(b.candidates), 1 / len(b.candidates))
                           for b in SPACE.blocks]))
  target = 0.5 * uniform
  if loss_name == "mul#log":
    loss_fn = functools.partial(mul_log, target=target, a=1.0, b=30.0)
  else:
    loss_fn = functools.partial(add_linear, target=target, lam=50.0)
  step = jit_step(arch_step, model=MODEL, tx=arch_optimizer(lr=0.05),
                  estimator=get_estimator("full"), cost_fn=cost_fn, loss_fn=loss_fn)
  state = _state()
  start = float(cost_fn([jax.nn.softmax(a) for a in state.alpha]))
  for _ in range(10):
    state, metrics = step(state, BATCH)
    assert np.isfinite(float(metrics["arch_loss"]))
  end = float(cost_fn([jax.nn.softmax(a) for a in state.alpha]))
  assert end < start - 0.02 * start


def test_data_parallel_axis_name_gives_identical_replicas():
  """vmap with axis_name stands in for shard_map: same gates, pmean'd gradients on each replica.

  (The arch step reduces through the same `axis_name` path: estimators pmean their gradients.)"""
  state = _state()
  batch = jax.tree.map(lambda x: x.reshape((2, 3) + x.shape[1:]), BATCH)
  step = jax.vmap(functools.partial(weight_step, model=MODEL, tx=WTX, axis_name="data"),
                  in_axes=(None, 0), axis_name="data")
  new, metrics = jax.jit(step)(state, batch)
  np.testing.assert_array_equal(metrics["active"][0], metrics["active"][1])
  for leaf in jax.tree.leaves(new.params):
    np.testing.assert_array_equal(leaf[0], leaf[1])
