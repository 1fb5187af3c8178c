"""The search loop end to end on configs/search/tiny.py: outputs, resume bit-identity, NaN stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from checkpoint_helpers import saved_state

from pnas_jax import cli
from pnas_jax.config_loading import load_config
from pnas_jax.errors import UserValueError
from pnas_jax.file_io import load_msgpack
from pnas_jax.models.child import ChildNet
from pnas_jax.models.init import init_variables
from pnas_jax.search_space.io import load_arch, load_net_config
from pnas_jax.train.monitor import NonFiniteError
from pnas_jax.train.search import CHOSEN_PATH_FILE, search

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "search", "tiny.py")


def _json(path):
  with open(path) as f:
    return json.load(f)


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_tiny_search_cli_writes_every_output(tmp_path, capsys):
  wd = str(tmp_path / "run")
  # Budgeted derivation here (the other tiny runs below derive by argmax).
  rc = cli.main(["search", "--config", TINY, "--workdir", wd, "--config.log.plots=True",
                 "--config.latency.derive=budget"])
  out = capsys.readouterr().out
  assert rc == 0, out
  assert "status: done (step 18/18" in out
  summary = _json(os.path.join(wd, "summary.json"))
  space, arch = load_arch(os.path.join(wd, "arch.json"))
  assert list(arch.ops) == summary["arch"]
  space.check_arch(arch, strict=True)
  # net.config round-trips to the same architecture (reference format).
  _, arch2 = load_net_config(os.path.join(wd, "net.config"), resolution=space.resolution)
  assert arch2 == arch
  # E[LAT] under the MACs model against the 0.8 x baseline target.
  assert summary["target"] == pytest.approx(0.8 * 0.224192, rel=1e-3)
  assert summary["expected_latency"] > 0 and 0 < summary["arch_latency"] <= summary["target"]
  kinds = [r["kind"] for r in _records(wd)]
  assert {"train", "arch", "eval", "alpha"} <= set(kinds)
  evals = [r for r in _records(wd) if r["kind"] == "eval"]
  assert evals[-1]["step"] == 18 and evals[-1]["arch"] == list(arch.ops)
  epochs = [r for r in _records(wd) if r["kind"] == "alpha"]
  assert [r["step"] for r in epochs] == [12, 18]  # the two search epochs of 6 steps
  assert len(epochs[-1]["probs"]) == space.n_blocks
  np.testing.assert_allclose(epochs[-1]["probs"][0], summary["probabilities"][0], rtol=1e-6)
  for name in ("alpha.png", "arch.png", "curves.png"):
    assert os.path.getsize(os.path.join(wd, "plots", name)) > 1000
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(wd, "tensorboard")))
  # The chosen path's supernet weights load into the ChildNet of the found architecture.
  net = ChildNet(space, arch, dw_impl="lax")
  x = np.zeros((2, space.resolution, space.resolution, space.in_channels), np.float32)
  like = init_variables(net, jax.random.key(0), x)
  inherited = load_msgpack(os.path.join(wd, CHOSEN_PATH_FILE), like)
  assert jax.tree.structure(inherited) == jax.tree.structure(like)
  assert np.isfinite(np.asarray(net.apply(inherited, x, train=False))).all()


def _run(workdir, *extra, wait=True):
  cmd = [sys.executable, "-m", "pnas_jax.cli", "search", "--config", TINY, "--workdir", workdir,
         *extra]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  if wait:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return out
  return proc


def _wait_for(pred, proc, timeout=300):
  t0 = time.time()
  while not pred():
    if proc.poll() is not None:
      raise AssertionError(f"the run ended before the interruption point:\n{proc.stdout.read()}")
    if time.time() - t0 > timeout:
      proc.kill()
      raise AssertionError("timed out waiting for the run to reach the interruption point")
    time.sleep(0.05)


def _checkpoints(workdir):
  d = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(d):
    return []
  return sorted(int(s) for s in os.listdir(d) if s.isdigit()
                and os.path.exists(os.path.join(d, s, "commit_success.txt")))


def _trained_steps(workdir):
  p = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(p):
    return 0
  with open(p) as f:
    steps = [json.loads(line)["step"] for line in f if line.strip().endswith("}")]
  return max(steps, default=0)


def test_interrupted_search_resumes_bit_identical(tmp_path, capsys):
  """A concurrent second run refuses; SIGTERM (saves, says so, exits 143, marks its outputs
  partial) then kill -9 (loses the steps since the last checkpoint): the resumed run ends with
  exactly the state of an uninterrupted run, and metrics.jsonl with its records (the first run's
  files intact)."""
  ref, wd = str(tmp_path / "ref"), str(tmp_path / "interrupted")
  _run(ref)

  proc = _run(wd, wait=False)
  _wait_for(lambda: _trained_steps(wd) >= 3, proc)  # mid warm-up, before the first checkpoint
  # A second search on the same workdir refuses at once, naming the running one.
  rc = cli.main(["search", "--config", TINY, "--workdir", wd])
  assert rc == 2 and f"pid {proc.pid}" in capsys.readouterr().err
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 128 + signal.SIGTERM, out
  assert "SIGTERM received: saving checkpoint" in out
  assert "status: interrupted by SIGTERM at step" in out and "rerun to continue" in out
  first = _checkpoints(wd)
  assert first and first[-1] < 18
  summary = _json(os.path.join(wd, "summary.json"))
  assert summary["status"] == "preempted" and summary["partial"] is True
  assert _json(os.path.join(wd, "arch.json"))["meta"]["partial"] is True
  # `pnas train` refuses the half-searched architecture unless told to accept it.
  rc = cli.main(["train", "--config", os.path.join(REPO, "configs", "train", "fashion_mnist.py"),
                 "--workdir", str(tmp_path / "train"), f"--config.arch={wd}/arch.json"])
  assert rc == 2

  proc = _run(wd, wait=False)
  _wait_for(lambda: any(s > first[-1] + 4 for s in _checkpoints(wd)), proc)  # a periodic save ...
  _wait_for(lambda: _trained_steps(wd) >= max(_checkpoints(wd)) + 1, proc)  # ... then more steps
  os.kill(proc.pid, signal.SIGKILL)
  proc.communicate(timeout=60)
  assert max(_checkpoints(wd)) < 18

  out = _run(wd)
  assert "status: done (step 18/18" in out
  assert _json(os.path.join(wd, "arch.json"))["meta"]["partial"] is False
  a, b = saved_state(ref, 18), saved_state(wd, 18)
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(leaves_a, leaves_b, strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  ref_summary = _json(os.path.join(ref, "summary.json"))
  summary = _json(os.path.join(wd, "summary.json"))
  assert summary["probabilities"] == ref_summary["probabilities"]
  # metrics.jsonl holds each step once, with the uninterrupted run's values.
  key = lambda r: (r["step"], r["kind"])
  ref_train = {key(r): r.get("loss") for r in _records(ref) if r["kind"] == "train"}
  got_train = {key(r): r.get("loss") for r in _records(wd) if r["kind"] == "train"}
  assert set(ref_train) <= set(got_train)
  assert all(got_train[k] == v for k, v in ref_train.items())


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  wd = str(tmp_path / "nan")
  config = load_config(TINY, ["--config.optim.lr=1e30", "--config.checkpoint.every_steps=3"])
  with pytest.raises(NonFiniteError, match="not finite.*last good checkpoint"):
    search(config, wd)
  kept = _checkpoints(wd)
  assert kept and max(kept) >= 6  # the warm-up (lr 0.05) checkpoints survive ...
  state = saved_state(wd, max(kept))
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))


def test_reinforce_within_target_search_gets_the_derive_band(tmp_path):
  """The search passes its latency band (target, derive_band, the model's block costs) to
  REINFORCE (without one the estimator refuses within_target); it runs to the end and the derived
  net lies in [(1 - band) T, T]. test_arch_estimators.py checks what the band does to sampling."""
  band = 0.15
  config = load_config(TINY, [
      "--config.eval.every_epochs=0", "--config.arch.estimator=reinforce",
      "--config.arch.reinforce.k=3", "--config.arch.reinforce.batch_size=0",
      "--config.arch.reinforce.baseline=leave_one_out",
      "--config.arch.reinforce.within_target=True", "--config.latency.derive=budget",
      f"--config.latency.derive_band={band}"])
  result = search(config, str(tmp_path / "s"))
  assert not result.partial and result.exit_code == 0
  assert (1 - band) * result.target * 0.995 <= result.arch_latency <= result.target
  config.arch.reinforce.baseline = "moving_average"
  with pytest.raises(UserValueError, match="needs arch.reinforce.baseline = 'leave_one_out'"):
    search(config, str(tmp_path / "t"))
