"""Running a `pnas` subcommand in a child process.

Used where a job must not share this process: latency timing (its own XLA flags and a pinned
core, fixed at the child's start) and trainings run side by side (docs/design.md §2.15).
"""

from __future__ import annotations

import subprocess
import sys

from pnas_jax.errors import PnasError


def pnas_command(*args: str) -> list[str]:
  """The command line of `pnas ARGS` with this interpreter (and so this environment)."""
  return [sys.executable, "-m", "pnas_jax.cli", *args]


def run_pnas(*args: str) -> str:
  """Runs `pnas ARGS` in a child process and returns its stdout.

  A user error in the child (exit 2) raises PnasError with its one-line message; any other
  failure raises RuntimeError with the end of its stderr.
  """
  p = subprocess.run(pnas_command(*args), capture_output=True, text=True)
  if p.returncode == 2:  # a user error: the child's one-line message says what to fix
    raise PnasError(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"pnas {args[0]} failed")
  if p.returncode != 0:
    raise RuntimeError(f"pnas {' '.join(args[:2])} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
  return p.stdout
