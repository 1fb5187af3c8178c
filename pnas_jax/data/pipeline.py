"""Host-side batching over in-memory splits: seeded epochs, resumable position, per-process slices.

Each epoch e is a permutation drawn from np.random.default_rng([seed, e]), so the stream is a pure
function of (seed, epoch, step): a checkpoint stores `iterator.state()` and a resumed run replays the
identical batches. With several processes (multi-host), every process draws the same global batch
and keeps its contiguous slice [process_index * local : (process_index + 1) * local].
`prefetch_to_device` keeps `size` batches in flight: jax.device_put is asynchronous, so the next
transfers overlap the running step and the loop never waits on the host.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from pnas_jax.data.sources import Source


class EpochIterator:
  """Infinite iterator of {"image", "label"} numpy batches; drops each epoch's incomplete batch."""

  def __init__(
      self,
      source: Source,
      global_batch: int,
      seed: int,
      shuffle: bool = True,
      process_index: int = 0,
      process_count: int = 1,
      state: dict[str, int] | None = None,
  ):
    if global_batch % process_count:
      raise ValueError(
          f"global batch {global_batch} is not divisible by the {process_count} processes"
      )
    if global_batch > len(source):
      raise ValueError(f"global batch {global_batch} is larger than the split ({len(source)})")
    self.source = source
    self.global_batch, self.seed, self.shuffle = global_batch, seed, shuffle
    self.local_batch = global_batch // process_count
    self.process_index = process_index
    self.steps_per_epoch = len(source) // global_batch
    self.epoch, self.step = (state["epoch"], state["step"]) if state else (0, 0)
    self._perm_epoch, self._perm = -1, None

  @classmethod
  def after(cls, consumed: int, source: Source, global_batch: int, seed: int, **kw: Any
            ) -> EpochIterator:
    """The iterator positioned after `consumed` batches (a resumed loop: consumed = steps done)."""
    per_epoch = max(1, len(source) // global_batch)
    epoch, step = divmod(int(consumed), per_epoch)
    return cls(source, global_batch, seed, state={"epoch": epoch, "step": step}, **kw)

  def state(self) -> dict[str, int]:
    """Position of the next batch: store it in checkpoints, pass it back as `state=` to resume."""
    return {"epoch": self.epoch, "step": self.step}

  def _permutation(self) -> np.ndarray:
    if self._perm_epoch != self.epoch:
      n = len(self.source)
      self._perm = (
          np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle
          else np.arange(n)
      )
      self._perm_epoch = self.epoch
    return self._perm

  def __iter__(self) -> EpochIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    # Sort the global batch, then slice: process i gets the same examples (in the same order) as
    # devices i*local.. of a single process, so the run does not depend on the process count.
    start = self.step * self.global_batch
    local = self.process_index * self.local_batch
    idx = np.sort(self._permutation()[start : start + self.global_batch])[local : local + self.local_batch]
    batch = self.source.take(idx)
    self.step += 1
    if self.step == self.steps_per_epoch:
      self.epoch, self.step = self.epoch + 1, 0
    return batch


def prefetch_to_device(
    iterator: Iterator[Any],
    size: int = 2,
    sharding: jax.sharding.Sharding | None = None,
    put: Callable[[Any], Any] | None = None,
) -> Iterator[Any]:
  """Yields the iterator's batches already transferred (asynchronously) to the device(s).

  `put` (e.g. train.parallel.global_batch bound to a mesh) replaces jax.device_put(batch, sharding).
  """
  queue: collections.deque = collections.deque()
  if put is None:
    put = (lambda b: jax.device_put(b, sharding)) if sharding is not None else jax.device_put

  def enqueue(n: int) -> None:
    for _ in range(n):
      try:
        batch = next(iterator)
      except StopIteration:
        return
      queue.append(put(batch))

  enqueue(size)
  while queue:
    yield queue.popleft()
    enqueue(1)
