"""Data parallelism: N devices (or N processes) compute what one device computes on the same batch.

Both tests run in subprocesses: the device count (and jax.distributed) must be set before JAX
touches a device, and this pytest process has already initialised JAX with one CPU device.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
HELPERS = pathlib.Path(__file__).resolve().parent / "parallel_helpers.py"
TIMEOUT_S = 600


def _env(**extra: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  env.update(JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
      [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])))
  env.update(extra)
  return env


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_four_devices_match_one_device():
  """2 x (weight step + "two" arch step with a MACs term), 1 vs 4 fake CPU devices, batch of 8."""
  proc = subprocess.run([sys.executable, str(HELPERS), "--devices", "4", "--rounds", "2"],
                        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
  assert proc.returncode == 0, proc.stderr[-4000:]
  res = json.loads(proc.stdout.strip().splitlines()[-1])
  assert res["paths_equal"], res["paths"]
  assert res["params"] < 1e-5, res
  assert res["batch_stats"] < 1e-5, res
  assert res["alpha"] < 1e-6, res
  assert res["alpha_moved"] > 1e-4, res  # the arch steps really updated alpha
  # The comparison can fail: per-device BN statistics (batch of 2 each) are not the global ones.
  assert res["nosync_params"] > 1e-4, res
  assert res["nosync_batch_stats"] > 1e-4, res


SEARCH_ARGS = ["--config", "configs/search/tiny.py", "--config.schedule.warmup_epochs=0.0",
               "--config.schedule.epochs=1.0", "--json"]


def _search_cmd(workdir: pathlib.Path, *extra: str) -> list[str]:
  return [sys.executable, "-m", "pnas_jax.cli", "search", *SEARCH_ARGS, "--workdir", str(workdir),
          *extra]


def _start(cmd: list[str], log: pathlib.Path, env: dict[str, str]) -> subprocess.Popen:
  with open(log, "w") as f:  # a file, not a pipe: nobody reads while the processes run
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)


def _wait(procs: list[subprocess.Popen], logs: list[pathlib.Path]) -> None:
  try:
    for p in procs:
      p.wait(timeout=TIMEOUT_S)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, log in zip(procs, logs, strict=True):
    assert p.returncode == 0, f"{log.name} exited {p.returncode}:\n{log.read_text()[-4000:]}"


@pytest.mark.slow
def test_two_processes_on_loopback(tmp_path):
  """The real CLI on 2 processes x 1 CPU device (gloo collectives) == 1 process x 2 devices."""
  port = _free_port()
  env = _env(JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo", JAX_NUM_CPU_DEVICES="1")
  logs = [tmp_path / "process0.log", tmp_path / "process1.log", tmp_path / "single.log"]
  procs = [
      _start(_search_cmd(tmp_path / "multi", "--coordinator", f"127.0.0.1:{port}",
                         "--num-processes", "2", "--process-id", str(i)), logs[i], env)
      for i in range(2)
  ]
  # The single-process reference runs alongside (the same global batch over a 2-device mesh).
  procs.append(_start(_search_cmd(tmp_path / "single"), logs[2], _env(JAX_NUM_CPU_DEVICES="2")))
  _wait(procs, logs)

  got = json.loads((tmp_path / "multi" / "summary.json").read_text())
  want = json.loads((tmp_path / "single" / "summary.json").read_text())
  assert got["step"] == want["step"] == got["total_steps"]
  assert got["status"] == want["status"] == "done"
  np.testing.assert_allclose(np.concatenate(got["probabilities"]),
                             np.concatenate(want["probabilities"]), atol=1e-5)
  assert got["arch"] == want["arch"]
  # The same trajectory, step by step: logged train / arch losses (averaged over log intervals).
  rows = [[(r["step"], r["kind"], r.get("loss", r.get("arch_loss")))
           for r in map(json.loads, (tmp_path / w / "metrics.jsonl").read_text().splitlines())
           if r["kind"] in ("train", "arch")] for w in ("multi", "single")]
  assert [r[:2] for r in rows[0]] == [r[:2] for r in rows[1]] and rows[0]
  np.testing.assert_allclose([r[2] for r in rows[0]], [r[2] for r in rows[1]], rtol=1e-5)
  # Process 0 wrote the outputs; every process took part in the orbax saves.
  assert (tmp_path / "multi" / "checkpoints" / str(got["step"])).is_dir()
  assert not (tmp_path / "multi" / "summary.json.tmp").exists()
