"""Does the input pipeline keep the device busy? Search weight steps fed by it vs. a resident batch.

Run (on the machine to measure; other benchmarks on a shared machine should take the same lock):

  flock /tmp/pnas_bench.lock python experiments/bench_input_pipeline.py --json [--quick]

Builds the weight step of the search of configs/search/fashion_mnist.py (latency.model=macs, so
nothing is measured first; synthetic 28x28x3 data if /usr/share/datasets/fashion-mnist is missing)
exactly as train/search.py does: data_parallel(with_preprocess(weight_step, ...)) on data_mesh(),
state replicated and donated. Then, after compiling and warming up, it times `--steps` steps fed
(a) by the real pipeline, EpochIterator -> prefetch_to_device(size 2, put=global_batch), and
(b) by one batch already on the device, reused every step. Like the training loop, nothing is
synchronised per step: block_until_ready only at the end of each timed run. Rounds of (a) and (b)
alternate (`--rounds`) so background load hits both alike. `pipeline_over_resident` is the median
step time of (a) over that of (b): ~1.0 means the host keeps up with the device. The host-side batch
assembly alone (next(EpochIterator), no device) is timed separately.

Writes results/bench_input_pipeline.json and results/bench_input_pipeline.png; with --json the last
stdout line is the JSON object.
"""

from __future__ import annotations

import argparse
import functools
import os
import pathlib
import statistics
import sys
import time

import jax
from results_io import save_figure, write_result

from pnas_jax.arch.supernet import Supernet
from pnas_jax.config_loading import load_config
from pnas_jax.data.pipeline import EpochIterator, prefetch_to_device
from pnas_jax.host_malloc import reexec_with_host_malloc
from pnas_jax.latency.timing import device_description
from pnas_jax.train import inputs, optim, parallel, steps
from pnas_jax.train import state as state_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "configs/search/fashion_mnist.py"
FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
SYNTHETIC = ["--config.data.name=synthetic", "--config.space.resolution=28",
             "--config.space.in_channels=3", "--config.data.holdout=256"]


def build(batch: int, synthetic: bool, extra: list[str] = ()):
  """(config, mesh, data, step, state) of the search's weight step (`extra`: key=value overrides)."""
  overrides = ["--config.latency.model=macs", f"--config.data.batch_size={batch}"]
  if synthetic:
    overrides += SYNTHETIC
  overrides += [f"--config.{kv}" for kv in extra]
  config = load_config(str(ROOT / CONFIG), overrides)
  mesh = parallel.data_mesh()
  data = inputs.search_inputs(config, mesh)
  model = Supernet(data.space, dw_impl="auto")
  weight_tx = optim.weight_optimizer(0.05, 1000)
  arch_tx = optim.arch_optimizer()
  state = state_lib.create_search_state(model, jax.random.key(0), weight_tx, arch_tx)
  step = parallel.data_parallel(
      inputs.with_preprocess(steps.weight_step, data.train_preprocess, state_lib.WEIGHT_FAMILY,
                             "step"),
      mesh, model=model, tx=weight_tx,
  )
  state = parallel.replicate(state, mesh)
  return config, mesh, data, step, state


def timed_run(step, state, batches, n: int) -> tuple[object, float]:
  """n steps with no per-step sync; seconds until the last one is done. Returns (state, seconds)."""
  t0 = time.perf_counter()
  m = None
  for _ in range(n):
    state, m = step(state, next(batches))
  jax.block_until_ready((state, m))
  return state, time.perf_counter() - t0


def host_assembly_ms(source, batch: int, n: int) -> dict[str, float]:
  """ms per next(EpochIterator) on the host alone (seed 1, so not the batches of the runs)."""
  it = EpochIterator(source, batch, seed=1)
  next(it)  # first permutation
  samples = []
  for _ in range(n):
    t0 = time.perf_counter()
    next(it)
    samples.append((time.perf_counter() - t0) * 1e3)
  return {"median_ms": statistics.median(samples), "min_ms": min(samples), "count": n}


def plot(result: dict, path: pathlib.Path) -> None:
  import numpy as np
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  a = np.array(result["pipeline"]["round_step_ms"])
  b = np.array(result["resident"]["round_step_ms"])
  xs = np.arange(len(a))
  fig = Figure(figsize=(6.5, 4))
  FigureCanvasAgg(fig)
  ax = fig.subplots()
  ax.bar(xs - 0.2, a, 0.4, label="(a) EpochIterator + prefetch_to_device")
  ax.bar(xs + 0.2, b, 0.4, label="(b) resident batch")
  ax.axhline(result["host_batch_ms"]["median_ms"], color="k", ls="--", lw=1,
             label="host batch assembly alone")
  ax.set_xticks(xs, [f"round {i + 1}" for i in xs])
  ax.set_ylabel("ms / step")
  ax.set_title(f"search weight step, batch {result['batch']}, {result['dataset']}: "
               f"(a)/(b) = {result['pipeline_over_resident']:.3f}", fontsize=9)
  ax.legend(fontsize=8, loc="lower right")
  save_figure(fig, result["device"], path)


def main(argv: list[str] | None = None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--json", action="store_true", help="print the JSON object as the last line")
  p.add_argument("--quick", action="store_true", help="batch 32, 8 steps, 2 rounds")
  p.add_argument("--batch", type=int, default=128)
  p.add_argument("--steps", type=int, default=30, help="steps per timed run")
  p.add_argument("--rounds", type=int, default=3, help="alternating rounds of (a) and (b)")
  p.add_argument("--synthetic", action="store_true",
                 help=f"synthetic data even if {FMNIST_DIR} exists")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="config override, e.g. --set space.stage_depths=(1,1,1,1) (repeatable)")
  p.add_argument("--out", default=str(ROOT / "results" / "bench_input_pipeline.json"))
  args = p.parse_args(argv)
  if args.quick:
    args.batch, args.steps, args.rounds = 32, 8, 2
  synthetic = args.synthetic or not os.path.isdir(FMNIST_DIR)

  t0 = time.perf_counter()
  config, mesh, data, step, state = build(args.batch, synthetic, args.set)
  put = functools.partial(parallel.global_batch, mesh=mesh)
  batches = prefetch_to_device(EpochIterator(data.train, args.batch, seed=0), 2, put=put)
  resident = put(next(EpochIterator(data.train, args.batch, seed=2)))

  def resident_batches():
    while True:
      yield resident

  resident_it = resident_batches()
  for it in (resident_it, batches):  # compile, then warm up both feeds
    state, _ = timed_run(step, state, it, 2)
  print(f"built + compiled in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

  times: dict[str, list[float]] = {"pipeline": [], "resident": []}
  for r in range(args.rounds):
    state, ta = timed_run(step, state, batches, args.steps)
    state, tb = timed_run(step, state, resident_it, args.steps)
    times["pipeline"].append(ta)
    times["resident"].append(tb)
    print(f"round {r + 1}: pipeline {ta / args.steps * 1e3:.2f} ms/step, "
          f"resident {tb / args.steps * 1e3:.2f} ms/step", file=sys.stderr)

  result: dict = {
      "device": device_description(),
      "dataset": config.data.name,
      "resolution": data.space.resolution,
      "batch": args.batch,
      "steps": args.steps,
      "rounds": args.rounds,
      "overrides": args.set,
  }
  for name, ts in times.items():
    per_step = [t / args.steps for t in ts]
    med = statistics.median(per_step)
    result[name] = {
        "step_ms": med * 1e3,
        "steps_per_s": 1.0 / med,
        "images_per_s": args.batch / med,
        "round_step_ms": [s * 1e3 for s in per_step],
    }
  result["pipeline_over_resident"] = result["pipeline"]["step_ms"] / result["resident"]["step_ms"]
  result["round_ratios"] = [a / b for a, b in zip(times["pipeline"], times["resident"], strict=True)]
  result["host_batch_ms"] = host_assembly_ms(data.train, args.batch, max(20, args.steps))
  result["host_over_resident_step"] = (result["host_batch_ms"]["median_ms"]
                                       / result["resident"]["step_ms"])

  write_result(result, args.out, args.json, plot)
  return result


if __name__ == "__main__":
  reexec_with_host_malloc()  # as `pnas` does (pnas_jax/host_malloc.py)
  main()
