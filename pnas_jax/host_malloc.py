"""The host allocator of every `pnas` process: tcmalloc where installed, else glibc with huge pages.

XLA:CPU gives each execution of a compiled program one buffer for all its temporaries, taken
with malloc and freed when the call returns (a Fashion-MNIST training step at batch 128: 260 MB).
glibc serves anything above its mmap threshold (at most 32 MiB) with a fresh mmap and returns it
with munmap, so every step faulted its whole temporary buffer in again and the kernel zeroed each
page. Measured on a 2-core AMD EPYC (JAX 0.10.2), the demo's largest hand-designed network: 41%
of the samples of `perf record` in the kernel (page faults, zeroing, unmapping), 21.5 s of system
time in a 30 s run; 128 ms per step.

Two remedies, the first found is used:
- tcmalloc (gperftools' libtcmalloc_minimal, Debian package libtcmalloc-minimal4, which `make
  setup` installs where apt-get can run) keeps freed spans for the next call: no faults at all.
  On a 2-core Intel Xeon (2026-12-06, experiments/bench_host_malloc.py), steps in a row:
  proxyless_mobile at batch 32, 128x128 0.313 s with 0.006 s of kernel CPU per step, against
  0.349 s / 0.119 s with glibc and huge pages and 0.427 s / 0.260 s with plain glibc; the demo's
  baseline net at batch 128 0.100 s / 0.008 s against 0.115 / 0.050 and 0.149 / 0.101 s. It is
  preloaded (LD_PRELOAD).
- glibc >= 2.35 with `glibc.malloc.hugetlb=1`: the buffers come in transparent huge pages
  (madvise, 2 MiB), 512 times fewer faults, but each is still zeroed at every step (the second
  figures above).

Both are read at process start, so an entry point (the `pnas` command, the experiments) re-executes
itself once with the setting added; child processes inherit it. `python -m pnas_jax.host_malloc
CMD ...` runs a command that way (`make test` runs pytest so). PNAS_HOST_MALLOC chooses: unset or
"auto" (tcmalloc, else huge pages), "hugepages" (glibc only), "off" (the process as started), or a
path to a malloc library to preload. Nothing happens where neither can help (no tcmalloc, another
libc or an older glibc, transparent huge pages "never") or the user already chose (an LD_PRELOAD
naming a malloc, a GLIBC_TUNABLES that sets glibc.malloc.hugetlb).
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping, Sequence

ENV_VAR = "PNAS_HOST_MALLOC"
TUNABLE_NAME = "glibc.malloc.hugetlb"
TUNABLE = f"{TUNABLE_NAME}=1"
MIN_GLIBC = (2, 35)
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
TCMALLOC_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64",
                "/usr/lib", "/usr/local/lib")
_MALLOC_LIBRARIES = ("tcmalloc", "jemalloc", "mimalloc")  # an LD_PRELOAD naming one: the user's
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


def find_tcmalloc(dirs: Sequence[str] = LIBRARY_DIRS) -> str | None:
  """The path of an installed tcmalloc shared library, or None."""
  for d in dirs:
    for name in TCMALLOC_NAMES:
      path = os.path.join(d, name)
      if os.path.isfile(path):
        return path
  return None


def _with_tunable(environ: Mapping[str, str]) -> dict[str, str] | None:
  tunables = environ.get("GLIBC_TUNABLES", "")
  if TUNABLE_NAME in tunables or not (glibc_has_tunable() and thp_available()):
    return None
  env = dict(environ)
  env["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
  return env


def _preloaded(environ: Mapping[str, str]) -> list[str]:
  return [p for p in environ.get("LD_PRELOAD", "").replace(" ", ":").split(":") if p]


def _with_preload(environ: Mapping[str, str], library: str) -> dict[str, str] | None:
  preload = _preloaded(environ)
  if library in preload:
    return None  # this re-execution's own setting: done
  env = dict(environ)
  env["LD_PRELOAD"] = ":".join([library, *preload])
  return env


def host_malloc_environment(environ: Mapping[str, str]) -> dict[str, str] | None:
  """`environ` with the allocator setting added, or None where nothing is to be done (see the
  module docstring: PNAS_HOST_MALLOC, the user's own LD_PRELOAD or GLIBC_TUNABLES, the platform).

  Raises FileNotFoundError where PNAS_HOST_MALLOC names a library file that does not exist.
  """
  choice = environ.get(ENV_VAR, "auto").strip()
  if choice.lower() in _OFF:
    return None
  if choice.lower() in ("", "auto", "hugepages"):
    if any(name in os.path.basename(p) for p in _preloaded(environ) for name in _MALLOC_LIBRARIES):
      return None  # a malloc already preloaded (by the user, or by this re-execution)
    library = find_tcmalloc() if choice.lower() != "hugepages" else None
    return _with_preload(environ, library) if library else _with_tunable(environ)
  if not os.path.isfile(choice):
    raise FileNotFoundError(
        f"{ENV_VAR}={choice!r}: no such file; set it to auto, hugepages, off or the path of a "
        "malloc library (e.g. /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4)")
  return _with_preload(environ, choice)


def environment_choosing(environ: Mapping[str, str], choice: str) -> dict[str, str]:
  """`environ` without the allocator settings it carries (LD_PRELOAD, GLIBC_TUNABLES) and with
  PNAS_HOST_MALLOC=`choice`: a child process started with it re-executes itself with the
  allocator `choice` picks, not the one this process inherited (benchmarks comparing them)."""
  env = {k: v for k, v in environ.items() if k not in ("LD_PRELOAD", "GLIBC_TUNABLES")}
  env[ENV_VAR] = choice
  return env


def reexec_with_host_malloc() -> None:
  """Re-executes this process (same interpreter, same command line) with the allocator setting,
  once; returns where nothing is to be done. Call it first in an entry point, before any work."""
  env = host_malloc_environment(os.environ)
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, env)


def main(argv: Sequence[str] | None = None) -> None:
  """`python -m pnas_jax.host_malloc CMD [ARGS...]`: runs CMD (looked up on PATH) with the
  allocator setting in its environment."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv:
    raise SystemExit("usage: python -m pnas_jax.host_malloc CMD [ARGS...]")
  env = host_malloc_environment(os.environ) or dict(os.environ)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execvpe(argv[0], argv, env)


if __name__ == "__main__":
  main()
