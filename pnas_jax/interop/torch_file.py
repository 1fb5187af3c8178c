"""Reading and writing PyTorch checkpoint files (`torch.save` of a state_dict) without PyTorch.

A `.pth` written by `torch.save` since PyTorch 1.6 is a zip archive: `<name>/data.pkl` pickles the
object with every tensor as `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`,
each storage a persistent id `('storage', torch.FloatStorage, key, location, numel)` whose raw bytes
are the entry `<name>/data/<key>` (byte order in `<name>/byteorder`). Older PyTorch wrote the
"legacy" format instead: a stream of pickles (magic number, protocol version, system info, the object,
the storage keys) followed by each storage's element count (int64) and raw bytes.

Both are read here with a restricted unpickler: it resolves only the globals a state_dict needs
(`collections.OrderedDict`, the tensor/parameter rebuild functions and the storage classes) and
refuses any other global with an error naming the file, so loading a file never runs code that the
file names. Tensors come back as NumPy arrays (bfloat16 through ml_dtypes).

`save_state_dict` writes `{"state_dict": OrderedDict(name -> array)}` in the zip format, the pickle
opcodes emitted directly (so PyTorch need not be importable); `torch.load` (including its
`weights_only=True` mode) reads it back.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

from pnas_jax.errors import UserFileError

# torch storage class name -> NumPy dtype (little-endian; byte-swapped where the file says "big").
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
_DTYPE_STORAGE = {v: k for k, v in STORAGE_DTYPES.items()}

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class _StorageType:
  """Stand-in for a torch storage class (torch.FloatStorage, ...): only its element type matters."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = STORAGE_DTYPES[name]


class _Storage:
  """A flat storage: its raw elements once read (zip: at once; legacy: after the object pickle)."""

  def __init__(self, dtype: np.dtype, numel: int):
    self.dtype = dtype
    self.numel = numel
    self.data: np.ndarray | None = None


class _StorageView:
  """A slice of a root storage (legacy files only)."""

  def __init__(self, root: _Storage, offset: int, numel: int):
    self.root, self.offset, self.numel = root, offset, numel


class _PendingTensor:
  """A tensor whose storage bytes may not have been read yet; materialised after loading."""

  def __init__(self, storage: Any, offset: int, size: tuple[int, ...], stride: tuple[int, ...]):
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def to_numpy(self, path: str) -> np.ndarray:
    storage, offset = self.storage, self.offset
    if isinstance(storage, _StorageView):
      storage, offset = storage.root, offset + storage.offset
    flat = storage.data
    if flat is None:
      raise UserFileError(f"{path}: a tensor refers to a storage that the file does not hold "
                          "(truncated or corrupt checkpoint); save it again with torch.save")
    if (len(self.size) != len(self.stride) or offset < 0 or min(self.size + self.stride, default=0) < 0
        or offset >= max(flat.size, 1)):
      raise UserFileError(f"{path}: a tensor with offset {offset}, size {self.size} and stride "
                          f"{self.stride} does not fit its storage; the file is corrupt")
    if not self.size:
      return np.array(flat[offset], dtype=flat.dtype)
    extent = offset + 1 + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
    if min(self.size) > 0 and extent > flat.size:
      raise UserFileError(f"{path}: a tensor of shape {self.size} reaches past its storage "
                          f"({extent} > {flat.size} elements): the file is truncated or corrupt")
    item = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=self.size, strides=tuple(s * item for s in self.stride), writeable=False)
    return np.array(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  del unused  # requires_grad, backward hooks, metadata: irrelevant for arrays.
  return _PendingTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks, *unused):
  del requires_grad, backward_hooks, unused
  return data


# (module, name) -> what the restricted unpickler resolves it to. Nothing else is resolved.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only _ALLOWED_GLOBALS; storages come from `storage_loader(pid)`."""

  def __init__(self, f, path: str, storage_loader):
    super().__init__(f)
    self._path = path
    self._storage_loader = storage_loader

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise UserFileError(
          f"{self._path}: refusing to load the pickled global {module}.{name}: a weights file may "
          "only hold tensors in (ordered) dicts, and loading anything else could run code from the "
          "file. If you trust the file, load it with PyTorch and save only its state_dict: "
          "torch.save({'state_dict': torch.load(f, weights_only=False)['state_dict']}, out)"
      ) from None

  def persistent_load(self, pid: Any) -> Any:
    if self._storage_loader is None:
      raise UserFileError(f"{self._path}: unexpected persistent id in a header pickle; corrupt file?")
    return self._storage_loader(pid)


def _storage_pid(pid: Any, path: str) -> tuple[_StorageType, str, int, Any]:
  if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"
          and isinstance(pid[1], _StorageType)):
    raise UserFileError(f"{path}: unsupported persistent id {pid!r:.80}; not a tensor storage")
  view = pid[5] if len(pid) == 6 else None
  return pid[1], str(pid[2]), int(pid[4]), view


def _materialise(obj: Any, path: str) -> Any:
  if isinstance(obj, _PendingTensor):
    return obj.to_numpy(path)
  if isinstance(obj, dict):
    out = type(obj)() if isinstance(obj, collections.OrderedDict) else {}
    for k, v in obj.items():
      out[k] = _materialise(v, path)
    return out
  if isinstance(obj, list | tuple):
    return type(obj)(_materialise(v, path) for v in obj)
  return obj


def _load_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as zf:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
      raise UserFileError(f"{path}: a zip file but not a PyTorch checkpoint (no <name>/data.pkl); "
                          "write it with torch.save")
    prefix = pkl[0][: -len("data.pkl")]
    big = prefix + "byteorder" in names and zf.read(prefix + "byteorder").strip() == b"big"
    storages: dict[str, _Storage] = {}

    def load_storage(pid: Any) -> _Storage:
      stype, key, numel, _ = _storage_pid(pid, path)
      if key not in storages:
        entry = f"{prefix}data/{key}"
        try:
          raw = zf.read(entry)
        except KeyError:
          raise UserFileError(f"{path}: storage {entry} is missing; the file is incomplete") from None
        dtype = stype.dtype.newbyteorder(">") if big and stype.dtype.itemsize > 1 else stype.dtype
        st = _Storage(stype.dtype, numel)
        st.data = np.frombuffer(raw, dtype=dtype, count=min(numel, len(raw) // dtype.itemsize))
        st.data = st.data.astype(stype.dtype) if big else st.data
        storages[key] = st
      return storages[key]

    obj = _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), path, load_storage).load()
  return _materialise(obj, path)


def _load_legacy(path: str) -> Any:
  with open(path, "rb") as f:
    header = _RestrictedUnpickler(f, path, None)
    try:
      magic = header.load()
    except UserFileError:
      raise
    except Exception:  # any decoding failure means: not a checkpoint
      magic = None
    if magic != _LEGACY_MAGIC:
      raise UserFileError(f"{path}: not a PyTorch checkpoint (neither a torch.save zip archive nor "
                          "the legacy format); give the .pth written by torch.save")
    if header.load() != _LEGACY_PROTOCOL:
      raise UserFileError(f"{path}: unsupported legacy PyTorch protocol; re-save it with torch.save")
    sys_info = header.load()
    little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
    storages: dict[str, _Storage] = {}

    def load_storage(pid: Any) -> Any:
      stype, key, numel, view = _storage_pid(pid, path)
      if key not in storages:
        storages[key] = _Storage(stype.dtype, numel)
      if view is not None:
        _, offset, view_numel = view
        return _StorageView(storages[key], int(offset), int(view_numel))
      return storages[key]

    obj = _RestrictedUnpickler(f, path, load_storage).load()
    keys = _RestrictedUnpickler(f, path, None).load()
    for key in keys:
      st = storages.get(str(key))
      if st is None:
        raise UserFileError(f"{path}: storage {key!r} listed but never used; corrupt file?")
      (numel,) = struct.unpack("<q" if little else ">q", f.read(8))
      raw = f.read(numel * st.dtype.itemsize)
      if len(raw) != numel * st.dtype.itemsize:
        raise UserFileError(f"{path}: the file ends inside storage {key!r}; it is truncated")
      dtype = st.dtype if little or st.dtype.itemsize == 1 else st.dtype.newbyteorder(">")
      st.data = np.frombuffer(raw, dtype=dtype).astype(st.dtype)
  return _materialise(obj, path)


def _decoding_errors(path: str, load) -> Any:
  """load(path), with anything a malformed file can raise turned into one UserFileError."""
  try:
    return load(path)
  except UserFileError:
    raise
  except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, TypeError, ValueError, IndexError,
          AttributeError, KeyError, struct.error) as e:
    raise UserFileError(f"{path}: corrupt or truncated PyTorch checkpoint ({type(e).__name__}: "
                        f"{e}); save it again with torch.save") from None


def load_checkpoint(path: str | os.PathLike) -> Any:
  """The object saved in a PyTorch checkpoint file, tensors as NumPy arrays; no code is executed.

  Raises:
    UserFileError: missing file, not a checkpoint, or a pickled global other than the few a
      state_dict needs (see the module docstring).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise UserFileError(f"{path}: no such file (expected a PyTorch .pth checkpoint)")
  return _decoding_errors(path, _load_zip if zipfile.is_zipfile(path) else _load_legacy)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The state_dict of a checkpoint: `obj["state_dict"]` (or `obj["model"]`, or `obj` itself when it
  maps names to tensors), with DataParallel's "module." prefix removed."""
  path = os.fspath(path)
  obj = load_checkpoint(path)
  sd = obj
  if isinstance(obj, Mapping):
    for key in ("state_dict", "model"):
      if isinstance(obj.get(key), Mapping):
        sd = obj[key]
        break
  if not isinstance(sd, Mapping) or not all(isinstance(v, np.ndarray) for v in sd.values()):
    raise UserFileError(f"{path}: holds no state_dict (a mapping of names to tensors, at the top or "
                        "under 'state_dict'); save it as torch.save({'state_dict': model.state_dict()})")
  if sd and all(k.startswith("module.") for k in sd):
    sd = {k[len("module."):]: v for k, v in sd.items()}
  return dict(sd)


# --- writing -------------------------------------------------------------------------------------


def _op_str(s: str) -> bytes:
  b = s.encode("utf-8")
  return pickle.BINUNICODE + struct.pack("<I", len(b)) + b


def _op_int(i: int) -> bytes:
  if 0 <= i < 1 << 8:
    return pickle.BININT1 + bytes([i])
  if 0 <= i < 1 << 16:
    return pickle.BININT2 + struct.pack("<H", i)
  if -(1 << 31) <= i < 1 << 31:
    return pickle.BININT + struct.pack("<i", i)
  return pickle.LONG1 + bytes([8]) + struct.pack("<q", i)


def _op_tuple(items: list[bytes]) -> bytes:
  if not items:
    return pickle.EMPTY_TUPLE
  return pickle.MARK + b"".join(items) + pickle.TUPLE


def _op_global(module: str, name: str) -> bytes:
  return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _tensor_pickle(key: str, arr: np.ndarray) -> bytes:
  """`torch._utils._rebuild_tensor_v2(storage key, 0, size, stride, False, OrderedDict())`."""
  stype = _DTYPE_STORAGE[arr.dtype]
  strides, acc = [], 1
  for n in reversed(arr.shape):
    strides.insert(0, acc)
    acc *= n
  storage = _op_tuple([_op_str("storage"), _op_global("torch", stype), _op_str(key), _op_str("cpu"),
                       _op_int(arr.size)]) + pickle.BINPERSID
  args = _op_tuple([
      storage, _op_int(0), _op_tuple([_op_int(n) for n in arr.shape]),
      _op_tuple([_op_int(s) for s in strides]), pickle.NEWFALSE,
      _op_global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE,
  ])
  return _op_global("torch._utils", "_rebuild_tensor_v2") + args + pickle.REDUCE


def _writestr_aligned(zf: zipfile.ZipFile, name: str, data: bytes, align: int = 64) -> None:
  """Stores `data` uncompressed with its bytes at an `align`-byte file offset (as torch.save does,
  padding the local header's extra field), so PyTorch can memory-map the storages."""
  info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
  info.compress_type = zipfile.ZIP_STORED
  start = zf.fp.tell() + 30 + len(name.encode()) + 4  # local header + name + extra-field header
  pad = -start % align
  info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # "FB" padding field, as torch uses
  zf.writestr(info, data)


def save_state_dict(path: str | os.PathLike, state_dict: Mapping[str, np.ndarray],
                    archive_name: str = "archive") -> None:
  """Writes `{"state_dict": OrderedDict(state_dict)}` as a zip checkpoint that torch.load reads.

  Arrays are written C-contiguous in their dtype (float32, int64, ...: any of STORAGE_DTYPES),
  little-endian. The file is written to a temporary name and renamed.
  """
  path = os.fspath(path)
  arrays = []
  for i, (key, value) in enumerate(state_dict.items()):
    arr = np.asarray(value, order="C")  # (not ascontiguousarray: it makes 0-d arrays 1-d)
    if arr.dtype.newbyteorder("<") not in _DTYPE_STORAGE:
      raise UserFileError(f"{path}: cannot write {key!r} of dtype {arr.dtype} as a torch tensor")
    arrays.append((key, str(i), arr.astype(arr.dtype.newbyteorder("<"))))
  body = b"".join(_op_str(key) + _tensor_pickle(skey, arr) for key, skey, arr in arrays)
  pkl = (pickle.PROTO + bytes([2]) + pickle.EMPTY_DICT + _op_str("state_dict")
         + _op_global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
         + pickle.MARK + body + pickle.SETITEMS + pickle.SETITEM + pickle.STOP)
  tmp = f"{path}.tmp"
  with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
    _writestr_aligned(zf, f"{archive_name}/data.pkl", pkl)
    _writestr_aligned(zf, f"{archive_name}/byteorder", b"little")
    for _, skey, arr in arrays:
      _writestr_aligned(zf, f"{archive_name}/data/{skey}", arr.tobytes())
    _writestr_aligned(zf, f"{archive_name}/version", b"3\n")
  os.replace(tmp, path)
