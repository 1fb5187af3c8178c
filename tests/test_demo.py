"""pnas demo: its configs load with the demo's overrides, and the report has every promised field.

The demo itself (about 30 minutes, --quick about 5) is run by hand; its phases are the search,
train and latency commands tested in test_search.py, test_retrain.py and test_latency_*.py.
"""

from __future__ import annotations

import json
import os
import types

import pytest

from pnas_jax import demo
from pnas_jax.config_loading import load_config
from pnas_jax.latency.objective import LatencyObjective
from pnas_jax.latency.predictor import macs_predictor
from pnas_jax.search_space import Arch
from pnas_jax.train.loop import Status


@pytest.mark.parametrize("quick", [False, True])
def test_demo_configs_load_with_its_overrides(quick, tmp_path):
  lat, search, train = demo.demo_overrides(quick, 3, "fashion_mnist", None, str(tmp_path))
  lc = load_config(demo._config_path("latency", "fashion_mnist"), lat)
  sc = load_config(demo._config_path("search", "fashion_mnist"), search)
  tc = load_config(demo._config_path("train", "fashion_mnist"), train)
  assert sc.seed == tc.seed == 3
  assert sc.latency.model == f"{tmp_path}/predictor.json" == lc.predictor
  assert sc.latency.target_ratio == pytest.approx(0.7) and sc.latency.baseline_op == lc.baseline_op
  # The latency config measures the search config's space (one source of truth).
  assert lc.space.to_dict() == sc.space.to_dict()
  assert tc.report.latency_repeats == 0  # the demo times all five nets together at the end


def test_report_has_every_field_and_writes_markdown_and_plot(tmp_path):
  sc = load_config(demo._config_path("search", "fashion_mnist"))
  from pnas_jax.search_space.space import SearchSpace

  space = SearchSpace.from_dict(sc.space.to_dict())
  pred = macs_predictor(space)
  baseline = Arch.uniform(space, "3x3_MBConv6")
  objective = LatencyObjective(pred, 0.7 * float(pred.of_archs([baseline])[0]), "MMACs", None,
                               float(pred.of_archs([baseline])[0]), "budget", 0.03)
  found_arch = Arch(("Zero",) + ("3x3_MBConv3",) * (space.n_blocks - 1))
  # Probabilities whose per-block argmax is the first candidate everywhere.
  probs = [[0.5] + [0.5 / (len(b.candidates) - 1)] * (len(b.candidates) - 1) for b in space.blocks]
  found = types.SimpleNamespace(expected_latency=3.0, holdout_top1=80.0, step=10, images_per_s=5.0,
                                status=Status.DONE, arch=found_arch, probabilities=probs)

  def res(arch, acc, ms):
    return {"test_top1": acc, "latency_ms_b1": ms, "arch": list(arch.ops), "params": 1000,
            "macs_m": 2.0, "dataset": "fashion_mnist", "test_examples": 10000}

  results = {"found": res(found_arch, 88.0, 0.30), "baseline": res(baseline, 88.3, 0.50)}
  for i in (1, 2, 3):
    results[f"random{i}"] = res(baseline, 87.0 + i, 0.4 + 0.1 * i)
  fit = {"n_test": 5, "test": {"rel_rmse": 0.03}, "table_sum_test": {"rel_rmse": 0.4}}
  r = demo._report(str(tmp_path), space, objective, found, results, 7, False, {"search": 1.0}, 60.0,
                   fit, "reinforce")
  with open(tmp_path / "report.json") as f:
    assert json.load(f) == json.loads(json.dumps(r))
  assert r["seed"] == 7 and r["device"]
  assert set(r["found"]) >= {"accuracy", "latency_ms", "target_ms", "arch"}
  assert r["found"]["target_ms"] == pytest.approx(0.7 * 0.50)  # same-session baseline x ratio
  assert r["found"]["meets_target"] is True  # 0.30 <= 1.1 x 0.35
  assert r["accuracy_vs_baseline"] == pytest.approx(-0.3)
  assert set(r["baseline"]) >= {"accuracy", "latency_ms"} and len(r["random"]) == 3
  assert all(set(x) >= {"accuracy", "latency_ms"} for x in r["random"])
  md = (tmp_path / "report.md").read_text()
  assert "| found | 88.00 | 0.300 |" in md and "meets it" in md and "relative RMSE 3.0%" in md
  argmax = " ".join(b.candidates[0] for b in space.blocks)
  assert r["search"]["argmax_arch"] == argmax.split() and r["search"]["derive_band"] == 0.03
  assert (f"estimator reinforce; the found net is the most probable architecture with predicted "
          f"latency within 3% below the search target (the per-block argmax would be {argmax})") in md
  assert os.path.getsize(tmp_path / "pareto.png") > 1000
