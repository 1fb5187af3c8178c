"""`pnas search | sweep | train | eval | export`: the loops and what follows them, from configs.

  pnas search --config configs/search/fashion_mnist.py --workdir results/search [--config.x=y ...]
  pnas sweep --config configs/search/fashion_mnist.py --workdir results/sweep \
      --config.latency.target_ratios='(0.5, 0.7, 0.9)'     (one warm-up, one search per target)
  pnas train --config configs/train/fashion_mnist.py --workdir results/train \
      --config.arch=results/search/arch.json [--config.init=results/search]
  pnas eval results/train [--data fashion_mnist] [--split test]   (a train workdir or a zoo name)
  pnas export results/train [--formats stablehlo,tf]

Rerunning the same command in the same workdir resumes from the last checkpoint.
Multi-host (GPU cluster / TPU pod): run the same command on every host with --multihost; JAX reads
the coordinator from the cluster environment (SLURM, TPU metadata) or from --coordinator,
--num-processes and --process-id.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from pnas_jax.config_loading import OverrideParser, load_config
from pnas_jax.errors import UserValueError


def add_distributed_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--multihost", action="store_true",
                 help="call jax.distributed.initialize() (one process per host)")
  p.add_argument("--coordinator", default=None, help="host:port of process 0 (multi-host)")
  p.add_argument("--num-processes", type=int, default=None)
  p.add_argument("--process-id", type=int, default=None)


def init_distributed(args: argparse.Namespace) -> None:
  if not (args.multihost or args.coordinator):
    return
  import jax

  jax.distributed.initialize(coordinator_address=args.coordinator,
                             num_processes=args.num_processes, process_id=args.process_id)


def _load_config(args: argparse.Namespace) -> Any:
  """The command's config with its --config.x=y overrides, after joining a multi-host run."""
  config = load_config(args.config, args.config_overrides)
  init_distributed(args)
  return config


def cmd_search(args: argparse.Namespace) -> int:
  from pnas_jax.train.search import plan_search, search

  config = _load_config(args)
  if args.dry_run:
    print(json.dumps(plan_search(config, args.workdir), indent=2))
    return 0
  result = search(config, args.workdir, overwrite=args.overwrite)
  if args.json:
    print(json.dumps(result.to_dict(), indent=2))
    return result.exit_code
  unit = result.latency_unit or ""
  print(f"status: {result.detail} (step {result.step}/{result.total_steps}, {result.wall_s:.0f} s, "
        f"{result.images_per_s:.0f} images/s)")
  partial = " (PARTIAL: from an unfinished search)" if result.partial else ""
  print(f"arch{partial}: {' '.join(result.arch.ops)}")
  if result.target is not None:
    print(f"E[LAT] {result.expected_latency:.4g} {unit}, derived arch {result.arch_latency:.4g} "
          f"{unit}, target {result.target:.4g} {unit}")
  d = result.derivation
  if d is not None:
    print(f"chosen by the supernet among {len(d['candidates'])} candidates in the band (scored in "
          f"its {d['scored_in']} weights; the policy's own arch ranked {d['policy_rank']}): "
          f"derivation.json")
  if result.holdout_top1 is not None:
    print(f"held-out top-1 of the derived arch (supernet weights): {result.holdout_top1:.2f}%")
  print(f"outputs: {result.workdir}/arch.json, net.config, metrics.jsonl, plots/")
  return result.exit_code


def cmd_sweep(args: argparse.Namespace) -> int:
  from pnas_jax.train.sweep import sweep

  config = _load_config(args)
  r = sweep(config, args.workdir, overwrite=args.overwrite)
  print(f"warm-up: {r.warmup.detail} ({r.warmup.step} steps, {r.warmup.wall_s:.0f} s)")
  for label, t in r.targets:
    lat = "" if t.arch_latency is None else f", {t.arch_latency:.4g} / {t.target:.4g} {t.latency_unit}"
    top1 = "" if t.holdout_top1 is None else f", held-out {t.holdout_top1:.2f}%"
    print(f"{label}: {t.detail}{lat}{top1}, {t.wall_s:.0f} s: {' '.join(t.arch.ops)}")
  if not r.partial:
    print(f"summary: {r.workdir}/sweep.md, sweep.json, front.png")
  return r.exit_code


def cmd_train(args: argparse.Namespace) -> int:
  from pnas_jax.train.retrain import train

  config = _load_config(args)
  r = train(config, args.workdir, overwrite=args.overwrite)
  print(f"status: {r.detail} (step {r.step}/{r.total_steps}, {r.wall_s:.0f} s, "
        f"{r.images_per_s:.0f} images/s)")
  if r.test_top1 is not None:
    print(f"test top-1 {r.test_top1:.2f}%, top-5 {r.test_top5:.2f}%; report: "
          f"{r.workdir}/report.md")
  return r.exit_code


def cmd_eval(args: argparse.Namespace) -> int:
  import os

  import jax
  import numpy as np

  from pnas_jax.data.datasets import load_dataset
  from pnas_jax.interop.weights_files import load_variables
  from pnas_jax.models import zoo
  from pnas_jax.models.child import ChildNet
  from pnas_jax.models.init import init_variables
  from pnas_jax.train import inputs
  from pnas_jax.train.evaluation import evaluate, make_evaluator
  from pnas_jax.train.parallel import data_mesh, replicate
  from pnas_jax.train.retrain import trained_network

  if bool(args.network) == bool(args.arch):
    raise UserValueError("give the network once: as NETWORK or as --arch")
  args.network = args.network or args.arch
  dataset = load_dataset(args.data, args.data_dir, args.image_size)
  if os.path.isdir(args.network):
    space, arch, variables = trained_network(args.network)
    source = f"trained weights of {args.network}"
  else:
    space, arch = zoo.resolve_network(args.network, resolution=args.resolution,
                                      n_classes=dataset.n_classes)
    space = space.replace(in_channels=dataset.image_shape[-1])
    x0 = np.zeros((1, space.resolution, space.resolution, space.in_channels), np.float32)
    variables = init_variables(ChildNet(space, arch, dw_impl="lax"), jax.random.key(args.seed), x0)
    source = f"random initialisation (seed {args.seed})"
    if args.weights:  # weights.msgpack, or a reference .pth (pnas_jax/interop)
      variables = load_variables(args.weights, space, arch, args.network)
      source = args.weights
  space = inputs.space_for_data(space.to_dict(), dataset)
  model = ChildNet(space, arch)
  _, eval_pre = inputs.preprocessors(dataset, space.resolution)
  mesh = data_mesh()
  evaluator = make_evaluator(lambda v, x: model.apply(v, x, train=False), eval_pre, mesh)
  split = {"test": dataset.test, "train": dataset.train}[args.split]
  res = evaluate(evaluator, replicate(variables, mesh), split, args.batch, mesh,
                 args.max_batches or None)
  res.update(network=args.network, weights=source, data=dataset.name, split=args.split,
             resolution=space.resolution)
  if args.json:
    print(json.dumps(res, indent=2))
  else:
    print(f"{args.network} on {dataset.name}/{args.split} ({res['count']} images, "
          f"{space.resolution}px, {source}): top-1 {res['top1']:.2f}%, top-5 {res['top5']:.2f}%, "
          f"loss {res['loss']:.4f}")
  return 0


def cmd_export(args: argparse.Namespace) -> int:
  from pnas_jax.export import export_network
  from pnas_jax.search_space.io import read_arch_meta
  from pnas_jax.train.retrain import trained_network

  formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
  if args.weights:  # a zoo name / arch file with a weights file (e.g. from `pnas convert-weights`)
    from pnas_jax.interop.weights_files import load_variables
    from pnas_jax.models import zoo

    if not args.out:
      raise UserValueError("--weights needs --out DIR (the export goes to DIR/export/)")
    space, arch = zoo.resolve_network(args.workdir, resolution=args.resolution)
    variables = load_variables(args.weights, space, arch, args.workdir)
    paths = export_network(space, arch, variables, args.out, formats=formats)
  else:
    space, arch, variables = trained_network(args.workdir)
    norm = read_arch_meta(f"{args.workdir}/arch.json").get("normalization")
    paths = export_network(space, arch, variables, args.out or args.workdir, formats=formats,
                           preprocess=norm)
  for fmt, path in paths.items():
    print(f"{fmt}: {path}")
  return 0


def _run_command(subparsers: Any, name: str, help_text: str, config_kind: str,
                 func: Any) -> argparse.ArgumentParser:
  """A subcommand that runs a resumable job from a config in a workdir."""
  p = subparsers.add_parser(name, help=help_text)
  p.__class__ = OverrideParser
  p.add_argument("--config", required=True, help=f"configs/{config_kind}/<name>.py[:arg]")
  p.add_argument("--workdir", required=True, help="outputs and checkpoints (rerun to resume)")
  p.add_argument("--overwrite", action="store_true",
                 help="delete an earlier run's results in --workdir and start over")
  add_distributed_args(p)
  p.set_defaults(func=func)
  return p


def add_commands(subparsers: Any) -> None:
  """Registers `pnas search`, `pnas sweep`, `pnas train`, `pnas eval`, `pnas export`."""
  # Our progress messages at INFO; libraries (orbax, absl, jax) only from WARNING up.
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  logging.getLogger("pnas_jax").setLevel(logging.INFO)
  p = _run_command(subparsers, "search", "architecture search (configs/search/*.py)", "search",
                   cmd_search)
  p.add_argument("--json", action="store_true", help="print the summary as JSON")
  p.add_argument("--dry-run", action="store_true",
                 help="check the config, data and latency model; print the plan; compile nothing")
  _run_command(subparsers, "sweep", "one warm-up, then one search per latency target "
               "(latency.target_ratios or latency.targets)", "search", cmd_sweep)
  _run_command(subparsers, "train", "train a found / zoo network (configs/train/*.py)", "train",
               cmd_train)

  p = subparsers.add_parser("eval", help="top-1/top-5 of a trained workdir or a zoo network")
  p.add_argument("network", nargs="?", help="a `pnas train` workdir, an arch.json / net.config, or a "
                 "zoo name")
  p.add_argument("--arch", default=None, help="the same as NETWORK (for zoo names and arch files)")
  p.add_argument("--data", default="fashion_mnist", help="data set name (pnas_jax/data/datasets.py)")
  p.add_argument("--data-dir", default=None)
  p.add_argument("--image-size", type=int, default=None, help="host size of variable-size sets")
  p.add_argument("--split", default="test", choices=("test", "train"))
  p.add_argument("--resolution", type=int, default=None, help="input size (zoo / arch files)")
  p.add_argument("--weights", default=None,
                 help="weights.msgpack or a reference .pth checkpoint for an arch file / zoo net")
  p.add_argument("--seed", type=int, default=0, help="random init seed when no weights are given")
  p.add_argument("--batch", type=int, default=250)
  p.add_argument("--max-batches", type=int, default=0)
  p.add_argument("--json", action="store_true")
  p.set_defaults(func=cmd_eval)

  p = subparsers.add_parser("export", help="StableHLO (+ TF SavedModel/TFLite) of a trained net")
  p.add_argument("workdir", help="a finished `pnas train` workdir, or a zoo name / arch file with "
                 "--weights")
  p.add_argument("--weights", default=None, help="weights.msgpack or reference .pth (zoo / arch file)")
  p.add_argument("--out", default=None, help="output directory (default: the workdir)")
  p.add_argument("--resolution", type=int, default=None, help="input size (zoo / arch files)")
  p.add_argument("--formats", default="stablehlo,tf",
                 help="comma-separated: stablehlo, tf (tf needs TensorFlow: pip install pnas_jax[tf])")
  p.set_defaults(func=cmd_export)
