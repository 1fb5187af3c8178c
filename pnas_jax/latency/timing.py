"""Wall-clock timing of jitted JAX functions on the device JAX runs on.

Protocol: compile and run `warmup` times (first call compiles), then `repeats` timed calls, each
ended by block_until_ready so asynchronous dispatch is not mistaken for speed. Each Timing holds
the median, the 10th percentile (p10), mean, variance and minimum of the calls.

The latency tables and network measurements use p10 (table.MEASURED_STATISTIC). Interference from
other work on the machine (other VMs on the host, the other core's job) only ever adds time, and
on a 2-core VM it comes and goes within a second: the baseline network's medians over 30 calls
moved between 1.48 and 1.87 ms within one process while its fastest calls stayed at 1.40-1.43 ms.
Measured there (Fashion-MNIST space, 14 networks, batch 16, one pinned core, 600 calls each in 20
turns, 7 processes): a network's ratio to the baseline moved between processes by 2.8% rms (max
10.8%) with the median, 1.2% (max 4.5%) with p10, 0.9% (max 2.2%) with the minimum. p10 is nearly
as stable as the minimum without resting on one lucky call, and it ignores the slower first calls
of a turn, whose caches hold another network's code and weights.

Clocks: "wall" (time.perf_counter, the latency a user sees; right for GPU/TPU, where the host
waits) or "process" (CPU time of this process: on a CPU shared with other jobs, time spent
preempted is not counted, so with single-threaded XLA execution it measures the compute a dedicated
core would spend; meaningless for accelerators).

`time_interleaved` times several functions in round-robin rounds, so that slow changes of the
machine's load (other jobs starting and stopping) hit all of them alike instead of biasing whichever
was measured during a busy minute; comparisons between them (architectures, layers) stay fair.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from pnas_jax.errors import UserValueError

CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


def _clock(name: str) -> Callable[[], float]:
  if name not in CLOCKS:
    raise UserValueError(f"unknown clock {name!r}; valid: {', '.join(CLOCKS)}")
  return CLOCKS[name]


@dataclasses.dataclass(frozen=True)
class Timing:
  """Milliseconds over `count` timed calls."""

  median_ms: float
  mean_ms: float
  var_ms2: float
  min_ms: float
  count: int
  p10_ms: float  # the 10th percentile (linear interpolation between the sorted calls)

  def to_dict(self) -> dict[str, float]:
    return dataclasses.asdict(self)


def _summary(samples: list[float]) -> Timing:
  return Timing(
      median_ms=statistics.median(samples),
      mean_ms=statistics.fmean(samples),
      var_ms2=statistics.pvariance(samples),
      min_ms=min(samples),
      count=len(samples),
      p10_ms=float(np.percentile(samples, 10)),
  )


def time_fn(
    fn: Callable[..., Any],
    *args: Any,
    warmup: int = 3,
    repeats: int = 20,
    min_time_s: float = 0.0,
    clock: str = "wall",
) -> Timing:
  """Times `fn(*args)` (already jitted or cheap to call); repeats until `min_time_s` is also met."""
  now = _clock(clock)
  for _ in range(max(1, warmup)):
    jax.block_until_ready(fn(*args))
  samples: list[float] = []
  start = time.perf_counter()
  while len(samples) < repeats or (time.perf_counter() - start) < min_time_s:
    t0 = now()
    jax.block_until_ready(fn(*args))
    samples.append((now() - t0) * 1e3)
  return _summary(samples)


def time_interleaved(
    calls: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]],
    warmup: int = 3,
    repeats: int = 20,
    per_round: int = 5,
    clock: str = "wall",
    on_warm: Callable[[int], None] | None = None,
) -> list[Timing]:
  """Times each `fn(*args)` of `calls` `repeats` times, `per_round` calls at a time, round-robin.

  Every function is first warmed up (compiled) in turn, `on_warm(i)` reporting progress; then the
  rounds run. Returns one Timing per call, in order.
  """
  now = _clock(clock)
  for i, (fn, args) in enumerate(calls):
    for _ in range(max(1, warmup)):
      jax.block_until_ready(fn(*args))
    if on_warm is not None:
      on_warm(i)
  samples: list[list[float]] = [[] for _ in calls]
  per_round = max(1, per_round)
  for _ in range(-(-repeats // per_round)):
    for i, (fn, args) in enumerate(calls):
      for _ in range(per_round):
        t0 = now()
        jax.block_until_ready(fn(*args))
        samples[i].append((now() - t0) * 1e3)
  return [_summary(s) for s in samples]


def device_description() -> str:
  """E.g. 'cpu: cpu (2 cores, jax 0.10.2)', 'cpu: cpu (pinned to 1 of 2 cores, jax 0.10.2)' or
  'gpu: NVIDIA H100 80GB HBM3 x1 (jax 0.10.2)'."""
  d = jax.devices()[0]
  kind = getattr(d, "device_kind", str(d))
  backend = jax.default_backend()
  if backend == "cpu":
    import os

    cores = f"{os.cpu_count()} cores"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if usable < (os.cpu_count() or 1):
      cores = f"pinned to {usable} of {cores}"
    return f"cpu: {kind} ({cores}, jax {jax.__version__})"
  return f"{backend}: {kind} x{jax.device_count()} (jax {jax.__version__})"
