"""Latency predictors: fitting recovers what the table sum misses, save/load, space checks."""

from __future__ import annotations

import itertools
import json

import jax
import numpy as np
import pytest
from latency_helpers import synthetic_table, tiny_space

from pnas_jax.latency import expected, predictor
from pnas_jax.latency.predictor import (
    LinearPredictor,
    TableSumPredictor,
    cheapest_prediction,
    errors,
    fit_and_evaluate,
    fit_linear,
    get_predictor_kind,
    load_latency_model,
    load_predictor,
    macs_predictor,
    save_predictor,
)
from pnas_jax.latency.table import LatencyTableError, cost_table
from pnas_jax.search_space import Arch


def _all_archs(space):
  return [Arch(ops) for ops in itertools.product(*(b.candidates for b in space.blocks))]


def _synthetic_truth(space, table, archs, noise, seed=0):
  """A 'device' whose networks take 0.6 * table sum + 0.4 ms, plus an op-specific fusion effect."""
  rng = np.random.default_rng(seed)
  bonus = {op: rng.uniform(-0.15, 0.15) for op in space.candidates}
  tsum = TableSumPredictor(space, table).of_archs(archs)
  fused = np.array([sum(bonus.get(op, 0.0) for op in a.ops) for a in archs])
  y = 0.4 + 0.6 * tsum + fused
  return y * (1 + noise * rng.standard_normal(len(y)))


def test_fit_recovers_what_the_table_sum_misses():
  space = tiny_space(stage_depths=(3, 2))
  table = cost_table(synthetic_table(space, 1), space)
  archs = _all_archs(space)  # 2*3*3*2*3 = 108 networks
  y = _synthetic_truth(space, table, archs, noise=0.005)
  pred, report = fit_and_evaluate(space, table, archs, y, "linear", train_fraction=0.8, seed=0)
  assert report["n_train"] + report["n_test"] == len(archs)
  assert report["table_sum_test"]["rel_rmse"] > 0.2
  assert report["test"]["rel_rmse"] < 0.02
  assert 0.3 < pred.scale < 1.2  # per-layer overhead counted too often by the sum: s < 1
  # The test split really is held out: its archs are not in the training set.
  assert len(set(report["test_indices"])) == report["n_test"]


def test_linear_predictor_is_the_expectation_over_architectures():
  space = tiny_space()
  table = cost_table(synthetic_table(space, 2), space)
  archs = _all_archs(space)
  pred = fit_linear(space, table, archs, _synthetic_truth(space, table, archs, 0.0))
  # E_{a ~ uniform}[LAT(a)] equals LAT(uniform p): the model is linear in p.
  uniform = pred.predict(expected.uniform_probs(space))
  assert float(uniform) == pytest.approx(pred.of_archs(archs).mean(), rel=1e-5)
  one_hot = [float(pred.predict(expected.one_hot_probs(space, a))) for a in archs]
  np.testing.assert_allclose(one_hot, pred.of_archs(archs), rtol=1e-5)
  assert float(jax.jit(pred.predict)(expected.uniform_probs(space))) == pytest.approx(
      float(uniform), rel=1e-6)


def test_save_load_round_trip_and_space_check(tmp_path):
  space = tiny_space()
  table = synthetic_table(space, 3)
  costs = cost_table(table, space)
  archs = _all_archs(space)
  pred = fit_linear(space, costs, archs, _synthetic_truth(space, costs, archs, 0.01),
                    header=table.header)
  path = tmp_path / "p.json"
  save_predictor(path, pred, {"note": 1})
  again = load_predictor(path, space)
  assert isinstance(again, LinearPredictor) and again == pred
  assert json.loads(path.read_text())["metrics"] == {"note": 1}
  via_search = load_latency_model(path, space, device="cpu: test", batch=1)
  np.testing.assert_allclose(via_search.of_archs(archs), pred.of_archs(archs))
  with pytest.raises(LatencyTableError, match=r"another search space \(resolution: 16 vs 32"):
    load_predictor(path, tiny_space(resolution=32))
  with pytest.raises(LatencyTableError, match="device is 'cpu: test'"):
    load_latency_model(path, space, device="TPU")
  # The table-sum predictor round-trips too.
  save_predictor(tmp_path / "t.json", TableSumPredictor(space, costs, table.header))
  assert load_predictor(tmp_path / "t.json").table == costs


def test_registry_and_bad_inputs():
  with pytest.raises(KeyError, match="valid: table_sum, linear"):
    get_predictor_kind("mlp")
  space = tiny_space()
  costs = cost_table(synthetic_table(space), space)
  archs = _all_archs(space)[:3]
  with pytest.raises(ValueError, match="at least 4"):
    fit_linear(space, costs, archs, [1.0, 2.0, 3.0])
  with pytest.raises(ValueError, match="3 architectures but 2 latencies"):
    fit_linear(space, costs, archs, [1.0, 2.0])
  with pytest.raises(ValueError, match="got 1 probability vectors for 3 blocks"):
    LinearPredictor(space, costs, 0.0, 1.0, tuple((0.0,) * len(c) for c in costs.per_block)
                    ).predict([np.ones(2)])


def test_macs_predictor_matches_net_cost():
  from pnas_jax.models.cost import net_cost

  space = tiny_space()
  pred = macs_predictor(space)
  assert pred.unit == "MMACs"
  arch = _all_archs(space)[5]
  want = net_cost(space, arch).macs / 1e6
  assert float(pred.predict(expected.one_hot_probs(space, arch))) == pytest.approx(want, rel=1e-5)


def test_errors():
  e = errors(np.array([1.1, 1.8]), np.array([1.0, 2.0]))
  assert e["rel_rmse"] == pytest.approx(0.1)
  assert e["rmse_ms"] == pytest.approx(np.sqrt((0.01 + 0.04) / 2))


def _saved_linear(tmp_path):
  space = tiny_space()
  table = synthetic_table(space, 3)
  costs = cost_table(table, space)
  archs = _all_archs(space)
  pred = fit_linear(space, costs, archs, _synthetic_truth(space, costs, archs, 0.01),
                    header=table.header)
  path = tmp_path / "p.json"
  save_predictor(path, pred)
  return space, path, json.loads(path.read_text())


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(bias=float("nan")), r"p.json: bias = nan: must be a finite number"),
    (lambda d: d["delta"][1].__setitem__(0, float("inf")), r"p.json: delta\[1\]\[0\] = inf"),
    (lambda d: d["table"].__setitem__("fixed", -1.0), r"p.json: table.fixed = -1 ms"),
    (lambda d: d["table"]["per_block"][0].__setitem__(1, float("nan")),
     r"p.json: table.per_block\[0\]\[1\] = nan ms"),
    (lambda d: d.update(bias=-100.0), r"p.json: predicts -\d.* ms for its cheapest architecture"),
])
def test_predictor_with_bad_values_is_refused(tmp_path, capsys, edit, match):
  space, path, d = _saved_linear(tmp_path)
  edit(d)
  path.write_text(json.dumps(d))
  with pytest.raises(LatencyTableError, match=match):
    load_predictor(path, space)
  with pytest.raises(LatencyTableError, match=match):
    load_latency_model(path, space)


def test_predictor_with_unknown_kind_names_file_and_kinds(tmp_path):
  from pnas_jax.errors import UnknownNameError

  space, path, d = _saved_linear(tmp_path)
  d["kind"] = "mlp"
  path.write_text(json.dumps(d))
  with pytest.raises(UnknownNameError, match=r"p.json: 'kind' is 'mlp', an unknown latency predictor"
                     r" kind; valid: table_sum, linear"):
    load_predictor(path, space)


def test_fit_never_predicts_a_non_positive_latency(tmp_path, monkeypatch):
  # Four expensive networks whose latency grows 10x faster than the table sum: the fit extrapolates
  # to a negative latency for the cheapest architecture, which the loader refuses (a tiny space
  # measured on 6 networks in a test of `pnas latency fit` once did). The fit shrinks towards the
  # table sum until the cheapest prediction is positive, and is then saved and loaded like any
  # other.
  space = tiny_space()
  table = synthetic_table(space, 3)
  costs = cost_table(table, space)
  archs = _all_archs(space)
  tsum = TableSumPredictor(space, costs).of_archs(archs)
  top = np.argsort(tsum)[-4:]
  root = tsum.min() + 0.9 * (tsum[top].min() - tsum.min())  # the line's zero, below the four
  y = 10.0 * (tsum[top] - root)
  picked = [archs[i] for i in top]
  with monkeypatch.context() as m:  # no shrinking: the plain fit goes below zero
    m.setattr(predictor, "MAX_SHRINK_DECADES", 0)
    with pytest.raises(ValueError, match="stays <= 0 ms for its cheapest architecture"):
      fit_linear(space, costs, picked, y)
  pred = fit_linear(space, costs, picked, y, header=table.header)
  low, cheapest = cheapest_prediction(pred)
  assert low > 0 and pred.of_archs(archs).min() == pytest.approx(low)
  assert pred.of_archs([Arch(tuple(b.candidates[j] for b, j in zip(space.blocks, cheapest,
                                                                    strict=True)))])[0] == (
      pytest.approx(low))
  assert pred.ridge > 0
  save_predictor(tmp_path / "p.json", pred)
  assert load_predictor(tmp_path / "p.json", space) == pred
