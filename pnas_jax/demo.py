"""`pnas demo`: the push-button run — a network that is fast on THIS machine and accurate on the data.

    pnas demo --workdir results/demo [--quick] [--seed 0]

Offline on Fashion-MNIST by default (Debian's dataset-fashion-mnist; `make demo` installs it):
  1. latency: measure a latency table for this CPU and whole networks (the baseline among them)
     and fit the latency predictor (configs/latency/fashion_mnist.py); the target is 0.7 x the
     baseline's latency, the baseline being the hand-designed net at the same widths with every
     block 3x3_MBConv6 (MobileNetV2-like);
  2. search under that target (configs/search/fashion_mnist.py);
  3. retrain the found net, the baseline and 3 random architectures of the space with the same
     budget (configs/train/fashion_mnist.py);
  4. measure the five trained nets' latency in one interleaved session and write report.md,
     report.json and pareto.png (accuracy vs measured latency, each point labelled).
The target device is one core of this machine at batch 1: every latency is measured in a child
process running single-threaded XLA, timed with the process CPU-time clock (repeatable while other
jobs share the machine), while training uses every core. Every phase is resumable: rerun the same
command after an interruption.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from tqdm.auto import tqdm

from pnas_jax import plots
from pnas_jax.arch.derive import derive
from pnas_jax.config_loading import load_config
from pnas_jax.errors import MissingFileError, PnasError, UserFileError
from pnas_jax.file_io import read_json, write_json
from pnas_jax.latency.measure import sample_archs
from pnas_jax.latency.objective import latency_objective
from pnas_jax.latency.predictor import load_predictor
from pnas_jax.latency.timing import device_description
from pnas_jax.search_space.io import save_arch
from pnas_jax.search_space.space import Arch
from pnas_jax.train.inputs import load_config_dataset, space_for_data
from pnas_jax.train.retrain import train
from pnas_jax.train.search import search
from pnas_jax.workdir_lock import WorkdirLock

REPO_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
# Phase budgets as fractions of the whole run (for the ETA; refined as phases finish).
PHASES = (("latency", 0.10), ("search", 0.30), ("train found", 0.11), ("train baseline", 0.11),
          ("train random 1", 0.11), ("train random 2", 0.11), ("train random 3", 0.11),
          ("final latency", 0.05))


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
            f"--config.latency.model={latency_dir}/predictor.json"]
  # Latency is measured once for all five nets at the end (one interleaved session).
  train = [*common, "--config.report.latency_repeats=0", "--config.log.progress=False"]
  if quick:
    latency += ["--config.n_networks=8", "--config.repeats=20"]
    search += ["--config.schedule.steps_per_epoch=30", "--config.schedule.warmup_epochs=1.0",
               "--config.schedule.epochs=1.5", "--config.schedule.arch_every=1",
               "--config.optim.arch_lr=0.05", "--config.eval.max_batches=4",
               "--config.eval.bn_batches=2", "--config.log.every_steps=10"]
    train += ["--config.schedule.steps_per_epoch=60", "--config.schedule.epochs=1.0",
              "--config.eval.every_epochs=0", "--config.log.every_steps=20"]
  return latency, search, train


def run_pnas(*args: str) -> str:
  """Runs `pnas ARGS` in a child process (fresh XLA flags: single-threaded latency timing)."""
  p = subprocess.run([sys.executable, "-m", "pnas_jax.cli", *args], capture_output=True, text=True)
  if p.returncode == 2:  # a user error: the child's one-line message says what to fix
    raise PnasError(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"pnas {args[0]} failed")
  if p.returncode != 0:
    raise RuntimeError(f"pnas {' '.join(args[:2])} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
  return p.stdout


class PhaseProgress:
  """One bar over the demo's phases: names the current phase, elapsed time and the ETA. The search
  and each training show their own bar below it (steps, images/s, ETA of the phase)."""

  def __init__(self, enabled: bool):
    self.enabled = enabled
    self._bar = tqdm(total=100, desc="demo", unit="%", disable=not enabled, file=sys.stderr,
                     bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}]")
    self._done = 0.0

  def start(self, i: int, name: str) -> None:
    self._bar.set_description(f"demo [{i + 1}/{len(PHASES)}: {name}]")
    self._bar.refresh()

  def finish(self, weight: float) -> None:
    self._done += 100 * weight
    self._bar.n = min(100.0, round(self._done, 1))
    self._bar.refresh()

  def close(self) -> None:
    self._bar.close()


def _retrain_all(workdir: str, space: Any, nets: list[tuple[str, Arch]], overrides: list[str],
                 bar: PhaseProgress, timings: dict[str, float]) -> dict[str, dict[str, Any]]:
  """Trains each (name, arch) with the same budget; returns each one's report.json content."""
  results = {}
  arch_dir = os.path.join(workdir, "archs")
  os.makedirs(arch_dir, exist_ok=True)
  for i, (name, arch) in enumerate(nets):
    bar.start(2 + i, PHASES[2 + i][0])
    t = time.time()
    arch_path = os.path.join(arch_dir, f"{name}.json")
    save_arch(arch_path, space, arch, name=name)
    cfg = load_config(_config_path("train", "fashion_mnist"),
                      [*overrides, f"--config.arch={arch_path}", "--config.log.progress=False"])
    res = train(cfg, os.path.join(workdir, "train", name), progress=bar.enabled)
    results[name] = read_json(os.path.join(workdir, "train", name, "report.json"), UserFileError)
    results[name]["status"] = res.status.value
    timings[f"train {name}"] = time.time() - t
    bar.finish(PHASES[2 + i][1])
  return results


def run_demo(workdir: str, quick: bool = False, seed: int = 0, data: str = "fashion_mnist",
             data_dir: str | None = None, progress: bool = True) -> dict[str, Any]:
  """Runs (or resumes) the whole demo in `workdir`; returns report.json's content. Holds the
  workdir's lock throughout (a second demo on it fails at once)."""
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  with WorkdirLock(workdir, "demo"):
    return _run_demo(workdir, quick, seed, data, data_dir, progress)


def _run_demo(workdir: str, quick: bool, seed: int, data: str, data_dir: str | None,
              progress: bool) -> dict[str, Any]:
  t0 = time.time()
  latency_dir = os.path.join(workdir, "latency")
  os.makedirs(latency_dir, exist_ok=True)
  l_over, s_over, t_over = demo_overrides(quick, seed, data, data_dir, latency_dir)
  latency_cfg = _config_path("latency", "fashion_mnist")
  search_cfg = load_config(_config_path("search", "fashion_mnist"), s_over)
  bar = PhaseProgress(progress)
  timings: dict[str, float] = {}
  try:
    # 1. Latency table + networks measured here (child process, single-threaded), predictor fit.
    bar.start(0, PHASES[0][0])
    t = time.time()
    dataset = load_config_dataset(search_cfg, search_cfg.space.resolution)
    space = space_for_data(search_cfg.space.to_dict(), dataset)
    predictor_path = os.path.join(latency_dir, "predictor.json")
    if not os.path.exists(predictor_path):
      run_pnas("latency", "measure", "--config", latency_cfg, *l_over)
      run_pnas("latency", "fit", "--config", latency_cfg, *l_over, "--json")
    load_predictor(predictor_path, space)  # checks it fits this space
    fit_metrics = read_json(predictor_path, UserFileError).get("metrics")
    search_dir = os.path.join(workdir, "search")
    objective = latency_objective(search_cfg, space, search_dir)
    timings["latency"] = time.time() - t
    bar.finish(PHASES[0][1])

    # 2. Search under the target.
    bar.start(1, PHASES[1][0])
    t = time.time()
    found = search(search_cfg, search_dir, progress=bar.enabled)
    timings["search"] = time.time() - t
    bar.finish(PHASES[1][1])

    # 3. Retrain the found net, the baseline and 3 random nets with the same budget.
    baseline = Arch.uniform(space, search_cfg.latency.baseline_op)
    randoms = sample_archs(space, 3, seed=1000 + seed)
    nets = [("found", found.arch), ("baseline", baseline)] + [
        (f"random{i + 1}", a) for i, a in enumerate(randoms)]
    results = _retrain_all(workdir, space, nets, t_over, bar, timings)

    # 4. The five trained nets timed in one interleaved session (same protocol as the table).
    bar.start(len(PHASES) - 1, PHASES[-1][0])
    t = time.time()
    out = run_pnas("latency", "networks", "--config", latency_cfg, *l_over,
                "--out", os.path.join(latency_dir, "final_networks.json"), "--json",
                *[f"{name}={os.path.join(workdir, 'archs', name + '.json')}" for name, _ in nets])
    measured = json.loads(out.strip().splitlines()[-1])
    for name in results:
      results[name]["latency_ms_b1"] = measured[name]
    timings["final latency"] = time.time() - t
    bar.finish(PHASES[-1][1])
  finally:
    bar.close()

  return _report(workdir, space, objective, found, results, seed, quick, timings,
                 time.time() - t0, fit_metrics, search_cfg.arch.estimator)


def _report(workdir, space, objective, found, results, seed, quick, timings, wall_s,
            fit_metrics, estimator) -> dict[str, Any]:
  def point(name):
    r = results[name]
    return {"accuracy": r["test_top1"], "latency_ms": r["latency_ms_b1"], "arch": r["arch"],
            "params": r["params"], "macs_m": r["macs_m"],
            "predicted_latency_ms": float(objective.predictor.of_archs([Arch(tuple(r["arch"]))])[0])}

  f, b = point("found"), point("baseline")
  ratio = objective.target / objective.baseline  # the search's target_ratio (0.7)
  # The check uses the baseline measured in the same session as the found net.
  target = ratio * b["latency_ms"]
  report = {
      "found": {**f, "target_ms": target, "target_ratio": ratio,
                "search_target_ms": objective.target,
                "meets_target": f["latency_ms"] <= 1.1 * target,
                "latency_over_target": f["latency_ms"] / target},
      "baseline": b,
      "random": [point(f"random{i}") for i in (1, 2, 3)],
      "accuracy_vs_baseline": f["accuracy"] - b["accuracy"],
      "seed": seed, "quick": quick, "device": device_description(),
      "dataset": results["found"]["dataset"], "test_examples": results["found"]["test_examples"],
      "search": {"expected_latency_ms": found.expected_latency, "holdout_top1": found.holdout_top1,
                 "steps": found.step, "images_per_s": found.images_per_s, "status": found.status.value,
                 "estimator": estimator, "derive": objective.derive_mode,
                 "derive_band": objective.derive_band,
                 "argmax_arch": list(derive(found.probabilities, space).ops)},
      "baseline_predicted_ms": objective.baseline,
      "predictor_fit": fit_metrics,
      "latency_protocol": "batch 1, single-threaded XLA in a child process, process CPU-time "
                          "clock, median, the five nets interleaved in one session",
      "timings_s": timings, "wall_s": wall_s,
  }
  write_json(os.path.join(workdir, "report.json"), report)
  pts = [{"label": "found", "x": f["latency_ms"], "y": f["accuracy"], "kind": "found"},
         {"label": "baseline (3x3_MBConv6)", "x": b["latency_ms"], "y": b["accuracy"],
          "kind": "baseline"}]
  pts += [{"label": f"random {i + 1}", "x": r["latency_ms"], "y": r["accuracy"], "kind": "random"}
          for i, r in enumerate(report["random"])]
  plots.plot_pareto(pts, os.path.join(workdir, "pareto.png"), target=target,
                    title=f"{report['dataset']}: test accuracy vs latency on this CPU (batch 1)")
  _write_markdown(workdir, report)
  return report


def _write_markdown(workdir: str, r: dict[str, Any]) -> None:
  f, b = r["found"], r["baseline"]
  rows = [("found", f), ("baseline (all 3x3_MBConv6)", b)] + [
      (f"random {i + 1}", x) for i, x in enumerate(r["random"])]
  lines = [
      "# pnas demo report", "",
      f"Data: {r['dataset']} ({r['test_examples']} test images). Device: {r['device']}. "
      f"Seed {r['seed']}{' (--quick)' if r['quick'] else ''}. Wall time {r['wall_s'] / 60:.1f} min.",
      "",
      f"Latency target: {f['target_ratio']:.2f} x the baseline's latency. The search used "
      f"{f['search_target_ms']:.3f} ms ({f['target_ratio']:.2f} x the predictor's "
      f"{r['baseline_predicted_ms']:.3f} ms for the baseline); measured after training, in one "
      f"session with the found net, the baseline takes {b['latency_ms']:.3f} ms, so the target is "
      f"{f['target_ms']:.3f} ms. The found net measures {f['latency_ms']:.3f} ms "
      f"({100 * f['latency_over_target']:.0f}% of the target: "
      f"{'meets it' if f['meets_target'] else 'misses it by more than 10%'}), with test accuracy "
      f"{f['accuracy']:.2f}% vs the baseline's {b['accuracy']:.2f}% "
      f"({r['accuracy_vs_baseline']:+.2f} points).", "",
      f"Search: {r['search']['steps']} steps, estimator {r['search']['estimator']}; the found net is "
      + ("the per-block argmax of the probabilities" if r["search"]["derive"] == "argmax" else
         f"the most probable architecture with predicted latency within "
         f"{100 * r['search']['derive_band']:.0f}% below the search target (the per-block argmax "
         f"would be {' '.join(r['search']['argmax_arch'])})") + ".", "",
      f"Latency: {r['latency_protocol']}; this machine, {r['device']}."
      + (f" Latency predictor: held-out relative RMSE {100 * r['predictor_fit']['test']['rel_rmse']:.1f}% "
         f"on {r['predictor_fit']['n_test']} networks (table sum alone: "
         f"{100 * r['predictor_fit']['table_sum_test']['rel_rmse']:.1f}%)."
         if r.get("predictor_fit") and r["predictor_fit"].get("n_test") else ""), "",
      "| network | test top-1 (%) | latency measured (ms) | latency predicted (ms) | params | MACs (M) |",
      "|---|---|---|---|---|---|",
      *[f"| {n} | {x['accuracy']:.2f} | {x['latency_ms']:.3f} | {x['predicted_latency_ms']:.3f} | "
        f"{x['params']:,} | {x['macs_m']:.2f} |" for n, x in rows],
      "", "Architectures (one op per searchable block):", "",
      *[f"- {n}: {' '.join(x['arch'])}" for n, x in rows],
      "", "![accuracy vs latency](pareto.png)", "",
      "Search plots: search/plots/alpha.png (probabilities per block), search/plots/arch.png, "
      "search/plots/curves.png. Phase times (s): "
      + ", ".join(f"{k} {v:.0f}" for k, v in r["timings_s"].items()) + ".", "",
  ]
  with open(os.path.join(workdir, "report.md"), "w") as fh:
    fh.write("\n".join(lines))


def cmd_demo(args: Any) -> int:
  r = run_demo(args.workdir, quick=args.quick, seed=args.seed, data=args.data,
               data_dir=args.data_dir)
  f, b = r["found"], r["baseline"]
  with open(os.path.join(args.workdir, "report.md")) as fh:
    print(fh.read())
  print(f"found: {f['accuracy']:.2f}% at {f['latency_ms']:.3f} ms (target {f['target_ms']:.3f} ms); "
        f"baseline: {b['accuracy']:.2f}% at {b['latency_ms']:.3f} ms")
  print(f"report: {args.workdir}/report.md, report.json, pareto.png")
  return 0


def add_commands(subparsers: Any) -> None:
  """Registers `pnas demo`."""
  p = subparsers.add_parser("demo", help="the push-button run: latency table -> search -> retrain "
                                         "-> report (offline, Fashion-MNIST)")
  p.add_argument("--workdir", default="results/demo", help="outputs (rerun to resume)")
  p.add_argument("--quick", action="store_true", help="a first look in about 5 minutes")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--data", default="fashion_mnist",
                 help="fashion_mnist (Debian's IDX files) or tfds:fashion_mnist")
  p.add_argument("--data-dir", default=None)
  p.set_defaults(func=cmd_demo)
