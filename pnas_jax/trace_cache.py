"""A cache of JAX's traces of the supernet steps, beside the persistent compilation cache.

JAX's persistent cache (compile_cache.py) keeps compiled programs, but every new process still
traces and lowers each step before it can look one up: for the ImageNet-space weight step on 2 CPU
cores, 6-7 s of a 16 s warm start, most of it JAX linearising the blocks' `lax.switch`. This cache
keeps the trace itself: the first process exports the step (`jax.export`, serialized StableHLO
over the flattened arguments), later ones deserialize it, lower it (well under a second) and load
the compiled program from the persistent cache.

A stale trace would silently run another program, so the key covers everything a step's trace
depends on, and any change of it is a miss:
- the code: every source file of the package and the native kernel library (their bytes);
- the versions of jax, jaxlib, flax and optax, and the JAX flags that change a trace (x64,
  default matmul precision, rank promotion);
- the caller's fingerprint: what the step closes over (for a search: its whole resolved config,
  the data set's size and normalisation, the latency model's numbers, the depthwise and BN kernels in
  use; train/search.py `step_fingerprint`);
- the arguments: tree structure, shapes, dtypes and shardings; the devices (platform, kind, count).

Files live in <compilation cache>/traces/ (PNAS_TRACE_CACHE=off turns this cache off; it is also
off when the compilation cache is, and in multi-process runs). Deleting them is always safe; a file
that cannot be read is traced again. The folder is kept under MAX_BYTES: after each new trace is
written, the least recently used ones (a hit touches its file) are deleted until it fits (an
ImageNet-space step is ~1.5 MB, a Fashion-MNIST one ~0.3 MB).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import pathlib
import pickle
from collections.abc import Callable, Sequence
from typing import Any

import jax

from pnas_jax.compile_cache import default_cache_dir
from pnas_jax.file_io import write_bytes_atomic

log = logging.getLogger(__name__)
ENV_VAR = "PNAS_TRACE_CACHE"
_OFF = ("0", "off", "none", "false")
_PACKAGE_DIR = pathlib.Path(__file__).resolve().parent
_FLAGS = ("jax_enable_x64", "jax_default_matmul_precision", "jax_numpy_rank_promotion")
_PACKAGES = ("jax", "jaxlib", "flax", "optax")
_SUFFIX = ".jaxexport"
MAX_BYTES = 256 * 2**20  # the traces folder's size cap


def trace_cache_dir() -> str | None:
  """<the compilation cache>/traces, or None when either cache is off or the run is multi-process."""
  if os.environ.get(ENV_VAR, "").strip().lower() in _OFF or jax.process_count() > 1:
    return None
  folder = jax.config.jax_compilation_cache_dir or default_cache_dir()
  return None if not folder else os.path.join(folder, "traces")


@functools.cache
def code_fingerprint() -> str:
  """sha256 over the package's source files and native kernel sources and libraries."""
  h = hashlib.sha256()
  for path in sorted(p for p in _PACKAGE_DIR.rglob("*")
                     if p.is_file() and p.suffix in (".py", ".cc", ".h", ".so")):
    h.update(str(path.relative_to(_PACKAGE_DIR)).encode())
    h.update(path.read_bytes())
  for name in _PACKAGES:
    h.update(f"{name}={importlib.metadata.version(name)}".encode())
  return h.hexdigest()


def _arguments(leaves: Sequence[Any], in_tree: Any) -> list[Any]:
  """What the trace depends on about the arguments and the devices."""
  def one(x):
    sharding = getattr(x, "sharding", None)
    return [str(getattr(x, "shape", None)), str(getattr(x, "dtype", type(x).__name__)),
            str(sharding) if sharding is not None else None]

  devices = jax.devices()
  return [str(in_tree), [one(x) for x in leaves],
          [devices[0].platform, devices[0].device_kind, len(devices)],
          {f: str(getattr(jax.config, f)) for f in _FLAGS}]


def prune(folder: str, max_bytes: int, keep: str | None = None) -> list[str]:
  """Deletes the least recently used traces in `folder` (oldest modification time first; a hit
  touches its file) until the traces there take at most `max_bytes`; never `keep`. Returns the
  deleted paths (files another process removed first are skipped)."""
  entries = []
  with os.scandir(folder) as it:
    for e in it:
      if e.name.endswith(_SUFFIX) and e.is_file():
        st = e.stat()
        entries.append((st.st_mtime, st.st_size, e.path))
  total, deleted = sum(size for _, size, _ in entries), []
  for _, size, path in sorted(entries):
    if total <= max_bytes:
      break
    if path == keep:
      continue
    try:
      os.remove(path)
    except OSError:
      continue
    total -= size
    deleted.append(path)
  return deleted


def cache_key(name: str, fingerprint: Any, leaves: Sequence[Any], in_tree: Any) -> str:
  """The file key of one step's trace: see the module docstring."""
  text = json.dumps([name, code_fingerprint(), fingerprint, _arguments(leaves, in_tree)],
                    sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:32]


class CachedTrace:
  """A step `fn(*args) -> outputs` run from its cached trace (exported on the first miss).

  fn: the step, jit-able (e.g. a jit(shard_map(...)) from train/parallel.py); the first
    `donate` positional arguments are donated, as the step's own jit does.
  fingerprint: JSON-able, everything `fn` closes over that can change its trace.
  disabled_checks: jax.export safety checks to skip (our native kernels' custom calls).
  """

  def __init__(self, fn: Callable[..., Any], name: str, fingerprint: Any, folder: str, *,
               donate: int = 1, disabled_checks: Sequence[Any] = ()):
    self._fn, self.name, self._fingerprint, self._folder = fn, name, fingerprint, folder
    self._donate, self._checks = donate, tuple(disabled_checks)
    self._jitted: Any = None  # jit(exported.call) over the flattened arguments
    self._trees: tuple[Any, Any] = (None, None)  # (in_tree, out_tree)
    self.hit: bool | None = None  # after the first call: whether the trace came from the cache

  def __call__(self, *args: Any) -> Any:
    flat = self._flat(args)  # first: it traces or loads the step on the first call
    return jax.tree.unflatten(self._trees[1], self._jitted(*flat))

  def lower(self, *args: Any) -> jax.stages.Lowered:
    """The exported (or cached) step lowered for `args`: `.compile()` it to time the compile."""
    flat = self._flat(args)
    return self._jitted.lower(*flat)

  def _flat(self, args: tuple[Any, ...]) -> list[Any]:
    if self._jitted is None:
      self._prepare(args)
    flat, tree = jax.tree.flatten(args)
    if tree != self._trees[0]:
      raise ValueError(f"{self.name}: called with another argument structure than it was traced for")
    return flat

  def _prepare(self, args: tuple[Any, ...]) -> None:
    leaves, in_tree = jax.tree.flatten(args)
    key = cache_key(self.name, self._fingerprint, leaves, in_tree)
    path = os.path.join(self._folder, f"{self.name}-{key}{_SUFFIX}")
    exported, out_tree = self._load(path)
    self.hit = exported is not None
    n_donated = len(jax.tree.leaves(args[:self._donate]))
    if exported is None:
      exported, out_tree = self._export(leaves, in_tree, path, n_donated)
    self._jitted = jax.jit(exported.call, donate_argnums=tuple(range(n_donated)))
    self._trees = (in_tree, out_tree)

  def _load(self, path: str) -> tuple[Any, Any]:
    if not os.path.exists(path):
      return None, None
    try:
      with open(path, "rb") as f:
        blob, out_tree = pickle.load(f)  # noqa: S301 -- our own cache folder
      exported = jax.export.deserialize(bytearray(blob))
    except Exception as e:  # noqa: BLE001 -- any unreadable entry is traced again
      log.warning("trace cache: %s unreadable (%s); tracing again", path, e)
      return None, None
    with contextlib.suppress(OSError):
      os.utime(path)  # recently used: the last to be pruned
    return exported, out_tree

  def _export(self, leaves: list[Any], in_tree: Any, path: str, n_donated: int
              ) -> tuple[Any, Any]:
    out_tree: list[Any] = []

    def flat_fn(*flat):
      out, tree = jax.tree.flatten(self._fn(*jax.tree.unflatten(in_tree, flat)))
      out_tree.append(tree)
      return out

    exported = jax.export.export(jax.jit(flat_fn, donate_argnums=tuple(range(n_donated))),
                                 disabled_checks=list(self._checks))(*leaves)
    try:
      os.makedirs(self._folder, exist_ok=True)
      write_bytes_atomic(path, pickle.dumps((bytes(exported.serialize()), out_tree[-1])))
      prune(self._folder, MAX_BYTES, keep=path)
    except (OSError, pickle.PicklingError, TypeError) as e:
      log.warning("trace cache: could not write %s (%s)", path, e)
    return exported, out_tree[-1]


def cached_trace(fn: Callable[..., Any], name: str, fingerprint: Any, *, donate: int = 1,
                 disabled_checks: Sequence[Any] = ()) -> Callable[..., Any]:
  """`fn` through the trace cache, or `fn` itself where the cache is off (trace_cache_dir)."""
  folder = trace_cache_dir()
  if folder is None:
    return fn
  return CachedTrace(fn, name, fingerprint, folder, donate=donate, disabled_checks=disabled_checks)
