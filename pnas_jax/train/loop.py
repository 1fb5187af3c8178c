"""The one training-loop skeleton: the search, the retrain and sweeps supply only steps and hooks.

    with RunDir(workdir, kind="search") as run:
      setup = ...   # everything the config says, checked before the workdir is touched
      run.open(config_dict, checkpoint_every=..., keep=..., tensorboard=...)
      state = run.restore_or(initial_state)
      state, outcome = run_loop(state, one_step, start=..., total_steps=..., run=run, ...)

`RunDir` is resume-or-start for a workdir: it holds the workdir lock for the run (a second run
on the same workdir fails at once, naming the first; pnas_jax/workdir_lock.py), refuses to
resume a run with another config (naming the differing keys), refuses a workdir that holds an
earlier run's results but no checkpoint to resume from (unless `overwrite`), writes config.json
for a fresh run and opens the metrics log at the resumed step.

`run_loop` runs `one_step(state, step)` from the start step to the end of the schedule (or to
`max_steps` more), and after each step: advances the progress bar, fetches and checks metrics every
`log_every` steps (NaN stops the run, see monitor.py), calls the caller's hooks (per-epoch records,
evaluation), saves every `checkpoint_every` steps and, on SIGTERM / SIGINT, saves and stops. The
outcome says how the loop ended; a run that did not reach the end of its schedule is partial and
its outputs say so.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import jax

from pnas_jax.checkpointing import Checkpointer, PreemptionGuard
from pnas_jax.errors import PnasError
from pnas_jax.file_io import read_json, write_json
from pnas_jax.train.metrics_log import METRICS_FILE, TENSORBOARD_DIR, MetricsLogger
from pnas_jax.train.monitor import LoopMonitor
from pnas_jax.workdir_lock import WorkdirLock

log = logging.getLogger(__name__)
S = TypeVar("S")

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
# Keys that say how this invocation runs, not what it computes: they may change on resume.
INVOCATION_KEYS = ("schedule.max_steps", "log.progress")


class RunStateError(PnasError):
  """The workdir holds a run that cannot be resumed as asked (another config, no checkpoint)."""


class Status(enum.Enum):
  """How a loop ended."""

  DONE = "done"  # the whole schedule ran
  STOPPED = "stopped"  # schedule.max_steps reached in this invocation; rerun to continue
  PREEMPTED = "preempted"  # SIGTERM / SIGINT: saved, rerun to continue


@dataclasses.dataclass(frozen=True)
class Outcome:
  """Where a loop stopped and why."""

  status: Status
  step: int  # steps done when the loop ended
  total_steps: int
  images: int  # images consumed in this invocation
  loop_s: float  # wall time of this invocation's loop
  signal_name: str | None = None

  @property
  def partial(self) -> bool:
    return self.status is not Status.DONE

  @property
  def images_per_s(self) -> float:
    return self.images / max(self.loop_s, 1e-9)

  def describe(self) -> str:
    if self.status is Status.DONE:
      return "done"
    where = f"step {self.step} of {self.total_steps}"
    if self.status is Status.STOPPED:
      return f"stopped at max_steps ({where}); rerun to continue"
    return f"interrupted by {self.signal_name} at {where}; checkpoint saved, rerun to continue"

  def exit_code(self) -> int:
    """0 for a finished or max_steps run; 128 + the signal number for an interrupted one."""
    if self.status is Status.PREEMPTED and self.signal_name:
      return 128 + int(signal.Signals[self.signal_name])
    return 0


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


_ABSENT = object()


def config_differences(old: dict[str, Any], new: dict[str, Any], unused: Sequence[str] = (),
                       defaults: dict[str, Any] | None = None) -> list[str]:
  """'key: old -> new' for every key whose value differs, invocation-only keys aside, and keys the
  run does not read (`unused`: a key, or a prefix ending in "." or "_").

  `defaults`: the base config of this kind of run. A key the old config lacks (added by a later
  version) is no difference when its new value is its default: options are added with a default
  that keeps the earlier behaviour, so the run can resume."""
  flat_old, flat_new = _flatten(old), _flatten(json.loads(json.dumps(new)))
  flat_default = _flatten(json.loads(json.dumps(defaults or {})))

  def skipped(key: str) -> bool:
    if key not in flat_old and flat_new.get(key) == flat_default.get(key, _ABSENT):
      return True
    return key in INVOCATION_KEYS or any(
        key == u or (u.endswith((".", "_")) and key.startswith(u)) for u in unused)

  keys = sorted(k for k in set(flat_old) | set(flat_new)
                if flat_old.get(k) != flat_new.get(k) and not skipped(k))
  return [f"{k}: {flat_old.get(k)!r} -> {flat_new.get(k)!r}" for k in keys]


class RunDir:
  """One run's workdir (see the module docstring); a context manager.

      with RunDir(workdir, kind="search") as run:    # the workdir lock, nothing else yet
        setup = ...                                   # check the config, build the parts
        run.open(config_dict, checkpoint_every=..., keep=..., tensorboard=...)   # resume-or-start

  Attributes (after open): checkpointer, logger, resume_step (None for a fresh run), resume_meta
  (the restored checkpoint's metadata).
  """

  def __init__(self, workdir: str, *, kind: str):
    self.workdir = os.path.abspath(workdir)
    self.kind = kind
    self.is_main = jax.process_index() == 0
    self.config_dict: dict[str, Any] = {}
    self.checkpointer: Checkpointer | None = None
    self.logger: MetricsLogger | None = None
    self.resume_step: int | None = None
    self.resume_meta: dict[str, Any] = {}
    self._lock: WorkdirLock | None = None
    self._unused: tuple[str, ...] = ()
    self._defaults: dict[str, Any] | None = None

  def __enter__(self) -> RunDir:
    os.makedirs(self.workdir, exist_ok=True)
    if self.is_main:  # one process per run takes the lock (the others share the filesystem)
      self._lock = WorkdirLock(self.workdir, f"{self.kind}: {' '.join(sys.argv)}").acquire()
    return self

  def open(self, config_dict: dict[str, Any], *, checkpoint_every: int, keep: int,
           tensorboard: bool, overwrite: bool = False, outputs: Sequence[str] = (),
           unused: Sequence[str] = (), defaults: dict[str, Any] | None = None) -> RunDir:
    """Resume-or-start: the checkpointer and the metrics log, after the checks of the module
    docstring; `outputs` are the run's own result files (refused without a checkpoint, deleted by
    `overwrite`); `unused`: config keys this run does not read, which may change on resume;
    `defaults`: the base config, whose values of keys newer than the run's config are no change
    (config_differences)."""
    self.config_dict, self._unused, self._defaults = config_dict, tuple(unused), defaults
    names = (CONFIG_FILE, METRICS_FILE, TENSORBOARD_DIR, CHECKPOINT_DIR, *outputs)
    if overwrite and self.is_main:
      self._remove(names)
    self.checkpointer = Checkpointer(os.path.join(self.workdir, CHECKPOINT_DIR), checkpoint_every,
                                     keep)
    self.resume_step = self.checkpointer.latest_step()
    if self.resume_step is not None:
      self._check_same_config()
    elif self.is_main:
      self._check_no_results(names)
      write_json(os.path.join(self.workdir, CONFIG_FILE), self.config_dict)
    self.logger = MetricsLogger(self.workdir, tensorboard=tensorboard, resume_step=self.resume_step,
                                enabled=self.is_main)
    return self

  def __exit__(self, *exc: object) -> None:
    try:
      if self.checkpointer is not None:
        self.checkpointer.close()
      if self.logger is not None:
        self.logger.close()
    finally:
      if self._lock is not None:
        self._lock.release()

  def restore_or(self, initial: S) -> S:
    """The state of the newest checkpoint (shaped like `initial`), or `initial` for a fresh run;
    the checkpoint's metadata goes to `resume_meta`."""
    if self.resume_step is None:
      return initial
    step, state, self.resume_meta = self.checkpointer.restore(initial)
    self.resume_step = step
    log.info("resuming %s from checkpoint %d in %s", self.kind, step, self.checkpointer.directory)
    return state

  def _check_same_config(self) -> None:
    path = os.path.join(self.workdir, CONFIG_FILE)
    if not os.path.exists(path):
      return
    diff = config_differences(read_json(path, RunStateError), self.config_dict, self._unused,
                              self._defaults)
    if diff:
      raise RunStateError(
          f"{self.workdir} holds a {self.kind} started with another config ({', '.join(diff[:8])}); "
          "resume with the same config, use a fresh --workdir, or pass --overwrite to start over")

  def _check_no_results(self, names: Sequence[str]) -> None:
    def present(name: str) -> bool:  # an empty folder (e.g. the checkpointer's own) is no result
      path = os.path.join(self.workdir, name)
      return os.path.isfile(path) or os.path.isdir(path) and bool(os.listdir(path))

    found = [name for name in names if present(name)]
    if found:
      raise RunStateError(
          f"{self.workdir} holds results of an earlier run ({', '.join(found)}) but no checkpoint to "
          f"resume from ({CHECKPOINT_DIR}/ is missing or empty); pass --overwrite to delete them and "
          "start over, or use another --workdir")

  def _remove(self, names: Sequence[str]) -> None:
    for name in names:
      path = os.path.join(self.workdir, name)
      if os.path.isdir(path):
        shutil.rmtree(path)
      elif os.path.exists(path):
        os.remove(path)


def final_state(workdir: str, like: S) -> tuple[int, S]:
  """(step, state) of the newest checkpoint of the run in `workdir`, shaped like `like` (to start
  another run from it, e.g. a sweep's target from its warm-up)."""
  ckpt = Checkpointer(os.path.join(workdir, CHECKPOINT_DIR), every_steps=0, keep=1)
  try:
    step, state, _ = ckpt.restore(like)
  finally:
    ckpt.close()
  return step, state


def run_loop(
    state: S,
    one_step: Callable[[S, int], tuple[S, int]],
    *,
    run: RunDir,
    total_steps: int,
    max_steps: int,
    monitor: LoopMonitor,
    save: Callable[[S, int, bool], None],
    start: int,
    hooks: Sequence[Callable[[S, int], None]] = (),
    log_every: int = 50,
) -> tuple[S, Outcome]:
  """Runs `one_step(state, step) -> (state, images)` for steps start .. end; see the module docstring.

  Args:
    run: the open RunDir (its checkpointer decides the periodic saves).
    total_steps: the schedule's length.
    max_steps: stop after this many steps in this invocation (0: run to the end).
    monitor: buffers and checks the steps' metrics (the loop flushes it every `log_every` steps).
    save: save(state, step, final) writes checkpoint `step` (e.g. monitor.save with the trees that
      must be finite); final is True once, at the end of a finished schedule.
    start: the steps the state has done (its step counter).
    hooks: called as hook(state, steps_done) after each step (per-epoch records, evaluation).
  """
  stop_at = min(total_steps, start + max_steps) if max_steps else total_steps
  images, t0 = 0, time.time()
  status, signal_name, done = Status.DONE, None, start
  with PreemptionGuard() as guard:
    try:
      for step in range(start, stop_at):
        state, n = one_step(state, step)
        images += n
        done = step + 1
        monitor.bar.advance(images / max(time.time() - t0, 1e-9))
        if done % log_every == 0:
          monitor.flush()
        for hook in hooks:
          hook(state, done)
        if guard.requested:
          status, signal_name = Status.PREEMPTED, guard.signal_name
          log.warning("%s received: saving checkpoint %d in %s and stopping", signal_name, done,
                      run.workdir)
          break
        if run.checkpointer.should_save(done) and done < total_steps:
          save(state, done, False)
      if status is Status.DONE and stop_at < total_steps:
        status = Status.STOPPED
      save(state, done, status is Status.DONE)
    finally:
      monitor.bar.close()
  return state, Outcome(status, done, total_steps, images, time.time() - t0, signal_name)
