"""`pnas search`: the architecture search from an ml_collections config.

  pnas search --config configs/search/fashion_mnist.py --workdir results/search [--config.x=y ...]

Rerunning the same command in the same workdir resumes from the last checkpoint.
Multi-host (GPU cluster / TPU pod): run the same command on every host with --multihost; JAX reads
the coordinator from the cluster environment (SLURM, TPU metadata) or from --coordinator,
--num-processes and --process-id.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from pnas_jax.config_loading import load_config, split_config_args


class OverrideParser(argparse.ArgumentParser):
  """Collects `--config.key=value` overrides (applied by load_config) before argparse sees them."""

  def parse_known_args(self, args=None, namespace=None):
    rest, overrides = split_config_args(list(sys.argv[1:] if args is None else args))
    ns, extra = super().parse_known_args(rest, namespace)
    ns.config_overrides = list(getattr(ns, "config_overrides", []) or []) + overrides
    return ns, extra


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
  from pnas_jax.train.search import search

  config = load_config(args.config, args.config_overrides)
  init_distributed(args)
  result = search(config, args.workdir)
  d = result.to_dict()
  if args.json:
    print(json.dumps(d, indent=2))
  else:
    unit = result.latency_unit or ""
    print(f"status: {result.status} (step {result.step}/{result.total_steps}, "
          f"{result.wall_s:.0f} s, {result.images_per_s:.0f} images/s)")
    print(f"arch: {' '.join(result.arch.ops)}")
    if result.target is not None:
      print(f"E[LAT] {result.expected_latency:.4g} {unit}, derived arch {result.arch_latency:.4g} "
            f"{unit}, target {result.target:.4g} {unit}")
    if result.holdout_top1 is not None:
      print(f"held-out top-1 of the derived arch (supernet weights): {result.holdout_top1:.2f}%")
    print(f"outputs: {result.workdir}/arch.json, net.config, metrics.jsonl, plots/")
  return 0 if result.status == "done" or result.status.startswith(("preempted", "stopped")) else 1


def run_guarded(fn):
  """Maps the errors a user can fix to one line on stderr and exit code 2."""

  def wrapped(args: argparse.Namespace) -> int:
    from pnas_jax.checkpointing import CheckpointError
    from pnas_jax.config_loading import ConfigError
    from pnas_jax.data.local_files import MissingDataError
    from pnas_jax.latency.table import LatencyTableError
    from pnas_jax.search_space.space import SearchSpaceError
    from pnas_jax.train.monitor import NonFiniteError

    try:
      return fn(args)
    except (ConfigError, MissingDataError, LatencyTableError, SearchSpaceError, CheckpointError,
            NonFiniteError, ValueError, FileNotFoundError, KeyError) as e:
      msg = e.args[0] if isinstance(e, KeyError) and e.args else e
      print(f"pnas {args.command}: error: {msg}", file=sys.stderr)
      return 2

  return wrapped


def add_commands(subparsers: Any) -> None:
  """Registers `pnas search`."""
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
  p = subparsers.add_parser("search", help="architecture search (configs/search/*.py)")
  p.__class__ = OverrideParser
  p.add_argument("--config", required=True, help="configs/search/<name>.py[:arg]")
  p.add_argument("--workdir", required=True, help="outputs and checkpoints (rerun to resume)")
  p.add_argument("--json", action="store_true", help="print the summary as JSON")
  add_distributed_args(p)
  p.set_defaults(func=run_guarded(cmd_search))
