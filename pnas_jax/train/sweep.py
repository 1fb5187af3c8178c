"""One warm-up, many latency targets: `pnas sweep`.

    result = sweep(load_config("configs/search/fashion_mnist.py",
                               ["--config.latency.target_ratios=(0.5, 0.7, 0.9)"]), "results/sweep")

The warm-up (uniformly sampled paths; it does not depend on the target) runs once, in
WORKDIR/warmup (with latency.derive_warmups = N > 1, N - 1 more with the next seeds run in
WORKDIR/warmup_2 ..., and each target's supernet derivation scores its candidates in all N).
Each target's architecture search then starts from the warm-up's final checkpoint in
WORKDIR/target_<label>/ and runs the search epochs only: its state, data position and
randomness are exactly those of a plain `pnas search` with that one target, so a sweep of one
target ends bit-identical to that search. Every part is resumable (rerun the command); a target
already finished is not run again. Targets are ratios of the baseline's latency under the latency
model (latency.target_ratios) or absolute values in its unit (latency.targets). A latency model
that is measured here ("measure") is measured once, in the warm-up, and fitted into
WORKDIR/warmup/latency/predictor.json, which every target then uses.

Outputs: each target's search outputs (arch.json, net.config, plots, ...), and sweep.json /
sweep.md / front.png: per target the found architecture, its modelled latency, the supernet's
held-out accuracy of it, and the time of the shared warm-up and of each target.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from pnas_jax import plots
from pnas_jax.config_loading import validate_config
from pnas_jax.errors import UserValueError
from pnas_jax.file_io import write_bytes_atomic, write_json
from pnas_jax.latency.objective import MEASURED_PREDICTOR
from pnas_jax.train.search import SearchResult, search
from pnas_jax.workdir_lock import WorkdirLock

log = logging.getLogger(__name__)
WARMUP_DIR = "warmup"


@dataclasses.dataclass
class SweepResult:
  workdir: str
  warmup: SearchResult
  targets: list[tuple[str, SearchResult]]  # (label, result) per target, in config order
  # latency.derive_warmups > 1: the further warm-ups the candidates are also scored in
  extra_warmups: list[SearchResult] = dataclasses.field(default_factory=list)

  @property
  def exit_code(self) -> int:
    codes = [r.exit_code for r in (self.warmup, *self.extra_warmups)] + [
        r.exit_code for _, r in self.targets]
    return next((c for c in codes if c), 0)

  @property
  def partial(self) -> bool:
    return (self.warmup.partial or any(r.partial for r in self.extra_warmups)
            or len(self.targets) < 1 or any(r.partial for _, r in self.targets))


def sweep_targets(config: Any) -> list[tuple[str, str, float]]:
  """(label, config key, value) per target: ("ratio_0.70", "target_ratio", 0.7), ..."""
  ratios, absolute = tuple(config.latency.target_ratios), tuple(config.latency.targets)
  if bool(ratios) == bool(absolute):
    raise UserValueError(
        "a sweep needs exactly one of config.latency.target_ratios (ratios of the baseline's "
        f"latency) and config.latency.targets (absolute); got target_ratios={ratios}, "
        f"targets={absolute}. E.g. --config.latency.target_ratios='(0.5, 0.7, 0.9)'")
  values, key, prefix = (ratios, "target_ratio", "ratio") if ratios else (absolute, "target", "target")
  bad = [v for v in values if not v > 0]
  if bad or len(set(values)) != len(values):
    raise UserValueError(f"config.latency.{key}s = {values}: give distinct positive values")
  return [(f"{prefix}_{v:g}", key, float(v)) for v in values]


def _target_keys(key: str, value: float) -> dict[str, float]:
  """The latency keys of one target: a ratio, or an absolute target (ratio 0 = use `target`)."""
  return {"target_ratio": value, "target": 0.0} if key == "target_ratio" else {
      "target": value, "target_ratio": 0.0}


def _child_config(config: Any, what: str, **latency: Any) -> Any:
  """A copy of the sweep config for one search (`what`): no sweep lists, `latency` keys set."""
  child = config.copy_and_resolve_references()
  child.latency.target_ratios, child.latency.targets = (), ()
  for k, v in latency.items():
    child.latency[k] = v
  validate_config(child, f"the sweep's {what} config")
  return child


def sweep(config: Any, workdir: str, *, progress: bool | None = None,
          overwrite: bool = False) -> SweepResult:
  """Runs (or resumes) the warm-up once, then one search per target; see the module docstring."""
  targets = sweep_targets(config)
  if not config.schedule.warmup_epochs > 0:
    raise UserValueError(f"schedule.warmup_epochs = {config.schedule.warmup_epochs}: a sweep shares "
                         "its warm-up between targets, so it needs one (> 0)")
  if config.latency.derive_warmups > 1 and config.latency.derive != "supernet":
    raise UserValueError(f"latency.derive_warmups = {config.latency.derive_warmups} scores the "
                         "candidates of derive = 'supernet' in that many warm-ups; set "
                         f"latency.derive = 'supernet' or derive_warmups = 1 (derive is "
                         f"{config.latency.derive!r})")
  if tuple(config.latency.derive_scoring_warmups):
    raise UserValueError("latency.derive_scoring_warmups is set by the sweep itself (from "
                         "derive_warmups); leave it empty")
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  with WorkdirLock(workdir, "sweep"):
    return _sweep(config, targets, workdir, progress, overwrite)


def _sweep(config: Any, targets: list[tuple[str, str, float]], workdir: str, progress: bool | None,
           overwrite: bool) -> SweepResult:
  # Any valid target will do for the warm-up: it samples paths uniformly and takes no arch step.
  warm_cfg = _child_config(config, "warm-up", **_target_keys(*targets[0][1:]))
  warm_cfg.schedule.epochs = 0.0
  if warm_cfg.latency.derive == "supernet":  # the targets score (and time) their candidates
    warm_cfg.latency.derive, warm_cfg.latency.verify_top = "budget", 0
  warm_cfg.latency.derive_warmups, warm_cfg.latency.derive_scoring_warmups = 1, ()
  warm_dir = os.path.join(workdir, WARMUP_DIR)
  log.info("sweep: warm-up in %s, then %d target(s): %s", warm_dir, len(targets),
           ", ".join(t[0] for t in targets))
  warmup = search(warm_cfg, warm_dir, progress=progress, overwrite=overwrite)
  result = SweepResult(workdir, warmup, [])
  if warmup.partial:
    return result
  model = config.latency.model
  if model == "measure":  # measured once, in the warm-up
    model = os.path.join(warm_dir, "latency", MEASURED_PREDICTOR)
  scoring = _run_scoring_warmups(config, warm_cfg, model, workdir, progress, overwrite, result)
  if scoring is None:
    return result
  for label, key, value in targets:
    child = _child_config(config, label, model=model, derive_scoring_warmups=scoring,
                          **_target_keys(key, value))
    r = search(child, os.path.join(workdir, f"target_{label}"),
               progress=progress, overwrite=overwrite, init_from=warm_dir)
    result.targets.append((label, r))
    if r.partial:
      break
  _write_summary(result)
  return result


def _run_scoring_warmups(config: Any, warm_cfg: Any, model: str, workdir: str, progress: bool | None,
                         overwrite: bool, result: SweepResult) -> tuple[str, ...] | None:
  """Runs the latency.derive_warmups - 1 further warm-ups the targets' candidates are also scored in
  (seeds config.seed + 1, ...; the first warm-up's latency model), in WORKDIR/warmup_<k>; their
  workdirs, or None when one stopped early (its result is in result.extra_warmups)."""
  dirs = []
  for k in range(2, config.latency.derive_warmups + 1):
    cfg = warm_cfg.copy_and_resolve_references()
    cfg.seed, cfg.latency.model = config.seed + k - 1, model
    validate_config(cfg, f"the sweep's warm-up {k} config")
    path = os.path.join(workdir, f"{WARMUP_DIR}_{k}")
    log.info("sweep: warm-up %d of %d (seed %d) in %s, for scoring the candidates", k,
             config.latency.derive_warmups, cfg.seed, path)
    r = search(cfg, path, progress=progress, overwrite=overwrite)
    result.extra_warmups.append(r)
    if r.partial:
      return None
    dirs.append(path)
  return tuple(dirs)


def _row(label: str, r: SearchResult) -> dict[str, Any]:
  return {"label": label, "target": r.target, "unit": r.latency_unit, "arch": list(r.arch.ops),
          "arch_latency": r.arch_latency, "expected_latency": r.expected_latency,
          "over_target": r.arch_latency / r.target if r.arch_latency and r.target else None,
          "measured_over_target": _measured_over_target(r),
          "holdout_top1": r.holdout_top1, "status": r.status.value, "wall_s": r.wall_s,
          "workdir": r.workdir}


def _measured_over_target(r: SearchResult) -> float | None:
  """The chosen arch's measured latency / T_dev where latency.verify_top timed it, else None."""
  for c in (r.derivation or {}).get("candidates", []):
    if c["ops"] == list(r.arch.ops) and "measured_over_target" in c:
      return c["measured_over_target"]
  return None


def _write_summary(result: SweepResult) -> None:
  """sweep.json, sweep.md and front.png (the found front under the latency model)."""
  rows = [_row(label, r) for label, r in result.targets]
  summary = {"warmup": {"wall_s": result.warmup.wall_s, "steps": result.warmup.step,
                        "workdir": result.warmup.workdir},
             "scoring_warmups": [{"wall_s": r.wall_s, "workdir": r.workdir}
                                 for r in result.extra_warmups],
             "targets": rows, "partial": result.partial}
  write_json(os.path.join(result.workdir, "sweep.json"), summary)
  unit = rows[0]["unit"] if rows else ""
  lines = ["# pnas sweep", "",
           f"Shared warm-up: {result.warmup.step} steps, {result.warmup.wall_s:.0f} s."
           + "".join(f" Scoring warm-up {k} (seed + {k - 1}): {r.wall_s:.0f} s."
                     for k, r in enumerate(result.extra_warmups, 2)), "",
           f"| target | target ({unit}) | derived arch ({unit}) | / target | measured / target "
           "(latency.verify_top) | held-out top-1 (supernet, %) | search time (s) | architecture |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    top1 = "" if r["holdout_top1"] is None else f"{r['holdout_top1']:.2f}"
    lat = "" if r["arch_latency"] is None else f"{r['arch_latency']:.4g}"
    ratio = "" if r["over_target"] is None else f"{r['over_target']:.3f}"
    measured = "" if r["measured_over_target"] is None else f"{r['measured_over_target']:.3f}"
    lines.append(f"| {r['label']} | {r['target']:.4g} | {lat} | {ratio} | {measured} | {top1} | "
                 f"{r['wall_s']:.0f} | {' '.join(r['arch'])} |")
  lines += ["", "![front](front.png)", ""]
  write_bytes_atomic(os.path.join(result.workdir, "sweep.md"), "\n".join(lines).encode())
  points = [{"label": r["label"], "x": r["arch_latency"], "y": r["holdout_top1"], "kind": "found"}
            for r in rows]
  plots.plot_pareto(points, os.path.join(result.workdir, "front.png"),
                    x_label=f"modelled latency ({unit})", y_label="held-out top-1 in the supernet (%)",
                    title="the sweep's found architectures")
