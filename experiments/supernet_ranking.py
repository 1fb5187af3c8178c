r"""Does the supernet rank architectures like stand-alone training does? Kendall tau with a bootstrap.

For `--n-archs` architectures spread over the latency range (uniform draws from the space, binned by
predicted latency, one per bin: pnas_jax/search_space/sampling.py sample_spread), compare
  - the supernet's accuracy: the held-out split, inherited weights, BN statistics re-estimated for
    the path (pnas_jax.train.evaluation.PathEvaluator), from the final checkpoint of a warm-up (run
    here, in WORKDIR/warmup, with the search config's warm-up settings) or of `--supernet DIR` (a
    `pnas search` workdir or a sweep's warmup/), and
  - the stand-alone accuracy: the test split after training the architecture from scratch
    (pnas_jax.train.retrain.train, configs/train/fashion_mnist.py; mean over `--seeds`),
by Kendall's tau-b with a percentile bootstrap interval over architectures (pairs resampled with
replacement, `--bootstrap` resamples). Warm-up and sampling settings are search-config overrides,
e.g. --config.schedule.warmup_epochs=4 --config.optim.weight_sample=uniform.

  python experiments/supernet_ranking.py [--quick] [--json] [--workdir results/supernet_ranking] \
      [--config configs/search/fashion_mnist.py --config.KEY=VALUE ...] [--train KEY=VALUE ...]
  python experiments/supernet_ranking.py --tiny --quick   # seconds: synthetic data, MACs (tests)

With `--trained PARETO_WORKDIR --supernet PARETO_WORKDIR/sweep/warmup` it ranks the networks an
experiments/pareto.py run trained (their mean over its seeds) with the supernet that run's sweep
warmed up: minutes, no training. Where that run drew random nets in the targets' bands (--random N),
`bands` also ranks the nets of each band among themselves (band_rankings): would the supernet have
picked a better net than the search did?

Full run (2 epochs of warm-up, 12 archs x 1 seed x 2 epochs) ~35 min on 2 CPU cores; --quick ~5 min.
Resumable: rerun the same command (warm-up, every training and the supernet evaluations are kept).
Writes results/supernet_ranking.json, .png (supernet vs stand-alone accuracy) and .md; with --json
the last stdout line is the JSON object.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import pathlib
import sys
import time
from typing import Any

import jax
import numpy as np
from front_common import (
  SEARCH_CONFIG,
  TINY_CONFIG,
  TRAIN_CONFIG,
  parse_with_overrides,
  run,
  search_preset,
  train_overrides,
)
from results_io import write_result

from pnas_jax import front, plots
from pnas_jax.compile_cache import enable_compilation_cache
from pnas_jax.config_loading import load_config, plain_dict
from pnas_jax.errors import PnasError
from pnas_jax.file_io import read_json, write_bytes_atomic, write_json
from pnas_jax.latency.predictor import macs_predictor
from pnas_jax.search_space.io import load_arch
from pnas_jax.search_space.sampling import sample_spread
from pnas_jax.search_space.space import Arch
from pnas_jax.train import derive_by_supernet
from pnas_jax.train.evaluation import PathEvaluator
from pnas_jax.train.loop import CONFIG_FILE, config_differences, final_state
from pnas_jax.train.parallel import replicate
from pnas_jax.train.search import search, setup_search
from pnas_jax.train.search_config import search_config
from pnas_jax.train.state import create_search_state

QUICK_SEARCH = ["--config.schedule.steps_per_epoch=40", "--config.schedule.warmup_epochs=2.0",
                "--config.latency.n_networks=8", "--config.latency.repeats=20"]


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default=None, help="search config (default: Fashion-MNIST; tiny.py "
                 "with --tiny); --config.KEY=VALUE overrides it (warm-up, sampling, data)")
  p.add_argument("--train-config", default=TRAIN_CONFIG)
  p.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                 help="override of the stand-alone training config (repeatable)")
  p.add_argument("--supernet", default=None, help="a search / sweep-warm-up workdir to rank with "
                 "(its config: --config and overrides); default: a warm-up in WORKDIR/warmup")
  p.add_argument("--trained", default=None, help="rank the networks an experiments/pareto.py "
                 "workdir trained (DIR/archs/NAME.json, DIR/train/NAME/seed*/report.json) instead of "
                 "drawing and training --n-archs new ones (--n-archs, --seeds and --train then do "
                 "nothing); needs --supernet DIR/sweep/warmup")
  p.add_argument("--workdir", default="results/supernet_ranking")
  p.add_argument("--n-archs", type=int, default=12)
  p.add_argument("--seeds", type=int, default=1, help="stand-alone trainings per architecture")
  p.add_argument("--workers", type=int, default=None,
                 help="trainings at a time, each in a child process (1: one after another here; "
                      "default: 2 on a CPU with >= 2 cores, else 1)")
  p.add_argument("--sample-seed", type=int, default=0)
  p.add_argument("--bn-batches", type=int, default=None, help="default: the config's eval.bn_batches")
  p.add_argument("--eval-batches", type=int, default=None,
                 help="held-out batches per supernet evaluation (default: the config's eval.max_batches)")
  p.add_argument("--bootstrap", type=int, default=2000)
  return parse_with_overrides(p, argv, "short warm-up and trainings (minutes)",
                              "results/supernet_ranking.json")


def _configs(args: argparse.Namespace, overrides: list[str]) -> tuple[Any, list[str]]:
  """(search config, training overrides): --quick / --tiny settings first, the user's last."""
  search_over = [*search_preset(args, QUICK_SEARCH, []), *overrides]
  cfg = load_config(args.config or (TINY_CONFIG if args.tiny else SEARCH_CONFIG), search_over)
  return cfg, train_overrides(cfg, args)


def warmed_up_supernet(cfg: Any, workdir: str, run_warmup: bool, progress: bool):
  """(setup, replicated state, step) of the supernet in `workdir` (its warm-up run first if asked:
  the search config with no search epochs, as `pnas sweep` runs it)."""
  if run_warmup:
    warm = cfg.copy_and_resolve_references()
    warm.schedule.epochs = 0.0
    res = search(warm, workdir, progress=progress)
    if res.partial:
      raise SystemExit(res.exit_code or 1)
    cfg = warm
  check_same_supernet(cfg, workdir)
  setup = setup_search(cfg, workdir)
  like = create_search_state(setup.model, jax.random.key(setup.seed), setup.weight_tx, setup.arch_tx,
                             setup.step_options["alpha_init_std"])
  step, state = final_state(workdir, like)
  return setup, replicate(state, setup.mesh), step


# Config sections that shape the supernet's variables: a checkpoint only restores under the same.
SUPERNET_KEYS = ("space.", "model.weight_sharing")


def check_same_supernet(cfg: Any, workdir: str) -> None:
  """Fails, naming the keys and the overrides to pass, when `workdir`'s supernet (its config.json)
  was built with another space or weight sharing than `cfg`."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise PnasError(f"{workdir} has no {CONFIG_FILE}: pass a `pnas search` workdir or a sweep's "
                    "warmup/ as --supernet")
  # A key its config.json lacks (added later) differs only when set away from its default.
  diff = [d for d in config_differences(read_json(path, PnasError), plain_dict(cfg),
                                        defaults=plain_dict(search_config()))
          if d.startswith(SUPERNET_KEYS)]
  if diff:
    raise PnasError(
        f"the supernet in {workdir} was built with another space or model ({'; '.join(diff)}); "
        "give this script the same --config.KEY=VALUE overrides its search had")


def supernet_accuracies(setup: Any, state: Any, where: str, archs: list[Arch], cache_path: str,
                        bn_batches: int, max_batches: int | None) -> list[float]:
  """Held-out top-1 of each arch in the supernet (PathEvaluator); cached per (supernet `where`,
  settings, arch)."""
  cache = read_json(cache_path, PnasError) if os.path.exists(cache_path) else {}
  evaluator = PathEvaluator(setup.model, setup.data.eval_preprocess, setup.mesh)
  out = []
  weights = {"params": state.params, "batch_stats": state.batch_stats}
  for arch in archs:
    key = f"{where}|{bn_batches}|{max_batches}|{' '.join(arch.ops)}"
    if key not in cache:
      cache[key], = derive_by_supernet.supernet_accuracies(
          evaluator, weights, [arch], data=setup.data, batch_size=setup.batches["eval_batch_size"],
          bn_batches=bn_batches, max_batches=max_batches)
      write_json(cache_path, cache)
    out.append(cache[key])
  return out


def trained_networks(workdir: str) -> tuple[list[tuple[str, Arch]], list[dict[str, Any]]]:
  """(name, arch) and the seed statistics of the stand-alone test top-1 of every network trained
  in an experiments/pareto.py workdir (WORKDIR/train/NAME/seed*/report.json; finished ones)."""
  train_dir = os.path.join(workdir, "train")
  if not os.path.isdir(train_dir):
    raise PnasError(f"{train_dir} does not exist: give --trained an experiments/pareto.py workdir")
  named, alone = [], []
  for name in sorted(os.listdir(train_dir)):
    reports = sorted(glob.glob(os.path.join(train_dir, name, "seed*", "report.json")))
    if reports:
      named.append((name, load_arch(os.path.join(workdir, "archs", f"{name}.json"))[1]))
      alone.append(front.aggregate_seeds([read_json(r, PnasError)["test_top1"] for r in reports]))
  if len(named) < 2:
    raise PnasError(f"{train_dir} holds {len(named)} finished training(s); ranking needs >= 2 "
                    "(let the pareto run finish first)")
  return named, alone


def band_rankings(archs: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The ranking inside each latency band of a pareto run: its found net `found_<label>` and the
  random nets drawn in the same target's band (`random_<label>_<j>`; pareto.py --random N).

  Per band: Kendall tau-b of supernet vs stand-alone top-1 over its nets (None when either is
  constant), the net the supernet scores highest and its stand-alone mean, the found net's, the
  random nets' mean, and pick minus found: what choosing the final net by the supernet's held-out
  accuracy among these nets would have gained over the search's own pick.
  """
  bands = []
  for found in (a for a in archs if a["name"].startswith("found_")):
    label = found["name"][len("found_"):]
    rand = [a for a in archs if a["name"].startswith(f"random_{label}_")]
    if not rand:
      continue
    band = [found, *rand]
    sup = [a["supernet_top1"] for a in band]
    alone = [a["standalone_top1"]["mean"] for a in band]
    tau = front.kendall_tau(sup, alone)
    pick = band[int(np.argmax(sup))]
    bands.append({
        "target": label, "n": len(band), "kendall_tau": None if math.isnan(tau) else tau,
        "supernet_pick": pick["name"], "pick_standalone_top1": pick["standalone_top1"]["mean"],
        "found_standalone_top1": found["standalone_top1"]["mean"],
        "random_mean_standalone_top1": float(np.mean(alone[1:])),
        "pick_minus_found": pick["standalone_top1"]["mean"] - found["standalone_top1"]["mean"],
    })
  return bands


def _plot(result: dict[str, Any], path: pathlib.Path) -> None:
  t = result["kendall_tau"]
  pts = [{"label": a["name"], "x": a["supernet_top1"], "y": a["standalone_top1"]["mean"],
          "kind": "architecture"} for a in result["archs"]]
  plots.plot_pareto(pts, path, x_label="supernet held-out top-1 (%, inherited weights, BN re-estimated)",
                    y_label="stand-alone test top-1 (%)",
                    title=f"Kendall tau {t['estimate']:.2f} [{t['low']:.2f}, {t['high']:.2f}] "
                          f"({100 * t['level']:.0f}% bootstrap, {len(result['archs'])} archs)")


def _markdown(result: dict[str, Any]) -> str:
  t = result["kendall_tau"]
  lines = ["# Supernet ranking", "",
           f"Kendall tau-b {t['estimate']:.3f}, {100 * t['level']:.0f}% bootstrap interval "
           f"[{t['low']:.3f}, {t['high']:.3f}] ({t['n_resamples']} resamples), "
           f"{len(result['archs'])} architectures; supernet step {result['supernet']['step']}.", "",
           f"| arch | predicted latency ({result['latency_unit']}) | supernet top-1 (%) "
           "| stand-alone top-1 (%) | architecture |", "|---|---|---|---|---|"]
  for a in result["archs"]:
    s = a["standalone_top1"]
    lines.append(f"| {a['name']} | {a['predicted_latency']:.4g} | {a['supernet_top1']:.2f} | "
                 f"{s['mean']:.2f} +- {s['std']:.2f} | {' '.join(a['ops'])} |")
  if result["bands"]:
    lines += ["", "Inside each latency band (the found net and the random nets of its target):", "",
              "| target | nets | Kendall tau | supernet's pick | pick alone (%) | found alone (%) "
              "| random mean (%) | pick - found |", "|---|---|---|---|---|---|---|---|"]
    for b in result["bands"]:
      tau = "-" if b["kendall_tau"] is None else f"{b['kendall_tau']:.2f}"
      lines.append(f"| {b['target']} | {b['n']} | {tau} | {b['supernet_pick']} | "
                   f"{b['pick_standalone_top1']:.2f} | {b['found_standalone_top1']:.2f} | "
                   f"{b['random_mean_standalone_top1']:.2f} | {b['pick_minus_found']:+.2f} |")
  return "\n".join(lines + ["", f"![supernet vs stand-alone]({pathlib.Path(result['plot']).name})", ""])


def main(argv: list[str] | None = None) -> int:
  args, overrides = _parse(sys.argv[1:] if argv is None else argv)
  if args.trained and args.supernet is None:
    raise PnasError("--trained needs --supernet (the pareto run's WORKDIR/sweep/warmup)")
  enable_compilation_cache()
  t0, progress = time.time(), not args.no_progress
  cfg, train_over = _configs(args, overrides)
  workdir = os.path.abspath(args.workdir)
  os.makedirs(workdir, exist_ok=True)
  sup_dir = os.path.abspath(args.supernet) if args.supernet else os.path.join(workdir, "warmup")
  setup, state, step = warmed_up_supernet(cfg, sup_dir, args.supernet is None, progress)
  predictor = setup.objective.predictor or macs_predictor(setup.space)
  if args.trained:
    named, alone = trained_networks(os.path.abspath(args.trained))
  else:
    archs = sample_spread(setup.space, predictor.of_archs, args.n_archs, seed=args.sample_seed)
    named = [(f"a{i:02d}", a) for i, a in enumerate(archs)]
    reports, code = front.train_networks(named, setup.space, workdir, args.train_config, train_over,
                                         list(range(args.seeds)), progress, workers=args.workers)
    if code:
      return code
    alone = [front.aggregate_seeds([r["test_top1"] for r in reports[n]]) for n, _ in named]
  archs = [a for _, a in named]
  bn = cfg.eval.bn_batches if args.bn_batches is None else args.bn_batches
  max_b = (cfg.eval.max_batches if args.eval_batches is None else args.eval_batches) or None
  sup = supernet_accuracies(setup, state, f"{sup_dir}@{step}", archs,
                            os.path.join(workdir, "supernet_eval.json"), bn, max_b)
  tau = front.bootstrap_interval(sup, [a["mean"] for a in alone], n_resamples=args.bootstrap)
  lat = predictor.of_archs(archs)
  out = pathlib.Path(args.out)
  result = {
      "kendall_tau": tau, "n_archs": len(archs),
      "seeds": min(a["n"] for a in alone), "trained": args.trained,
      "supernet": {"workdir": sup_dir, "step": step, "bn_batches": bn, "eval_batches": max_b},
      "latency_unit": predictor.unit, "quick": args.quick, "tiny": args.tiny,
      "search_config": args.config or (TINY_CONFIG if args.tiny else SEARCH_CONFIG),
      "search_overrides": overrides, "train_overrides": train_over,
      "archs": [{"name": n, "ops": list(a.ops), "predicted_latency": float(lt), "supernet_top1": s,
                 "standalone_top1": al} for (n, a), lt, s, al in zip(named, lat, sup, alone, strict=True)],
      "plot": str(out.with_suffix(".png")), "wall_s": time.time() - t0,
  }
  result["bands"] = band_rankings(result["archs"])
  write_result(result, out, args.json, plot=_plot)
  write_bytes_atomic(out.with_suffix(".md"), _markdown(result).encode())
  return 0


if __name__ == "__main__":
  run(main)
