"""Offline readers for data sets shipped as files: Fashion-MNIST IDX files and the CIFAR-10 tarball.

Fashion-MNIST: Debian's `dataset-fashion-mnist` package installs the four IDX files (gzipped) under
/usr/share/datasets/fashion-mnist. CIFAR-10: the "python version" tarball cifar-10-python.tar.gz
(data_batch_1..5, test_batch: pickled dicts with b"data" (N, 3072) uint8 in CHW order, b"labels").
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import tarfile

import numpy as np

from pnas_jax.errors import PnasError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class MissingDataError(PnasError, FileNotFoundError):
  """A data set's files are not where we looked; the message says how to get them."""


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (optionally .gz): magic 0x0000TTDD (T = dtype code, D = number of dims)."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise ValueError(f"{path}: not an IDX file (bad magic {data[:4].hex()})")
  dtype_code, ndim = data[2], data[3]
  if dtype_code not in _IDX_DTYPES:
    raise ValueError(f"{path}: unknown IDX element type 0x{dtype_code:02x}")
  shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
  dtype = np.dtype(_IDX_DTYPES[dtype_code])
  expected = int(np.prod(shape)) * dtype.itemsize
  body = data[4 + 4 * ndim :]
  if len(body) != expected:
    raise ValueError(f"{path}: IDX header says shape {shape} ({expected} bytes), file has {len(body)}")
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


def load_cifar10_tarball(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Reads cifar-10-python.tar.gz -> {"train": (50000x32x32x3 uint8, int32), "test": (...)}."""
  if not os.path.exists(path):
    raise MissingDataError(
        f"CIFAR-10 tarball {path!r} not found. Download cifar-10-python.tar.gz (the 'python "
        "version' from the CIFAR-10 page) and pass its path, or use the TFDS data set 'cifar10'."
    )
  batches: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "test": []}
  with tarfile.open(path, "r:*") as tar:
    for member in sorted(tar.getmembers(), key=lambda m: m.name):
      base = os.path.basename(member.name)
      split = "train" if base.startswith("data_batch_") else "test" if base == "test_batch" else None
      if split is None:
        continue
      d = pickle.load(tar.extractfile(member), encoding="bytes")  # noqa: S301 (trusted data file)
      images = np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
      batches[split].append((images, np.asarray(d[b"labels"], np.int32)))
  if not batches["train"] or not batches["test"]:
    raise ValueError(f"{path}: no data_batch_* / test_batch members; is this cifar-10-python.tar.gz?")
  return {
      s: (np.concatenate([b[0] for b in v]), np.concatenate([b[1] for b in v]))
      for s, v in batches.items()
  }
