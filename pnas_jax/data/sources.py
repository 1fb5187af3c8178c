"""Random-access example sources: in-memory arrays and TFDS data sources (no TensorFlow needed).

A source has `len(source)`, `source.labels()` (int32, all examples, for the class-balanced split)
and `source.take(indices) -> {"image": uint8 [B, H, W, C], "label": int32 [B]}`. Sources with
variable image sizes (ImageNet, Imagenette) are resized on the host to a fixed square `image_size`
(bilinear, PIL) so batches stack; the random-resized crop then happens on the device.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np


class Source(Protocol):
  def __len__(self) -> int: ...

  def labels(self) -> np.ndarray: ...

  def take(self, indices: np.ndarray) -> dict[str, np.ndarray]: ...


class ArraySource:
  """Examples held in memory as uint8 NHWC images and int32 labels."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    if len(images) != len(labels):
      raise ValueError(f"{len(images)} images but {len(labels)} labels")
    self.images, self._labels = images, np.asarray(labels, np.int32)

  def __len__(self) -> int:
    return len(self._labels)

  def labels(self) -> np.ndarray:
    return self._labels

  def take(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return {"image": self.images[indices], "label": self._labels[indices]}


class SubsetSource:
  """A view of another source restricted to `indices` (the train / held-out parts of a split)."""

  def __init__(self, source: Source, indices: np.ndarray):
    self.source, self.indices = source, np.asarray(indices)

  def __len__(self) -> int:
    return len(self.indices)

  def labels(self) -> np.ndarray:
    return self.source.labels()[self.indices]

  def take(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return self.source.take(self.indices[indices])


def _resize(image: np.ndarray, size: int) -> np.ndarray:
  from PIL import Image

  if image.shape[0] == size and image.shape[1] == size:
    return image
  squeeze = image.shape[-1] == 1
  pil = Image.fromarray(image[..., 0] if squeeze else image)
  out = np.asarray(pil.resize((size, size), Image.BILINEAR))
  return out[..., None] if squeeze else out


class TFDSSource:
  """A split of a TFDS data set read through `tfds.data_source` (ArrayRecord, random access).

  The data set must be prepared in ArrayRecord format (TFDS' default); for imagenet2012 that is
  `tfds build imagenet2012 --manual_dir=DIR` with the ILSVRC tarballs in DIR, once.
  """

  def __init__(self, name: str, split: str, data_dir: str | None = None,
               image_size: int | None = None, label_cache: str | None = None):
    import tensorflow_datasets as tfds

    self.name, self.split, self.image_size = name, split, image_size
    try:
      self._ds = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises several types for a missing/unprepared data set.
      where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
      hint = (f"tfds build {name} --manual_dir=DIR (ILSVRC2012 tarballs in DIR)"
              if name == "imagenet2012" else f"tfds build {name}")
      raise FileNotFoundError(
          f"TFDS data set {name!r} split {split!r} is not prepared under {where} ({type(e).__name__}:"
          f" {str(e)[:200]}). Prepare it once on a machine with internet: `{hint}` "
          "(ArrayRecord format), then point data_dir / TFDS_DATA_DIR at it."
      ) from None
    self._label_cache = label_cache
    self._labels: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self._ds)

  def labels(self) -> np.ndarray:
    if self._labels is None:
      if self._label_cache and os.path.exists(self._label_cache):
        self._labels = np.load(self._label_cache)
      else:
        self._labels = np.asarray([int(self._ds[i]["label"]) for i in range(len(self._ds))], np.int32)
        if self._label_cache:
          os.makedirs(os.path.dirname(self._label_cache) or ".", exist_ok=True)
          np.save(self._label_cache, self._labels)
    return self._labels

  def take(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    examples: list[dict[str, Any]] = [self._ds[int(i)] for i in indices]
    images = [np.asarray(ex["image"], np.uint8) for ex in examples]
    if self.image_size is not None:
      images = [_resize(im, self.image_size) for im in images]
    return {"image": np.stack(images), "label": np.asarray([ex["label"] for ex in examples], np.int32)}
