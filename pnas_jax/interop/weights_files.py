"""Weight files of a ChildNet in either format, chosen by the file name.

  *.msgpack                  ours: flax.serialization bytes of {"params", "batch_stats"} (what
                             `pnas train` writes as weights.msgpack)
  *.pth, *.pt, *.pth.tar     the reference implementation's PyTorch checkpoint, {"state_dict": ...}
                             (read and written without PyTorch: interop/torch_file.py)

Both directions check every variable's name and shape against the network, so a file for another
architecture fails with the first mismatch named instead of producing a silently wrong network.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import flax.serialization
import jax
import numpy as np
from flax import traverse_util

from pnas_jax.errors import UserFileError
from pnas_jax.interop import torch_file, torch_weights
from pnas_jax.search_space.space import Arch, SearchSpace

REFERENCE_SUFFIXES = (".pth", ".pt", ".pth.tar", ".tar")


def is_reference_file(path: str | os.PathLike) -> bool:
  """True for a PyTorch checkpoint name (REFERENCE_SUFFIXES), False for ours (.msgpack)."""
  return os.fspath(path).lower().endswith(REFERENCE_SUFFIXES)


def _check_msgpack(path: str, flat: Mapping[tuple[str, ...], Any], space: SearchSpace, arch: Arch,
                   name: str) -> None:
  shapes = torch_weights.variable_shapes(space, arch)
  hint = (f"; is {name or 'the network'} the one these weights were trained for? Give the matching "
          "--arch (a zoo name, arch.json or net.config)")
  missing = sorted(set(shapes) - set(flat))
  extra = sorted(set(flat) - set(shapes))
  if missing or extra:
    what = (f"misses {'/'.join(missing[0])}" if missing else f"has the unknown {'/'.join(extra[0])}")
    raise UserFileError(f"{path}: {what} ({len(missing)} missing, {len(extra)} unknown variables)"
                        f"{hint}")
  for key, shape in shapes.items():
    if tuple(np.shape(flat[key])) != shape:
      raise UserFileError(f"{path}: {'/'.join(key)} has shape {tuple(np.shape(flat[key]))}, the "
                          f"network needs {shape}{hint}")


def load_variables(path: str | os.PathLike, space: SearchSpace, arch: Arch,
                   name: str = "") -> dict[str, Any]:
  """{"params", "batch_stats"} of ChildNet(space, arch) from a .msgpack or a reference .pth file.

  Raises:
    UserFileError: the file is missing or unreadable, or its variables do not fit the network.
  """
  path = os.fspath(path)
  if is_reference_file(path):
    return torch_weights.from_reference(torch_file.load_state_dict(path), space, arch, path, name)
  try:
    with open(path, "rb") as f:
      tree = flax.serialization.msgpack_restore(f.read())
  except FileNotFoundError:
    raise UserFileError(f"{path}: no such weights file") from None
  except (OSError, ValueError, TypeError) as e:
    raise UserFileError(f"{path}: not a weights.msgpack written by pnas ({e}); reference PyTorch "
                        f"checkpoints must be named {' / '.join(REFERENCE_SUFFIXES)}") from None
  if not isinstance(tree, dict):
    raise UserFileError(f"{path}: not a weights.msgpack written by pnas (no variable tree)")
  flat = traverse_util.flatten_dict(tree)
  _check_msgpack(path, flat, space, arch, name)
  return traverse_util.unflatten_dict({k: np.asarray(v, np.float32) for k, v in flat.items()})


def save_variables(path: str | os.PathLike, variables: Mapping[str, Any], space: SearchSpace,
                   arch: Arch) -> None:
  """Writes the variables of ChildNet(space, arch) as .msgpack or as a reference .pth (by name),
  through a temporary file and a rename."""
  path = os.fspath(path)
  variables = jax.device_get(dict(variables))
  if is_reference_file(path):
    torch_file.save_state_dict(path, torch_weights.to_reference(variables, space, arch))
    return
  flat = traverse_util.flatten_dict(variables)
  _check_msgpack(path, flat, space, arch, "")
  tmp = f"{path}.tmp"
  with open(tmp, "wb") as f:
    f.write(flax.serialization.to_bytes(variables))
  os.replace(tmp, path)
