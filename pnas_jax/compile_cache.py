"""JAX's persistent compilation cache, on by default for every `pnas` command.

A compiled program is stored on disk keyed by its HLO, the backend and the flags, so a resumed
run, each process of the demo and each target of a sweep load the supernet steps instead of
compiling them again. The cache lives in $PNAS_COMPILATION_CACHE, else
$XDG_CACHE_HOME/pnas_jax/jax (default ~/.cache/pnas_jax/jax); PNAS_COMPILATION_CACHE=off turns it
off. Deleting the folder is always safe.
"""

from __future__ import annotations

import os

import jax

ENV_VAR = "PNAS_COMPILATION_CACHE"
_OFF = ("", "0", "off", "none", "false")


def default_cache_dir() -> str | None:
  """The cache folder from the environment (see the module docstring); None when turned off."""
  value = os.environ.get(ENV_VAR)
  if value is not None:
    return None if value.strip().lower() in _OFF else os.path.abspath(os.path.expanduser(value))
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "pnas_jax", "jax")


def enable_compilation_cache(path: str | None = None, min_compile_s: float = 0.5) -> str | None:
  """Points JAX's persistent cache at `path` (None: default_cache_dir()); returns the folder used.

  Programs that compile in under `min_compile_s` seconds are not stored (not worth a disk read).
  """
  path = path or default_cache_dir()
  if path is None:
    return None
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_s)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path
