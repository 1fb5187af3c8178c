"""Timing chosen architectures on the target device, beside the baseline (hardware in the loop).

A latency model predicts a whole network's latency from its blocks' measured times; for a single
architecture it can be off by several percent (2026-12-06, 2-core Intel Xeon: a found net of the
six-op Fashion-MNIST space predicted at 0.449 x the baseline measured 0.483 x, twice, 7.5% over its
target). Where the search runs on the device it targets (a CPU search for a CPU target, as in the
Fashion-MNIST protocol), the derivation can time its best candidates instead of trusting the model
for them (config.latency.verify_top, train/derive_by_supernet.py).

A target T stated under the model is a ratio of the baseline's modelled latency, so on the device
it is

    T_dev = T x measured(baseline) / predicted(baseline),

with the baseline timed in the same processes as the candidates, interleaved with them, so that a
drift of the machine between the search and the measurement cancels (the same rule front.py uses
to score the final measurement of a sweep's found nets). The drift also moves between the timing
sessions (fresh processes) of one measurement: on a 2-core Intel Xeon VM (2026-12-06) one session
timed the baseline and four candidates all 3-5% slower than the other two. So the ratio is taken
within each session and the median over the sessions is kept,

    measured(a) / T_dev = median_k [LAT_k(a) / LAT_k(baseline)] x predicted(baseline) / T,

and a candidate hits the target when |measured(a) / T_dev - 1| <= tolerance.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from pnas_jax.latency.measure import TimingProtocol
from pnas_jax.latency.sessions import TimingJob, time_in_sessions
from pnas_jax.search_space.space import Arch, SearchSpace

log = logging.getLogger(__name__)
BASELINE_NAME = "baseline"


def device_target(target: float, predicted_baseline: float, measured_baseline: float) -> float:
  """T_dev = T x measured(baseline) / predicted(baseline): the target on the device's clock."""
  return target * measured_baseline / predicted_baseline


def measured_ratio(net: Mapping[str, Any], baseline: Mapping[str, Any]) -> float:
  """LAT(a) / LAT(baseline) from two measurement records {"value", "sessions"}: the median over the
  sessions of the per-session ratio (module docstring) where both were timed in the same sessions,
  else value / value (a record without "sessions" was timed once)."""
  a, b = net.get("sessions"), baseline.get("sessions")
  if a and b and len(a) == len(b):
    return float(np.median(np.asarray(a, float) / np.asarray(b, float)))
  return float(net["value"]) / float(baseline["value"])


def over_target(ratio: float, target: float, predicted_baseline: float) -> float:
  """measured(a) / T_dev from a paired ratio to the baseline: ratio x predicted(baseline) / T."""
  return ratio * predicted_baseline / target


def timing_placement(cpu_threads: int | None, sessions: int) -> tuple[bool, int]:
  """(in_child, sessions): where a timing job runs and in how many processes.

  cpu_threads=1 on a CPU backend: `sessions` child processes, each pinned to one CPU with
  single-threaded XLA (the target is one core, and this process keeps every core for training).
  Otherwise once, here: this process holds the accelerator.
  """
  in_child = cpu_threads == 1 and jax.default_backend() == "cpu"
  if not in_child and sessions > 1:
    log.info("latency.sessions = %d: timing once, in this process (it holds the %s device)",
             sessions, jax.default_backend())
  return in_child, sessions if in_child else 1


def arch_name(arch: Arch) -> str:
  """A timing record's name for `arch`: its ops joined by '-' (stable, so a rerun resumes)."""
  return "-".join(arch.ops)


@dataclasses.dataclass(frozen=True)
class DeviceCheck:
  """Times architectures with the baseline on this machine, under the latency config's protocol.

  top: how many of the best-scored candidates a derivation times; tolerance: the largest
  |measured / T_dev - 1| that counts as a hit (module docstring).
  """

  space: SearchSpace
  protocol: TimingProtocol
  baseline: Arch
  top: int
  tolerance: float
  cpu_threads: int | None = 1
  sessions: int = 1
  progress: bool = True

  def measure(self, archs: Sequence[Arch], path: str) -> tuple[list[float], list[float], float]:
    """([measured latency of each arch], [its paired ratio to the baseline], measured latency of
    the baseline), timed together in the file at `path` (resumable: a rerun times only what the
    file lacks)."""
    named = [(BASELINE_NAME, self.baseline)] + [(arch_name(a), a) for a in archs]
    in_child, sessions = timing_placement(self.cpu_threads, self.sessions)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    job = TimingJob(self.space, self.protocol, networks=path, named_archs=tuple(named),
                    cpu_threads=self.cpu_threads if in_child else None, progress=self.progress)
    _, meas = time_in_sessions(job, sessions, in_child=in_child)
    record = meas.summaries()
    base = record[BASELINE_NAME]
    return ([record[arch_name(a)]["value"] for a in archs],
            [measured_ratio(record[arch_name(a)], base) for a in archs], base["value"])
