"""Loading ml_collections config files the way absl's config_flags does, from any entry point.

`load_config("configs/search/tiny.py:arg", ["--config.seed=3"])` imports the file, calls
`get_config(arg)` (or `get_config()`), locks the ConfigDict (so a mistyped `--config.x=` override
fails naming the key instead of silently adding it) and applies the overrides, exactly as
`config_flags.DEFINE_config_file(lock_config=True)` does for an absl program.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from pnas_jax.errors import UserValueError


class ConfigError(UserValueError):
  """A config file that cannot be loaded or an override that does not apply."""


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Loads `path.py[:arg]` and applies `--config.key=value` overrides (locked ConfigDict)."""
  bad = [o for o in overrides if not o.startswith("--config.")]
  if bad:
    raise ConfigError(f"overrides must look like --config.key=value, got {bad}")
  path = spec.split(":", 1)[0]
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} does not exist (expected e.g. configs/search/tiny.py)")
  base = _parse(spec, [])
  fields = _leaf_keys(base)
  for o in overrides:
    key = o[len("--config."):].split("=", 1)[0]
    if key not in fields and not any(f.startswith(key + ".") for f in fields):
      raise ConfigError(
          f"config {spec!r} has no field {key!r} (from {o!r}); its fields: {', '.join(fields)}"
      )
  return _parse(spec, overrides) if overrides else base


def _parse(spec: str, overrides: Sequence[str]) -> ml_collections.ConfigDict:
  argv = ["pnas", f"--config={spec}", *overrides]
  fv = flags.FlagValues()
  # config_flags registers one flag per override it finds in sys_argv at definition time.
  config_flags.DEFINE_config_file(
      "config", default=None, flag_values=fv, lock_config=True, sys_argv=argv
  )
  try:
    fv(argv)
  except flags.Error as e:
    raise ConfigError(f"config {spec!r}: {e}") from None
  config = fv.config
  if config is None:
    raise ConfigError(f"config {spec!r}: get_config() returned None")
  return config


def _leaf_keys(config: ml_collections.ConfigDict | None, prefix: str = "") -> list[str]:
  if config is None:
    return []
  keys = []
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      keys.extend(_leaf_keys(v, f"{prefix}{k}."))
    else:
      keys.append(f"{prefix}{k}")
  return keys


def split_config_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
  """Separates `--config.x=y` overrides from other arguments (for argparse front ends)."""
  overrides = [a for a in argv if a.startswith("--config.")]
  rest = [a for a in argv if not a.startswith("--config.")]
  return rest, overrides


class OverrideParser(argparse.ArgumentParser):
  """An argparse parser that collects `--config.key=value` overrides (applied by load_config) into
  `args.config_overrides` before argparse sees the other arguments."""

  def parse_known_args(self, args=None, namespace=None):
    rest, overrides = split_config_args(list(sys.argv[1:] if args is None else args))
    ns, extra = super().parse_known_args(rest, namespace)
    ns.config_overrides = list(getattr(ns, "config_overrides", []) or []) + overrides
    return ns, extra


def leaf_keys(config: ml_collections.ConfigDict) -> list[str]:
  """Every leaf key of a config, dotted ("data.batch_size")."""
  return _leaf_keys(config)


class ReadTracker:
  """A read-only view of a ConfigDict that records which leaf keys the code reads.

  Used by the config tests: every key a config file sets must be read by the code that consumes
  it (a key nobody reads is a silent no-op for the user). Reading a sub-config through `to_dict()`
  counts as reading all of its leaves.
  """

  def __init__(self, config: ml_collections.ConfigDict, prefix: str = "",
               read: set[str] | None = None):
    object.__setattr__(self, "_config", config)
    object.__setattr__(self, "_prefix", prefix)
    object.__setattr__(self, "_read", set() if read is None else read)

  def _wrap(self, name: str, value):
    path = f"{self._prefix}{name}"
    if isinstance(value, ml_collections.ConfigDict):
      return ReadTracker(value, path + ".", self._read)
    self._read.add(path)
    return value

  def __getattr__(self, name: str):
    return self._wrap(name, getattr(self._config, name))

  def __getitem__(self, name: str):
    return self._wrap(name, self._config[name])

  def __setattr__(self, name: str, value) -> None:
    raise AttributeError("ReadTracker is read-only")

  def get(self, name: str, default=None):
    return self._wrap(name, self._config[name]) if name in self._config else default

  def __contains__(self, name: str) -> bool:
    return name in self._config

  def to_dict(self) -> dict:
    for k in _leaf_keys(self._config):
      self._read.add(f"{self._prefix}{k}")
    return self._config.to_dict()

  def unread(self) -> list[str]:
    """Leaf keys (under this view) never read."""
    return [f"{self._prefix}{k}" for k in _leaf_keys(self._config)
            if f"{self._prefix}{k}" not in self._read]


def plain_dict(config) -> dict:
  """config.to_dict() without marking a ReadTracker's keys as read (for saving the config)."""
  inner = config._config if isinstance(config, ReadTracker) else config
  return inner.to_dict()
