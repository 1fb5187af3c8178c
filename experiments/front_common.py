"""What experiments/pareto.py and experiments/supernet_ranking.py share: the configs they start from,
the protocol's budgets and the presets of --quick / --tiny, and how they end on a user error.

Not an experiment itself; the scripts import it from their own directory.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Callable
from typing import Any

from pnas_jax.config_loading import split_config_args
from pnas_jax.errors import PnasError
from pnas_jax.host_malloc import reexec_with_host_malloc

ROOT = pathlib.Path(__file__).resolve().parents[1]
SEARCH_CONFIG = str(ROOT / "configs" / "search" / "fashion_mnist.py")
TRAIN_CONFIG = str(ROOT / "configs" / "train" / "fashion_mnist.py")
TINY_CONFIG = str(ROOT / "configs" / "search" / "tiny.py")
# The evaluation protocol's budgets (neither --quick nor --tiny): a 6-epoch warm-up of the supernet
# and 6-epoch retraining. At 6 epochs the seed std of a retrained net is 0.1-0.3 points, about a
# third of 3 epochs' (docs/design.md §2.14); the configs' own defaults are the demo's shorter ones.
PROTOCOL_SEARCH = ["--config.schedule.warmup_epochs=6"]
PROTOCOL_TRAIN = ["--config.schedule.epochs=6"]
QUICK_TRAIN = ["--config.schedule.steps_per_epoch=60", "--config.schedule.epochs=1.0",
               "--config.eval.every_epochs=0"]
# Synthetic 16x16 data, tiny nets: what configs/search/tiny.py searches.
TINY_TRAIN = ["--config.data.batch_size=32", "--config.data.eval_batch_size=64",
              "--config.schedule.steps_per_epoch=3", "--config.schedule.epochs=1.0",
              "--config.eval.every_epochs=0", "--config.model.dw_impl=lax",
              "--config.checkpoint.every_steps=100", "--config.log.every_steps=100"]


def parse_with_overrides(p: argparse.ArgumentParser, argv: list[str], quick_help: str,
                         out: str) -> tuple[argparse.Namespace, list[str]]:
  """Adds the flags both experiments take (--quick, --tiny, --no-progress, --out, --json) and parses
  `argv`; returns (args, the --config.KEY=VALUE overrides of the search config)."""
  p.add_argument("--quick", action="store_true", help=quick_help)
  p.add_argument("--tiny", action="store_true", help="tiny space, synthetic data, MACs (seconds)")
  p.add_argument("--no-progress", action="store_true")
  p.add_argument("--out", default=out, help=f"the result's JSON file (default {out}); the plot and "
                 "the tables go beside it, with .png and .md")
  p.add_argument("--json", action="store_true")
  rest, overrides = split_config_args(argv)
  args = p.parse_args(rest)
  if not args.out.endswith(".json") or pathlib.Path(args.out).is_dir():
    p.error(f"--out {args.out}: give a .json file path (the .png and .md are written beside it), "
            "e.g. --out results/pareto9.json")
  return args, overrides


def train_overrides(search_cfg: Any, args: argparse.Namespace) -> list[str]:
  """The retraining config's overrides: the search's data, the --tiny / --quick preset, then the
  user's --train KEY=VALUE (last, so they win)."""
  train = [f"--config.data.name={search_cfg.data.name}"]
  if search_cfg.data.data_dir:
    train.append(f"--config.data.data_dir={search_cfg.data.data_dir}")
  train += TINY_TRAIN if args.tiny else QUICK_TRAIN if args.quick else PROTOCOL_TRAIN
  return train + [f"--config.{kv}" for kv in args.train]


def search_preset(args: argparse.Namespace, quick: list[str], tiny: list[str]) -> list[str]:
  """The search config's overrides before the user's: --tiny's, --quick's, else the protocol's."""
  return tiny if args.tiny else quick if args.quick else PROTOCOL_SEARCH


def run(main: Callable[[], int]) -> None:
  """Exits with main()'s status; a user error prints its one-line message and exits 2. First
  re-executes the script with the host allocator, as `pnas` does (pnas_jax/host_malloc.py)."""
  reexec_with_host_malloc()
  try:
    sys.exit(main())
  except PnasError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
