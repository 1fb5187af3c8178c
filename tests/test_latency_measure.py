"""Measuring on this device: tables (resumable), whole networks, and the `pnas latency` commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from latency_helpers import tiny_space, write_config

from pnas_jax import cli
from pnas_jax.latency import measure
from pnas_jax.latency import table as table_lib
from pnas_jax.latency import timing as timing_lib
from pnas_jax.latency.predictor import load_latency_model
from pnas_jax.latency.table import LatencyTableError, cost_table, load_table, space_keys
from pnas_jax.latency.timing import time_interleaved
from pnas_jax.search_space.sampling import sample_archs

FAST = measure.TimingProtocol(batch=1, warmup=1, repeats=3, per_round=1, chunk=4)


def test_time_interleaved_counts():
  calls = [(lambda x: x + 1, (np.float32(1),)), (lambda x: x * 2, (np.float32(1),))]
  warmed = []
  out = time_interleaved(calls, warmup=1, repeats=5, per_round=2, on_warm=warmed.append)
  assert warmed == [0, 1] and [t.count for t in out] == [6, 6]
  assert all(t.min_ms <= t.p10_ms <= t.median_ms for t in out)
  with pytest.raises(ValueError, match="unknown clock 'cpu'; valid: wall, process"):
    time_interleaved(calls, clock="cpu")


def test_timing_p10_is_the_interpolated_tenth_percentile():
  # Sorted calls 1..10 ms (given shuffled): position 0.1 * (10 - 1) = 0.9 between the first two.
  t = timing_lib._summary([7.0, 3.0, 10.0, 1.0, 5.0, 2.0, 9.0, 4.0, 8.0, 6.0])
  assert t.p10_ms == pytest.approx(1.9) and t.median_ms == pytest.approx(5.5)
  assert timing_lib._summary([4.0, 1.0]).p10_ms == pytest.approx(1.3)


def test_measure_table_is_complete_and_resumes(tmp_path):
  space = tiny_space()
  path = tmp_path / "table.json"
  part = measure.measure_table(space, path, FAST, progress=False, max_new=3)
  assert len(part) == 3 and len(load_table(path)) == 3
  first = dict(load_table(path).entries)
  full = measure.measure_table(space, path, FAST, progress=False)
  keys = space_keys(space).all_keys()
  assert sorted(full.entries) == sorted(keys)
  for k, e in first.items():  # kept, not re-measured
    assert full.entries[k] == e
  loaded = load_table(path)
  assert loaded.header.statistic == "p10"  # what lookups use: each entry's 10th percentile
  assert all(loaded.lookup(k) == e.p10 <= e.median for k, e in loaded.entries.items())
  costs = cost_table(loaded, space)
  assert costs.fixed > 0 and all(c > 0 for row in costs.per_block for c in row if c)
  h = full.header
  assert h.backend == "cpu" and h.batch == 1 and h.jax_version and h.date
  # Resuming with another batch size is refused, naming the field.
  with pytest.raises(LatencyTableError, match="batch = 1 but this run has 2"):
    measure.measure_table(space, path, measure.TimingProtocol(batch=2, repeats=1),
                          progress=False)


def test_measure_networks_times_a_file_in_one_process_and_checks_space(tmp_path, monkeypatch):
  space = tiny_space()
  archs = sample_archs(space, 4, seed=1)
  assert archs == sample_archs(space, 4, seed=1)
  path = tmp_path / "nets.json"
  named = [(f"a{i}", a) for i, a in enumerate(archs)]
  timed = []
  real = measure._time_chunks
  monkeypatch.setattr(measure, "_time_chunks",
                      lambda items, *a: timed.append([n for n, _ in items]) or real(items, *a))
  measure.measure_networks(space, named[:2], path, FAST, progress=False)
  # A network added later: the file's networks are timed again with it, in this process.
  meas = measure.measure_networks(space, named[:3], path, FAST, progress=False)
  assert timed == [["a0", "a1"], ["a0", "a1", "a2"]]
  assert [r["name"] for r in meas.records] == ["a0", "a1", "a2"]
  assert meas.archs() == archs[:3] and np.all(meas.latencies() > 0)
  # Every requested network present: the file is kept as it is, nothing timed.
  before = path.read_bytes()
  measure.measure_networks(space, named[1:3], path, FAST, progress=False)
  assert timed[-1] == [] and path.read_bytes() == before
  # Networks of the file that this call does not ask for are timed again too, not dropped.
  meas = measure.measure_networks(space, [named[0], named[3]], path, FAST, progress=False)
  assert timed[-1] == ["a0", "a3", "a1", "a2"]
  assert sorted(r["name"] for r in meas.records) == ["a0", "a1", "a2", "a3"]
  with pytest.raises(LatencyTableError, match="another search space"):
    measure.measure_networks(tiny_space(n_classes=7), named, path, FAST, progress=False)


@pytest.mark.parametrize("command", ["measure", "networks"])
def test_cli_one_session_on_one_core_times_in_the_fresh_cli_process(tmp_path, command):
  """sessions=1 with cpu_threads=1: the CLI process pins itself before JAX starts, then times."""
  from pnas_jax.search_space.io import save_arch
  from pnas_jax.search_space.space import Arch

  space = tiny_space()
  config = write_config(tmp_path / "lat.py", space, tmp_path)
  text = (tmp_path / "lat.py").read_text()
  (tmp_path / "lat.py").write_text(text.replace("c.cpu_threads = None", "c.cpu_threads = 1"))
  save_arch(tmp_path / "a.json", space, Arch.uniform(space, "3x3_MBConv3"))
  args = (["--config.n_networks=1"] if command == "measure"
          else ["--out", str(tmp_path / "networks.json"), f"a={tmp_path / 'a.json'}"])
  p = subprocess.run([sys.executable, "-m", "pnas_jax.cli", "latency", command, "--config", config,
                      "--config.sessions=1", *args],
                     capture_output=True, text=True)
  assert p.returncode == 0, p.stderr[-2000:]
  header = json.loads((tmp_path / "networks.json").read_text())["header"]
  assert header["xla_flags"].split() == list(measure.SINGLE_THREAD_FLAGS)
  if (os.cpu_count() or 1) > 1:
    assert "pinned to 1 of" in header["device"]


def test_cli_measure_fit_expected(tmp_path, capsys):
  space = tiny_space()
  config = write_config(tmp_path / "lat.py", space, tmp_path)
  assert cli.main(["latency", "measure", "--config", config, "--config.n_networks=6"]) == 0
  assert len(load_table(tmp_path / "table.json")) == len(space_keys(space).all_keys())
  nets = json.loads((tmp_path / "networks.json").read_text())
  assert len(nets["networks"]) == 6 and nets["header"]["batch"] == 1
  capsys.readouterr()
  assert cli.main(["latency", "fit", "--config", config, "--json"]) == 0
  report = json.loads(capsys.readouterr().out)
  assert report["n_train"] == 4 and report["n_test"] == 2
  assert report["test"]["rel_rmse"] >= 0 and report["table_sum_test"]["rmse_ms"] >= 0
  model = load_latency_model(tmp_path / "predictor.json", space, device="local", batch=1)
  assert model.kind == "linear"
  for table in ("table.json", "predictor.json"):
    assert cli.main(["latency", "expected", "--table", str(tmp_path / table), "--space", config,
                     "--uniform", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["expected_latency_ms"] > 0 and out["predictor"] == table.split(".")[0].replace(
        "table", "table_sum").replace("predictor", "linear")
  # A typo in an override fails naming the key; a table for another shape fails cleanly.
  assert cli.main(["latency", "measure", "--config", config, "--config.n_network=1"]) == 2
  assert "n_network" in capsys.readouterr().err
  assert cli.main(["latency", "expected", "--table", str(tmp_path / "table.json"), "--space",
                   config, "--config.space.resolution=32", "--uniform"]) == 2
  assert "has no entry 'Conv-input:32x32x3" in capsys.readouterr().err


def test_zoo_archs_fit_the_space():
  from pnas_jax.search_space import SearchSpace

  # proxyless_mobile_14 has the same ops as proxyless_mobile: measured once.
  assert [n for n, _ in measure.zoo_archs(SearchSpace())] == [
      "zoo:proxyless_mobile", "zoo:proxyless_gpu", "zoo:proxyless_cpu"]
  assert measure.zoo_archs(tiny_space()) == []


def test_set_cpu_threads_refuses_after_backend_start(monkeypatch):
  import jax

  jax.devices()  # the backend is running from here on
  monkeypatch.setenv("XLA_FLAGS", "")
  with pytest.raises(RuntimeError, match="before JAX starts its backend"):
    measure.set_cpu_threads(1)
  with pytest.raises(ValueError, match="cpu_threads = 2"):
    measure.set_cpu_threads(2)
  measure.set_cpu_threads(None)
  monkeypatch.setenv("XLA_FLAGS", " ".join(measure.SINGLE_THREAD_FLAGS))
  if len(os.sched_getaffinity(0)) > 1:  # the flags alone: the process must still be pinned
    with pytest.raises(RuntimeError, match="taskset"):
      measure.set_cpu_threads(1)
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
  measure.set_cpu_threads(1)  # flags set and one CPU: nothing to do


def test_one_core_target_pins_the_process_before_jax_starts():
  """cpu_threads=1 leaves XLA one CPU, so its intra-op pool has one thread (a 2-core machine's
  pool otherwise runs a 'single-threaded' network on both cores)."""
  if (os.cpu_count() or 1) < 2:
    pytest.skip("a one-CPU machine: there is nothing to pin")
  code = ("import os; from pnas_jax.latency import measure; measure.set_cpu_threads(1); "
          "import jax; jax.devices(); from pnas_jax.latency.timing import device_description; "
          "print(len(os.sched_getaffinity(0)), os.environ['XLA_FLAGS'], '|', device_description())")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       check=True).stdout
  n, rest = out.split(" ", 1)
  assert n == "1"
  flags, device = rest.split("|")
  assert flags.split() == list(measure.SINGLE_THREAD_FLAGS)
  assert f"pinned to 1 of {os.cpu_count()} cores" in device


def test_latency_model_experiment_smoke(tmp_path, capsys):
  import importlib.util
  import pathlib

  path = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "latency_model.py"
  spec = importlib.util.spec_from_file_location("latency_model_experiment", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = write_config(tmp_path / "lat.py", tiny_space(), tmp_path)
  out = tmp_path / "lm.json"
  assert module.main(["--config", config, "--n", "8", "--repeat", "2", "--repeats", "3",
                      "--out", str(out), "--plot", str(tmp_path / "lm.png"), "--json",
                      "--config.train_fraction=0.75"]) == 0
  last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  for key in ("predictor_rel_rmse", "table_sum_rel_rmse", "n_train", "n_test", "device",
              "repeat_rel_diff_mean"):
    assert key in last
  assert (last["n_train"], last["n_test"]) == (6, 2)
  assert (tmp_path / "lm.png").stat().st_size > 0
  full = json.loads(out.read_text())
  assert len(full["networks"]) == 8 and len(full["repeats"]) == 2


@pytest.mark.parametrize("field, value", [("median", float("nan")), ("median", -1.5),
                                          ("mean", float("inf")), ("min", 0.0)])
def test_bad_latency_in_networks_file_names_file_and_network(tmp_path, field, value):
  space = tiny_space()
  archs = sample_archs(space, 2, seed=1)
  header = table_lib.TableHeader(device="cpu: test", backend="cpu")
  records = [{"name": f"a{i}", "ops": list(a.ops), "median": 1.0, "mean": 1.1, "var": 0.01,
              "count": 3, "min": 0.9} for i, a in enumerate(archs)]
  path = tmp_path / "nets.json"
  measure.NetworkMeasurements(header, space, records).save(path)
  assert measure.load_network_measurements(path).latencies().tolist() == [1.0, 1.0]
  d = json.loads(path.read_text())
  d["networks"][1][field] = value
  path.write_text(json.dumps(d))
  with pytest.raises(LatencyTableError, match=rf"nets.json: networks\[1\] \(a1\): {field} = "):
    measure.load_network_measurements(path)


def test_search_measure_model_times_one_core_in_child_processes(tmp_path):
  """latency.model='measure' with cpu_threads=1 on a CPU: the table and networks are timed in
  latency.sessions pinned child processes (this one keeps its cores), merged, and fitted."""
  import pathlib

  from pnas_jax.config_loading import load_config
  from pnas_jax.latency.objective import latency_objective
  from pnas_jax.search_space import SearchSpace

  tiny = pathlib.Path(__file__).resolve().parents[1] / "configs" / "search" / "tiny.py"
  cfg = load_config(str(tiny), ["--config.latency.model=measure", "--config.latency.n_networks=3",
                                "--config.latency.repeats=2", "--config.latency.target_ratio=0.8",
                                "--config.latency.target=0", "--config.latency.sessions=2",
                                "--config.log.progress=False"])
  before = os.sched_getaffinity(0)
  objective = latency_objective(cfg, SearchSpace(**cfg.space.to_dict()), str(tmp_path))
  assert os.sched_getaffinity(0) == before
  header = load_table(tmp_path / "latency" / "table.json").header
  assert header.sessions == 2
  assert (tmp_path / "latency" / "networks.session2.json").exists()
  assert header.xla_flags.split() == list(measure.SINGLE_THREAD_FLAGS)
  if (os.cpu_count() or 1) > 1:
    assert "pinned to 1 of" in header.device
  nets = json.loads((tmp_path / "latency" / "networks.json").read_text())["networks"]
  assert [n["name"] for n in nets] == ["baseline", "sample000", "sample001", "sample002"]
  assert all(len(n["sessions"]) == 2 for n in nets)
  assert objective.target == pytest.approx(0.8 * objective.baseline)
