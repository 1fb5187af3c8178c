"""`pnas demo`: the push-button run — networks that are fast on THIS machine and accurate on the data,
shown against hand-designed and random networks.

    pnas demo --workdir results/demo [--quick] [--seed 0]

Offline on Fashion-MNIST by default (Debian's dataset-fashion-mnist; `make demo` installs it):
  1. latency: measure a latency table for this CPU and whole networks (the baseline among them)
     and fit the latency predictor (configs/latency/fashion_mnist.py); the baseline is the
     hand-designed net at the same widths with every block 3x3_MBConv6 (MobileNetV2-like);
  2. a sweep (configs/search/fashion_mnist.py): the supernet is warmed up once, then searched for
     each of three latency targets, 0.6, 0.7 and 0.8 x the baseline's latency;
  3. retrain, with the same budget and seed (configs/train/fashion_mnist.py): the three found nets,
     the hand-designed family's members that span the targets (uniform nets, every block
     3x3_MBConv6 or 3x3_MBConv3, blocks skipped from the end of each stage) and one random
     architecture per target, drawn inside the target's latency band as the found net is;
  4. measure every trained net and the baseline, interleaved, in each of three timing processes
     (the median per net of each process's 10th percentile of the timed calls) and write report.md,
     report.json and pareto.png: each method's front (accuracy vs measured latency), whether each
     found net hit its target, and each found net against the hand-designed curve and the random
     net at its latency (pnas_jax/front.py, the protocol of experiments/pareto.py with one seed).
The target device is one core of this machine at batch 16: every latency is measured in a child
process pinned to one CPU running single-threaded XLA, timed with the process CPU-time clock
(repeatable while other jobs share the machine), while training uses every core. Every phase is
resumable: rerun the same command after an interruption.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

from tqdm.auto import tqdm

from pnas_jax import front
from pnas_jax.child_process import run_pnas
from pnas_jax.config_loading import load_config
from pnas_jax.errors import MissingFileError, UserFileError
from pnas_jax.file_io import read_json, write_bytes_atomic, write_json
from pnas_jax.latency.predictor import load_latency_model
from pnas_jax.latency.timing import device_description
from pnas_jax.search_space.space import Arch
from pnas_jax.train.inputs import load_config_dataset, space_for_data
from pnas_jax.train.sweep import sweep
from pnas_jax.workdir_lock import WorkdirLock

REPO_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
# The sweep's targets (x the baseline's latency), the hand-designed nets retrained at most, the
# random nets per target.
TARGET_RATIOS = (0.6, 0.7, 0.8)
MAX_HAND = 3
RANDOM_PER_TARGET = 1
# Phase budgets as fractions of the whole run (for the ETA; the trainings share theirs).
PHASES = (("latency", 0.02), ("sweep", 0.20), ("train", 0.76), ("final latency", 0.02))


def _config_path(kind: str, name: str) -> str:
  """configs/<kind>/<name>.py from the repo (an installed package falls back to the cwd)."""
  for base in (REPO_CONFIGS, os.path.join(os.getcwd(), "configs")):
    path = os.path.join(base, kind, f"{name}.py")
    if os.path.exists(path):
      return path
  raise MissingFileError(f"configs/{kind}/{name}.py not found (run from the repository root)")


def demo_overrides(quick: bool, seed: int, data: str, data_dir: str | None, latency_dir: str
                   ) -> tuple[list[str], list[str], list[str]]:
  """(latency, search, train) config overrides; --quick shrinks every phase for a first look."""
  common = [f"--config.seed={seed}", f"--config.data.name={data}"]
  if data_dir:
    common.append(f"--config.data.data_dir={data_dir}")
  latency = [f"--config.table={latency_dir}/table.json",
             f"--config.networks={latency_dir}/networks.json",
             f"--config.predictor={latency_dir}/predictor.json"]
  search = [*common, "--config.log.plots=True", "--config.log.progress=False",
            f"--config.latency.model={latency_dir}/predictor.json", "--config.latency.target_ratio=0",
            f"--config.latency.target_ratios={TARGET_RATIOS}",
            # Half the config's 24 candidates per target (each ~0.65 s to score on 2 cores).
            "--config.latency.derive_candidates=12",
            # The demo's 3-op predictor hits its targets (99-100%); timing the candidates would
            # add ~12 s per target (more on a first run, compiling) to the 15-minute budget.
            "--config.latency.verify_top=0"]
  # Latency is measured once for every net at the end (front.measure_latencies).
  train = [*common, "--config.report.latency_repeats=0", "--config.log.progress=False"]
  if quick:
    latency += ["--config.n_networks=8", "--config.repeats=20"]
    search += ["--config.schedule.steps_per_epoch=30", "--config.schedule.warmup_epochs=1.0",
               "--config.schedule.epochs=1.5", "--config.schedule.arch_every=1",
               "--config.optim.arch_lr=0.05", "--config.eval.max_batches=4",
               "--config.eval.bn_batches=2", "--config.log.every_steps=10",
               "--config.latency.derive_candidates=4"]
    train += ["--config.schedule.steps_per_epoch=60", "--config.schedule.epochs=1.0",
              "--config.eval.every_epochs=0", "--config.log.every_steps=20"]
  return latency, search, train


class PhaseProgress:
  """One bar over the demo's phases: names the current phase, elapsed time and the ETA; it moves
  after each training too. The search and each training show their own bar below it (steps,
  images/s, ETA of the phase)."""

  def __init__(self, enabled: bool):
    self.enabled = enabled
    self._bar = tqdm(total=100, desc="demo", unit="%", disable=not enabled, file=sys.stderr,
                     bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")
    self._done, self._phase, self._t, self._start_done = 0.0, 0, 0.0, 0.0

  def start(self, i: int) -> None:
    self._phase, self._t, self._start_done = i, time.time(), self._done
    self._bar.set_description(f"demo [{i + 1}/{len(PHASES)}: {PHASES[i][0]}]")
    self._bar.refresh()

  def _advance(self, percent: float) -> None:
    self._done += percent
    self._bar.n = min(100.0, round(self._done, 1))
    self._bar.refresh()

  def sub_step(self, n: int) -> Callable[[], None]:
    """A callback that advances the current phase by 1/n of its share."""
    return lambda: self._advance(100 * PHASES[self._phase][1] / n)

  def finish(self) -> float:
    """Completes the current phase; returns its wall time in seconds."""
    self._advance(self._start_done + 100 * PHASES[self._phase][1] - self._done)
    return time.time() - self._t

  def close(self) -> None:
    self._bar.close()


def run_demo(workdir: str, quick: bool = False, seed: int = 0, data: str = "fashion_mnist",
             data_dir: str | None = None, progress: bool = True) -> dict[str, Any]:
  """Runs (or resumes) the whole demo in `workdir`; returns report.json's content, or
  {"exit_code": N, "partial": True} when a phase was interrupted (rerun to resume). Holds the
  workdir's lock throughout (a second demo on it fails at once)."""
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  with WorkdirLock(workdir, "demo"):
    return _run_demo(workdir, quick, seed, data, data_dir, progress)


def _latency_phase(workdir: str, search_cfg: Any, l_over: list[str]) -> tuple[Any, Any, Any]:
  """Measures the table and whole networks (child process, single-threaded) and fits the
  predictor, once; returns (space, predictor, its fit metrics)."""
  latency_cfg = _config_path("latency", "fashion_mnist")
  dataset = load_config_dataset(search_cfg, search_cfg.space.resolution)
  space = space_for_data(search_cfg.space.to_dict(), dataset)
  predictor_path = os.path.join(workdir, "latency", "predictor.json")
  if not os.path.exists(predictor_path):
    run_pnas("latency", "measure", "--config", latency_cfg, *l_over)
    run_pnas("latency", "fit", "--config", latency_cfg, *l_over, "--json")
  # Checks it fits this space and the target batch (a workdir of an older demo may hold another).
  predictor = load_latency_model(predictor_path, space, batch=search_cfg.latency.batch)
  return space, predictor, read_json(predictor_path, UserFileError).get("metrics")


def _run_demo(workdir: str, quick: bool, seed: int, data: str, data_dir: str | None,
              progress: bool) -> dict[str, Any]:
  t0 = time.time()
  latency_dir = os.path.join(workdir, "latency")
  os.makedirs(latency_dir, exist_ok=True)
  l_over, s_over, t_over = demo_overrides(quick, seed, data, data_dir, latency_dir)
  search_cfg = load_config(_config_path("search", "fashion_mnist"), s_over)
  bar = PhaseProgress(progress)
  timings: dict[str, float] = {}
  try:
    bar.start(0)  # 1. latency table + networks measured here, predictor fitted
    space, predictor, fit_metrics = _latency_phase(workdir, search_cfg, l_over)
    timings["latency"] = bar.finish()

    bar.start(1)  # 2. one warm-up, one search per target
    sw = sweep(search_cfg, os.path.join(workdir, "sweep"), progress=bar.enabled)
    timings["sweep"] = bar.finish()
    if sw.partial:
      return {"exit_code": sw.exit_code or 1, "partial": True}

    bar.start(2)  # 3. found, hand-designed and random nets retrained with one budget and seed
    targets = [(label, r.target, r.arch) for label, r in sw.targets]
    nets = front.choose_networks(space, predictor.of_archs, targets, search_cfg.latency.derive_band
                                 or 0.05, n_random=RANDOM_PER_TARGET, max_hand=MAX_HAND,
                                 sample_seed=1000 + seed)
    seeds = [seed]
    reports, code = front.train_networks(
        [(n[0], n[3]) for n in nets], space, workdir, _config_path("train", "fashion_mnist"), t_over,
        seeds, progress=bar.enabled, on_done=bar.sub_step(len(nets) * len(seeds)),
        workers=None)  # 2 at a time on a CPU: front.train_networks
    timings["train"] = bar.finish()
    if code:
      return {"exit_code": code, "partial": True}

    bar.start(3)  # 4. every net and the baseline timed together (front.measure_latencies)
    baseline = Arch.uniform(space, search_cfg.latency.baseline_op)
    latency = front.measure_with_baseline(
        nets, baseline, space, workdir, _config_path("latency", "fashion_mnist"),
        os.path.join(latency_dir, "final_networks.json"), l_over)
    timings["final latency"] = bar.finish()
  finally:
    bar.close()

  networks, hits = front.evaluate_networks(nets, reports, targets, baseline, latency,
                                           predictor.of_archs)
  first = reports[nets[0][0]][0]
  return _report(workdir, networks, hits, sw, baseline=baseline, baseline_latency=latency["baseline"],
                 seed=seed, quick=quick, timings=timings, wall_s=time.time() - t0,
                 fit_metrics=fit_metrics, search_cfg=search_cfg,
                 dataset=(first["dataset"], first["test_examples"]))


def _report(workdir: str, networks: list[dict[str, Any]], hits: list[dict[str, Any]], sw: Any, *,
            baseline: Arch, baseline_latency: dict[str, float], seed: int, quick: bool,
            timings: dict[str, float], wall_s: float, fit_metrics: dict[str, Any] | None,
            search_cfg: Any, dataset: tuple[str, int]) -> dict[str, Any]:
  """Writes report.json, report.md and pareto.png; returns the report."""
  report = {
      "target_hits": hits, "networks": networks, "summary": front.front_summary(networks),
      "baseline": {"ops": list(baseline.ops), "latency": baseline_latency},
      "sweep": {"warmup_s": sw.warmup.wall_s, "warmup_steps": sw.warmup.step,
                "estimator": search_cfg.arch.estimator, "derive": search_cfg.latency.derive,
                "derive_band": search_cfg.latency.derive_band,
                "targets": [{"label": label, "search_s": r.wall_s, "holdout_top1": r.holdout_top1,
                             "expected_latency": r.expected_latency, "status": r.status.value}
                            for label, r in sw.targets]},
      "seed": seed, "quick": quick, "device": device_description(),
      "dataset": dataset[0], "test_examples": dataset[1],
      "predictor_fit": fit_metrics, "latency_unit": "ms",
      "latency_protocol": front.MEASURED_PROTOCOL.format(batch=search_cfg.latency.batch),
      "timings_s": timings, "wall_s": wall_s,
  }
  write_json(os.path.join(workdir, "report.json"), report)
  front.plot_fronts(networks, os.path.join(workdir, "pareto.png"),
                    x_label=f"latency on one core at batch {search_cfg.latency.batch} (ms, measured)",
                    title=f"{report['dataset']}: found vs hand-designed vs random (seed {seed})")
  write_bytes_atomic(os.path.join(workdir, "report.md"), _markdown(report).encode())
  return report


def _derivation_words(mode: str, band: float) -> str:
  """How the sweep's found nets were chosen, for the report."""
  within = f"with predicted latency within {100 * band:.0f}% below the target"
  if mode == "budget":
    return f" (the most probable architecture {within})"
  if mode == "supernet":
    return (f" (of the policy's pick and random architectures {within}, the one with the best "
            "held-out accuracy in the warmed-up supernet)")
  return ""


def _markdown(r: dict[str, Any]) -> str:
  sw, fit = r["sweep"], r.get("predictor_fit") or {}
  hit = sum(h["hit"] for h in r["target_hits"])
  times = ", ".join(f"{t['search_s']:.0f} s" for t in sw["targets"])
  lines = [
      "# pnas demo report", "",
      f"Data: {r['dataset']} ({r['test_examples']} test images). Device: {r['device']}. "
      f"Seed {r['seed']}{' (--quick)' if r['quick'] else ''}, one training per network. "
      f"Wall time {r['wall_s'] / 60:.1f} min.", "",
      f"Sweep: one warm-up ({sw['warmup_steps']} steps, {sw['warmup_s']:.0f} s), then one search "
      f"per target ({times}); estimator "
      f"{sw['estimator']}, derivation {sw['derive']}"
      + _derivation_words(sw["derive"], sw["derive_band"])
      + f". {hit} of {len(r['target_hits'])} targets hit on the device.", "",
      f"Latency: {r['latency_protocol']}."
      + (f" Latency predictor: held-out relative RMSE {100 * fit['test']['rel_rmse']:.1f}% on "
         f"{fit['n_test']} networks." if fit.get("n_test") else ""), "",
      *front.front_markdown(r["networks"], r["summary"], r["target_hits"], r["latency_unit"]), "",
      "With one seed per network, differences below ~0.3 points are seed noise; "
      "experiments/pareto.py repeats this with several seeds.", "",
      "![accuracy vs latency](pareto.png)", "",
      "Search plots: sweep/target_*/plots/ (alpha.png: probabilities per block; arch.png; "
      "curves.png); sweep/sweep.md. Phase times (s): "
      + ", ".join(f"{k} {v:.0f}" for k, v in r["timings_s"].items()) + ".", "",
  ]
  return "\n".join(lines)


def cmd_demo(args: Any) -> int:
  r = run_demo(args.workdir, quick=args.quick, seed=args.seed, data=args.data,
               data_dir=args.data_dir)
  if r.get("partial"):
    print(f"demo interrupted: rerun the same command to resume ({args.workdir})", file=sys.stderr)
    return r["exit_code"]
  with open(os.path.join(args.workdir, "report.md")) as fh:
    print(fh.read())
  print(f"report: {args.workdir}/report.md, report.json, pareto.png")
  return 0


def add_commands(subparsers: Any) -> None:
  """Registers `pnas demo`."""
  p = subparsers.add_parser("demo", help="the push-button run: latency table -> sweep of 3 targets "
                                         "-> retrain found, hand-designed and random nets -> front "
                                         "(offline, Fashion-MNIST)")
  p.add_argument("--workdir", default="results/demo", help="outputs (rerun to resume)")
  p.add_argument("--quick", action="store_true",
                 help="a first look in about 5 minutes (short phases: its accuracies say little)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--data", default="fashion_mnist",
                 help="fashion_mnist (Debian's IDX files) or tfds:fashion_mnist")
  p.add_argument("--data-dir", default=None)
  p.set_defaults(func=cmd_demo)
