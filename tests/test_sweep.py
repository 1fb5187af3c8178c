"""`pnas sweep`: one warm-up, one search per target, each forked from the warm-up's checkpoint."""

from __future__ import annotations

import json
import os
import pathlib

import jax
import numpy as np
import pytest
from checkpoint_helpers import saved_state

from pnas_jax import cli
from pnas_jax.config_loading import load_config
from pnas_jax.errors import UserValueError
from pnas_jax.train.loop import RunStateError
from pnas_jax.train.search import search
from pnas_jax.train.sweep import sweep, sweep_targets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "search", "tiny.py")


def _config(*extra):
  return load_config(TINY, ["--config.eval.every_epochs=0", "--config.eval.bn_batches=0", *extra])


def _checkpoint_steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(s) for s in os.listdir(d) if s.isdigit())


@pytest.mark.parametrize("overrides,match", [
    ((), "exactly one of"),
    (("--config.latency.target_ratios=(0.5, 0.7)", "--config.latency.targets=(0.1,)"), "exactly one"),
    (("--config.latency.target_ratios=(0.5, 0.5)",), "distinct positive"),
    (("--config.latency.targets=(0.2, -1.0)",), "distinct positive"),
])
def test_sweep_targets_are_checked(overrides, match):
  with pytest.raises(UserValueError, match=match):
    sweep_targets(_config(*overrides))


def test_sweep_target_labels():
  assert sweep_targets(_config("--config.latency.target_ratios=(0.6, 0.9)")) == [
      ("ratio_0.6", "target_ratio", 0.6), ("ratio_0.9", "target_ratio", 0.9)]
  assert sweep_targets(_config("--config.latency.targets=(0.15,)")) == [
      ("target_0.15", "target", 0.15)]


def test_plain_search_refuses_a_sweep_config(tmp_path):
  with pytest.raises(UserValueError, match="pnas sweep"):
    search(_config("--config.latency.target_ratios=(0.6, 0.9)"), str(tmp_path / "s"))


def test_sweep_forks_every_target_from_one_warmup_and_resumes(tmp_path):
  wd = str(tmp_path / "sweep")
  ratios = "--config.latency.target_ratios=(0.6, 0.9)"
  # Stopped inside the warm-up: partial, no target has started.
  r = sweep(_config(ratios, "--config.schedule.max_steps=4"), wd)
  assert r.warmup.partial and r.targets == [] and r.partial
  # Resumed: the warm-up finishes (6 steps) and runs once; each target starts from its checkpoint.
  r = sweep(_config(ratios), wd)
  assert not r.partial and [label for label, _ in r.targets] == ["ratio_0.6", "ratio_0.9"]
  assert r.warmup.step == 6 and _checkpoint_steps(os.path.join(wd, "warmup"))[-1] == 6
  for _, t in r.targets:
    assert t.step == 18 and t.arch_latency <= t.target * 1.0001
    lines = pathlib.Path(t.workdir, "metrics.jsonl").read_text().splitlines()
    train_rows = [json.loads(line) for line in lines]
    assert min(row["step"] for row in train_rows if row["kind"] == "train") > 6  # no warm-up here
  tight, loose = (t for _, t in r.targets)
  assert tight.target < loose.target and tight.arch_latency <= loose.target
  summary = json.loads(pathlib.Path(wd, "sweep.json").read_text())
  assert [row["label"] for row in summary["targets"]] == ["ratio_0.6", "ratio_0.9"]
  assert os.path.getsize(os.path.join(wd, "front.png")) > 1000
  # A finished sweep reruns nothing.
  times = json.loads(pathlib.Path(wd, "sweep.json").read_text())
  again = sweep(_config(ratios), wd)
  assert again.warmup.images_per_s == 0 and all(t.images_per_s == 0 for _, t in again.targets)
  # ... and keeps the times of the run that did the work (not the rerun's fraction of a second).
  assert json.loads(pathlib.Path(wd, "sweep.json").read_text()) == times
  # Another target first in the list: the warm-up (whose own target was the first one) is reused as
  # it is, the old targets too; only the new target runs, forked from the same warm-up.
  more = sweep(_config("--config.latency.target_ratios=(0.75, 0.6, 0.9)"), wd)
  assert more.warmup.images_per_s == 0 and [lb for lb, _ in more.targets] == [
      "ratio_0.75", "ratio_0.6", "ratio_0.9"]
  assert more.targets[0][1].images_per_s > 0 and all(t.images_per_s == 0 for _, t in more.targets[1:])
  # A pure warm-up does not read the architecture step's keys: they may change, the warm-up's own
  # keys may not.
  warm = os.path.join(wd, "warmup")
  unused = search(_config("--config.schedule.epochs=0", "--config.latency.target_ratio=0.5",
                          "--config.arch.estimator=full", "--config.optim.arch_lr=0.5"), warm)
  assert unused.step == 6 and unused.images_per_s == 0
  with pytest.raises(RunStateError, match="optim.warmup_lr"):
    search(_config("--config.schedule.epochs=0", "--config.latency.target_ratio=0.5",
                   "--config.optim.warmup_lr=0.3"), warm)

  # One target of the sweep is exactly the plain search with that target.
  plain = search(_config("--config.latency.target_ratio=0.9"), str(tmp_path / "plain"))
  a, b = saved_state(loose.workdir, 18), saved_state(plain.workdir, 18)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert loose.arch == plain.arch


def test_sweep_cli(tmp_path, capsys):
  rc = cli.main(["sweep", "--config", TINY, "--workdir", str(tmp_path / "w"),
                 "--config.latency.targets=(0.15,)", "--config.eval.every_epochs=0"])
  out = capsys.readouterr().out
  assert rc == 0, out
  assert "warm-up: done (6 steps" in out and "target_0.15: done" in out and "sweep.md" in out
