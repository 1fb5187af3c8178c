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


def _timed(path):
  return {x["name"]: x["p10"] for x in json.loads(pathlib.Path(path).read_text())["networks"]}


def test_on_device_check_times_the_best_scored_candidates_with_the_baseline(tmp_path, monkeypatch):
  # A tolerance no timing meets: round 1 misses, round 2 re-centres on the model's bias, and the
  # choice falls back to the closest of all timed candidates.
  extra = ("--config.latency.target_ratio=0.8", "--config.latency.verify_top=3",
           "--config.latency.verify_tolerance=1e-9", "--config.latency.sessions=1",
           "--config.latency.repeats=4")
  wd = str(tmp_path / "search")
  r = search(_config(*extra), wd)
  cands, dev = r.derivation["candidates"], r.derivation["on_device"]
  assert len(cands) == 8 and not dev["hit"]
  first, second = dev["rounds"]
  setup = setup_search(_config(*extra), str(tmp_path / "probe"))
  macs = macs_predictor(setup.space)
  predicted_baseline = macs.of_archs([Arch.uniform(setup.space, "3x3_MBConv6")])[0]
  # Each round timed its three best-scored new candidates with the baseline, in a file of its own.
  rounds = ((first, range(4), "candidates.json"), (second, range(4, 8), "candidates_round2.json"))
  for rnd, pool, name in rounds:
    want = sorted(pool, key=lambda i: -cands[i]["holdout_top1"])[:3]
    assert rnd["timed"] == want
    timed = _timed(os.path.join(wd, "latency", name))
    assert set(timed) == {"baseline"} | {"-".join(cands[i]["ops"]) for i in want}
    # T_dev = T x measured(baseline) / predicted(baseline), the baseline under the MACs model here.
    t_dev = r.target * timed["baseline"] / predicted_baseline
    assert rnd["target_measured"] == pytest.approx(t_dev, rel=1e-6)
    for i in want:
      assert cands[i]["measured_over_target"] == pytest.approx(timed["-".join(cands[i]["ops"])] / t_dev)
  timed_all = first["timed"] + second["timed"]
  assert [i for i, c in enumerate(cands) if "measured_latency" in c] == sorted(timed_all)
  # Round 2's draws are in the band under T / b, b the median device / model ratio of round 1's.
  bias = np.median([cands[i]["measured_over_target"] * r.target / cands[i]["latency"]
                    for i in first["timed"]])
  assert second["model_bias"] == pytest.approx(bias)
  lat = macs.of_archs([Arch(tuple(c["ops"])) for c in cands[4:]])
  top = r.target / bias
  assert np.all(lat <= top * (1 + 1e-6)) and np.all(lat >= (1 - BAND) * top * (1 - 1e-6))
  # Nothing hit: the timed candidate closest to its round's T_dev.
  closest = min(timed_all, key=lambda i: abs(cands[i]["measured_over_target"] - 1))
  assert list(r.arch.ops) == cands[closest]["ops"] and r.holdout_top1 == cands[closest]["holdout_top1"]
  # A finished search rerun reads the choice back: nothing is scored or timed again.
  monkeypatch.setattr(derive_by_supernet, "supernet_accuracies",
                      lambda *a, **k: pytest.fail("scored again"))
  monkeypatch.setattr(derive_by_supernet.DeviceCheck, "measure", lambda *a, **k: pytest.fail("timed"))
  assert search(_config(*extra), wd).arch == r.arch


def test_verify_top_refuses_a_latency_model_of_another_batch(tmp_path):
  from latency_helpers import synthetic_table

  from pnas_jax.latency.table import LatencyTableError

  space = setup_search(_config(), str(tmp_path / "probe")).space
  path = str(tmp_path / "table.json")
  synthetic_table(space).save(path)  # batch 1
  setup_search(_config(f"--config.latency.model={path}", "--config.latency.batch=4"), "/tmp/unused")
  with pytest.raises(LatencyTableError, match="verify_top times on this machine.*batch is 1, .* asks for 4"):
    setup_search(_config(f"--config.latency.model={path}", "--config.latency.batch=4",
                         "--config.latency.verify_top=2"), "/tmp/unused")


def test_derive_warmups_need_their_workdirs_and_the_supernet_derivation(tmp_path):
  with pytest.raises(UserValueError, match="derive_warmups = 2 with 0 workdir"):
    setup_search(_config("--config.latency.derive_warmups=2"), "/tmp/unused")
  with pytest.raises(UserValueError, match="derive = 'budget' scores no candidates"):
    setup_search(_config("--config.latency.derive=budget", "--config.latency.derive_warmups=2",
                         f"--config.latency.derive_scoring_warmups=('{tmp_path}',)"), "/tmp/unused")
  with pytest.raises(UserValueError, match="set by the sweep itself"):
    sweep(_config("--config.latency.target_ratios=(0.8,)",
                  f"--config.latency.derive_scoring_warmups=('{tmp_path}',)"), str(tmp_path / "s"))


def test_sweep_scores_the_candidates_in_every_warmup_and_ranks_by_their_mean_rank(tmp_path):
  from scipy.stats import rankdata

  wd = str(tmp_path / "sweep")
  r = sweep(_config("--config.latency.target_ratios=(0.8,)", "--config.latency.derive_warmups=2"), wd)
  (_, t), = r.targets
  warm2 = os.path.join(wd, "warmup_2")
  assert [x.workdir for x in r.extra_warmups] == [warm2]
  assert json.loads(pathlib.Path(warm2, "config.json").read_text())["seed"] == 1
  record = t.derivation
  cands = record["candidates"]
  assert record["scoring_warmups"] == [warm2] and len(cands) == 4
  # Warm-up 2's scores: its final checkpoint on the held-out split of its own seed (1), by hand.
  setup2 = setup_search(_config("--config.latency.target_ratio=0.8", "--config.seed=1"),
                        str(tmp_path / "probe"))
  warm = saved_state(warm2, 6)
  ev = PathEvaluator(setup2.model, setup2.data.eval_preprocess, setup2.mesh)
  for c in (cands[0], cands[-1]):
    direct = ev(replicate(warm["params"], setup2.mesh), replicate(warm["batch_stats"], setup2.mesh),
                Arch(tuple(c["ops"])), holdout=setup2.data.holdout, train=setup2.data.train,
                batch_size=64, bn_batches=2)
    assert direct["top1"] == pytest.approx(c["holdout_top1_per_warmup"][1], abs=1e-6)
  # Warm-up 1's scores are those a one-warm-up derivation gives the same candidates.
  one = sweep(_config("--config.latency.target_ratios=(0.8,)"), str(tmp_path / "one"))
  assert [c["ops"] for c in one.targets[0][1].derivation["candidates"]] == [c["ops"] for c in cands]
  assert [c["holdout_top1"] for c in one.targets[0][1].derivation["candidates"]] == pytest.approx(
      [c["holdout_top1_per_warmup"][0] for c in cands], abs=1e-6)
  # The choice: the best mean rank over the two (ties: the earlier candidate).
  per = np.array([c["holdout_top1_per_warmup"] for c in cands])
  merit = (rankdata(per[:, 0]) + rankdata(per[:, 1])) / 2
  assert [c["merit"] for c in cands] == pytest.approx(merit)
  assert list(t.arch.ops) == cands[int(np.argmax(merit))]["ops"]
  assert t.holdout_top1 == pytest.approx(per[int(np.argmax(merit))].mean())


def test_scoring_warmups_share_the_search_dataset_and_carve_the_split_of_their_seed(tmp_path,
                                                                                    monkeypatch):
  from pnas_jax.data.split import class_balanced_split
  from pnas_jax.train import inputs

  warm2 = tmp_path / "warmup_2"
  warm2.mkdir()
  (warm2 / "config.json").write_text(json.dumps({"seed": 3}))
  loads = []
  real_load = inputs.load_config_dataset
  monkeypatch.setattr(inputs, "load_config_dataset", lambda *a: loads.append(a) or real_load(*a))
  setup = setup_search(_config("--config.latency.derive_warmups=2",
                               f"--config.latency.derive_scoring_warmups=('{warm2}',)"),
                       str(tmp_path / "s"))
  assert len(loads) == 1  # one data set for the search and the warm-up it scores in
  (where, data2), = setup.derive_warmups
  assert where == str(warm2) and data2.dataset is setup.data.dataset
  labels = setup.data.dataset.train.labels()
  n_holdout = len(setup.data.holdout)
  for data, seed in ((setup.data, setup.seed), (data2, 3)):
    train_idx, holdout_idx = class_balanced_split(labels, n_holdout, seed)
    np.testing.assert_array_equal(data.holdout.indices, holdout_idx)
    np.testing.assert_array_equal(data.train.indices, train_idx)
  assert not np.array_equal(data2.holdout.indices, setup.data.holdout.indices)
