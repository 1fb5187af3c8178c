"""Image classification data sets by name, loaded into memory as uint8 NHWC arrays.

  fashion_mnist  Debian's dataset-fashion-mnist IDX files (offline default; 28x28x1, 10 classes)
  cifar10        the cifar-10-python.tar.gz tarball (32x32x3, 10 classes)
  synthetic      class-conditional random patterns generated from a seed (tests, smoke runs)

Each carries its normalisation statistics and augmentation kind (see augment.py).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import numpy as np

from pnas_jax.data import local_files


@dataclasses.dataclass(frozen=True)
class ImageDataset:
  name: str
  train_images: np.ndarray  # uint8 [N, H, W, C]
  train_labels: np.ndarray  # int32 [N]
  test_images: np.ndarray
  test_labels: np.ndarray
  n_classes: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  augment: str  # "pad_crop_flip" | "inception"

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train_images.shape[1:])


def _fashion_mnist(data_dir: str | None) -> ImageDataset:
  d = local_files.load_fashion_mnist(data_dir or local_files.FASHION_MNIST_DIR)
  return ImageDataset("fashion_mnist", *d["train"], *d["test"], 10, (0.2860,), (0.3530,),
                      "pad_crop_flip")


def _cifar10(data_dir: str | None) -> ImageDataset:
  path = data_dir or os.path.expanduser("~/data/cifar-10-python.tar.gz")
  if os.path.isdir(path):
    path = os.path.join(path, "cifar-10-python.tar.gz")
  d = local_files.load_cifar10_tarball(path)
  return ImageDataset("cifar10", *d["train"], *d["test"], 10, (0.4914, 0.4822, 0.4465),
                      (0.2470, 0.2435, 0.2616), "pad_crop_flip")


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

  return ImageDataset("synthetic", *make(n_train), *make(n_test), n_classes, (0.5,) * channels,
                      (0.25,) * channels, "pad_crop_flip")


DATASETS: dict[str, Callable[[str | None], ImageDataset]] = {
    "fashion_mnist": _fashion_mnist,
    "cifar10": _cifar10,
    "synthetic": lambda data_dir: synthetic(),
}


def load_dataset(name: str, data_dir: str | None = None) -> ImageDataset:
  """Loads a data set by name; errors list the valid names or say how to get missing files."""
  if name not in DATASETS:
    raise KeyError(f"unknown data set {name!r}; available: {', '.join(DATASETS)}")
  return DATASETS[name](data_dir)
