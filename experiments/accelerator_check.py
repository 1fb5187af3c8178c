"""GPU/TPU check: search and training step rates, memory and the projected cost of the paper's search.

Run on a machine with an accelerator (jax installed for it), in under 5 minutes:

  python experiments/accelerator_check.py --json [--batch 128]

It runs on the default JAX device: the supernet of the paper's ImageNet space (21 searchable
blocks, 6 MBConv candidates + Zero, 224x224, 1000 classes) for the weight step and the "two" and
"full" arch steps (pnas_jax/train/steps.py, with the MACs expectation as the cost term), and the
proxyless_gpu ChildNet training step (SGD Nesterov, label smoothing), each compiled once (compile
time and XLA's memory analysis), then timed (median of --repeats steps, the state threaded through
donated buffers). Peak device memory is read from the device's allocator where it reports it (GPU,
TPU; None on CPU). The projection multiplies the measured seconds per step by the step counts of
the search config's schedule (pnas_jax/train/search_config.py: 40 warm-up + 120 search epochs over
the ImageNet train split less the 50,000 held-out images, one arch step per 5 weight steps from the
second search epoch on), at the measured batch.

On CPU (or with --tiny) the shapes shrink (a 3-block space with 3 candidates, 16x16, 10 classes,
batch 2; the child step trains that space's every-block-3x3_MBConv3 net), so CI runs the same code
in about a minute; its figures then say nothing about an accelerator.

JSON keys (results/accelerator_check.json; with --json the last stdout line):
  device, backend, jax_version       where it ran
  tiny                               true when the shapes were shrunk (CPU default)
  resolution, batch, n_blocks, n_candidates   the measured shapes
  steps.{weight,two,full,child_proxyless_gpu}:
      compile_s                      lowering + compilation, seconds
      temp_mib, argument_mib, output_mib, generated_code_mib   XLA memory_analysis of the step
      step_ms                        median wall time of one step (synchronised)
      images_per_s                   batch / step time
      peak_mib                       the device's peak bytes in use after this step's runs (None on
                                     CPU); cumulative over the script, in step order
  steps.child_proxyless_gpu.network  which ChildNet ran ("proxyless_gpu"; tiny: the tiny space's)
  projection:
      train_images, holdout_images, warmup_epochs, search_epochs, arch_every, arch_start_epoch
                                     the schedule constants used
      weight_steps, arch_steps       step counts at the measured batch
      gpu_hours.{two,full}           projected device-hours of the whole search with that arch step
      paper_search_gpu_hours         the paper's reported search cost (200 GPU-hours, V100)
  wall_s                             the script's wall time
"""

from __future__ import annotations

import argparse
import functools
import math
import pathlib
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from bench_supernet import child_step
from results_io import write_result

from pnas_jax.arch import get_estimator
from pnas_jax.arch.supernet import Supernet
from pnas_jax.host_malloc import reexec_with_host_malloc
from pnas_jax.latency.expected import expected_cost, macs_table
from pnas_jax.latency.timing import device_description, time_fn
from pnas_jax.models.child import ChildNet
from pnas_jax.models.init import init_variables
from pnas_jax.models.zoo import ZOO
from pnas_jax.search_space import Arch, SearchSpace
from pnas_jax.train import (
  arch_optimizer,
  arch_step,
  create_search_state,
  weight_optimizer,
  weight_step,
)
from pnas_jax.train.search_config import search_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
MIB = 2**20
IMAGENET_TRAIN_IMAGES = 1_281_167  # ImageNet-1k (ILSVRC 2012) train split
PAPER_SEARCH_GPU_HOURS = 200.0  # Cai et al. 2019, Table 2: ProxylessNAS search cost (V100)
# The CPU/CI shapes: two stages (3 blocks, 3 candidates + Zero), 16x16, 10 classes, batch 2; the
# ChildNet step then trains the tiny space's every-block-first-candidate net instead of proxyless_gpu.
TINY_SPACE = SearchSpace(
    stage_widths=(8, 16), stage_depths=(1, 2), stage_strides=(1, 2),
    candidates=("3x3_MBConv3", "5x5_MBConv3", "3x3_MBConv6"), stem_width=8, first_block_width=8,
    tail_width=16, n_classes=10, resolution=16)
TINY = {"resolution": 16, "batch": 2, "repeats": 2}


def _log(msg: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _peak_mib() -> float | None:
  stats = jax.devices()[0].memory_stats()
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return round(stats["peak_bytes_in_use"] / MIB, 1)


def _compile_and_time(fn, state, batch: dict[str, jax.Array], repeats: int) -> tuple[dict, Any]:
  """Compiles `fn(state, batch)` (state donated), then times `repeats` steps threading the state."""
  t0 = time.perf_counter()
  compiled = jax.jit(fn, donate_argnums=0).lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  rec = {"compile_s": round(compile_s, 2)}
  for key in ("temp", "argument", "output", "generated_code"):
    value = getattr(mem, f"{key}_size_in_bytes", None) if mem is not None else None
    rec[f"{key}_mib"] = None if value is None else round(value / MIB, 1)
  box = {"s": state}

  def call():
    box["s"], metrics = compiled(box["s"], batch)
    return metrics

  t = time_fn(call, warmup=1, repeats=repeats, clock="wall")
  n = batch["image"].shape[0]
  rec.update(step_ms=round(t.median_ms, 3), images_per_s=round(n * 1e3 / t.median_ms, 1),
             peak_mib=_peak_mib())
  return rec, box["s"]


def projection(step_s: dict[str, float], batch: int, arch_batch: int) -> dict[str, Any]:
  """Device-hours of the paper's ImageNet search at the measured step times (seconds per step).

  weight steps = (warm-up + search epochs) x steps/epoch, steps/epoch = (train - held-out) // batch;
  arch steps = (search epochs - arch_start_epoch) x steps/epoch / arch_every.
  """
  c = search_config()
  holdout = int(c.data.holdout)
  per_epoch = (IMAGENET_TRAIN_IMAGES - holdout) // batch
  warmup, epochs = float(c.schedule.warmup_epochs), float(c.schedule.epochs)
  weight_steps = int(math.ceil((warmup + epochs) * per_epoch))
  arch_steps = int((epochs - c.schedule.arch_start_epoch) * per_epoch // c.schedule.arch_every)
  hours = {mode: round((weight_steps * step_s["weight"] + arch_steps * step_s[mode]) / 3600, 1)
           for mode in ("two", "full")}
  return {"train_images": IMAGENET_TRAIN_IMAGES, "holdout_images": holdout, "warmup_epochs": warmup,
          "search_epochs": epochs, "arch_every": int(c.schedule.arch_every),
          "arch_start_epoch": float(c.schedule.arch_start_epoch), "batch": batch,
          "arch_batch": arch_batch, "weight_steps": weight_steps, "arch_steps": arch_steps,
          "gpu_hours": hours, "paper_search_gpu_hours": PAPER_SEARCH_GPU_HOURS}


def run_check(tiny: bool, batch: int, resolution: int, repeats: int, seed: int = 0) -> dict[str, Any]:
  space = (TINY_SPACE if tiny else SearchSpace()).replace(resolution=resolution)
  rng = np.random.default_rng(seed)
  data = {"image": jnp.asarray(rng.normal(size=(batch, resolution, resolution, 3)), jnp.float32),
          "label": jnp.asarray(rng.integers(0, space.n_classes, batch), jnp.int32)}
  wtx, atx = weight_optimizer(0.025, 10_000), arch_optimizer()
  model = Supernet(space)
  t0 = time.perf_counter()
  state = create_search_state(model, jax.random.key(seed), wtx, atx)
  _log(f"supernet state created ({time.perf_counter() - t0:.1f} s)")
  cost_fn = functools.partial(expected_cost, macs_table(space))
  steps: dict[str, Any] = {}
  steps["weight"], state = _compile_and_time(
      functools.partial(weight_step, model=model, tx=wtx), state, data, repeats)
  _log(f"weight step {steps['weight']}")
  for mode in ("two", "full"):
    fn = functools.partial(arch_step, model=model, tx=atx, estimator=get_estimator(mode),
                           cost_fn=cost_fn)
    steps[mode], state = _compile_and_time(fn, state, data, repeats)
    _log(f"{mode} arch step {steps[mode]}")
  del state
  if tiny:
    child_name, cspace = "tiny space, every block 3x3_MBConv3", space
    carch = Arch.uniform(space, "3x3_MBConv3")
  else:
    child_name, cspace, carch = "proxyless_gpu", ZOO["proxyless_gpu"].space.replace(
        resolution=resolution), ZOO["proxyless_gpu"].arch
  # No dropout: the step is timed without a dropout key (as bench_supernet.child_step).
  child = ChildNet(cspace, carch)
  v = init_variables(child, jax.random.key(seed + 1), data["image"][:1])
  cstate = (v["params"], v["batch_stats"], wtx.init(v["params"]))
  steps["child_proxyless_gpu"], _ = _compile_and_time(
      functools.partial(child_step, model=child, tx=wtx), cstate, data, repeats)
  steps["child_proxyless_gpu"]["network"] = child_name
  _log(f"child step {steps['child_proxyless_gpu']}")
  return {"space": space, "steps": steps}


def main(argv: list[str] | None = None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--json", action="store_true", help="print the JSON object as the last line")
  p.add_argument("--tiny", action="store_true", default=None,
                 help="shrunk shapes (3 blocks, 16x16, batch 2); the default on CPU")
  p.add_argument("--full", dest="tiny", action="store_false", help="full shapes even on CPU (slow)")
  p.add_argument("--quick", dest="tiny", action="store_true", help="the same as --tiny")
  p.add_argument("--batch", type=int, default=None, help="images per step (default: 128; tiny: 2)")
  p.add_argument("--resolution", type=int, default=None, help="default: 224; tiny: 16")
  p.add_argument("--repeats", type=int, default=None, help="timed steps each (default: 10; tiny: 2)")
  p.add_argument("--out", default=str(ROOT / "results" / "accelerator_check.json"))
  args = p.parse_args(argv)
  tiny = jax.default_backend() == "cpu" if args.tiny is None else args.tiny
  batch = args.batch or (TINY["batch"] if tiny else 128)
  resolution = args.resolution or (TINY["resolution"] if tiny else 224)
  repeats = args.repeats or (TINY["repeats"] if tiny else 10)

  t0 = time.perf_counter()
  _log(f"{device_description()}: {'tiny' if tiny else 'full'} shapes, batch {batch}, {resolution}px")
  res = run_check(tiny, batch, resolution, repeats)
  steps = res["steps"]
  step_s = {k: steps[k]["step_ms"] / 1e3 for k in ("weight", "two", "full")}
  result = {
      "device": device_description(), "backend": jax.default_backend(),
      "jax_version": jax.__version__, "tiny": tiny, "resolution": resolution, "batch": batch,
      "n_blocks": len(res["space"].blocks),
      "n_candidates": max(len(b.candidates) for b in res["space"].blocks),
      "steps": steps, "projection": projection(step_s, batch, batch),
      "wall_s": round(time.perf_counter() - t0, 1),
  }
  write_result(result, args.out, args.json)
  return result


if __name__ == "__main__":
  reexec_with_host_malloc()  # as `pnas` does (pnas_jax/host_malloc.py)
  main()
