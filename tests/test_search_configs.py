"""Every configs/search/*.py loads, every key it sets is read, and the ImageNet ones take a step.

Key reads: `plan_search(...)` (`--dry-run`) reads every config value before compiling anything, so each
config is checked in seconds under config_loading.ReadTracker (data sets the machine lacks are
swapped for synthetic data, latency files measured on a target device for MACs; an override is a
read of the same key). The three ImageNet configs run their real data pipeline (tfds:imagenet2012
through tfds.data_source) on tfds.testing.mock_data for one weight step and one arch step, in a
child process with a shrunk space (compiling dominates; XLA's cheaper CPU passes halve it).
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
# One weight step and an arch step right after it (no warm-up, every step, from epoch 0); one step
# is a whole epoch, whose held-out evaluation is switched off (its compile would double the cost).
ONE_STEP_ALL_PHASES = [
    "--config.schedule.warmup_epochs=0", "--config.schedule.arch_start_epoch=0",
    "--config.schedule.arch_every=1", "--config.schedule.steps_per_epoch=1",
    "--config.eval.every_epochs=0", "--config.log.every_steps=1",
]
MOCK_IMAGENET = [
    "--config.space.stage_depths=(1,1,1,1,1,1)", "--config.data.holdout=20",
    "--config.data.batch_size=4", "--config.data.arch_batch_size=4", "--config.data.eval_batch_size=4",
]
SMALL_IMAGENET_SPACE = ["--config.space.resolution=32", "--config.data.image_size=40",
                        "--config.space.width_mult=0.25",
                        "--config.space.candidates=('3x3_MBConv6','5x5_MBConv3')"]


def _synthetic(resolution: int) -> list[str]:
  return ["--config.data.name=synthetic", f"--config.space.resolution={resolution}",
          "--config.space.n_classes=10", "--config.data.holdout=256"]


def dry_run_overrides(name: str) -> list[str]:
  """What each config needs to be checked here: data it can read, a latency model that exists."""
  if name == "fashion_mnist":
    over = ["--config.latency.model=macs"]  # "measure" would time a table first
    if not os.path.isdir(local_files.FASHION_MNIST_DIR):
      over += _synthetic(28) + ["--config.space.in_channels=3"]
    return over
  if name == "cifar10":
    over = ["--config.latency.model=macs"]
    if not os.path.exists(os.path.expanduser("~/data/cifar-10-python.tar.gz")):
      over += _synthetic(32)
    return over
  if name == "imagenet_mobile":
    # The Pixel-1 table when present: every key of the paper's 224px space is looked up.
    return MOCK_IMAGENET[1:] + ([f"--config.latency.model={MOBILE_TABLE}"] if MOBILE_TABLE.is_file()
                                else ["--config.latency.model=macs"])
  if name in IMAGENET:
    return MOCK_IMAGENET[1:] + ["--config.latency.model=macs"]
  return []


def step_overrides(name: str) -> list[str]:
  """One weight + one arch step of an ImageNet config on mock data, in a shrunk space."""
  return SMALL + ONE_STEP_ALL_PHASES + MOCK_IMAGENET + SMALL_IMAGENET_SPACE + [
      "--config.latency.model=macs"]


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


# Compiling dominates these runs; XLA's CPU backend without its optimisation passes halves it.
FAST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def run_searches(root: str, names: list[str]) -> dict[str, dict]:
  """Runs each ImageNet config's one-step search on mock data (in the child process of `runs`)."""
  from pnas_jax.train.search import search

  out = {}
  for name in names:
    config = load_config(str(CONFIG_DIR / f"{name}.py"), step_overrides(name))
    workdir = os.path.join(root, name)
    info = {"workdir": workdir, "error": None}
    try:
      with mock_imagenet():
        r = search(config, workdir)
      info.update(step=r.step, status=r.status.value, latency_unit=r.latency_unit, target=r.target)
    except Exception as e:  # reported by the test of that config
      info["error"] = f"{type(e).__name__}: {e}"
    out[name] = info
  return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
  """The ImageNet configs' one-step searches, once per module, in one child process (XLA flags
  need a fresh process): {name: {"step", "status", "error", "workdir", ...}}."""
  root = tmp_path_factory.mktemp("search_configs")
  env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {FAST_XLA_FLAGS}".strip())
  p = subprocess.run([sys.executable, __file__, str(root), *IMAGENET], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=1800)
  results = root / "results.json"
  if p.returncode != 0 or not results.is_file():
    pytest.fail(f"the search child process failed (exit {p.returncode}):\n{p.stderr[-4000:]}")
  return json.loads(results.read_text())


def _records(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_loads_and_every_key_is_read(name, tmp_path):
  from pnas_jax.train.search import plan_search

  load_config(str(CONFIG_DIR / f"{name}.py"))  # unmodified
  tracker = ReadTracker(load_config(str(CONFIG_DIR / f"{name}.py"), dry_run_overrides(name)))
  with mock_imagenet() if name in IMAGENET else contextlib.nullcontext():
    plan = plan_search(tracker, str(tmp_path / name))
  assert plan["total_steps"] > 0 and plan["blocks"] > 0
  assert tracker.unread() == [], f"configs/search/{name}.py: keys the search never reads"
  if name == "imagenet_mobile" and MOBILE_TABLE.is_file():
    assert plan["latency_unit"] == "ms" and plan["target"] == 80.0
    assert plan["blocks"] == 21 and plan["space"]["resolution"] == 224


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_configs_one_step_on_mock_data(name, runs):
  r = runs[name]
  assert r["error"] is None, r["error"]
  workdir = r["workdir"]
  assert r["step"] == 1
  config = load_config(str(CONFIG_DIR / f"{name}.py"), step_overrides(name))
  assert config.data.name == "tfds:imagenet2012"
  assert r["latency_unit"] is not None and r["target"] is not None
  records = _records(workdir)
  train = [x for x in records if x["kind"] == "train"]
  arch = [x for x in records if x["kind"] == "arch"]
  assert [r["step"] for r in train] == [1]
  assert math.isfinite(train[0]["loss"])
  assert [r["step"] for r in arch] == [1], "the forced arch step did not run"
  assert all(math.isfinite(v) for v in arch[0].values() if isinstance(v, float))
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
  from pnas_jax.errors import UnknownNameError
  from pnas_jax.train import search as search_mod

  def no_state(*a, **k):
    raise AssertionError("the supernet was initialised before arch.estimator was checked")

  monkeypatch.setattr(search_mod, "create_search_state", no_state)
  with pytest.raises(UnknownNameError, match=r"'twoo'.*full, two, reinforce"):
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


if __name__ == "__main__":  # the child process of `runs`: ROOT NAME...
  _root, *_names = sys.argv[1:]
  _out = run_searches(_root, _names)
  pathlib.Path(_root, "results.json").write_text(json.dumps(_out, indent=1))
