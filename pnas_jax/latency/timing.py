"""Wall-clock timing of jitted JAX functions on the device JAX runs on.

Protocol: compile and run `warmup` times (first call compiles), then `repeats` timed calls, each
ended by block_until_ready so asynchronous dispatch is not mistaken for speed; the median is the
estimate (robust to the odd preempted run on a shared machine), the variance is reported alongside.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax


@dataclasses.dataclass(frozen=True)
class Timing:
  """Milliseconds over `count` timed calls."""

  median_ms: float
  mean_ms: float
  var_ms2: float
  min_ms: float
  count: int

  def to_dict(self) -> dict[str, float]:
    return dataclasses.asdict(self)


def time_fn(
    fn: Callable[..., Any], *args: Any, warmup: int = 3, repeats: int = 20, min_time_s: float = 0.0
) -> Timing:
  """Times `fn(*args)` (already jitted or cheap to call); repeats until `min_time_s` is also met."""
  for _ in range(max(1, warmup)):
    jax.block_until_ready(fn(*args))
  samples: list[float] = []
  start = time.perf_counter()
  while len(samples) < repeats or (time.perf_counter() - start) < min_time_s:
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    samples.append((time.perf_counter() - t0) * 1e3)
  return Timing(
      median_ms=statistics.median(samples),
      mean_ms=statistics.fmean(samples),
      var_ms2=statistics.pvariance(samples),
      min_ms=min(samples),
      count=len(samples),
  )


def device_description() -> str:
  """E.g. 'cpu: cpu (2 cores)' or 'gpu: NVIDIA H100 80GB HBM3'."""
  d = jax.devices()[0]
  kind = getattr(d, "device_kind", str(d))
  backend = jax.default_backend()
  if backend == "cpu":
    import os

    return f"cpu: {kind} ({os.cpu_count()} cores, jax {jax.__version__})"
  return f"{backend}: {kind} x{jax.device_count()} (jax {jax.__version__})"
