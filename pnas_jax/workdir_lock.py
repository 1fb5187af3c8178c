"""One run per workdir: an exclusive lock on WORKDIR/.lock held for the whole run.

    with WorkdirLock(workdir, "pnas search --config configs/search/tiny.py"):
      ...  # checkpoints, metrics.jsonl, arch.json: nobody else writes them meanwhile

The lock is an `fcntl.flock` on WORKDIR/.lock, which also records who holds it (pid, host, command,
start time, as one JSON line). A second run on the same workdir fails at once with a
`WorkdirBusyError` naming the holder and the fix, instead of interleaving its checkpoints and metrics
with the first. The operating system releases a flock when its process dies, so a run killed with
`kill -9` never blocks the next one: the next run finds the lock free but the dead run's record still
in the file, logs a warning naming that pid, and takes the lock over. On a normal exit (an exception
included) the record is cleared and the lock released. The file itself is never deleted: deleting it
while another process has it open would let two runs lock two different files.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import socket
from typing import Any

from pnas_jax.errors import PnasError, UserFileError

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class WorkdirBusyError(PnasError, RuntimeError):
  """Another live process holds the workdir's lock."""


def _read_record(f) -> dict[str, Any] | None:
  f.seek(0)
  text = f.read().strip()
  if not text:
    return None
  try:
    record = json.loads(text)
  except json.JSONDecodeError:
    return {"raw": text[:200]}
  return record if isinstance(record, dict) else {"raw": text[:200]}


def _describe(record: dict[str, Any] | None) -> str:
  if not record:
    return "an unknown process (no record in the lock file)"
  if "raw" in record:
    return f"an unknown process (lock file content {record['raw']!r})"
  return (f"pid {record.get('pid')} on {record.get('host')} running {record.get('command')!r} "
          f"since {record.get('started')}")


def _pid_alive(pid: Any) -> bool:
  if not isinstance(pid, int) or pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by another user
    return True
  return True


def read_lock_record(workdir: str | os.PathLike) -> dict[str, Any] | None:
  """The holder recorded in WORKDIR/.lock (None: never locked or released cleanly)."""
  path = os.path.join(os.fspath(workdir), LOCK_FILE)
  try:
    with open(path) as f:
      return _read_record(f)
  except FileNotFoundError:
    return None


class WorkdirLock:
  """Context manager holding WORKDIR/.lock exclusively; see the module docstring.

  Args:
    workdir: the run's folder (created if missing).
    command: what the run is, recorded for whoever finds the workdir busy (e.g. the command line).
  """

  def __init__(self, workdir: str | os.PathLike, command: str):
    self.workdir = os.path.abspath(os.fspath(workdir))
    self.path = os.path.join(self.workdir, LOCK_FILE)
    self.command = command
    self.stale: dict[str, Any] | None = None  # the dead holder's record when one was taken over
    self._file = None

  def acquire(self) -> WorkdirLock:
    try:
      os.makedirs(self.workdir, exist_ok=True)
      f = open(self.path, "a+")  # noqa: SIM115 (held open until release)
    except OSError as e:
      raise UserFileError(f"{self.path}: cannot create the workdir lock ({e.strerror or e}); "
                          "give a --workdir this user can write to") from None
    try:
      fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = _read_record(f)
      f.close()
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise
      raise WorkdirBusyError(
          f"workdir {self.workdir} is in use by {_describe(holder)} (lock file {self.path}). Wait "
          "for that run to finish, stop it (it saves a checkpoint on SIGTERM and this command "
          "resumes from it), or give this run another --workdir."
      ) from None
    previous = _read_record(f)
    if previous:
      self.stale = previous
      state = ("is still running but does not hold the lock (was its pid reused?)"
               if previous.get("host") == socket.gethostname() and _pid_alive(previous.get("pid"))
               else "is no longer running (killed or crashed)")
      log.warning("workdir %s: taking over the stale lock of %s, which %s", self.workdir,
                  _describe(previous), state)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
              "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    f.seek(0)
    f.truncate()
    f.write(json.dumps(record) + "\n")
    f.flush()
    self._file = f
    return self

  def release(self) -> None:
    """Clears the record and releases the lock (idempotent)."""
    f, self._file = self._file, None
    if f is None:
      return
    try:
      f.seek(0)
      f.truncate()
      f.flush()
    finally:
      fcntl.flock(f.fileno(), fcntl.LOCK_UN)
      f.close()

  @property
  def held(self) -> bool:
    return self._file is not None

  def __enter__(self) -> WorkdirLock:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
