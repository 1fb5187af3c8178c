"""Every configs/search/*.py loads, runs one search step, and every key it sets is read by the code.

One search per config runs once per module (`_run`), wrapped in config_loading.ReadTracker, with
overrides that keep it small (one weight step, shrunk space / batches, MACs instead of a latency
file the machine lacks, synthetic data where the real set is not on disk). The three ImageNet
configs run their real data pipeline (tfds:imagenet2012 through tfds.data_source) on
tfds.testing.mock_data, with an arch step and an evaluation forced into that one step.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from conftest import REFERENCE_DIR

from pnas_jax.config_loading import ConfigError, ReadTracker, load_config
from pnas_jax.data import local_files

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs" / "search"
CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.py"))
IMAGENET = ("imagenet_mobile", "imagenet_gpu", "imagenet_cpu")
MOBILE_TABLE = REFERENCE_DIR / "mobile_trim.yaml"
MOCK_EXAMPLES, MOCK_CLASSES = 60, 10  # mock ImageNet: labels i % 10, so the held-out split works

SMALL = ["--config.schedule.max_steps=1", "--config.log.plots=False"]
# One weight step, an arch step right after it (no warm-up, every step, from epoch 0) and, as one
# step is a whole epoch, the held-out evaluation of the argmax arch (one batch).
ONE_STEP_ALL_PHASES = [
    "--config.schedule.warmup_epochs=0", "--config.schedule.arch_start_epoch=0",
    "--config.schedule.arch_every=1", "--config.schedule.steps_per_epoch=1",
    "--config.eval.max_batches=1", "--config.log.every_steps=1",
]
MOCK_IMAGENET = [
    "--config.space.stage_depths=(1,1,1,1,1,1)", "--config.data.holdout=20",
    "--config.data.batch_size=4", "--config.data.arch_batch_size=4", "--config.data.eval_batch_size=4",
]
SMALL_IMAGENET_SPACE = ["--config.space.resolution=32", "--config.data.image_size=40",
                        "--config.space.width_mult=0.25"]


def _synthetic(resolution: int) -> list[str]:
  return ["--config.data.name=synthetic", f"--config.space.resolution={resolution}",
          "--config.space.n_classes=10", "--config.data.holdout=256"]


def _fashion_mnist_overrides() -> list[str]:
  small = ["--config.space.stage_depths=(1,1,1,1)", "--config.data.batch_size=8",
           "--config.data.arch_batch_size=8", "--config.data.eval_batch_size=8",
           "--config.latency.model=macs"]  # "measure" would time a table first
  if os.path.isdir(local_files.FASHION_MNIST_DIR):
    return small
  return small + _synthetic(28) + ["--config.space.in_channels=3"]


def _cifar10_overrides() -> list[str]:
  small = ["--config.space.stage_depths=(1,1,1,1,1,1)", "--config.data.batch_size=8",
           "--config.data.arch_batch_size=8", "--config.data.eval_batch_size=8",
           "--config.latency.model=macs"]
  if os.path.exists(os.path.expanduser("~/data/cifar-10-python.tar.gz")):
    return small + ["--config.data.holdout=500"]
  return small + _synthetic(32)


def _mobile_overrides() -> tuple[list[str], str]:
  """The reference Pixel-1 table when present (it has keys for the 224px, width-1.0 space only,
  so that space stays, at depth 1), else MACs on the small space."""
  if MOBILE_TABLE.is_file():
    return [f"--config.latency.model={MOBILE_TABLE}"], "table"
  return [*SMALL_IMAGENET_SPACE, "--config.latency.model=macs"], "macs"


def overrides_for(name: str) -> list[str]:
  if name == "tiny":
    return list(SMALL)
  if name == "fashion_mnist":
    return SMALL + _fashion_mnist_overrides()
  if name == "cifar10":
    return SMALL + _cifar10_overrides()
  if name == "imagenet_mobile":
    return SMALL + ONE_STEP_ALL_PHASES + MOCK_IMAGENET + _mobile_overrides()[0]
  if name in ("imagenet_gpu", "imagenet_cpu"):
    # Their latency files are measured on the target device (not here): MACs instead.
    return SMALL + ONE_STEP_ALL_PHASES + MOCK_IMAGENET + SMALL_IMAGENET_SPACE + [
        "--config.latency.model=macs"]
  raise AssertionError(f"configs/search/{name}.py is new: give it cheap overrides in overrides_for")


@contextlib.contextmanager
def mock_imagenet():
  """tfds.testing.mock_data for tfds.data_source (no TensorFlow needed), with balanced labels.

  The default mock draws ImageNet labels uniformly from 1000 classes, so a few dozen examples
  leave most classes with one example and no class-balanced held-out split exists; the label of
  example i becomes i % MOCK_CLASSES (images stay random, of random sizes).
  """
  import tensorflow_datasets as tfds
  from tensorflow_datasets.testing import mocking

  original = mocking.RandomFakeGenerator.__getitem__

  def getitem(self, index):
    ex = original(self, index)
    if isinstance(ex, dict) and "label" in ex:
      ex["label"] = np.int64(index % MOCK_CLASSES)
    return ex

  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES, policy=tfds.testing.MockPolicy.USE_CODE):
    mocking.RandomFakeGenerator.__getitem__ = getitem
    try:
      yield
    finally:
      mocking.RandomFakeGenerator.__getitem__ = original


_RUNS: dict[str, tuple] = {}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """run(name) -> (tracker, result, workdir): the config's small search, once per module."""

  def get(name: str):
    if name not in _RUNS:
      from pnas_jax.train.search import search

      config = load_config(str(CONFIG_DIR / f"{name}.py"), overrides_for(name))
      tracker = ReadTracker(config)
      workdir = tmp_path_factory.mktemp(f"search_{name}")
      with mock_imagenet() if name in IMAGENET else contextlib.nullcontext():
        result = search(tracker, str(workdir))
      _RUNS[name] = (tracker, result, workdir)
    return _RUNS[name]

  yield get
  _RUNS.clear()


def _records(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_loads_and_every_key_is_read(name, run):
  load_config(str(CONFIG_DIR / f"{name}.py"))  # unmodified
  tracker, result, _ = run(name)
  assert result.step == 1
  assert result.status.startswith("stopped at max_steps"), result.status
  assert tracker.unread() == [], f"configs/search/{name}.py: keys the search never read"


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_configs_one_step_on_mock_data(name, run):
  _, result, workdir = run(name)
  assert result.step == 1
  config = load_config(str(CONFIG_DIR / f"{name}.py"), overrides_for(name))
  assert config.data.name == "tfds:imagenet2012"
  assert result.latency_unit is not None and result.target is not None
  if name == "imagenet_mobile" and _mobile_overrides()[1] == "table":
    assert result.latency_unit == "ms"
  records = _records(workdir)
  train = [r for r in records if r["kind"] == "train"]
  arch = [r for r in records if r["kind"] == "arch"]
  evals = [r for r in records if r["kind"] == "eval"]
  assert [r["step"] for r in train] == [1]
  assert math.isfinite(train[0]["loss"])
  assert [r["step"] for r in arch] == [1], "the forced arch step did not run"
  assert all(math.isfinite(v) for v in arch[0].values() if isinstance(v, float))
  assert len(evals) == 1 and 0.0 <= evals[0]["holdout_top1"] <= 100.0
  assert os.path.isfile(os.path.join(workdir, "arch.json"))


@pytest.mark.parametrize("name,missing", [("imagenet_gpu", "results/latency/gpu_table.json"),
                                          ("imagenet_cpu", "results/latency/imagenet_predictor.json")])
def test_imagenet_latency_file_missing_fails_before_compiling(name, missing, tmp_path, monkeypatch):
  from pnas_jax.train import search as search_mod

  def no_model(*a, **k):
    raise AssertionError("the supernet was built before the latency file was checked")

  monkeypatch.setattr(search_mod, "Supernet", no_model)
  monkeypatch.setattr(search_mod, "create_search_state", no_model)
  monkeypatch.chdir(tmp_path)  # the configs' latency paths are relative to the working directory
  config = load_config(str(CONFIG_DIR / f"{name}.py"), _synthetic(16))
  with pytest.raises(FileNotFoundError) as e:
    search_mod.search(config, str(tmp_path / "w"))
  assert missing in str(e.value)
  assert "pnas latency measure" in str(e.value)


def _tiny(tmp_path, *overrides, run_search=True):
  config = load_config(str(CONFIG_DIR / "tiny.py"), list(overrides))
  if run_search:
    from pnas_jax.train.search import search

    return search(config, str(tmp_path / "w"))
  return config


def _cli(tmp_path, *args, env=None):
  return subprocess.run(
      [sys.executable, "-m", "pnas_jax.cli", "search", "--config", "configs/search/tiny.py",
       "--workdir", str(tmp_path / "w"), *args],
      cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


def test_bad_config_errors(tmp_path):
  from pnas_jax.data.local_files import MissingDataError
  from pnas_jax.search_space.space import SearchSpaceError
  from pnas_jax.train import search as search_mod

  with pytest.raises(ConfigError, match=r"data\.batchsize"):
    _tiny(tmp_path, "--config.data.batchsize=3", run_search=False)

  with pytest.raises(KeyError) as e:
    _tiny(tmp_path, "--config.data.name=imagenet")
  assert "'imagenet'" in str(e.value) and "synthetic" in str(e.value) and "tfds:imagenet2012" in str(e.value)

  with pytest.raises(ValueError, match=r"data\.batch_size = 4096 is larger"):
    _tiny(tmp_path, "--config.data.batch_size=4096")

  with pytest.raises(SearchSpaceError, match=r"--config\.space\.n_classes=10"):
    _tiny(tmp_path, "--config.space.n_classes=7")

  config = load_config(str(CONFIG_DIR / "fashion_mnist.py"), ["--config.data.data_dir=/nonexistent"])
  with pytest.raises(MissingDataError) as e:
    search_mod.search(config, str(tmp_path / "fm"))
  msg = str(e.value)
  assert "/nonexistent" in msg and "apt-get install dataset-fashion-mnist" in msg and "tfds" in msg


def test_unknown_estimator_fails_before_building_the_supernet(tmp_path, monkeypatch):
  """A typo in arch.estimator must not wait for the supernet's init (minutes for ImageNet)."""
  from pnas_jax.arch.estimators import UnknownEstimatorError
  from pnas_jax.train import search as search_mod

  def no_state(*a, **k):
    raise AssertionError("the supernet was initialised before arch.estimator was checked")

  monkeypatch.setattr(search_mod, "create_search_state", no_state)
  with pytest.raises(UnknownEstimatorError, match=r"'twoo'.*two.*full.*reinforce"):
    _tiny(tmp_path, "--config.arch.estimator=twoo")


def test_cli_config_errors_exit_2_without_traceback(tmp_path):
  p = _cli(tmp_path, "--config.data.batchsize=3")
  assert p.returncode == 2, p.stderr
  assert "data.batchsize" in p.stderr and "Traceback" not in p.stderr, p.stderr

  # Two CPU devices: a global batch that does not split over them names the key.
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_NUM_CPU_DEVICES"] = "2"
  p = _cli(tmp_path, "--config.data.batch_size=3", env=env)
  assert p.returncode == 2, p.stderr
  assert "data.batch_size = 3 is not divisible by the 2 devices" in p.stderr, p.stderr
  assert "Traceback" not in p.stderr, p.stderr
