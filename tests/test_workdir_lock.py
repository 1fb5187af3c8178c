"""WorkdirLock: a second run on a busy workdir refuses naming the holder; the lock is free once the
holder exits; a lock left by a killed process is taken over with a warning naming its pid."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from pnas_jax.errors import PnasError
from pnas_jax.workdir_lock import WorkdirBusyError, WorkdirLock, read_lock_record

HOLDER = textwrap.dedent("""
    import sys
    from pnas_jax.workdir_lock import WorkdirLock
    with WorkdirLock(sys.argv[1], "pnas search --config tiny.py"):
      print("locked", flush=True)
      sys.stdin.read()  # hold until the test closes stdin (or kills us)
""")


def _holder(workdir) -> subprocess.Popen:
  p = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir)], stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE, text=True)
  assert p.stdout.readline().strip() == "locked"
  return p


def test_second_run_refuses_then_lock_is_free_after_exit(tmp_path):
  p = _holder(tmp_path)
  try:
    with pytest.raises(WorkdirBusyError) as e:
      WorkdirLock(tmp_path, "pnas search (second)").acquire()
    msg = str(e.value)
    assert f"pid {p.pid}" in msg and "pnas search --config tiny.py" in msg and "since 20" in msg
    assert "another --workdir" in msg and isinstance(e.value, PnasError)
  finally:
    p.stdin.close()
    assert p.wait(timeout=60) == 0
  assert read_lock_record(tmp_path) is None  # released cleanly: no record left
  with WorkdirLock(tmp_path, "pnas search (second)") as lock:
    assert lock.held and lock.stale is None
    assert read_lock_record(tmp_path)["command"] == "pnas search (second)"
  assert not lock.held and read_lock_record(tmp_path) is None


def test_lock_of_killed_process_is_taken_over(tmp_path, caplog):
  p = _holder(tmp_path)
  p.kill()  # kill -9: no cleanup, the record stays, the OS drops the flock
  p.wait(timeout=60)
  assert read_lock_record(tmp_path)["pid"] == p.pid
  with WorkdirLock(tmp_path, "pnas search (resumed)") as lock:
    assert lock.stale["pid"] == p.pid
  assert f"stale lock of pid {p.pid}" in caplog.text and "no longer running" in caplog.text


def test_two_locks_in_one_process_conflict(tmp_path):
  first = WorkdirLock(tmp_path / "w", "first").acquire()
  with pytest.raises(WorkdirBusyError, match="running 'first'"):
    WorkdirLock(tmp_path / "w", "second").acquire()
  first.release()
  with WorkdirLock(tmp_path / "w", "second"):
    pass
  record = json.loads((tmp_path / "w" / ".lock").read_text() or "null")
  assert record is None


def test_unwritable_workdir_is_a_user_error(tmp_path):
  from pnas_jax.errors import UserFileError

  (tmp_path / "file").write_text("")
  with pytest.raises(UserFileError, match="cannot create the workdir lock"):
    WorkdirLock(tmp_path / "file" / "w", "x").acquire()  # a workdir under a regular file
