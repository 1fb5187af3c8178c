r"""Would choosing the final net by the supernet's held-out accuracy beat the search's own pick?

For each latency target of a finished experiments/pareto.py run:
  1. draw `--candidates` architectures uniformly inside the target's band [(1 - band) T, T] under
     the run's latency predictor (the random baseline's sampler,
     pnas_jax/search_space/sampling.py sample_in_band, excluding the run's found and random nets);
  2. score each in the run's warm-up supernet (WORKDIR/sweep/warmup): held-out top-1 with
     inherited weights, BN statistics re-estimated (supernet_ranking.supernet_accuracies);
  3. retrain the highest-scoring one with the run's budget and seeds, in the run's workdir as
     `pick_<label>`, beside its found and random nets (front.train_networks; resumable).
Reports per target the pick's stand-alone test top-1 (mean +- seed std) against the found net's
and the mean of the band's random nets. The pick's latency is the predictor's (it is drawn in the
band as the random nets are); time it with the others by rerunning pareto.py's measurement.

  python experiments/supernet_pick.py --pareto results/room13.json [--candidates 16] [--json]

Writes results/supernet_pick.json, .png and .md; with --json the last stdout line is the JSON object.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time
from typing import Any

import numpy as np
from front_common import TRAIN_CONFIG, parse_with_overrides, run, search_preset
from pareto import QUICK_SEARCH, TINY_SEARCH, sweep_predictor
from results_io import write_result
from supernet_ranking import supernet_accuracies, warmed_up_supernet

from pnas_jax import front
from pnas_jax.compile_cache import enable_compilation_cache
from pnas_jax.config_loading import load_config
from pnas_jax.errors import PnasError
from pnas_jax.file_io import read_json, write_bytes_atomic
from pnas_jax.search_space.io import load_arch
from pnas_jax.search_space.sampling import sample_in_band
from pnas_jax.train.sweep import WARMUP_DIR


def _parse(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--pareto", required=True, help="the JSON result of a finished pareto.py run")
  p.add_argument("--candidates", type=int, default=16, help="architectures scored per target")
  p.add_argument("--sample-seed", type=int, default=1000, help="seed of the candidates' draws "
                 "(pareto.py draws its random nets with --sample-seed 0)")
  p.add_argument("--workers", type=int, default=None)
  args, overrides = parse_with_overrides(p, argv, "(unused: the pareto run's settings are used)",
                                         "results/supernet_pick.json")
  if overrides:
    p.error("the search config is the pareto run's: no --config.KEY=VALUE here")
  if args.candidates < 1:
    p.error(f"--candidates {args.candidates}: give at least 1")
  return args


def main(argv: list[str] | None = None) -> int:
  args = _parse(sys.argv[1:] if argv is None else argv)
  enable_compilation_cache()
  t0 = time.time()
  r = read_json(args.pareto, PnasError)
  run_args = argparse.Namespace(quick=r["quick"], tiny=r["tiny"])
  cfg = load_config(r["search_config"],
                    [*search_preset(run_args, QUICK_SEARCH, TINY_SEARCH), *r["search_overrides"]])
  cfg.latency.target_ratios, cfg.latency.targets = (), ()  # the warm-up: one search, no targets
  sweep_dir = r["sweep"]
  workdir = os.path.dirname(sweep_dir)
  nets = {n["name"]: n for n in r["networks"]}
  found_vs = {f["target"]: f for f in r["summary"]["found_vs"]}  # the run's own comparisons
  space, _ = load_arch(os.path.join(workdir, "archs", f"found_{r['targets'][0]['label']}.json"))
  predictor = sweep_predictor(cfg, sweep_dir, space)
  sup_dir = os.path.join(sweep_dir, WARMUP_DIR)
  setup, state, step = warmed_up_supernet(cfg, sup_dir, False, not args.no_progress)
  taken = [load_arch(os.path.join(workdir, "archs", f"{n}.json"))[1] for n in nets]
  rows = []
  for t in r["targets"]:
    label = t["label"]
    cands = sample_in_band(space, predictor.of_archs, t["target"], r["band"], args.candidates,
                           seed=args.sample_seed, exclude=taken)
    scores = supernet_accuracies(setup, state, f"{sup_dir}@{step}", cands,
                                 os.path.join(workdir, "supernet_pick_eval.json"),
                                 cfg.eval.bn_batches, cfg.eval.max_batches or None)
    best = int(np.argmax(scores))
    rows.append({"target": label, "pick": f"pick_{label}", "arch": cands[best],
                 "candidates": [{"ops": list(a.ops), "supernet_top1": s}
                                for a, s in zip(cands, scores, strict=True)]})
  reports, code = front.train_networks([(x["pick"], x["arch"]) for x in rows], space, workdir,
                                       TRAIN_CONFIG, r["train_overrides"], list(range(r["seeds"])),
                                       not args.no_progress, workers=args.workers)
  if code:
    return code
  for x in rows:
    arch = x.pop("arch")
    x["ops"] = list(arch.ops)
    x["predicted_latency"] = float(predictor.of_archs([arch])[0])
    x["supernet_top1"] = max(c["supernet_top1"] for c in x["candidates"])
    x["standalone_top1"] = front.aggregate_seeds([rep["test_top1"] for rep in reports[x["pick"]]])
    vs = found_vs[x["target"]]
    x["found_standalone_top1"] = vs["accuracy"]
    x["random_mean_standalone_top1"] = vs["vs_random_mean"]["mean"] if "vs_random_mean" in vs else None
    x["pick_minus_found"] = x["standalone_top1"]["mean"] - vs["accuracy"]
  result = {"pareto": args.pareto, "supernet": {"workdir": sup_dir, "step": step},
            "candidates": args.candidates, "seeds": r["seeds"], "targets": rows,
            "wall_s": time.time() - t0}
  write_result(result, pathlib.Path(args.out), args.json, plot=_plot)
  write_bytes_atomic(pathlib.Path(args.out).with_suffix(".md"), _markdown(result).encode())
  return 0


def _plot(result: dict[str, Any], path: pathlib.Path) -> None:
  """Per target: the found net, the mean of the band's random nets and the supernet's pick (its
  seed std as an error bar)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = result["targets"]
  xs = np.arange(len(rows))
  fig, ax = plt.subplots(figsize=(max(4, 2 * len(rows)), 3.5))
  ax.bar(xs - 0.27, [x["found_standalone_top1"] for x in rows], 0.27, label="found (search)")
  ax.bar(xs, [x["random_mean_standalone_top1"] or np.nan for x in rows], 0.27,
         label="random nets of the band (mean)")
  ax.bar(xs + 0.27, [x["standalone_top1"]["mean"] for x in rows], 0.27,
         yerr=[x["standalone_top1"]["std"] for x in rows], label="supernet's pick")
  values = [v for x in rows for v in (x["found_standalone_top1"], x["standalone_top1"]["mean"])]
  ax.set_ylim(min(values) - 1.0, max(values) + 0.5)
  ax.set_xticks(xs, [x["target"] for x in rows])
  ax.set_ylabel("stand-alone test top-1 (%)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _markdown(result: dict[str, Any]) -> str:
  lines = ["# The supernet's pick in each band", "",
           f"{result['candidates']} candidates per target scored in {result['supernet']['workdir']} "
           f"(step {result['supernet']['step']}); {result['seeds']} seeds per retraining.", "",
           "| target | pick alone (%) | found alone (%) | random mean (%) | pick - found "
           "| supernet top-1 (%) | architecture |", "|---|---|---|---|---|---|---|"]
  for x in result["targets"]:
    s, rand = x["standalone_top1"], x["random_mean_standalone_top1"]
    lines.append(f"| {x['target']} | {s['mean']:.2f} +- {s['std']:.2f} | "
                 f"{x['found_standalone_top1']:.2f} | {'-' if rand is None else f'{rand:.2f}'} | "
                 f"{x['pick_minus_found']:+.2f} | {x['supernet_top1']:.2f} | {' '.join(x['ops'])} |")
  return "\n".join(lines + [""])


if __name__ == "__main__":
  run(main)
