"""The native CPU kernels (native/*.cc): built once per machine, loaded per process.

Two kernel families run as XLA FFI custom calls (one call per op and gradient):
- depthwise convolution (native/depthwise_cpu.cc). XLA:CPU compiles the depthwise convolution and
  its gradients, written as shifted multiply-adds, into many loop fusions (about one per kernel
  tap), which are slow in the kernel gradient and make the compiled supernet large. The C++ loops
  hold blocks of 16 channels in SIMD registers while the k*k taps are summed.
- training-mode BatchNorm with an optional fused ReLU6 (native/batchnorm_cpu.cc): two passes over
  the data per call where XLA:CPU makes four to six (layers/batchnorm.py).
Both split rows over XLA's intra-op thread pool (native/parallel.h).

The library is compiled with the system C++ compiler ($CXX, else g++ or c++) at the first use on a
machine, into $XDG_CACHE_HOME/pnas_jax/native/KEY/ (default ~/.cache/...; KEY hashes the sources,
the flags, the compiler and jaxlib's version, so a change of any rebuilds it), then loaded with
ctypes and registered with jax.ffi in every process. PNAS_NATIVE=off skips it. Where no compiler
is found or the build fails, `available()` is False, `why_unavailable()` says why, and the layers'
"auto" falls back to their pure-XLA implementations.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from typing import Any

import jax
import jaxlib

ENV_VAR = "PNAS_NATIVE"
SOURCE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native")
LIBRARY = "libpnas_native.so"
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno")
TARGETS = {  # FFI target name -> exported handler symbol
    "pnas_depthwise_forward": "PnasDepthwiseForward",
    "pnas_depthwise_input_grad": "PnasDepthwiseInputGrad",
    "pnas_depthwise_kernel_grad": "PnasDepthwiseKernelGrad",
    "pnas_batch_norm_forward": "PnasBatchNormForward",
    "pnas_batch_norm_backward": "PnasBatchNormBackward",
}
_OFF = ("0", "off", "false", "no", "none")
_why: list[str] = []


def _compiler() -> str | None:
  for name in (os.environ.get("CXX"), "g++", "c++"):
    path = shutil.which(name) if name else None
    if path:
      return path
  return None


def _cache_root() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "pnas_jax", "native")


def _source_files(suffixes: tuple[str, ...]) -> list[str]:
  """The files of SOURCE_DIR with these suffixes, sorted: every .cc is compiled into the library,
  and the build key hashes the .h files beside them too."""
  return sorted(os.path.join(SOURCE_DIR, n) for n in os.listdir(SOURCE_DIR) if n.endswith(suffixes))


def _build_key(cxx: str) -> str:
  """Hash of everything the binary depends on: sources, flags, compiler version, jaxlib version."""
  version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False).stdout
  h = hashlib.sha256()
  for path in _source_files((".cc", ".h")):
    with open(path, "rb") as f:
      h.update(f.read())
  for part in (" ".join(FLAGS).encode(), version.encode(),
               jaxlib.__version__.encode(), os.uname().machine.encode()):
    h.update(part)
  return h.hexdigest()[:16]


def build(cxx: str) -> str:
  """Compiles the library unless this machine's cache holds it; returns its path.

  Raises RuntimeError with the compiler's message when the build fails.
  """
  out_dir = os.path.join(_cache_root(), _build_key(cxx))
  lib = os.path.join(out_dir, LIBRARY)
  if os.path.exists(lib):
    return lib
  os.makedirs(out_dir, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)  # concurrent builds: the last rename wins
  os.close(fd)
  cmd = [cxx, *FLAGS, "-isystem", jax.ffi.include_dir(), *_source_files((".cc",)), "-o", tmp]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
  if proc.returncode != 0:
    with contextlib.suppress(FileNotFoundError):  # compilers delete their output on failure
      os.unlink(tmp)
    raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
  os.replace(tmp, lib)
  return lib


@functools.cache
def available() -> bool:
  """Whether the native kernels are registered in this process (built first if needed)."""
  if os.environ.get(ENV_VAR, "").strip().lower() in _OFF:
    _why.append(f"{ENV_VAR}={os.environ[ENV_VAR]}")
    return False
  cxx = _compiler()
  try:
    if cxx is None:
      raise RuntimeError("no C++ compiler found ($CXX, g++, c++); install one, e.g. "
                         "'apt-get install g++'")
    lib = ctypes.cdll.LoadLibrary(build(cxx))
  except (OSError, RuntimeError, subprocess.SubprocessError) as e:
    _why.append(f"the native CPU kernels are unavailable: {e}")
    warnings.warn(f"pnas_jax: {_why[-1]}; using the pure-XLA depthwise and BatchNorm (slower)",
                  stacklevel=2)
    return False
  for target, symbol in TARGETS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  return True


def export_checks() -> list[Any]:
  """jax.export's custom-call safety checks to skip for these kernels (not among jax.export's
  stable targets; our trace cache reloads exports only in the build that made them).

  On CPU, also registers the kernels (available()): a trace loaded from the cache calls them
  without tracing the layers that would have. Other backends never build them.
  """
  if jax.default_backend() == "cpu":
    available()
  return [jax.export.DisabledSafetyCheck.custom_call(t) for t in TARGETS]


def why_unavailable() -> str:
  """Why available() is False ('' when it is True or was not asked yet)."""
  return _why[-1] if _why else ""
