r"""Does the search beat hand design and random search? Retrained fronts, seeds, measured latency.

The evaluation protocol, rerunnable (pnas_jax/front.py holds the pieces):
  1. `pnas sweep` (one warm-up of 6 epochs, one search per latency target; targets 0.45, 0.55,
     0.65, 0.75 x the baseline) in WORKDIR/sweep, or `--sweep DIR` (run with the same config);
  2. the networks: the found net of every target; a hand-designed family spanning the same latency
     range (MobileNetV2-style uniform nets, every block 3x3_MBConv6 or 3x3_MBConv3, with 0.. of the
     skippable blocks set to Zero, last block of each stage first; the members bracketing
     [(1 - band) min T, max T] and the found nets under the latency predictor, at most
     --max-hand); random search with the same budget
     (`--random` architectures per target drawn uniformly from the space conditioned on predicted
     latency in [(1 - band) T, T], band = the search's latency.derive_band, so they meet the target
     like the found net does);
  3. every network retrained `--seeds` times with the same budget (configs/train/fashion_mnist.py
     for 6 epochs; `--train KEY=VALUE` overrides, e.g. --train schedule.epochs=4), each in its own
     workdir WORKDIR/train/NAME/seedS, `--workers` at a time (default: two on a CPU, each in a
     child process; front.train_networks);
  4. the latency of every network and of the baseline measured interleaved, in each of three
     timing processes (the median per network over them: front.measure_latencies), on the
     target device (`pnas latency networks --config configs/latency/fashion_mnist.py` in a child
     process pinned to one CPU: the search config's batch (16), single-threaded XLA, process
     CPU-time clock, 10th percentile of the timed calls); each target re-based on the baseline timed
     there (front.target_hits);
  5. per network the mean +- std over seeds of the test top-1 and the latency; per method its
     Pareto front and hypervolume (maximise accuracy, minimise latency; reference point: 1.1 x the
     slowest network's latency and 1 point below the least accurate network, or --ref-latency /
     --ref-accuracy), also per seed index; every found net against the hand-designed front
     interpolated at its measured latency and against the random nets of its target (difference,
     in seed-std units, and z = difference / standard error).

  python experiments/pareto.py [--json] [--workdir results/pareto] [--seeds 3] [--random 1] \
      [--config configs/search/fashion_mnist.py --config.KEY=VALUE ...] [--train KEY=VALUE ...]
  python experiments/pareto.py --quick   # minutes: short sweep and trainings, 2 seeds
  python experiments/pareto.py --tiny --quick   # seconds: tiny space, synthetic data, MACs (tests)

Full run on 2 CPU cores (the defaults; measured 2026-11-30): sweep 5.2 min, 14 networks x 3
seeds x 6 epochs trained two at a time (--workers) 55 min, latency 31 s: 61 min (about 95 min
with the pure-XLA depthwise kernels). Resumable: rerun the same command.
Writes results/pareto.json, .png (the fronts with error bars) and .md
(the tables); with --json the last stdout line is the JSON object.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time
from typing import Any

from front_common import (
  ROOT,
  SEARCH_CONFIG,
  TINY_CONFIG,
  TRAIN_CONFIG,
  parse_with_overrides,
  run,
  search_preset,
  train_overrides,
)
from results_io import write_result

from pnas_jax import front
from pnas_jax.compile_cache import enable_compilation_cache
from pnas_jax.config_loading import load_config
from pnas_jax.errors import PnasError
from pnas_jax.file_io import write_bytes_atomic
from pnas_jax.latency.objective import MEASURED_PREDICTOR
from pnas_jax.latency.predictor import load_latency_model, load_predictor, macs_predictor
from pnas_jax.search_space.io import load_arch
from pnas_jax.search_space.space import Arch
from pnas_jax.train.sweep import WARMUP_DIR, sweep

LATENCY_CONFIG = str(ROOT / "configs" / "latency" / "fashion_mnist.py")
QUICK_SEARCH = ["--config.schedule.steps_per_epoch=30", "--config.schedule.warmup_epochs=1.0",
                "--config.schedule.epochs=1.5", "--config.schedule.arch_every=1",
                "--config.optim.arch_lr=0.05", "--config.eval.max_batches=4",
                "--config.eval.bn_batches=2", "--config.latency.n_networks=8",
                "--config.latency.repeats=20", "--config.log.plots=False"]
TINY_SEARCH = ["--config.eval.every_epochs=0", "--config.eval.bn_batches=0"]
PROTOCOL_TARGETS = "(0.45, 0.55, 0.65, 0.75)"  # x the baseline; the protocol's four targets


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default=None, help="search config of the sweep (default: Fashion-MNIST; "
                 "tiny.py with --tiny); --config.KEY=VALUE overrides it")
  p.add_argument("--sweep", default=None, help="the sweep's workdir (default WORKDIR/sweep)")
  p.add_argument("--train-config", default=TRAIN_CONFIG)
  p.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                 help="override of the retraining config (repeatable), e.g. schedule.epochs=4")
  p.add_argument("--latency-config", default=LATENCY_CONFIG)
  p.add_argument("--latency", choices=("measure", "predictor"), default=None,
                 help="measure on this device (default) or use the latency model (--tiny's default)")
  p.add_argument("--seeds", type=int, default=None, help="trainings per network (default 3; --quick 2)")
  p.add_argument("--random", type=int, default=1, help="random architectures per target")
  p.add_argument("--workers", type=int, default=None,
                 help="trainings at a time, each in a child process (1: one after another here; "
                      "default: 2 on a CPU with >= 2 cores, else 1)")
  p.add_argument("--band", type=float, default=None,
                 help="random nets' band below each target (default: the search's derive_band, else 0.05)")
  p.add_argument("--hand-ops", default="3x3_MBConv6,3x3_MBConv3")
  p.add_argument("--max-hand", type=int, default=6, help="at most this many hand-designed nets")
  p.add_argument("--sample-seed", type=int, default=0)
  p.add_argument("--ref-latency", type=float, default=None)
  p.add_argument("--ref-accuracy", type=float, default=None)
  p.add_argument("--workdir", default="results/pareto")
  return parse_with_overrides(p, argv, "a short sweep and short trainings (minutes)", "results/pareto.json")


def _configs(args: argparse.Namespace, overrides: list[str]) -> tuple[Any, list[str]]:
  """(sweep config, retraining overrides): the protocol's or --quick / --tiny settings first, the
  user's last."""
  preset = search_preset(args, QUICK_SEARCH, TINY_SEARCH)
  if not (args.quick or args.tiny):
    preset = [*preset, f"--config.latency.target_ratios={PROTOCOL_TARGETS}"]
  cfg = load_config(args.config or (TINY_CONFIG if args.tiny else SEARCH_CONFIG), [*preset, *overrides])
  if not cfg.latency.target_ratios and not cfg.latency.targets:
    cfg.latency.target_ratios = (0.8,) if args.tiny else (0.5, 0.7, 0.9)
  return cfg, train_overrides(cfg, args)


def sweep_predictor(cfg: Any, sweep_dir: str, space: Any):
  """The latency model the sweep searched under (a measured one was fitted in its warm-up)."""
  model = cfg.latency.model
  if model == "measure":
    return load_predictor(os.path.join(sweep_dir, WARMUP_DIR, "latency", MEASURED_PREDICTOR), space)
  if model in ("macs", "none"):
    return macs_predictor(space)
  return load_latency_model(model, space)


def _markdown(r: dict[str, Any]) -> str:
  lines = ["# Found vs hand-designed vs random: retrained fronts", "",
           f"{r['seeds']} seeds per network; latency: {r['latency_protocol']}.", "",
           *front.front_markdown(r["networks"], r["summary"], r["target_hits"], r["latency_unit"])]
  return "\n".join(lines + ["", f"![fronts]({pathlib.Path(r['plot']).name})", ""])


def main(argv: list[str] | None = None) -> int:
  args, overrides = _parse(sys.argv[1:] if argv is None else argv)
  enable_compilation_cache()
  t0, progress = time.time(), not args.no_progress
  cfg, train_over = _configs(args, overrides)
  workdir = os.path.abspath(args.workdir)
  sweep_dir = os.path.abspath(args.sweep or os.path.join(workdir, "sweep"))
  sw = sweep(cfg, sweep_dir, progress=progress)
  if sw.partial:
    return sw.exit_code or 1
  t_sweep = time.time() - t0
  space, _ = load_arch(os.path.join(sw.targets[0][1].workdir, "arch.json"))
  predictor = sweep_predictor(cfg, sweep_dir, space)
  band = args.band or cfg.latency.derive_band or 0.05
  targets = [(label, r.target, r.arch) for label, r in sw.targets]
  nets = front.choose_networks(space, predictor.of_archs, targets, band, n_random=args.random,
                               hand_ops=args.hand_ops.split(","), max_hand=args.max_hand,
                               sample_seed=args.sample_seed)
  seeds = list(range(args.seeds or (2 if args.quick else 3)))
  reports, code = front.train_networks([(n[0], n[3]) for n in nets], space, workdir,
                                       args.train_config, train_over, seeds, progress,
                                       workers=args.workers)
  if code:
    return code
  t_train = time.time() - t0 - t_sweep
  mode = args.latency or ("predictor" if args.tiny else "measure")
  baseline = Arch.uniform(space, cfg.latency.baseline_op)  # timed with the others: the targets
  if mode == "measure":
    latency = front.measure_with_baseline(nets, baseline, space, workdir, args.latency_config,
                                          os.path.join(workdir, "latency_networks.json"))
    protocol = front.MEASURED_PROTOCOL.format(batch=load_config(args.latency_config).batch)
    unit = "ms"
  else:
    named = [(n[0], n[3]) for n in nets] + [("baseline", baseline)]
    values = predictor.of_archs([a for _, a in named])
    latency = {name: {"value": float(v), "std": 0.0} for (name, _), v in zip(named, values, strict=True)}
    protocol, unit = f"the latency model ({predictor.unit}), not measured", predictor.unit
  networks, hits = front.evaluate_networks(nets, reports, targets, baseline, latency,
                                           predictor.of_archs)
  ref = None if args.ref_latency is None else (args.ref_latency, args.ref_accuracy)
  if (args.ref_latency is None) != (args.ref_accuracy is None):
    raise PnasError("give both --ref-latency and --ref-accuracy, or neither")
  out = pathlib.Path(args.out)
  result = {
      "networks": networks, "summary": front.front_summary(networks, ref), "seeds": len(seeds),
      "latency_unit": unit, "latency_protocol": protocol, "band": band, "target_hits": hits,
      "baseline": {"ops": list(baseline.ops), "latency": latency["baseline"]},
      "targets": [{"label": lb, "target": t, "unit": predictor.unit, "arch": list(a.ops)}
                  for lb, t, a in targets],
      "sweep": sweep_dir, "quick": args.quick, "tiny": args.tiny,
      "search_config": args.config or (TINY_CONFIG if args.tiny else SEARCH_CONFIG),
      "search_overrides": overrides, "train_overrides": train_over,
      "timings_s": {"sweep": t_sweep, "train": t_train, "latency": time.time() - t0 - t_sweep - t_train},
      "plot": str(out.with_suffix(".png")), "wall_s": time.time() - t0,
  }

  def plot(r: dict[str, Any], path: pathlib.Path) -> None:
    how = "measured" if mode == "measure" else "predicted"
    front.plot_fronts(r["networks"], str(path), x_label=f"latency ({unit}, {how})",
                      title="test top-1 (mean +- seed std) vs latency")

  write_result(result, out, args.json, plot=plot)
  write_bytes_atomic(out.with_suffix(".md"), _markdown(result).encode())
  return 0


if __name__ == "__main__":
  run(main)
