"""The shared loop skeleton (train/loop.py): resume checks, leftover results, outcomes, and a toy
estimator plugged in through the estimator registry alone."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import signal

import jax.numpy as jnp
import numpy as np
import pytest

from pnas_jax.arch.estimators import ESTIMATORS, ArchGrads, register_estimator
from pnas_jax.arch.sampling import sample_gates
from pnas_jax.config_loading import load_config
from pnas_jax.errors import UserValueError
from pnas_jax.search_space import Arch, SearchSpace
from pnas_jax.search_space.io import save_arch
from pnas_jax.train.loop import Outcome, RunDir, RunStateError, Status, config_differences
from pnas_jax.train.retrain import train
from pnas_jax.train.search import search
from pnas_jax.workdir_lock import WorkdirBusyError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "search", "tiny.py")
TRAIN_CFG = os.path.join(REPO, "configs", "train", "fashion_mnist.py")
SPACE = SearchSpace(stage_widths=(8,), stage_depths=(2,), stage_strides=(1,),
                    candidates=("3x3_MBConv3",), stem_width=8, first_block_width=8, tail_width=16,
                    n_classes=10, resolution=16)


def _train_config(arch_path, *extra):
  return load_config(TRAIN_CFG, [
      f"--config.arch={arch_path}", "--config.data.name=synthetic", "--config.data.batch_size=16",
      "--config.data.eval_batch_size=32", "--config.schedule.steps_per_epoch=2",
      "--config.schedule.epochs=2.0", "--config.checkpoint.every_steps=2",
      "--config.model.dw_impl=lax", "--config.report.latency_repeats=0",
      "--config.eval.every_epochs=0", "--config.log.progress=False", *extra])


@pytest.fixture
def arch_path(tmp_path):
  path = str(tmp_path / "arch.json")
  save_arch(path, SPACE, Arch(("3x3_MBConv3", "Zero")), name="loop")
  return path


def test_train_refuses_to_resume_with_another_config(tmp_path, arch_path):
  wd = str(tmp_path / "run")
  r = train(_train_config(arch_path, "--config.schedule.max_steps=2"), wd)
  assert r.status is Status.STOPPED and r.step == 2
  with pytest.raises(RunStateError, match=r"another config \(optim.lr: 0.1 -> 5.0\)"):
    train(_train_config(arch_path, "--config.optim.lr=5.0"), wd)
  # max_steps and the progress display may change between invocations.
  r = train(_train_config(arch_path, "--config.schedule.max_steps=1"), wd)
  assert r.status is Status.STOPPED and r.step == 3


def test_results_without_checkpoints_are_refused_until_overwrite(tmp_path, arch_path):
  wd = str(tmp_path / "run")
  train(_train_config(arch_path), wd)
  metrics = os.path.join(wd, "metrics.jsonl")
  rows = pathlib.Path(metrics).read_text()
  shutil.rmtree(os.path.join(wd, "checkpoints"))
  with pytest.raises(RunStateError, match="no checkpoint to resume from.*--overwrite"):
    train(_train_config(arch_path), wd)
  assert pathlib.Path(metrics).read_text() == rows  # nothing was truncated
  r = train(_train_config(arch_path), wd, overwrite=True)
  assert r.status is Status.DONE and r.step == 4
  assert not any(f.endswith(".tmp") for f in os.listdir(wd))


def test_outcome_descriptions_and_exit_codes():
  done = Outcome(Status.DONE, 10, 10, 100, 1.0)
  assert (done.describe(), done.exit_code(), done.partial) == ("done", 0, False)
  stopped = Outcome(Status.STOPPED, 4, 10, 40, 1.0)
  assert stopped.exit_code() == 0 and stopped.partial and "step 4 of 10" in stopped.describe()
  for sig in (signal.SIGINT, signal.SIGTERM):
    out = Outcome(Status.PREEMPTED, 3, 10, 30, 1.0, sig.name)
    assert out.exit_code() == 128 + sig and sig.name in out.describe()


def test_config_differences_ignore_invocation_keys():
  old = {"optim": {"lr": 0.1}, "schedule": {"max_steps": 0, "epochs": 2.0}, "log": {"progress": True}}
  new = {"optim": {"lr": 0.2}, "schedule": {"max_steps": 5, "epochs": 2.0}, "log": {"progress": False}}
  assert config_differences(old, new) == ["optim.lr: 0.1 -> 0.2"]
  # Keys a run does not read: a key, or a prefix ending in "." or "_" (not a bare prefix).
  old = {"optim": {"lr": 0.1, "arch_lr": 1e-3, "arch_b1": 0.0, "lr_min": 0.0}, "arch": {"k": 4}}
  new = {"optim": {"lr": 0.2, "arch_lr": 0.5, "arch_b1": 0.9, "lr_min": 0.1}, "arch": {"k": 8}}
  assert config_differences(old, new, ("arch.", "optim.arch_", "optim.lr")) == [
      "optim.lr_min: 0.0 -> 0.1"]


def test_config_differences_accept_a_newer_key_at_its_default():
  """A run started before an option existed resumes when the option keeps its default (the old
  behaviour); set to anything else, or changed where the old config has it, it is a difference."""
  defaults = {"arch": {"k": 10, "baseline": "moving_average", "band": False}}
  old = {"arch": {"k": 4}}
  assert config_differences(old, {"arch": {"k": 4, "baseline": "moving_average", "band": False}},
                            defaults=defaults) == []
  assert config_differences(old, {"arch": {"k": 4, "baseline": "leave_one_out", "band": False}},
                            defaults=defaults) == ["arch.baseline: None -> 'leave_one_out'"]
  assert config_differences({"arch": {"k": 4, "band": True}}, {"arch": {"k": 4, "band": False}},
                            defaults=defaults) == ["arch.band: True -> False"]
  assert config_differences(old, {"arch": {"k": 4, "extra": 1}}, defaults=defaults) == [
      "arch.extra: None -> 1"]  # a key the base config lacks has no default


def test_run_dir_writes_config_once_and_resumes(tmp_path):
  wd = str(tmp_path / "r")
  kw = dict(checkpoint_every=1, keep=2, tensorboard=False)
  state = {"x": jnp.zeros(3)}
  with RunDir(wd, kind="test") as run:
    run.open({"a": 1}, **kw)
    assert run.resume_step is None and run.restore_or(state) is state
    run.checkpointer.save(1, {"x": jnp.ones(3)})
  with RunDir(wd, kind="test") as run:
    assert run.open({"a": 1}, **kw).resume_step == 1
    np.testing.assert_array_equal(run.restore_or(state)["x"], np.ones(3))
    with pytest.raises(WorkdirBusyError, match="test: "), RunDir(wd, kind="test"):
      pass  # a second run on the same workdir, while the first holds it
  with pytest.raises(RunStateError, match="a: 1 -> 2"), RunDir(wd, kind="test") as run:
    run.open({"a": 2}, **kw)


def test_a_bad_config_leaves_the_workdir_untouched(tmp_path):
  wd = tmp_path / "run"
  with pytest.raises(UserValueError):
    train(_train_config(""), str(wd))  # no architecture given
  assert sorted(p.name for p in wd.iterdir()) == [".lock"]


@dataclasses.dataclass(frozen=True)
class ToyEstimator:
  """Pushes every block's first logit up by `push` per step, whatever the batch says."""

  push: float = 1.0
  batch_size: int = 0
  name: str = "toy"
  sample_mode: str = "single"

  def grads(self, batch):
    sample = sample_gates(batch.key, batch.alpha, "single")
    _, stats = batch.forward(sample, None)
    grads = tuple(-self.push * jnp.eye(a.shape[0])[0] for a in batch.alpha)
    return ArchGrads(grads, jnp.ones((len(batch.alpha),), bool), sample, stats, batch.baseline,
                     {"toy": jnp.ones(())})

  def post_update(self, old, new, result):
    del old, result
    return new


def test_a_new_estimator_is_one_registration(tmp_path):
  """Adding an estimator: a class and a registered factory (here, in this file) plus its config
  keys; the search runs it through the same arch step as the built-in ones."""
  register_estimator("toy")(lambda *, target=None, band=None, **options: ToyEstimator(**options))
  try:
    config = load_config(TINY, ["--config.arch.estimator=toy", "--config.optim.arch_lr=0.1",
                                "--config.eval.every_epochs=0"])
    result = search(config, str(tmp_path / "toy"))
  finally:
    ESTIMATORS.remove("toy")
  probs = result.probabilities
  # Six arch steps of Adam (lr 0.1) on a constant gradient: the first logit rises ~0.6 above the
  # others in every block, which no built-in estimator would do on this data.
  assert all(p[0] > max(p[1:]) + 0.1 for p in probs), probs
