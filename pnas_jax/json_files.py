"""Reading the project's JSON files (arch files, latency tables, predictors, measurements) with errors
that name the file and say what to do, raised as the caller's error type; writing them atomically."""

from __future__ import annotations

import json
import os
from typing import Any


def read_json(path: str | os.PathLike, error: type[Exception], missing: str = "no such file") -> Any:
  """json.load(path); a missing file raises error(f"{path}: {missing}"), bad JSON names the spot."""
  path = os.fspath(path)
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise error(f"{path}: {missing}") from None
  except json.JSONDecodeError as e:
    raise error(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


def write_json(path: str | os.PathLike, obj: Any) -> None:
  """Writes obj as indented JSON through a temporary file and a rename: a crash never leaves a
  truncated file behind."""
  path = os.fspath(path)
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
    f.write("\n")
  os.replace(tmp, path)
