"""Transparent huge pages for the host allocator: every `pnas` process runs with glibc's
`glibc.malloc.hugetlb=1` tunable.

XLA:CPU gives each execution of a compiled program one buffer for all its temporaries, taken
with malloc and freed when the call returns (a Fashion-MNIST training step at batch 128: 260 MB).
glibc serves anything above its mmap threshold (at most 32 MiB) with a fresh mmap and returns it
with munmap, so every step faulted its whole temporary buffer in again, one 4 KiB page at a time,
and the kernel zeroed each page. Measured on a 2-core AMD EPYC (JAX 0.10.2), the demo's largest
hand-designed network: 41% of the samples of `perf record` in the kernel (page faults, zeroing,
unmapping), 21.5 s of system time in a 30 s run; 128 ms per step. With the tunable glibc asks for
transparent huge pages (madvise, 2 MiB), 512 times fewer faults: 76 ms per step, 5.1 s of system
time. Single calls at batch 16 (the latency device) moved by about 1% either way.

glibc reads GLIBC_TUNABLES once, at process start, so an entry point (the `pnas` command, the
experiments) re-executes itself once with the tunable added; child processes inherit it.
PNAS_HUGEPAGES=off keeps the process as started. Nothing happens where it cannot help: another
libc, glibc older than 2.35 (no such tunable), transparent huge pages set to "never", or
GLIBC_TUNABLES that already says glibc.malloc.hugetlb.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

ENV_VAR = "PNAS_HUGEPAGES"
TUNABLE_NAME = "glibc.malloc.hugetlb"
TUNABLE = f"{TUNABLE_NAME}=1"
MIN_GLIBC = (2, 35)
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
_OFF = ("0", "off", "no", "false", "none")


def glibc_has_tunable() -> bool:
  """This process runs on glibc >= 2.35 (which knows glibc.malloc.hugetlb)."""
  lib, version = platform.libc_ver()
  if lib != "glibc" or not version:
    return False
  return tuple(int(p) for p in version.split(".")[:2] if p.isdigit()) >= MIN_GLIBC


def thp_available(path: str = THP_SETTING) -> bool:
  """The kernel's transparent huge pages are "always" or "madvise" (not "never", not absent)."""
  try:
    with open(path) as f:
      return "[never]" not in f.read()
  except OSError:
    return False


def hugepage_environment(environ: Mapping[str, str]) -> dict[str, str] | None:
  """`environ` with the tunable added to GLIBC_TUNABLES, or None where nothing is to be done
  (turned off with PNAS_HUGEPAGES, already set, or unsupported here)."""
  if environ.get(ENV_VAR, "").strip().lower() in _OFF:
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  if TUNABLE_NAME in tunables or not (glibc_has_tunable() and thp_available()):
    return None
  env = dict(environ)
  env["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
  return env


def reexec_with_hugepages() -> None:
  """Re-executes this process (same interpreter, same command line) with the tunable, once; returns
  where nothing is to be done. Call it first in an entry point, before any work."""
  env = hugepage_environment(os.environ)
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, env)
