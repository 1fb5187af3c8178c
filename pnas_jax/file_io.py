"""File I/O of run outputs and user files: JSON and msgpack, read with errors that name the file,
written atomically (a temporary file and a rename: a crash never leaves a truncated file)."""

from __future__ import annotations

import json
import os
from typing import Any

import flax.serialization

from pnas_jax.errors import UserFileError


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


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
  path = os.fspath(path)
  tmp = f"{path}.tmp"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def write_json(path: str | os.PathLike, obj: Any) -> None:
  """Writes obj as indented JSON, atomically."""
  write_bytes_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def save_msgpack(path: str | os.PathLike, tree: Any) -> None:
  """flax.serialization.to_bytes(tree), written atomically."""
  write_bytes_atomic(path, flax.serialization.to_bytes(tree))


def load_msgpack(path: str | os.PathLike, like: Any) -> Any:
  """A tree saved by save_msgpack, shaped like `like`; a bad file names itself and the fix."""
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise UserFileError(f"{path}: cannot read ({e.strerror or e})") from None
  try:
    return flax.serialization.from_bytes(like, data)
  except Exception as e:  # msgpack raises several types for truncated or foreign data.
    raise UserFileError(
        f"{path}: not a weights file of this network ({type(e).__name__}: {e}); it may be truncated "
        "or written for another architecture: write it again") from None
