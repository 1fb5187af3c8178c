"""Metrics logging: one strict-JSON line per write in `<workdir>/metrics.jsonl`, plus TensorBoard scalars.

Every `MetricsLogger.write(step, metrics, kind)` appends {"step", "kind", "time", **metrics} to
metrics.jsonl and flushes it, so nothing is lost on a crash. Values become plain Python (numpy / jax
scalars -> int / float, arrays -> nested lists); NaN and +-inf are not valid strict JSON and are written
as null.

Resume: a run restarted from the checkpoint of step S replays the steps after S, so the logger opened
with `resume_step=S` first rewrites metrics.jsonl atomically (tmp file + os.replace) keeping only the
records with step <= S; a fresh run (`resume_step=None`) truncates the file.

TensorBoard: every numeric scalar metric is written under the tag f"{kind}/{key}" to an event file in
`<workdir>/tensorboard/`, with the pure-python writer of the `tensorboard` package (no TensorFlow).
On open, a SessionLog.START event at step S + 1 (or 0 for a fresh run) tells TensorBoard to discard the
older event files' points from that step on, as TensorFlow does after a restart. TensorBoard reads a
directory's event files in name order, and a file's name starts with the second it was opened, then a
per-process counter that sorts as a string ("10" < "9"): a logger reopened within the second of an
existing event file therefore waits for the next second, so its file sorts last. Without the
`tensorboard` package a warning is logged once and only metrics.jsonl is written.

In a multi-host run only process 0 should write: pass `enabled=jax.process_index() == 0`; a disabled
logger does nothing and its records() is [].
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import re
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
RESERVED_KEYS = ("step", "kind", "time")
_TRAIN_FLUSH_EVERY = 10
_EVENT_FILE_SECOND = re.compile(r"events\.out\.tfevents\.(\d+)\.")


def to_python(value: Any) -> Any:
  """`value` as plain JSON-able Python: numpy / jax scalars and arrays unwrapped, NaN / inf -> None.

  Mappings become dicts (keys as str), sequences and arrays become lists, other objects their str().
  """
  if value is None or isinstance(value, (bool, str)):
    return value
  if isinstance(value, np.bool_):
    return bool(value)
  if isinstance(value, numbers.Integral):
    return int(value)
  if isinstance(value, numbers.Real):
    v = float(value)
    return v if math.isfinite(v) else None
  if isinstance(value, Mapping):
    return {str(k): to_python(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_python(v) for v in value]
  if isinstance(value, np.ndarray) or hasattr(value, "__array__"):
    arr = np.asarray(value)
    if arr.ndim == 0:
      return to_python(arr.item())
    return [to_python(v) for v in arr.tolist()]
  return str(value)


def _scalar_or_none(value: Any) -> float | None:
  """float(value) for a numeric scalar (python, numpy or 0-d array; NaN kept), else None (bools too)."""
  if isinstance(value, (bool, np.bool_, str)) or value is None:
    return None
  if isinstance(value, numbers.Real):
    return float(value)
  if hasattr(value, "__array__") and getattr(value, "ndim", None) == 0:
    arr = np.asarray(value)
    if arr.dtype.kind in "iuf":
      return float(arr)
  return None


def _read_records(path: str) -> list[dict]:
  """The parseable JSON object lines of `path` (a half-written last line from a crash is dropped)."""
  records = []
  try:
    with open(path) as f:
      for line in f:
        line = line.strip()
        if not line:
          continue
        try:
          rec = json.loads(line)
        except json.JSONDecodeError:
          continue
        if isinstance(rec, dict):
          records.append(rec)
  except FileNotFoundError:
    pass
  return records


class MetricsLogger:
  """Appends metrics to `<workdir>/metrics.jsonl` and TensorBoard; see the module docstring.

  Args:
    workdir: the run's folder (created if absent).
    tensorboard: also write TensorBoard scalars to `<workdir>/tensorboard/`.
    resume_step: the step of the checkpoint a resumed run restarts from: records with a larger step
      are dropped. None for a fresh run: metrics.jsonl is truncated.
    enabled: False on every process but 0 in a multi-host run: nothing is read or written.
  """

  def __init__(
      self,
      workdir: str | os.PathLike,
      tensorboard: bool = True,
      resume_step: int | None = None,
      enabled: bool = True,
  ):
    self.enabled = enabled
    self.workdir = os.fspath(workdir)
    self.path = os.path.join(self.workdir, METRICS_FILE)
    self._file = None
    self._tb = None
    self._tb_pending = 0
    if not enabled:
      return
    os.makedirs(self.workdir, exist_ok=True)
    if resume_step is not None:
      kept = [r for r in _read_records(self.path) if _step_of(r) is not None and _step_of(r) <= resume_step]
      tmp = self.path + ".tmp"
      with open(tmp, "w") as f:
        for rec in kept:
          f.write(json.dumps(rec, allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, self.path)
      self._file = open(self.path, "a")  # noqa: SIM115 (kept open until close())
    else:
      self._file = open(self.path, "w")  # noqa: SIM115
    if tensorboard:
      self._open_tensorboard(0 if resume_step is None else int(resume_step) + 1)

  def _open_tensorboard(self, start_step: int) -> None:
    try:
      from tensorboard.compat.proto import event_pb2, summary_pb2
      from tensorboard.summary.writer.event_file_writer import EventFileWriter
    except ImportError as e:
      logger.warning("tensorboard is not importable (%s): writing %s only", e, METRICS_FILE)
      return
    self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
    tb_dir = os.path.join(self.workdir, TENSORBOARD_DIR)
    _wait_past_event_files_of_this_second(tb_dir)
    self._tb = EventFileWriter(tb_dir, max_queue_size=100)
    # Older event files' points from start_step on are stale (replayed or from a previous run).
    self._tb.add_event(
        event_pb2.Event(
            wall_time=time.time(),
            step=start_step,
            session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START),
        )
    )
    self._tb.flush()

  def write(self, step: int, metrics: Mapping[str, Any], kind: str = "train") -> None:
    """Appends {"step", "kind", "time", **metrics} to metrics.jsonl (flushed) and the scalars to TB.

    Raises:
      ValueError: a metric is named "step", "kind" or "time".
      RuntimeError: the logger is closed.
    """
    if not self.enabled:
      return
    if self._file is None:
      raise RuntimeError(f"MetricsLogger({self.workdir!r}) is closed")
    clash = [k for k in RESERVED_KEYS if k in metrics]
    if clash:
      raise ValueError(f"metric names {clash} are reserved for the record header {list(RESERVED_KEYS)}")
    now = time.time()
    record = {"step": int(step), "kind": str(kind), "time": now}
    record.update({str(k): to_python(v) for k, v in metrics.items()})
    self._file.write(json.dumps(record, allow_nan=False) + "\n")
    self._file.flush()
    if self._tb is not None:
      values = []
      for key, value in metrics.items():
        scalar = _scalar_or_none(value)
        if scalar is not None:
          values.append(self._summary_pb2.Summary.Value(tag=f"{kind}/{key}", simple_value=scalar))
      if values:
        self._tb.add_event(
            self._event_pb2.Event(
                wall_time=now, step=int(step), summary=self._summary_pb2.Summary(value=values)
            )
        )
        self._tb_pending += 1
        if kind != "train" or self._tb_pending >= _TRAIN_FLUSH_EVERY:
          self._tb.flush()
          self._tb_pending = 0

  def records(self) -> list[dict]:
    """Every record in metrics.jsonl, in file order ([] when disabled)."""
    if not self.enabled:
      return []
    if self._file is not None:
      self._file.flush()
    return _read_records(self.path)

  def flush(self) -> None:
    """Flushes metrics.jsonl and the TensorBoard event file."""
    if self._file is not None:
      self._file.flush()
    if self._tb is not None:
      self._tb.flush()
      self._tb_pending = 0

  def close(self) -> None:
    """Flushes and closes both files; safe to call twice."""
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self) -> MetricsLogger:
    return self

  def __exit__(self, *exc: object) -> None:
    self.close()


def _wait_past_event_files_of_this_second(tb_dir: str) -> None:
  """Sleeps into the next second if an event file in tb_dir was opened in this one (see the module doc)."""
  seconds = []
  if os.path.isdir(tb_dir):
    for name in os.listdir(tb_dir):
      match = _EVENT_FILE_SECOND.match(name)
      if match:
        seconds.append(int(match.group(1)))
  # Only a file of this very second can tie; one from a clock ahead of ours is not waited for.
  if int(time.time()) in seconds:
    time.sleep(math.floor(time.time()) + 1 - time.time() + 1e-3)


def _step_of(record: Mapping[str, Any]) -> int | None:
  step = record.get("step")
  if isinstance(step, bool) or not isinstance(step, (int, float)):
    return None
  return int(step)
