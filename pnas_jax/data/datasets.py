"""Image classification data sets by name.

  fashion_mnist        Debian's dataset-fashion-mnist IDX files (the offline default; 28x28x1)
  cifar10              the cifar-10-python.tar.gz tarball (32x32x3)
  tfds:cifar10, tfds:fashion_mnist, tfds:imagenette, tfds:imagenet2012
                       TFDS data sets through tfds.data_source (prepared ArrayRecord files; ImageNet
                       needs its manual download dir once: `tfds build imagenet2012 --manual_dir=DIR`)
  synthetic            class-conditional random patterns generated from a seed (tests, smoke runs)

Each carries its normalisation statistics and augmentation kind (see augment.py). The "train" and
"test" sources are random-access (sources.py); the held-out architecture split is carved from
"train" by split.class_balanced_split, the test split stays untouched.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import numpy as np

from pnas_jax.data import local_files
from pnas_jax.data.sources import ArraySource, Source, TFDSSource
from pnas_jax.registry import Registry

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class ImageDataset:
  name: str
  train: Source
  test: Source
  n_classes: int
  image_shape: tuple[int, int, int]  # (H, W, C) of the batches the sources return
  mean: tuple[float, ...]
  std: tuple[float, ...]
  augment: str  # "pad_crop_flip" | "inception"


def _from_arrays(name, d, n_classes, mean, std) -> ImageDataset:
  train, test = ArraySource(*d["train"]), ArraySource(*d["test"])
  return ImageDataset(name, train, test, n_classes, tuple(d["train"][0].shape[1:]), mean, std,
                      "pad_crop_flip")


def _fashion_mnist(data_dir: str | None, image_size: int | None) -> ImageDataset:
  try:
    d = local_files.load_fashion_mnist(data_dir or local_files.FASHION_MNIST_DIR)
  except local_files.MissingDataError as e:
    raise local_files.MissingDataError(
        f"{e} Or use the TFDS data set 'tfds:fashion_mnist' (prepared once with "
        "`tfds build fashion_mnist`)."
    ) from None
  return _from_arrays("fashion_mnist", d, 10, (0.2860,), (0.3530,))


def _cifar10(data_dir: str | None, image_size: int | None) -> ImageDataset:
  path = data_dir or os.path.expanduser("~/data/cifar-10-python.tar.gz")
  if os.path.isdir(path):
    path = os.path.join(path, "cifar-10-python.tar.gz")
  d = local_files.load_cifar10_tarball(path)
  return _from_arrays("cifar10", d, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def synthetic(
    n_train: int = 2048, n_test: int = 512, size: int = 16, channels: int = 3, n_classes: int = 10,
    seed: int = 0,
) -> ImageDataset:
  """Each class is a fixed random template; examples add noise. Learnable in a few steps."""
  rng = np.random.default_rng(seed)
  templates = rng.uniform(0, 255, (n_classes, size, size, channels))

  def make(n):
    labels = rng.integers(0, n_classes, n).astype(np.int32)
    noise = rng.normal(0, 48, (n, size, size, channels))
    return np.clip(templates[labels] + noise, 0, 255).astype(np.uint8), labels

  return _from_arrays("synthetic", {"train": make(n_train), "test": make(n_test)}, n_classes,
                      (0.5,) * channels, (0.25,) * channels)


# name -> (n_classes, test split, mean, std, augmentation, fixed size or None)
_TFDS = {
    "cifar10": (10, "test", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "pad_crop_flip", 32),
    "fashion_mnist": (10, "test", (0.2860,), (0.3530,), "pad_crop_flip", 28),
    "imagenette": (10, "validation", IMAGENET_MEAN, IMAGENET_STD, "inception", None),
    "imagenet2012": (1000, "validation", IMAGENET_MEAN, IMAGENET_STD, "inception", None),
}


def _tfds(name: str) -> Callable[[str | None, int | None], ImageDataset]:
  n_classes, test_split, mean, std, aug, fixed = _TFDS[name]

  def load(data_dir: str | None, image_size: int | None) -> ImageDataset:
    size = fixed or image_size or 256
    cache = os.path.join(data_dir, f".pnas_labels_{name}_train.npy") if data_dir else None
    train = TFDSSource(name, "train", data_dir, None if fixed else size, label_cache=cache)
    test = TFDSSource(name, test_split, data_dir, None if fixed else size)
    channels = len(mean)
    return ImageDataset(f"tfds:{name}", train, test, n_classes, (size, size, channels), mean, std, aug)

  return load


# name -> loader(data_dir, image_size) -> ImageDataset
DATASETS: Registry[Callable[[str | None, int | None], ImageDataset]] = Registry("data set")
DATASETS.add("fashion_mnist", _fashion_mnist)
DATASETS.add("cifar10", _cifar10)
for _name in _TFDS:
  DATASETS.add(f"tfds:{_name}", _tfds(_name))
DATASETS.add("synthetic", lambda data_dir, image_size: synthetic(size=image_size or 16))


def load_dataset(name: str, data_dir: str | None = None, image_size: int | None = None) -> ImageDataset:
  """Loads a data set by name; errors list the valid names or say how to get missing files.

  `image_size` is the host-side square size for variable-size sources (ImageNet-like; the device
  crop then produces the network's resolution) and the pattern size of "synthetic".
  """
  return DATASETS.get(name)(data_dir, image_size)
