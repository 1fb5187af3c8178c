"""`pnas search | train | eval | export`: the loops and what follows them, from ml_collections configs.

  pnas search --config configs/search/fashion_mnist.py --workdir results/search [--config.x=y ...]
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


def cmd_search(args: argparse.Namespace) -> int:
  from pnas_jax.train.search import plan_search, search

  config = load_config(args.config, args.config_overrides)
  init_distributed(args)
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
  if result.holdout_top1 is not None:
    print(f"held-out top-1 of the derived arch (supernet weights): {result.holdout_top1:.2f}%")
  print(f"outputs: {result.workdir}/arch.json, net.config, metrics.jsonl, plots/")
  return result.exit_code


def cmd_train(args: argparse.Namespace) -> int:
  from pnas_jax.train.retrain import train

  config = load_config(args.config, args.config_overrides)
  init_distributed(args)
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
  from pnas_jax.file_io import load_msgpack
  from pnas_jax.models import zoo
  from pnas_jax.models.child import ChildNet
  from pnas_jax.models.init import init_variables
  from pnas_jax.train import inputs
  from pnas_jax.train.evaluation import evaluate, make_evaluator
  from pnas_jax.train.parallel import data_mesh, replicate
  from pnas_jax.train.retrain import trained_network

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
    if args.weights:
      variables = load_msgpack(args.weights, variables)
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

  space, arch, variables = trained_network(args.workdir)
  formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
  norm = read_arch_meta(f"{args.workdir}/arch.json").get("normalization")
  paths = export_network(space, arch, variables, args.workdir, formats=formats, preprocess=norm)
  for fmt, path in paths.items():
    print(f"{fmt}: {path}")
  return 0


def add_commands(subparsers: Any) -> None:
  """Registers `pnas search`, `pnas train`, `pnas eval`, `pnas export`."""
  # Our progress messages at INFO; libraries (orbax, absl, jax) only from WARNING up.
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  logging.getLogger("pnas_jax").setLevel(logging.INFO)
  p = subparsers.add_parser("search", help="architecture search (configs/search/*.py)")
  p.__class__ = OverrideParser
  p.add_argument("--config", required=True, help="configs/search/<name>.py[:arg]")
  p.add_argument("--workdir", required=True, help="outputs and checkpoints (rerun to resume)")
  p.add_argument("--json", action="store_true", help="print the summary as JSON")
  p.add_argument("--overwrite", action="store_true",
                 help="delete an earlier run's results in --workdir and start over")
  p.add_argument("--dry-run", action="store_true",
                 help="check the config, data and latency model; print the plan; compile nothing")
  add_distributed_args(p)
  p.set_defaults(func=cmd_search)

  p = subparsers.add_parser("train", help="train a found / zoo network (configs/train/*.py)")
  p.__class__ = OverrideParser
  p.add_argument("--config", required=True, help="configs/train/<name>.py[:arg]")
  p.add_argument("--workdir", required=True, help="outputs and checkpoints (rerun to resume)")
  p.add_argument("--overwrite", action="store_true",
                 help="delete an earlier run's results in --workdir and start over")
  add_distributed_args(p)
  p.set_defaults(func=cmd_train)

  p = subparsers.add_parser("eval", help="top-1/top-5 of a trained workdir or a zoo network")
  p.add_argument("network", help="a `pnas train` workdir, an arch.json / net.config, or a zoo name")
  p.add_argument("--data", default="fashion_mnist", help="data set name (pnas_jax/data/datasets.py)")
  p.add_argument("--data-dir", default=None)
  p.add_argument("--image-size", type=int, default=None, help="host size of variable-size sets")
  p.add_argument("--split", default="test", choices=("test", "train"))
  p.add_argument("--resolution", type=int, default=None, help="input size (zoo / arch files)")
  p.add_argument("--weights", default=None, help="weights.msgpack for an arch file / zoo net")
  p.add_argument("--seed", type=int, default=0, help="random init seed when no weights are given")
  p.add_argument("--batch", type=int, default=250)
  p.add_argument("--max-batches", type=int, default=0)
  p.add_argument("--json", action="store_true")
  p.set_defaults(func=cmd_eval)

  p = subparsers.add_parser("export", help="StableHLO (+ TF SavedModel/TFLite) of a trained net")
  p.add_argument("workdir", help="a finished `pnas train` workdir")
  p.add_argument("--formats", default="stablehlo,tf",
                 help="comma-separated: stablehlo, tf (tf needs TensorFlow: pip install pnas_jax[tf])")
  p.set_defaults(func=cmd_export)
