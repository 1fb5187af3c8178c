"""latency.derive = "supernet": in-band candidates scored in the warm-up's supernet."""

from __future__ import annotations

import json
import os
import pathlib

import jax
import numpy as np
import pytest
from checkpoint_helpers import saved_state

from pnas_jax.config_loading import load_config
from pnas_jax.errors import UserValueError
from pnas_jax.file_io import load_msgpack
from pnas_jax.latency.predictor import macs_predictor
from pnas_jax.search_space.space import Arch
from pnas_jax.train import derive_by_supernet
from pnas_jax.train.evaluation import PathEvaluator
from pnas_jax.train.parallel import replicate
from pnas_jax.train.search import search, setup_search
from pnas_jax.train.sweep import sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "search", "tiny.py")
BAND = 0.5


def _config(*extra):
  return load_config(TINY, ["--config.eval.every_epochs=0", "--config.eval.bn_batches=2",
                            "--config.latency.derive=supernet", f"--config.latency.derive_band={BAND}",
                            "--config.latency.derive_candidates=4", *extra])


def test_supernet_derivation_needs_a_band():
  with pytest.raises(UserValueError, match="derive_band > 0"):
    setup_search(_config("--config.latency.derive_band=0.0"), "/tmp/unused")


def test_sweep_target_chooses_the_best_in_band_candidate_in_the_warmup_weights(tmp_path, monkeypatch):
  wd = str(tmp_path / "sweep")
  r = sweep(_config("--config.latency.target_ratios=(0.8,)"), wd)
  (_, t), = r.targets
  record = json.loads(pathlib.Path(t.workdir, derive_by_supernet.DERIVATION_FILE).read_text())
  cands = record["candidates"]
  # The policy's (budgeted) arch first, then distinct draws; all inside [(1 - band) T, T] under
  # the MACs model, computed here independently.
  assert cands[0]["ops"] == record["policy_arch"] and len(cands) == 4
  assert len({tuple(c["ops"]) for c in cands}) == 4
  setup = setup_search(_config("--config.latency.target_ratio=0.8"), str(tmp_path / "probe"))
  macs = macs_predictor(setup.space)
  lat = macs.of_archs([Arch(tuple(c["ops"])) for c in cands])
  assert np.all(lat <= t.target * (1 + 1e-6)) and np.all(lat >= (1 - BAND) * t.target * (1 - 1e-6))
  # The chosen arch is the candidate with the best score (ties: the earlier one).
  scores = [c["holdout_top1"] for c in cands]
  assert list(t.arch.ops) == cands[int(np.argmax(scores))]["ops"]
  assert t.holdout_top1 == max(scores) and t.derivation["scored_in"] == "warm-up"
  # Scored in the warm-up's weights: the saved snapshot is the warm-up's final checkpoint, and a
  # candidate's score recomputed from that checkpoint directly matches.
  warm = saved_state(os.path.join(wd, "warmup"), 6)
  like = {"params": warm["params"], "batch_stats": warm["batch_stats"]}
  saved = load_msgpack(os.path.join(t.workdir, derive_by_supernet.WARMUP_WEIGHTS_FILE), like)
  for x, y in zip(jax.tree.leaves(saved), jax.tree.leaves(like), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  ev = PathEvaluator(setup.model, setup.data.eval_preprocess, setup.mesh)
  last = Arch(tuple(cands[-1]["ops"]))
  direct = ev(replicate(warm["params"], setup.mesh), replicate(warm["batch_stats"], setup.mesh), last,
              holdout=setup.data.holdout, train=setup.data.train, batch_size=64, bn_batches=2)
  assert direct["top1"] == pytest.approx(cands[-1]["holdout_top1"], abs=1e-6)
  # A plain search with the same target passes the warm-up's end itself and keeps the same snapshot
  # and choice (the sweep's target search is that search, bit for bit).
  plain = search(_config("--config.latency.target_ratio=0.8"), str(tmp_path / "plain"))
  assert plain.arch == t.arch and plain.derivation["candidates"] == cands
  # A finished search rerun reads its choice back instead of scoring again.
  monkeypatch.setattr(derive_by_supernet, "supernet_accuracies",
                      lambda *a, **k: pytest.fail("scored again"))
  again = search(_config("--config.latency.target_ratio=0.8"), str(tmp_path / "plain"))
  assert again.arch == plain.arch and again.images_per_s == 0


def test_first_hit_takes_the_best_scored_within_tolerance_else_the_closest():
  assert derive_by_supernet.first_hit([4, 1, 2], [1.08, 0.96, 1.01], 0.05) == (1, True)
  assert derive_by_supernet.first_hit([4, 1, 2], [1.04, 0.90, 1.01], 0.05) == (4, True)
  assert derive_by_supernet.first_hit([4, 1, 2], [1.30, 0.90, 1.12], 0.05) == (1, False)


def test_verify_top_needs_the_supernet_derivation():
  with pytest.raises(UserValueError, match="verify_top = 2 .*derive = 'supernet'"):
    setup_search(_config("--config.latency.derive=budget", "--config.latency.verify_top=2"),
                 "/tmp/unused")


def test_on_device_check_times_the_best_scored_candidates_with_the_baseline(tmp_path, monkeypatch):
  extra = ("--config.latency.target_ratio=0.8", "--config.latency.verify_top=3",
           "--config.latency.verify_tolerance=0.25", "--config.latency.sessions=1",
           "--config.latency.repeats=4")
  wd = str(tmp_path / "search")
  r = search(_config(*extra), wd)
  record = r.derivation
  cands, dev = record["candidates"], record["on_device"]
  # The three best-scored candidates and the baseline were timed together, in one file.
  order = [int(i) for i in np.argsort([-c["holdout_top1"] for c in cands], kind="stable")[:3]]
  timed = {x["name"]: x for x in json.loads(pathlib.Path(wd, "latency", "candidates.json").read_text())[
      "networks"]}
  assert set(timed) == {"baseline"} | {"-".join(cands[i]["ops"]) for i in order}
  assert [i for i, c in enumerate(cands) if "measured_latency" in c] == sorted(order)
  for i in order:
    assert cands[i]["measured_latency"] == pytest.approx(timed["-".join(cands[i]["ops"])]["p10"])
  # T_dev = T x measured(baseline) / predicted(baseline), the baseline under the MACs model here.
  setup = setup_search(_config(*extra), str(tmp_path / "probe"))
  predicted_baseline = macs_predictor(setup.space).of_archs([Arch.uniform(setup.space, "3x3_MBConv6")])[0]
  t_dev = r.target * timed["baseline"]["p10"] / predicted_baseline
  assert dev["target_measured"] == pytest.approx(t_dev, rel=1e-6)
  # The choice: the best-scored candidate within the tolerance of T_dev, else the closest.
  over = [cands[i]["measured_latency"] / t_dev for i in order]
  hits = [i for i, x in zip(order, over, strict=True) if abs(x - 1) <= 0.25]
  want = hits[0] if hits else order[int(np.argmin(np.abs(np.asarray(over) - 1)))]
  assert list(r.arch.ops) == cands[want]["ops"] and dev["hit"] == bool(hits)
  assert r.holdout_top1 == cands[want]["holdout_top1"]
  # A finished search rerun reads the choice back: nothing is scored or timed again.
  monkeypatch.setattr(derive_by_supernet, "supernet_accuracies",
                      lambda *a, **k: pytest.fail("scored again"))
  monkeypatch.setattr(derive_by_supernet.DeviceCheck, "measure", lambda *a, **k: pytest.fail("timed"))
  assert search(_config(*extra), wd).arch == r.arch
