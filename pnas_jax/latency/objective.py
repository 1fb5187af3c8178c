"""The search's latency term from its config: E[LAT] model, target T and loss (Sec. 3.3.1).

config.latency.model:
  "none"     accuracy only (loss = CE);
  "macs"     E[MACs] in millions (the FLOPs-constrained variant);
  "measure"  a latency table measured on this device before the search (cached and resumable in
             workdir/latency/), plus `n_networks` whole networks to fit the linear predictor that
             corrects what a sum of per-layer times misses (0: plain table sum);
  a path     our table JSON, the reference's YAML table, or a fitted predictor JSON.
The target is config.latency.target, or target_ratio x the baseline arch's latency under the same
model (the demo's "0.7 x MobileNetV2-like baseline"). The loss binds T: loss_fn(ce, E[LAT]).

config.latency.derive picks the final architecture from alpha: "argmax" (the paper's rule, per
block), "budget" (the most probable architecture whose modelled latency is in
[(1 - derive_band) T, T]; arch/derive.py) or "supernet" (that architecture and uniform draws from
the same band, scored by held-out accuracy in the warmed-up supernet; train/derive_by_supernet.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from pnas_jax.arch.derive import derive, derive_within_budget
from pnas_jax.arch.sampling import LatencyBand
from pnas_jax.errors import MissingFileError, UserValueError
from pnas_jax.latency.loss import latency_loss
from pnas_jax.latency.measure import TimingProtocol
from pnas_jax.latency.on_device import DeviceCheck, timing_placement
from pnas_jax.latency.predictor import (
  Predictor,
  TableSumPredictor,
  fit_linear,
  load_latency_model,
  macs_predictor,
  save_predictor,
)
from pnas_jax.latency.sessions import TimingJob, time_in_sessions
from pnas_jax.latency.table import check_header, cost_table
from pnas_jax.search_space.sampling import sample_archs
from pnas_jax.search_space.space import Arch, SearchSpace

log = logging.getLogger(__name__)
DERIVE_MODES = ("argmax", "budget", "supernet")
MEASURED_PREDICTOR = "predictor.json"  # what "measure" fits, in WORKDIR/latency/


@dataclasses.dataclass
class LatencyObjective:
  predictor: Predictor | None
  target: float | None
  unit: str | None
  loss_fn: Callable[[jax.Array, jax.Array], jax.Array] | None
  baseline: float | None = None  # the baseline arch's latency under the model
  derive_mode: str = "argmax"  # "argmax" | "budget" | "supernet" (config.latency.derive)
  # "budget" / "supernet": latency in [(1 - band) T, T] (config.latency.derive_band)
  derive_band: float = 0.0
  # "supernet" with latency.verify_top > 0: times the best candidates on this machine (on_device.py)
  device_check: DeviceCheck | None = None

  @property
  def cost_fn(self) -> Callable[[Sequence[jax.Array]], jax.Array] | None:
    return None if self.predictor is None else self.predictor.predict

  def expected(self, probs: Sequence[np.ndarray]) -> float:
    """E[LAT] under per-block probabilities."""
    return float(self.predictor.predict([np.asarray(p, np.float32) for p in probs]))

  def of_arch(self, arch: Arch) -> float:
    return float(self.predictor.of_archs([arch])[0])

  def band(self) -> LatencyBand | None:
    """[(1 - derive_band) T, T] (derive_band 0: <= T), the band the budgeted derivation picks
    from, as a LatencyBand to sample in (REINFORCE's within_target); None without a model or
    target."""
    if self.predictor is None or not self.target:
      return None
    base, costs = self.predictor.block_costs()
    lo = (1.0 - self.derive_band) * self.target if self.derive_band > 0 else -np.inf
    return LatencyBand(float(base), tuple(tuple(map(float, c)) for c in costs), lo, self.target)

  def derive(self, alpha: Sequence[np.ndarray], space: SearchSpace) -> Arch:
    """The final architecture from alpha under config.latency.derive ("supernet": the policy's
    candidate, the budgeted one; train/derive_by_supernet.py scores it against in-band draws)."""
    if self.derive_mode in ("budget", "supernet"):
      base, costs = self.predictor.block_costs()
      return derive_within_budget(alpha, space, base, costs, self.target, band=self.derive_band)
    return derive(alpha, space)


def measure_predictor(space: SearchSpace, directory: str, protocol: Any, n_networks: int,
                      baseline_op: str, seed: int = 0, progress: bool = True,
                      cpu_threads: int | None = None, sessions: int = 1) -> Predictor:
  """Measures (or resumes) the table and `n_networks` networks, fits the linear predictor and
  saves it as `directory`/predictor.json (a sweep's targets and later searches reuse it).

  The baseline arch (every block `baseline_op`) is always among the measured networks, so the
  target derived from it rests on a measurement. cpu_threads=1 on a CPU backend: the target is one
  core, so the timing runs in `sessions` child processes pinned to one CPU with single-threaded
  XLA (measure.set_cpu_threads), as `pnas latency measure` and the final `pnas latency networks`
  time it, and each entry keeps the median over them (latency/sessions.py); this process keeps
  every core for training. Otherwise it times once, here (this process holds the device).
  """
  in_child, sessions = timing_placement(cpu_threads, sessions)
  named = [("baseline", Arch.uniform(space, baseline_op))] + [
      (f"sample{i:03d}", a) for i, a in enumerate(sample_archs(space, n_networks, seed))]
  job = TimingJob(space, protocol, table=os.path.join(directory, "table.json"),
                  networks=os.path.join(directory, "networks.json") if n_networks > 0 else None,
                  named_archs=tuple(named), cpu_threads=cpu_threads if in_child else None,
                  progress=progress)
  os.makedirs(directory, exist_ok=True)
  table, meas = time_in_sessions(job, sessions, in_child=in_child)
  costs = cost_table(table, space)
  if meas is None:
    predictor = TableSumPredictor(space, costs, table.header)
  else:
    predictor = fit_linear(space, costs, meas.archs(), meas.latencies(), header=table.header,
                           seed=seed)
  save_predictor(os.path.join(directory, MEASURED_PREDICTOR), predictor)
  return predictor


def latency_objective(config: Any, space: SearchSpace, workdir: str) -> LatencyObjective:
  """Builds the model, target and loss of config.latency (checked before anything is jitted)."""
  lat = config.latency
  model, check_device, batch = lat.model, lat.check_device, lat.batch
  protocol = TimingProtocol(batch=batch, repeats=lat.repeats, clock=lat.clock,
                            dw_impl=config.model.dw_impl, seed=config.seed)
  n_networks, baseline_op, cpu_threads = lat.n_networks, lat.baseline_op, lat.cpu_threads
  sessions = lat.sessions
  target, ratio = lat.target, lat.target_ratio
  if lat.target_ratios or lat.targets:
    raise UserValueError(
        f"config.latency.target_ratios = {tuple(lat.target_ratios)} / targets = {tuple(lat.targets)} "
        "describe a sweep of several targets: run it with `pnas sweep`, or set one target with "
        "latency.target_ratio / latency.target")
  loss_name, loss_params = lat.loss, lat.loss_params.to_dict()
  derive_mode, derive_band = lat.derive, lat.derive_band
  verify_top, verify_tolerance = lat.verify_top, lat.verify_tolerance
  if derive_mode not in DERIVE_MODES:
    raise UserValueError(f"config.latency.derive = {derive_mode!r}: use one of {', '.join(DERIVE_MODES)}")
  if not 0.0 <= derive_band < 1.0:
    raise UserValueError(f"config.latency.derive_band = {derive_band!r}: use a fraction in [0, 1) "
                     "(0.1: the derived arch within 10% below the target)")
  if derive_mode == "supernet" and not derive_band > 0:
    raise UserValueError("config.latency.derive = 'supernet' draws its candidates inside the band "
                         "[(1 - derive_band) T, T]: set config.latency.derive_band > 0 (e.g. 0.03)")
  if verify_top and derive_mode != "supernet":
    raise UserValueError(f"config.latency.verify_top = {verify_top} times the best-scored "
                         "candidates of derive = 'supernet'; set latency.derive = 'supernet' (with "
                         f"derive_band > 0), or verify_top = 0 (derive is {derive_mode!r})")
  if verify_top and jax.process_count() > 1:
    raise UserValueError(f"config.latency.verify_top = {verify_top}: timing candidates on the "
                         f"device needs a single-process search ({jax.process_count()} processes "
                         "here, each would time its own host); set latency.verify_top = 0")
  if model == "none":
    if derive_mode != "argmax":
      raise UserValueError(f"config.latency.derive = {derive_mode!r} needs a latency model; set "
                           "config.latency.model (or derive='argmax')")
    return LatencyObjective(None, None, None, None)
  if baseline_op not in space.candidates:
    raise UserValueError(f"config.latency.baseline_op = {baseline_op!r} is not a candidate of the space "
                     f"({', '.join(space.candidates)}); set it to one of them")
  if model == "macs":
    predictor = macs_predictor(space)
  elif model == "measure":
    predictor = measure_predictor(space, os.path.join(workdir, "latency"), protocol, n_networks,
                                  baseline_op, config.seed, progress=config.log.progress,
                                  cpu_threads=cpu_threads, sessions=sessions)
  else:
    if not os.path.exists(model):
      raise MissingFileError(
          f"config.latency.model = {model!r}: no such file. Give a latency table / predictor "
          "(make one with `pnas latency measure --config configs/latency/<name>.py` and "
          "`pnas latency fit`), or use 'measure', 'macs' or 'none'"
      )
    predictor = load_latency_model(model, space, device="local" if check_device else None,
                                   batch=batch if check_device else None)
  baseline = float(predictor.of_archs([Arch.uniform(space, baseline_op)])[0])
  target = ratio * baseline if ratio > 0 else target
  if not target or target <= 0:
    raise UserValueError(f"config.latency.target = {target!r}: give a positive target or target_ratio")
  loss = latency_loss(loss_name, **loss_params)
  loss(1.0, target, target)  # a loss that cannot take this target fails now, not inside a step
  log.info("latency model %s (%s): baseline %.4g, target %.4g", model, predictor.unit, baseline,
           target)
  check = None
  if verify_top:
    if getattr(predictor, "header", None) is not None:  # timed here: it must be the model's device
      check_header(predictor.header, backend=jax.default_backend(), batch=batch,
                   source=f"config.latency.model = {model!r} (latency.verify_top times on this machine)")
    check = DeviceCheck(space, protocol, Arch.uniform(space, baseline_op), int(verify_top),
                        float(verify_tolerance), cpu_threads, sessions, config.log.progress)
  objective = LatencyObjective(predictor, float(target), predictor.unit,
                               lambda ce, e_lat: loss(ce, e_lat, target), baseline,
                               derive_mode, float(derive_band), check)
  if derive_mode != "argmax":  # an empty band fails now, naming the reachable range
    objective.derive([np.zeros(len(b.candidates)) for b in space.blocks], space)
  return objective
