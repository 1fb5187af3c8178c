"""Loading ml_collections config files the way absl's config_flags does, from any entry point.

`load_config("configs/search/tiny.py:arg", ["--config.seed=3"])` imports the file, calls
`get_config(arg)` (or `get_config()`), locks the ConfigDict (so a mistyped `--config.x=` override
fails naming the key instead of silently adding it) and applies the overrides, exactly as
`config_flags.DEFINE_config_file(lock_config=True)` does for an absl program.

Then every numeric value is checked against its valid range (`Range`), declared beside the schema
that sets its default (`RANGES` and `check` in pnas_jax/train/search_config.py, train_config.py and
pnas_jax/latency/config.py); the schema is recognised by its keys. A value out of range fails here,
naming the key, the value and the range, so `--dry-run` and the run itself refuse the same configs.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from pnas_jax.errors import UserValueError
from pnas_jax.file_io import read_text


class ConfigError(UserValueError):
  """A config file that cannot be loaded, an override that does not apply, or a value out of range."""


@dataclasses.dataclass(frozen=True)
class Range:
  """The valid values of one numeric config key: [low, high] (open ends with low_open/high_open),
  finite, an int when `integer`, None allowed when `optional`; `note` says what a special value
  means (e.g. "0: the whole split")."""

  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False
  integer: bool = False
  optional: bool = False
  note: str = ""

  def describe(self) -> str:
    kind = "an integer" if self.integer else "a number"
    lo = None if self.low is None else f"{self.low:g}"
    hi = None if self.high is None else f"{self.high:g}"
    if lo is not None and hi is not None:
      text = (f"{kind} equal to {lo}" if self.low == self.high else
              f"{kind} in {'(' if self.low_open else '['}{lo}, {hi}{')' if self.high_open else ']'}")
    elif lo is not None:
      text = f"{kind} {'>' if self.low_open else '>='} {lo}"
    elif hi is not None:
      text = f"{kind} {'<' if self.high_open else '<='} {hi}"
    else:
      text = f"a finite {'integer' if self.integer else 'number'}"
    if self.optional:
      text += " or None"
    return text + (f" ({self.note})" if self.note else "")

  def allows(self, value: Any) -> bool:
    if value is None:
      return self.optional
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      return False
    if self.integer and not isinstance(value, int):
      return False
    if not math.isfinite(value):
      return False
    if self.low is not None and not (value > self.low if self.low_open else value >= self.low):
      return False
    return self.high is None or (value < self.high if self.high_open else value <= self.high)


# Shorthands for the schemas' RANGES.
INT_GE0 = Range(0, integer=True)
INT_GE1 = Range(1, integer=True)
POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1, high_open=True)  # [0, 1)
SEED = Range(0, integer=True, note="numpy seeds are non-negative")

# The schemas whose configs are checked: "module:function" returning the defaults; the module also
# holds RANGES (dotted key -> Range) and check(config) -> [problems] for rules across keys.
SCHEMAS = (
    "pnas_jax.train.search_config:search_config",
    "pnas_jax.train.train_config:train_config",
    "pnas_jax.latency.config:latency_config",
)


def schema_of(config: ml_collections.ConfigDict) -> Any | None:
  """The schema module `config` was built from, or None: the first schema whose every top-level
  key the config has, a section (ConfigDict) where the schema has one. (Sections such as `space`
  or `latency.loss_params` are often replaced whole by config files, so deeper keys may differ.)
  Only schemas already imported are considered: a config built from one has imported it."""
  for entry in SCHEMAS:
    module_name, fn = entry.split(":")
    module = sys.modules.get(module_name)
    if module is None:
      continue
    schema = getattr(module, fn)()
    if all(k in config and isinstance(config[k], ml_collections.ConfigDict)
           == isinstance(v, ml_collections.ConfigDict) for k, v in schema.items()):
      return module
  return None


def _get_key(config: ml_collections.ConfigDict, key: str) -> tuple[bool, Any]:
  node: Any = config
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False, None
    node = node[part]
  return True, node


def config_problems(config: ml_collections.ConfigDict,
                    ranges: dict[str, Range] | None = None,
                    check: Callable[[Any], list[str]] | None = None) -> list[str]:
  """Every value of `config` out of its range, and every cross-key rule broken, as messages.

  Without `ranges`/`check`, those of the config's schema (see `schema_of`); [] for other configs.
  """
  if ranges is None and check is None:
    schema = schema_of(config)
    if schema is None:
      return []
    ranges, check = schema.RANGES, getattr(schema, "check", None)
  problems = []
  for key, rng in (ranges or {}).items():
    present, value = _get_key(config, key)
    if present and not rng.allows(value):
      problems.append(f"{key} = {value!r} must be {rng.describe()}")
  if check is not None and not problems:
    problems += check(config)
  return problems


def validate_config(config: ml_collections.ConfigDict, source: str = "config") -> None:
  """Raises ConfigError listing every out-of-range value of `config` (see `config_problems`)."""
  problems = config_problems(config)
  if problems:
    raise ConfigError(
        f"{source}: {len(problems)} invalid value{'s' if len(problems) > 1 else ''}: "
        + "; ".join(problems)
        + ". Change them in the config file or with --config.KEY=VALUE."
    )


def _check_defines_get_config(path: str) -> None:
  """A config file must parse and define get_config(); say so naming the file (not absl's module)."""
  text = read_text(path, "config file", error=ConfigError)
  try:
    tree = ast.parse(text, filename=path)
  except SyntaxError as e:
    raise ConfigError(f"{path}: line {e.lineno}: {e.msg}; a config file is Python") from None
  names = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
  names |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets
            if isinstance(t, ast.Name)}
  names |= {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
  if "get_config" not in names:
    raise ConfigError(
        f"{path}: no get_config() in this file; a config file must define get_config() (or "
        "get_config(arg)) returning an ml_collections.ConfigDict, e.g. starting from "
        "pnas_jax.train.search_config.search_config() as configs/search/tiny.py does"
    )


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Loads `path.py[:arg]`, applies `--config.key=value` overrides (locked ConfigDict) and checks
  every value against its schema's ranges (ConfigError naming the key and the range)."""
  bad = [o for o in overrides if not o.startswith("--config.")]
  if bad:
    raise ConfigError(f"overrides must look like --config.key=value, got {bad}")
  path = spec.split(":", 1)[0]
  if not os.path.exists(path):
    raise ConfigError(f"config file {path!r} does not exist (expected e.g. configs/search/tiny.py)")
  _check_defines_get_config(path)
  config = _load(spec, overrides)
  validate_config(config, f"config {spec}")
  return config


def _override_key(override: str) -> str:
  return override[len("--config."):].split("=", 1)[0]


def last_override_wins(overrides: Sequence[str]) -> list[str]:
  """Drops every override of a key that a later one sets again.

  absl's config flags accumulate repeated tuple-valued keys (`--config.t=(1,)` then
  `--config.t=(2,)` gives (1, 2)); a preset followed by the user's own value must give the user's.
  """
  last = {_override_key(o): i for i, o in enumerate(overrides)}
  return [o for i, o in enumerate(overrides) if last[_override_key(o)] == i]


def _load(spec: str, overrides: Sequence[str]) -> ml_collections.ConfigDict:
  base = _parse(spec, [])
  fields = _leaf_keys(base)
  overrides = last_override_wins(overrides)
  for o in overrides:
    key = _override_key(o)
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
