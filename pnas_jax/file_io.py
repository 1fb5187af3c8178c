"""The one home of file I/O for user-given and run files: text, JSON and msgpack, read with errors that
name the file and say what to do, written atomically.

Reading: every failure a user can cause (a missing file, a directory where a file belongs, no read
permission, a binary file where text belongs, invalid JSON, a truncated or foreign msgpack file)
becomes a `UserFileError` (or the caller's error type) whose message starts with the path; the `pnas`
command prints it and exits 2. Anything else (a bug) keeps its traceback.

Writing: `write_bytes_atomic` (and `write_json`, `save_msgpack` on top of it) writes a temporary file
beside the target, flushes it to disk and renames it over the target, so a crash or `kill -9`
mid-write leaves either the old file or the new one, never a truncated one.
"""

from __future__ import annotations

import json
import os
from typing import Any

import flax.serialization
import jax

from pnas_jax.errors import UserFileError


def _describe_os_error(path: str, what: str, e: OSError) -> str:
  if isinstance(e, FileNotFoundError):
    return f"{path}: no such {what}"
  if isinstance(e, IsADirectoryError):
    hint = ""
    for name in ("arch.json", "net.config", "config.json"):
      if os.path.isfile(os.path.join(path, name)):
        hint = f" (did you mean {os.path.join(path, name)}?)"
        break
    return f"{path}: is a directory, not a {what}; give the file inside it{hint}"
  if isinstance(e, PermissionError):
    return f"{path}: permission denied reading the {what}; check the file's permissions (chmod u+r)"
  return f"{path}: cannot read the {what} ({e.strerror or e})"


def read_bytes(path: str | os.PathLike, what: str = "file", *,
               error: type[Exception] = UserFileError, missing: str | None = None) -> bytes:
  """The content of `path`; OS errors become `error` naming the file (`missing`: the message's
  text after the path for a missing file, e.g. how to make one)."""
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      return f.read()
  except FileNotFoundError:
    raise error(f"{path}: {missing or f'no such {what}'}") from None
  except OSError as e:
    raise error(_describe_os_error(path, what, e)) from None


def read_text(path: str | os.PathLike, what: str = "file", *,
              error: type[Exception] = UserFileError, missing: str | None = None) -> str:
  """The UTF-8 text of `path`; a missing, unreadable or binary file raises `error` naming it."""
  path = os.fspath(path)
  data = read_bytes(path, what, error=error, missing=missing)
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise error(
        f"{path}: not a text {what} (byte 0x{data[e.start]:02x} at offset {e.start} is not UTF-8); "
        "is this the right file?"
    ) from None


def read_json(path: str | os.PathLike, error: type[Exception] = UserFileError,
              missing: str | None = None, what: str = "JSON file") -> Any:
  """json.load(path); every failure raises `error` (default UserFileError) naming the file, the
  spot of a syntax error and the fix."""
  path = os.fspath(path)
  text = read_text(path, what, error=error, missing=missing)
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise error(
        f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); fix the file or "
        "delete it and rerun the command that writes it"
    ) from None


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to `path` through a temporary file in the same folder and a rename."""
  path = os.fspath(path)
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
  """Writes obj as indented JSON atomically: a crash never leaves a truncated file behind."""
  write_bytes_atomic(path, (json.dumps(obj, indent=indent) + "\n").encode("utf-8"))


def save_msgpack(path: str | os.PathLike, tree: Any) -> None:
  """Writes a pytree of arrays (flax.serialization's msgpack) atomically."""
  write_bytes_atomic(path, flax.serialization.to_bytes(tree))


def _leaf_shapes(tree: Any) -> dict[str, tuple[int, ...] | None]:
  """{"params/block/kernel": shape} of every leaf of a pytree (None for leaves without a shape)."""
  def name(key: Any) -> str:
    return str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key))))

  return {"/".join(name(k) for k in path): (None if getattr(leaf, "shape", None) is None
                                              else tuple(leaf.shape))
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def tree_differences(found: Any, expected: Any, found_name: str = "file") -> str:
  """What differs between two pytrees: paths missing from `found`, paths `found` has beyond
  `expected`, and shape differences (the first 5 of each), or "" when they match."""
  f, e = _leaf_shapes(found), _leaf_shapes(expected)
  differ = [f"{k}: {found_name} {f[k]} vs expected {e[k]}" for k in sorted(set(f) & set(e))
            if f[k] is not None and e[k] is not None and f[k] != e[k]]
  groups = ((f"missing in the {found_name}", sorted(set(e) - set(f))),
            ("not expected", sorted(set(f) - set(e))), ("shape differences", differ))
  return "; ".join(f"{label}: {items[:5]}{' ...' if len(items) > 5 else ''}"
                   for label, items in groups if items)


def load_msgpack(path: str | os.PathLike, like: Any, what: str = "weights file") -> Any:
  """Reads a pytree saved by `save_msgpack`, shaped like `like` (its structure and array shapes
  are checked); a missing, truncated, corrupt or foreign file raises UserFileError naming it."""
  path = os.fspath(path)
  data = read_bytes(path, what)
  try:
    state = flax.serialization.msgpack_restore(data)
  except Exception as e:  # msgpack raises ValueError subclasses and others for corrupt input.
    raise UserFileError(
        f"{path}: the {what} is truncated or corrupt ({type(e).__name__}: {str(e)[:200]}); "
        "delete it and rerun the command that wrote it"
    ) from None
  diff = tree_differences(state, flax.serialization.to_state_dict(like))
  if diff:
    raise UserFileError(
        f"{path}: the {what} does not match the network it is loaded into ({diff}); was it "
        "written for another architecture or config?"
    )
  return flax.serialization.from_state_dict(like, state)
