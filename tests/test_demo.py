"""pnas demo: its configs load with the demo's overrides, and the report has every promised field.

The demo itself (about 20 minutes, --quick about 5) is run by hand; its phases are the sweep,
train and latency commands tested in test_sweep.py, test_retrain.py and test_latency_*.py, and the
protocol pieces of pnas_jax/front.py (test_front.py, test_experiments.py).
"""

from __future__ import annotations

import json
import os
import types

import pytest

from pnas_jax import demo, front
from pnas_jax.config_loading import load_config
from pnas_jax.latency.predictor import macs_predictor
from pnas_jax.search_space import Arch
from pnas_jax.search_space.space import SearchSpace
from pnas_jax.train.loop import Status


@pytest.mark.parametrize("quick", [False, True])
def test_demo_configs_load_with_its_overrides(quick, tmp_path):
  lat, search, train = demo.demo_overrides(quick, 3, "fashion_mnist", None, str(tmp_path))
  lc = load_config(demo._config_path("latency", "fashion_mnist"), lat)
  sc = load_config(demo._config_path("search", "fashion_mnist"), search)
  tc = load_config(demo._config_path("train", "fashion_mnist"), train)
  assert sc.seed == tc.seed == 3
  assert sc.latency.model == f"{tmp_path}/predictor.json" == lc.predictor
  # A sweep over the demo's targets (no single target left set).
  assert tuple(sc.latency.target_ratios) == demo.TARGET_RATIOS and sc.latency.target_ratio == 0
  assert sc.latency.baseline_op == lc.baseline_op
  # The latency config measures the search config's space at its batch (one source of truth).
  assert lc.space.to_dict() == sc.space.to_dict() and lc.batch == sc.latency.batch == 16
  assert tc.report.latency_repeats == 0  # the demo times every net together at the end


def _record(name, method, target, acc, ms, arch):
  return {"name": name, "method": method, "target": target, "ops": list(arch.ops),
          "accuracy": front.aggregate_seeds([acc]), "latency": {"value": ms, "std": 0.01},
          "predicted_latency": ms, "params": 1000, "macs_m": 2.0}


def test_report_has_every_field_and_writes_markdown_and_plot(tmp_path):
  sc = load_config(demo._config_path("search", "fashion_mnist"), demo.demo_overrides(
      False, 7, "fashion_mnist", None, str(tmp_path))[1])
  space = SearchSpace.from_dict(sc.space.to_dict())
  pred = macs_predictor(space)
  baseline = Arch.uniform(space, "3x3_MBConv6")
  base = float(pred.of_archs([baseline])[0])
  found_arch = Arch(("Zero",) + ("3x3_MBConv3",) * (space.n_blocks - 1))
  targets = [(f"ratio_{r:g}", r * base, found_arch) for r in demo.TARGET_RATIOS]
  networks = [_record(f"found_{lb}", "found", lb, 88.0 + i, 0.3 + 0.1 * i, found_arch)
              for i, (lb, _, _) in enumerate(targets)]
  networks += [_record("hand_a", "hand", None, 87.5, 0.35, baseline),
               _record("hand_b", "hand", None, 89.0, 0.55, baseline),
               _record("random_ratio_0.6_1", "random", "ratio_0.6", 87.0, 0.3, baseline)]
  measured = {n["name"]: n["latency"] for n in networks}
  hits = front.target_hits(targets, base, {"value": 0.5}, measured)  # baseline 0.5 ms on the device
  search_result = types.SimpleNamespace(wall_s=30.0, holdout_top1=80.0, expected_latency=1.0,
                                        status=Status.DONE)
  sw = types.SimpleNamespace(warmup=types.SimpleNamespace(wall_s=100.0, step=500),
                             targets=[(lb, search_result) for lb, _, _ in targets])
  fit = {"n_test": 5, "test": {"rel_rmse": 0.03}, "table_sum_test": {"rel_rmse": 0.4}}
  r = demo._report(str(tmp_path), networks, hits, sw, baseline=baseline,
                   baseline_latency={"value": 0.5, "std": 0.01}, seed=7, quick=False,
                   timings={"sweep": 1.0}, wall_s=60.0, fit_metrics=fit, search_cfg=sc,
                   dataset=("fashion_mnist", 10000))
  with open(tmp_path / "report.json") as f:
    assert json.load(f) == json.loads(json.dumps(r))
  assert r["seed"] == 7 and r["device"] and r["dataset"] == "fashion_mnist"
  # 0.6 x 0.5 ms = 0.30 (found 0.30: hit), 0.35 (found 0.40: 114%, missed), 0.40 (found 0.50).
  assert [h["hit"] for h in r["target_hits"]] == [True, False, False]
  assert [h["target_measured"] for h in r["target_hits"]] == pytest.approx([0.30, 0.35, 0.40])
  assert set(r["summary"]["methods"]) == {"found", "hand", "random"}
  (vs_hand,) = [c["vs_hand"] for c in r["summary"]["found_vs"] if c["name"] == "found_ratio_0.6"]
  assert vs_hand is None  # faster than every hand-designed net
  (c07,) = [c for c in r["summary"]["found_vs"] if c["name"] == "found_ratio_0.7"]
  assert c07["vs_hand"]["mean"] == pytest.approx(87.5 + (89.0 - 87.5) * 0.25)  # 0.40 on 0.35..0.55
  md = (tmp_path / "report.md").read_text()
  assert "1 of 3 targets hit on the device" in md and "relative RMSE 3.0%" in md
  assert "| ratio_0.6 | 0.60 | 0.3 ms | 0.3 ms | 100.0% | yes (within 5%) |" in md
  assert "batch 16, one core" in r["latency_protocol"]
  assert "| found_ratio_0.7 | found | ratio_0.7 | 89.00 +- 0.00 |" in md
  assert "within 3% below the target" in md and "faster than every hand-designed net" in md
  assert os.path.getsize(tmp_path / "pareto.png") > 1000
