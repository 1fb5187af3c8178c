"""Every numeric config value is checked at load time against its range, declared beside its schema:
the shipped configs pass, out-of-range values fail naming the key, the value and the range, for the
run and `--dry-run` alike; a config file without get_config() is named."""

from __future__ import annotations

import pathlib

import pytest

from pnas_jax import cli
from pnas_jax.config_loading import ConfigError, Range, config_problems, load_config, schema_of
from pnas_jax.errors import PnasError

REPO = pathlib.Path(__file__).resolve().parents[1]
ALL_CONFIGS = sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").glob("*/*.py"))
TINY = str(REPO / "configs" / "search" / "tiny.py")
TRAIN = str(REPO / "configs" / "train" / "fashion_mnist.py")
LATENCY = str(REPO / "configs" / "latency" / "cpu.py")


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_every_shipped_config_validates(name):
  config = load_config(str(REPO / name))
  schemas = {"search": "pnas_jax.train.search_config", "train": "pnas_jax.train.train_config",
             "latency": "pnas_jax.latency.config"}
  assert schema_of(config).__name__ == schemas[name.split("/")[1]]
  assert config_problems(config) == []


@pytest.mark.parametrize("spec, override, message", [
    (TINY, "--config.data.batch_size=0", "data.batch_size = 0 must be an integer >= 1"),
    (TINY, "--config.data.batch_size=-1", "data.batch_size = -1 must be an integer >= 1"),
    (TINY, "--config.data.arch_batch_size=0", "data.arch_batch_size = 0 must be an integer >= 1"),
    (TINY, "--config.data.eval_batch_size=0", "data.eval_batch_size = 0"),
    (TRAIN, "--config.data.batch_size=0", "data.batch_size = 0 must be an integer >= 1"),
    (TRAIN, "--config.data.eval_batch_size=-4", "data.eval_batch_size = -4"),
    (TINY, "--config.schedule.epochs=-1", "schedule.epochs = -1.0 must be a number >= 0"),
    (TRAIN, "--config.schedule.epochs=-1", "schedule.epochs = -1.0 must be a number > 0"),
    (TRAIN, "--config.schedule.epochs=0", "schedule.epochs = 0.0 must be a number > 0"),
    (TINY, "--config.optim.lr=-1", "optim.lr = -1.0 must be a number >= 0"),
    (TINY, "--config.optim.arch_lr=0", "optim.arch_lr = 0.0 must be a number > 0"),
    (TINY, "--config.optim.momentum=1.0", "optim.momentum = 1.0 must be a number in [0, 1)"),
    (TINY, "--config.latency.derive_band=1.0", "latency.derive_band = 1.0 must be a number in [0, 1)"),
    (TINY, "--config.log.every_steps=0", "log.every_steps = 0 must be an integer >= 1"),
    (TINY, "--config.checkpoint.keep=0", "checkpoint.keep = 0"),
    (TINY, "--config.seed=-3", "seed = -3 must be an integer >= 0"),
    (TRAIN, "--config.optim.lr=-0.1", "optim.lr = -0.1 must be a number >= 0"),
    (LATENCY, "--config.repeats=0", "repeats = 0 must be an integer >= 1"),
    (LATENCY, "--config.train_fraction=1.0", "train_fraction = 1.0 must be a number in (0, 1)"),
    (LATENCY, "--config.cpu_threads=4", "cpu_threads = 4 must be an integer equal to 1 or None"),
])
def test_out_of_range_value_names_key_value_and_range(spec, override, message):
  with pytest.raises(ConfigError) as e:
    load_config(spec, [override])
  assert message in str(e.value) and spec in str(e.value) and "--config.KEY=VALUE" in str(e.value)
  assert isinstance(e.value, PnasError) and isinstance(e.value, ValueError)


def test_search_needs_some_epochs():
  load_config(TINY, ["--config.schedule.warmup_epochs=0"])  # search epochs alone: fine
  with pytest.raises(ConfigError, match=r"schedule.warmup_epochs \+ schedule.epochs = 0.0 \+ 0.0"):
    load_config(TINY, ["--config.schedule.warmup_epochs=0", "--config.schedule.epochs=0"])


def test_a_later_override_of_a_key_replaces_an_earlier_one():
  """absl accumulates repeated tuple-valued flags; a preset then the user's value gives the user's."""
  cfg = load_config(TINY, ["--config.latency.target_ratios=(0.45, 0.55, 0.65)",
                           "--config.schedule.epochs=2", "--config.latency.target_ratios=(0.5, 0.7)",
                           "--config.schedule.epochs=3"])
  assert tuple(cfg.latency.target_ratios) == (0.5, 0.7)
  assert cfg.schedule.epochs == 3


def test_target_ratio_zero_does_not_fall_back_to_a_default_target():
  # tiny sets target_ratio = 0.8; setting it to 0 used to fall back to the schema's target = 80.
  with pytest.raises(ConfigError, match=r"latency.target and latency.target_ratio are both 0 with "
                     r"latency.model = 'macs': set exactly one of them > 0"):
    load_config(TINY, ["--config.latency.target_ratio=0"])
  config = load_config(TINY, ["--config.latency.target_ratio=0", "--config.latency.target=3.5"])
  assert config.latency.target == 3.5
  with pytest.raises(ConfigError, match=r"latency.target = 3.5 and latency.target_ratio = 0.8 are "
                     r"both set: set exactly one"):
    load_config(TINY, ["--config.latency.target=3.5"])
  with pytest.raises(ConfigError, match=r"latency.target_ratio = -0.5 must be a number >= 0"):
    load_config(TINY, ["--config.latency.target_ratio=-0.5"])
  load_config(TINY, ["--config.latency.target_ratio=0", "--config.latency.model=none"])
  # A sweep's lists replace the single target; their values are checked too.
  load_config(TINY, ["--config.latency.target_ratio=0", "--config.latency.targets=(0.1, 0.2)"])
  with pytest.raises(ConfigError, match=r"latency.target_ratios = \(0.5, -1.0\): give distinct positive"):
    load_config(TINY, ["--config.latency.target_ratios=(0.5, -1.0)"])


def test_dry_run_and_run_refuse_the_same_values(tmp_path, capsys):
  for extra in (["--dry-run"], []):
    assert cli.main(["search", "--config", TINY, "--workdir", str(tmp_path / "w"),
                     "--config.data.batch_size=0", *extra]) == 2
    err = capsys.readouterr().err
    assert "data.batch_size = 0 must be an integer >= 1" in err and "Traceback" not in err
  assert not (tmp_path / "w" / "arch.json").exists()
  assert cli.main(["search", "--config", TINY, "--workdir", str(tmp_path / "w"), "--dry-run",
                   "--config.schedule.epochs=-1"]) == 2
  assert "schedule.epochs = -1.0" in capsys.readouterr().err


def test_config_file_without_get_config_is_named(tmp_path):
  p = tmp_path / "myconf.py"
  p.write_text("import ml_collections\n\ndef config():\n  return ml_collections.ConfigDict()\n")
  with pytest.raises(ConfigError) as e:
    load_config(str(p))
  assert str(p) in str(e.value) and "define get_config()" in str(e.value)
  assert "config_config" not in str(e.value)
  p.write_text("def get_config(:\n")
  with pytest.raises(ConfigError, match=r"myconf.py: line 1: .*a config file is Python"):
    load_config(str(p))
  with pytest.raises(ConfigError, match="is a directory"):
    load_config(str(tmp_path))


@pytest.mark.parametrize("module, schema", [
    ("pnas_jax.train.search_config", "search_config"), ("pnas_jax.train.train_config", "train_config"),
    ("pnas_jax.latency.config", "latency_config")])
def test_every_range_names_a_key_of_its_schema(module, schema):
  import importlib

  from pnas_jax.config_loading import leaf_keys

  m = importlib.import_module(module)
  keys = set(leaf_keys(getattr(m, schema)()))
  assert set(m.RANGES) - keys == set()  # a renamed key must not leave its range unchecked
  assert schema_of(getattr(m, schema)()) is m


def test_range_describe_and_allows():
  r = Range(0, 1, high_open=True)
  assert r.describe() == "a number in [0, 1)" and r.allows(0) and not r.allows(1.0)
  assert not r.allows(float("nan")) and not Range(0).allows(float("inf"))
  assert not Range(1, integer=True).allows(2.0) and Range(1, integer=True, optional=True).allows(None)
  assert not Range(0).allows(True) and not Range(0).allows("3")
