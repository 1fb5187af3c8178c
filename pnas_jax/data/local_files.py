"""Offline readers for data sets shipped as files: Fashion-MNIST IDX files and the CIFAR-10 tarball.

Fashion-MNIST: Debian's `dataset-fashion-mnist` package installs the four IDX files (gzipped) under
/usr/share/datasets/fashion-mnist. CIFAR-10: the "python version" tarball cifar-10-python.tar.gz
(data_batch_1..5, test_batch: pickled dicts with b"data" (N, 3072) uint8 in CHW order, b"labels").

The CIFAR batches are pickles, and unpickling a file runs whatever code the file names, so they are
read by a restricted unpickler (`read_cifar_batch`) that resolves no global at all: the few names a
batch needs (numpy's array reconstruction for pickle protocols 2-5, numpy.dtype, _codecs.encode for
byte strings written by Python 3) are replaced by inert stand-ins that accept only a uint8 array,
and any other name fails. A tarball from an untrusted source therefore cannot run code. A missing,
truncated or corrupt file raises MissingDataError naming the file and how to get a good copy.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
import zlib
from typing import Any

import numpy as np

from pnas_jax.errors import PnasError
from pnas_jax.file_io import read_bytes

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class MissingDataError(PnasError, FileNotFoundError):
  """A data set's files are missing or unreadable (truncated, corrupt) where we looked; the
  message names the file and says how to get a good copy."""


def _damaged(path: str, problem: str) -> MissingDataError:
  if os.path.abspath(path).startswith(FASHION_MNIST_DIR):
    fix = "reinstall the package: `sudo apt-get install --reinstall dataset-fashion-mnist`"
  else:
    fix = "delete it and download it again"
  return MissingDataError(f"{path}: {problem}; the file is damaged: {fix}")


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (optionally .gz): magic 0x0000TTDD (T = dtype code, D = number of dims)."""
  data = read_bytes(path, "data file", error=MissingDataError)
  if path.endswith(".gz"):
    try:
      data = gzip.decompress(data)
    except EOFError:
      raise _damaged(path, "truncated gzip file (it ends before its compressed stream does)") from None
    except (OSError, zlib.error) as e:  # gzip.BadGzipFile, a CRC or length mismatch, bad deflate data
      raise _damaged(path, f"not a valid gzip file ({e})") from None
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise _damaged(path, f"not an IDX file (bad magic {data[:4].hex()})")
  dtype_code, ndim = data[2], data[3]
  if dtype_code not in _IDX_DTYPES:
    raise _damaged(path, f"not an IDX file (unknown IDX element type 0x{dtype_code:02x})")
  if len(data) < 4 + 4 * ndim:
    raise _damaged(path, f"truncated IDX header ({len(data)} bytes for {ndim} dimensions)")
  shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
  dtype = np.dtype(_IDX_DTYPES[dtype_code])
  expected = int(np.prod(shape)) * dtype.itemsize
  body = data[4 + 4 * ndim :]
  if len(body) != expected:
    raise _damaged(path, f"IDX header says shape {shape} ({expected} bytes), file has {len(body)}")
  return np.frombuffer(body, dtype).reshape(shape)


def _find(directory: str, stem: str) -> str | None:
  for name in (stem, stem + ".gz"):
    p = os.path.join(directory, name)
    if os.path.exists(p):
      return p
  return None


def load_fashion_mnist(directory: str = FASHION_MNIST_DIR) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{"train": (images [60000, 28, 28, 1] uint8, labels int32), "test": (... 10000 ...)}."""
  out = {}
  for split, prefix in (("train", "train"), ("test", "t10k")):
    img = _find(directory, f"{prefix}-images-idx3-ubyte")
    lab = _find(directory, f"{prefix}-labels-idx1-ubyte")
    if img is None or lab is None:
      raise MissingDataError(
          f"Fashion-MNIST IDX files not found in {directory!r} (looked for {prefix}-images-idx3-ubyte"
          "[.gz] and its labels). On Debian/Ubuntu: `sudo apt-get install dataset-fashion-mnist` "
          f"(installs them under {FASHION_MNIST_DIR}); or download the four files from the "
          "Fashion-MNIST repository and pass their folder as the data dir."
      )
    images, labels = read_idx(img), read_idx(lab)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
      raise ValueError(f"{img}: unexpected shapes {images.shape} / {labels.shape}")
    out[split] = (images[..., None].copy(), labels.astype(np.int32))
  return out


# --- CIFAR-10 batches without running pickled code ---------------------------------------------


class _NDArrayClass:
  """Stands in for numpy.ndarray as _reconstruct's first argument."""


class _Dtype:
  """Stands in for numpy.dtype: records the type string; only "u1" (uint8) is accepted later."""

  def __init__(self, name: Any, align: Any = 0, copy: Any = 1):
    del align, copy
    self.name = name.decode("latin1") if isinstance(name, bytes) else name

  def __setstate__(self, state: Any) -> None:  # (version, byte order, ...): nothing to keep
    del state


class _Array:
  """Stands in for a pickled numpy array; __setstate__ accepts exactly a uint8 array's state."""

  value: np.ndarray | None = None

  def __setstate__(self, state: Any) -> None:
    if not isinstance(state, tuple) or len(state) not in (4, 5):
      raise pickle.UnpicklingError(f"unexpected array state of length {len(state)}")
    shape, dtype, _fortran, raw = state[-4:]
    if not isinstance(dtype, _Dtype) or dtype.name not in ("u1", "uint8"):
      raise pickle.UnpicklingError(f"only uint8 arrays are read, got dtype {getattr(dtype, 'name', dtype)!r}")
    if isinstance(raw, str):
      raw = raw.encode("latin1")
    if (not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape)
        or not isinstance(raw, bytes) or len(raw) != int(np.prod(shape))):
      raise pickle.UnpicklingError(f"array of shape {shape!r} does not match its data")
    self.value = np.frombuffer(raw, np.uint8).reshape(shape)


def _reconstruct(cls: Any, shape: Any, dtype_code: Any) -> _Array:
  del shape, dtype_code
  if cls is not _NDArrayClass:
    raise pickle.UnpicklingError("_reconstruct of something other than numpy.ndarray")
  return _Array()


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> _Array:
  """numpy's protocol-5 array reconstruction, for a C-ordered uint8 array only."""
  if order != "C":
    raise pickle.UnpicklingError(f"only C-ordered arrays are read, got order {order!r}")
  a = _Array()
  a.__setstate__((shape, dtype, False, bytes(buf) if isinstance(buf, bytearray) else buf))
  return a


def _latin1_encode(text: Any, encoding: Any = "utf-8") -> bytes:
  """_codecs.encode as Python 3 pickles bytes at protocol 2: only str -> latin1 bytes."""
  if not isinstance(text, str) or encoding != "latin1":
    raise pickle.UnpicklingError("_codecs.encode is only read for latin1 byte strings")
  return text.encode("latin1")


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): _NDArrayClass,
    ("numpy", "dtype"): _Dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _BatchUnpickler(pickle.Unpickler):
  """Resolves no real global: the names a CIFAR batch needs map to the inert stand-ins above."""

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise pickle.UnpicklingError(
          f"refusing to load global {module}.{name}: a CIFAR-10 batch holds only a dict of "
          "uint8 data and integer labels") from None

  def persistent_load(self, pid: Any) -> Any:
    raise pickle.UnpicklingError("persistent ids are not allowed")


def _unwrap(x: Any) -> Any:
  if isinstance(x, _Array):
    return x.value
  if isinstance(x, (_Dtype, _NDArrayClass)) or x is _NDArrayClass:
    raise pickle.UnpicklingError(f"unexpected {type(x).__name__} in a batch")
  return x


def read_cifar_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
  """(images N x 32 x 32 x 3 uint8, labels int32) of one pickled CIFAR-10 batch, read without
  resolving any global (see the module docstring); a refused or malformed batch names `where`."""
  try:
    d = _BatchUnpickler(io.BytesIO(data), encoding="bytes").load()
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
          KeyError, OverflowError, MemoryError, struct.error) as e:
    raise _damaged(where, f"not a CIFAR-10 batch ({type(e).__name__}: {e})") from None
  if not isinstance(d, dict):
    raise _damaged(where, f"not a CIFAR-10 batch (a {type(d).__name__}, not a dict)")
  d = {k.decode("latin1") if isinstance(k, bytes) else k: _unwrap(v) for k, v in d.items()}
  data_arr, labels = d.get("data"), d.get("labels")
  if not isinstance(data_arr, np.ndarray) or data_arr.ndim != 2 or data_arr.shape[1] != 3072:
    raise _damaged(where, "not a CIFAR-10 batch ('data' is not an N x 3072 uint8 array)")
  if (not isinstance(labels, list) or len(labels) != len(data_arr)
      or not all(isinstance(v, int) and 0 <= v < 10 for v in labels)):
    raise _damaged(where, f"not a CIFAR-10 batch ('labels' is not {len(data_arr)} integers in 0..9)")
  images = data_arr.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return images, np.asarray(labels, np.int32)


def load_cifar10_tarball(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Reads cifar-10-python.tar.gz -> {"train": (50000x32x32x3 uint8, int32), "test": (...)}."""
  if not os.path.exists(path):
    raise MissingDataError(
        f"CIFAR-10 tarball {path!r} not found. Download cifar-10-python.tar.gz (the 'python "
        "version' from the CIFAR-10 page) and pass its path, or use the TFDS data set 'cifar10'."
    )
  batches: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "test": []}
  try:
    with tarfile.open(path, "r:*") as tar:
      for member in sorted(tar.getmembers(), key=lambda m: m.name):
        base = os.path.basename(member.name)
        split = ("train" if base.startswith("data_batch_") else "test" if base == "test_batch"
                 else None)
        if split is None or not member.isfile():
          continue
        batches[split].append(read_cifar_batch(tar.extractfile(member).read(),
                                                f"{path}: {member.name}"))
  except (tarfile.TarError, EOFError, zlib.error) as e:
    raise _damaged(path, f"not a readable tarball ({type(e).__name__}: {e})") from None
  except OSError as e:
    if isinstance(e, MissingDataError):
      raise
    raise MissingDataError(f"{path}: cannot read the CIFAR-10 tarball ({e})") from None
  if not batches["train"] or not batches["test"]:
    raise MissingDataError(
        f"{path}: no data_batch_* / test_batch members; is this cifar-10-python.tar.gz?")
  return {
      s: (np.concatenate([b[0] for b in v]), np.concatenate([b[1] for b in v]))
      for s, v in batches.items()
  }
