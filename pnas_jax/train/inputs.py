"""The data side of a training loop: data set by name, held-out split, device preprocessing.

Batches leave the host as uint8 images (small transfers); augmentation and normalisation run
inside the jitted step on the device (`with_preprocess`), keyed by the state's key and step
counter (plus the device index), so they are reproducible and resumable like everything else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
from jax import lax
from jax.sharding import Mesh

from pnas_jax.data.augment import make_preprocess
from pnas_jax.data.datasets import ImageDataset, load_dataset
from pnas_jax.data.sources import Source, SubsetSource
from pnas_jax.data.split import class_balanced_split
from pnas_jax.errors import UserValueError
from pnas_jax.search_space.space import SearchSpace, SearchSpaceError
from pnas_jax.train.parallel import check_batch
from pnas_jax.train.state import stream_key

AUGMENT_STREAM = 2  # after state.GATES_STREAM = 0 and DROPOUT_STREAM = 1
Preprocess = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass
class SearchInputs:
  space: SearchSpace
  dataset: ImageDataset
  train: Source  # training part (weight steps)
  holdout: Source  # held-out part of the training set (arch steps, argmax evaluation)
  train_preprocess: Preprocess
  eval_preprocess: Preprocess


def host_image_size(config: Any, resolution: int) -> int:
  """Host-side square size for variable-size sets: data.image_size or resolution / 0.875."""
  return config.data.image_size or round(resolution / 0.875)


def space_for_data(space_fields: dict[str, Any], dataset: ImageDataset) -> SearchSpace:
  """The config's SearchSpace, checked against the data set (channels, classes)."""
  space = SearchSpace.from_dict(dict(space_fields), source="config.space")
  channels = dataset.image_shape[-1]
  if space.in_channels != channels:
    raise SearchSpaceError(
        f"config.space.in_channels = {space.in_channels} but {dataset.name} images have {channels} "
        f"channel(s); set --config.space.in_channels={channels}"
    )
  if space.n_classes != dataset.n_classes:
    raise SearchSpaceError(
        f"config.space.n_classes = {space.n_classes} but {dataset.name} has {dataset.n_classes} "
        f"classes; set --config.space.n_classes={dataset.n_classes}"
    )
  return space


def load_config_dataset(config: Any, resolution: int) -> ImageDataset:
  """config.data's data set (variable-size sets resized on the host for `resolution`)."""
  return load_dataset(config.data.name, config.data.data_dir or None,
                      host_image_size(config, resolution))


def preprocessors(dataset: ImageDataset, resolution: int) -> tuple[Preprocess, Preprocess]:
  """(train, eval) device transforms of a data set at the network's resolution."""
  return (make_preprocess(dataset.augment, dataset.mean, dataset.std, resolution, train=True),
          make_preprocess(dataset.augment, dataset.mean, dataset.std, resolution, train=False))


def check_split_batch(what: str, batch_size: int, split_size: int | None, mesh: Mesh) -> None:
  """A global batch that divides over the mesh and fits its split (`what` names the config key)."""
  check_batch(batch_size, mesh, what)
  if split_size is not None and batch_size > split_size:
    raise UserValueError(f"{what} = {batch_size} is larger than its split ({split_size} examples)")


def search_inputs(config: Any, mesh: Mesh, dataset: ImageDataset | None = None) -> SearchInputs:
  """Loads config.data (or takes `dataset`, loaded for the same config.data), carves the
  class-balanced held-out split of config.seed and checks the batch sizes."""
  space_fields = config.space.to_dict()
  if dataset is None:
    dataset = load_config_dataset(config, space_fields.get("resolution", 224))
  space = space_for_data(space_fields, dataset)
  train_idx, holdout_idx = class_balanced_split(dataset.train.labels(), config.data.holdout,
                                                config.seed)
  for what, b, n in (("data.batch_size", config.data.batch_size, len(train_idx)),
                     ("data.arch_batch_size", config.data.arch_batch_size, len(holdout_idx)),
                     ("data.eval_batch_size", config.data.eval_batch_size, None)):
    check_split_batch(what, b, n, mesh)
  train_pre, eval_pre = preprocessors(dataset, space.resolution)
  return SearchInputs(space, dataset, SubsetSource(dataset.train, train_idx),
                      SubsetSource(dataset.train, holdout_idx), train_pre, eval_pre)


def with_preprocess(step_fn: Callable[..., Any], preprocess: Preprocess, family: int,
                    counter: str) -> Callable[..., Any]:
  """step_fn on preprocessed images: the augmentation key is folded from the state's key, the
  step counter `counter` ("step" / "arch_step") and, under data parallelism, the device index."""

  def step(state, batch, *, axis_name=None, **kw):
    key = stream_key(state.key, family, getattr(state, counter), AUGMENT_STREAM)
    if axis_name is not None:
      key = jax.random.fold_in(key, lax.axis_index(axis_name))
    batch = dict(batch, image=preprocess(key, batch["image"]))
    return step_fn(state, batch, axis_name=axis_name, **kw)

  return step
