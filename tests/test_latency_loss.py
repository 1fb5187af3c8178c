"""E[LAT] and the latency losses: gradients reach alpha through p and equal the analytic values."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from latency_helpers import synthetic_table, tiny_space

from pnas_jax.errors import UnknownNameError
from pnas_jax.latency.expected import CostTable, expected_cost
from pnas_jax.latency.loss import latency_loss, loss_defaults
from pnas_jax.latency.predictor import LinearPredictor, TableSumPredictor
from pnas_jax.latency.table import cost_table

jax.config.update("jax_enable_x64", False)


def _setup(seed=0):
  space = tiny_space()
  table = cost_table(synthetic_table(space, seed), space)
  rng = np.random.default_rng(seed)
  alphas = [jnp.asarray(rng.normal(0, 1.0, len(b.candidates)), jnp.float32) for b in space.blocks]
  return space, table, alphas


def _analytic_dlat(alphas, costs):
  """dE/dalpha_li = p_li * (F_li - sum_j p_lj F_lj)  (Eq. 5 of Cai et al. 2019, through softmax)."""
  out = []
  for a, c in zip(alphas, costs, strict=True):
    p = np.asarray(jax.nn.softmax(a), np.float64)
    c = np.asarray(c, np.float64)
    out.append(p * (c - p @ c))
  return out


def test_expected_latency_gradient_is_analytic():
  space, table, alphas = _setup()
  pred = TableSumPredictor(space, table)
  lat = lambda al: pred.predict([jax.nn.softmax(a) for a in al])
  grads = jax.grad(lat)(alphas)
  for g, want in zip(grads, _analytic_dlat(alphas, table.per_block), strict=True):
    np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-7)
  # Zero (cost 0) is in block 1; its gradient is -p_zero * E_l, negative: more Zero, less latency.
  zero = space.blocks[1].candidates.index("Zero")
  assert table.per_block[1][zero] == 0.0 and grads[1][zero] < 0


def test_linear_predictor_gradient_is_analytic():
  space, table, alphas = _setup(1)
  rng = np.random.default_rng(3)
  delta = tuple(tuple(rng.normal(0, 0.1, len(c))) for c in table.per_block)
  pred = LinearPredictor(space, table, bias=0.2, scale=0.7, delta=delta)
  grads = jax.grad(lambda al: pred.predict([jax.nn.softmax(a) for a in al]))(alphas)
  eff = [0.7 * np.asarray(c) + np.asarray(d) for c, d in zip(table.per_block, delta, strict=True)]
  for g, want in zip(grads, _analytic_dlat(alphas, eff), strict=True):
    np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["mul#log", "add#linear"])
def test_loss_gradients_are_analytic(name):
  space, table, alphas = _setup(2)
  target, ce = 5.0, 2.3
  loss = latency_loss(name)
  value = lambda al, ce: loss(ce, expected_cost(table, [jax.nn.softmax(a) for a in al]), target)
  (g_alpha, g_ce) = jax.grad(value, argnums=(0, 1))(alphas, jnp.float32(ce))
  lat = float(expected_cost(table, [jax.nn.softmax(a) for a in alphas]))
  if name == "mul#log":
    a, b = 0.2, 0.3
    r = np.log(lat) / np.log(target)
    assert float(value(alphas, ce)) == pytest.approx(a * ce * r**b, rel=1e-5)
    dl_dlat = a * ce * b * r ** (b - 1) / (lat * np.log(target))
    dl_dce = a * r**b
  else:
    lam = 0.1
    assert float(value(alphas, ce)) == pytest.approx(ce + lam * (lat - target) / target, rel=1e-5)
    dl_dlat, dl_dce = lam / target, 1.0
  assert float(g_ce) == pytest.approx(dl_dce, rel=1e-5)
  for g, want in zip(g_alpha, _analytic_dlat(alphas, table.per_block), strict=True):
    np.testing.assert_allclose(g, dl_dlat * want, rtol=1e-4, atol=1e-8)


def test_loss_hyperparameters_and_registry():
  assert loss_defaults("mul#log") == {"a": 0.2, "b": 0.3}
  assert loss_defaults("add#linear") == {"lam": 0.1}
  loss = latency_loss("add#linear", lam=1.0)
  assert float(loss(1.0, 12.0, 10.0)) == pytest.approx(1.2)
  loss = latency_loss("mul#log", a=1.0, b=1.0)
  assert float(loss(2.0, 100.0, 10.0)) == pytest.approx(4.0, rel=1e-6)
  with pytest.raises(UnknownNameError, match=r"valid: mul#log, add#linear"):
    latency_loss("mul#linear")
  with pytest.raises(TypeError, match=r"no hyper-parameter\(s\) \['lambda'\]; valid: \['lam'\]"):
    latency_loss("add#linear", **{"lambda": 0.1})
  with pytest.raises(ValueError, match="T > 1"):
    latency_loss("mul#log")(1.0, 0.5, 0.8)


def test_losses_jit_with_traced_target():
  table = CostTable(1.0, ((1.0, 2.0),), (("a", "b"),))
  for name in ("mul#log", "add#linear"):
    loss = latency_loss(name)
    f = jax.jit(lambda al, t, loss=loss: loss(1.5, expected_cost(table, [jax.nn.softmax(al)]), t))
    assert np.isfinite(float(f(jnp.zeros(2), jnp.float32(3.0))))
