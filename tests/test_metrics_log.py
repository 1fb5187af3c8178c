"""pnas_jax.train.metrics_log: strict-JSON lines, resume truncation, TensorBoard scalars, disabled logger."""

from __future__ import annotations

import json
import logging
import math
import os
import sys

import numpy as np
import pytest

from pnas_jax.train.metrics_log import MetricsLogger, to_python

EventAccumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator"
).EventAccumulator


def _strict_lines(path) -> list[dict]:
  def reject(name):
    raise ValueError(f"non-strict JSON constant {name}")

  with open(path) as f:
    return [json.loads(line, parse_constant=reject) for line in f if line.strip()]


def _scalars(workdir, tag: str) -> tuple[list[int], list[float]]:
  acc = EventAccumulator(os.path.join(workdir, "tensorboard"))
  acc.Reload()
  events = acc.Scalars(tag)
  return [e.step for e in events], [e.value for e in events]


def test_write_resume_truncates_and_continues(tmp_path):
  log = MetricsLogger(str(tmp_path))
  for step in range(1, 6):
    log.write(step, {"loss": 1.0 / step, "lr": np.float32(0.1)})
  assert [r["step"] for r in log.records()] == [1, 2, 3, 4, 5]
  log.close()

  log = MetricsLogger(str(tmp_path), resume_step=3)
  assert [r["step"] for r in log.records()] == [1, 2, 3]
  log.write(4, {"loss": 0.5})
  records = log.records()
  log.close()
  assert [r["step"] for r in records] == [1, 2, 3, 4]
  assert records[3]["loss"] == 0.5 and records[0]["kind"] == "train" and isinstance(records[0]["time"], float)
  assert not os.path.exists(tmp_path / "metrics.jsonl.tmp")
  # TensorBoard drops the first run's steps 4 and 5 (SessionLog.START at step 4) and keeps the new 4.
  steps, values = _scalars(tmp_path, "train/loss")
  assert steps == [1, 2, 3, 4] and values == pytest.approx([1.0, 0.5, 1 / 3, 0.5])


def test_resume_in_the_same_second_sorts_after_the_first_file(tmp_path, monkeypatch):
  # TensorBoard reads event files in name order; the writer's per-process counter sorts as a string,
  # so a second file opened in the same second as the first with counters 9 -> 10 would be read first.
  from tensorboard.summary.writer import event_file_writer

  monkeypatch.setattr(event_file_writer, "_global_uid", event_file_writer.AtomicCounter(9))
  with MetricsLogger(str(tmp_path)) as log:
    for step in range(1, 4):
      log.write(step, {"loss": float(step)})
  with MetricsLogger(str(tmp_path), resume_step=1) as log:
    log.write(2, {"loss": 20.0})
  names = sorted(os.listdir(tmp_path / "tensorboard"))
  assert [n.rsplit(".", 1)[-1] for n in names] == ["9", "10"]
  assert _scalars(tmp_path, "train/loss") == ([1, 2], [1.0, 20.0])


def test_fresh_run_truncates(tmp_path):
  with MetricsLogger(str(tmp_path), tensorboard=False) as log:
    log.write(1, {"a": 1})
    log.write(2, {"a": 2})
  with MetricsLogger(str(tmp_path), tensorboard=False) as log:
    assert log.records() == []
    log.write(1, {"a": 3})
    assert [r["a"] for r in log.records()] == [3]
  assert not os.path.exists(tmp_path / "tensorboard")


def test_nan_is_null_and_strict_json(tmp_path):
  log = MetricsLogger(str(tmp_path), tensorboard=False)
  log.write(
      1,
      {
          "loss": float("nan"),
          "inf": np.float32("inf"),
          "acc": np.float64(0.75),
          "count": np.int64(7),
          "flag": np.bool_(True),
          "vec": np.array([1.0, np.nan, 2.5]),
          "scalar_arr": np.array(3.5),
          "nested": {"p": [np.float32(0.5), float("nan")]},
          "name": "3x3_MBConv6",
      },
      kind="eval",
  )
  log.close()
  (rec,) = _strict_lines(tmp_path / "metrics.jsonl")
  assert rec["kind"] == "eval" and rec["step"] == 1
  assert rec["loss"] is None and rec["inf"] is None
  assert rec["acc"] == 0.75 and rec["count"] == 7 and rec["flag"] is True
  assert rec["vec"] == [1.0, None, 2.5] and rec["scalar_arr"] == 3.5
  assert rec["nested"] == {"p": [0.5, None]} and rec["name"] == "3x3_MBConv6"


def test_jax_values_become_python():
  jnp = pytest.importorskip("jax.numpy")
  assert to_python(jnp.float32(2.5)) == 2.5
  assert to_python(jnp.array([1, 2], dtype=jnp.int32)) == [1, 2]
  assert to_python(jnp.array(float("nan"))) is None


def test_tensorboard_scalars(tmp_path):
  log = MetricsLogger(str(tmp_path))
  losses = [2.0, 1.5, 1.25]
  for step, loss in enumerate(losses, start=1):
    log.write(step, {"loss": np.float32(loss), "vec": [1, 2], "name": "x"})
  log.write(3, {"acc": 61.5, "nan": float("nan")}, kind="eval")
  log.close()
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
  assert _scalars(tmp_path, "train/loss") == ([1, 2, 3], losses)
  assert _scalars(tmp_path, "eval/acc") == ([3], [61.5])
  steps, values = _scalars(tmp_path, "eval/nan")
  assert steps == [3] and math.isnan(values[0])
  acc = EventAccumulator(str(tmp_path / "tensorboard"))
  acc.Reload()
  assert not any(t.endswith(("/vec", "/name")) for t in acc.Tags()["scalars"])


def test_reserved_keys_rejected(tmp_path):
  with MetricsLogger(str(tmp_path), tensorboard=False) as log, pytest.raises(ValueError, match="reserved"):
    log.write(1, {"step": 3})


def test_disabled_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  log = MetricsLogger(str(workdir), enabled=False)
  log.write(1, {"loss": 1.0})
  assert log.records() == []
  log.close()
  assert not workdir.exists()


def test_truncated_last_line_dropped_on_resume(tmp_path):
  with MetricsLogger(str(tmp_path), tensorboard=False) as log:
    log.write(1, {"a": 1})
    log.write(2, {"a": 2})
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 3, "a"')  # a crash mid-line
  with MetricsLogger(str(tmp_path), tensorboard=False, resume_step=10) as log:
    assert [r["step"] for r in log.records()] == [1, 2]
  assert [r["step"] for r in _strict_lines(tmp_path / "metrics.jsonl")] == [1, 2]


def test_without_tensorboard_package_warns_and_writes_jsonl(tmp_path, monkeypatch, caplog):
  monkeypatch.setitem(sys.modules, "tensorboard.summary.writer.event_file_writer", None)
  with caplog.at_level(logging.WARNING), MetricsLogger(str(tmp_path)) as log:
    log.write(1, {"loss": 1.0})
    assert [r["loss"] for r in log.records()] == [1.0]
  assert "tensorboard is not importable" in caplog.text
  assert not os.path.exists(tmp_path / "tensorboard")
