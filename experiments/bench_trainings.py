"""How fast does a batch of small trainings finish: one after another, two at a time, and with
each host allocator?

Run (on the machine to measure; other benchmarks on a shared machine should take the same lock):

  flock /tmp/pnas_bench.lock python experiments/bench_trainings.py --json [--quick]

The demo and experiments/pareto.py retrain a dozen or more small Fashion-MNIST networks. A
multi-threaded XLA:CPU process leaves the cores partly idle on such small networks (batch 128 at
28x28: the intra-op pool waits between short kernels), so front.train_networks can run `workers`
trainings at a time, each `pnas train` in a child process. This times the same `--networks`
trainings (the demo's baseline and smaller uniform networks, configs/train/fashion_mnist.py, the
real data when Debian's dataset-fashion-mnist is installed, else synthetic; `--steps` steps, no
evaluation) three ways, in turn for `--rounds` rounds so that a change of the machine's load hits
all alike:
  workers_1          one at a time in this process (which runs with the host allocator every
                     `pnas` process chooses, pnas_jax/host_malloc.py: tcmalloc where installed);
  workers_2          two at a time in child processes, with the same allocator;
  workers_2_hugepages the same with PNAS_HOST_MALLOC=hugepages (glibc, huge pages);
  workers_2_4k_pages the same with PNAS_HOST_MALLOC=off (glibc's default: XLA's per-call
                     temporaries are mmapped and page-faulted in again at every step).
Reports each round's wall time, `speedup` = median(workers_1) / median(workers_2),
`hugepage_speedup` = median(workers_2_4k_pages) / median(workers_2_hugepages) and
`allocator_speedup` = median(workers_2_hugepages) / median(workers_2), measured in this run
(`allocator` says which allocator workers_2 had).

Writes results/bench_trainings.json; with --json the last stdout line is the JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from unittest import mock

from front_common import SEARCH_CONFIG, TRAIN_CONFIG
from results_io import write_result

from pnas_jax import front, host_malloc
from pnas_jax.compile_cache import enable_compilation_cache
from pnas_jax.config_loading import load_config
from pnas_jax.data.local_files import FASHION_MNIST_DIR
from pnas_jax.latency.timing import device_description
from pnas_jax.search_space.space import Arch, SearchSpace

# name: (trainings at a time, PNAS_HOST_MALLOC of the children; None: as this process)
VARIANTS = {"workers_1": (1, None), "workers_2": (2, None), "workers_2_hugepages": (2, "hugepages"),
            "workers_2_4k_pages": (2, "off")}


@contextlib.contextmanager
def _malloc_environment(setting: str | None):
  """Child processes started inside choose their allocator by `setting` (PNAS_HOST_MALLOC), not
  by what this process inherited; None leaves the environment as it is."""
  env = (dict(os.environ) if setting is None
         else host_malloc.environment_choosing(os.environ, setting))
  with mock.patch.dict(os.environ, env, clear=True):  # restored as it was on the way out
    yield


def _networks(space: SearchSpace, n: int) -> list[tuple[str, Arch]]:
  """The baseline (every block 3x3_MBConv6) and the next `n - 1` hand-designed members."""
  return front.hand_designed_family(space, ("3x3_MBConv6", "3x3_MBConv3"))[:n]


def main(argv: list[str] | None = None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--networks", type=int, default=4)
  p.add_argument("--steps", type=int, default=300, help="training steps per network")
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--quick", action="store_true", help="2 networks, 20 steps, 1 round (a smoke run)")
  p.add_argument("--json", action="store_true")
  p.add_argument("--out", default="results/bench_trainings.json")
  args = p.parse_args(argv)
  if args.quick:
    args.networks, args.steps, args.rounds = 2, 20, 1
  enable_compilation_cache()
  space = SearchSpace(**load_config(SEARCH_CONFIG).space.to_dict())
  nets = _networks(space, args.networks)
  data = "fashion_mnist" if os.path.isdir(FASHION_MNIST_DIR) else "synthetic"
  over = [f"--config.data.name={data}", f"--config.schedule.steps_per_epoch={args.steps}",
          "--config.schedule.epochs=1.0", "--config.eval.every_epochs=0",
          "--config.eval.max_batches=1", "--config.checkpoint.every_steps=100000"]
  times: dict[str, list[float]] = {name: [] for name in VARIANTS}
  for r in range(args.rounds):
    for name, (workers, setting) in VARIANTS.items():
      with tempfile.TemporaryDirectory() as d, _malloc_environment(setting):
        t0 = time.perf_counter()
        _, code = front.train_networks(nets, space, d, TRAIN_CONFIG, over, [r], progress=False,
                                       workers=workers)
        if code:
          raise SystemExit(f"a training failed (exit {code})")
        times[name].append(time.perf_counter() - t0)
      print(f"round {r}: {name}: {times[name][-1]:.1f} s", file=sys.stderr)
  median = {name: statistics.median(t) for name, t in times.items()}
  result = {"device": device_description(), "data": data, "networks": [n for n, _ in nets],
            "steps": args.steps, "rounds": args.rounds, "wall_s": times, "median_s": median,
            "speedup": median["workers_1"] / median["workers_2"],
            "hugepage_speedup": median["workers_2_4k_pages"] / median["workers_2_hugepages"],
            "allocator_speedup": median["workers_2_hugepages"] / median["workers_2"],
            "allocator": os.environ.get("LD_PRELOAD") or os.environ.get("GLIBC_TUNABLES") or "glibc"}
  write_result(result, args.out, args.json)
  return result


if __name__ == "__main__":
  host_malloc.reexec_with_host_malloc()  # as `pnas` does (pnas_jax/host_malloc.py)
  main()
