"""Training steps under each host allocator: glibc with 4 KiB pages, glibc with huge pages, tcmalloc.

Run (on the machine to measure; other benchmarks on a shared machine should take the same lock):

  flock /tmp/pnas_bench.lock python experiments/bench_host_malloc.py --json [--quick]

Each (network, allocator) pair runs in a child process started with PNAS_HOST_MALLOC set to "off",
"hugepages" or "auto" (tcmalloc where installed; pnas_jax/host_malloc.py) and re-executed by it,
as every `pnas` process is. The child compiles one training step (bench_ops.make_jax_step: SGD
with Nesterov momentum, label smoothing), calls it --warmup times untimed and --steps times in a
row, and reports the median wall time per step and the kernel (system) CPU time per step: the
page faults and page zeroing of XLA:CPU's per-call temporary buffer. The networks: the demo's
baseline (every block 3x3_MBConv6, Fashion-MNIST space, batch 128, 28x28) and proxyless_mobile
(batch 32, 128x128). The pairs take turns for --rounds rounds, so a change of the machine's load
hits all alike; each pair's figure is the median over the rounds. Measured on a 2-core Intel Xeon
(2026-12-06, 3 rounds of 15 steps), seconds per step, glibc 4 KiB / huge pages / tcmalloc: the
demo's baseline 0.149 / 0.115 / 0.100 (kernel CPU 0.101 / 0.050 / 0.008), proxyless_mobile
0.427 / 0.349 / 0.313 (0.260 / 0.119 / 0.006).

Writes results/bench_host_malloc.json; with --json the last stdout line is the JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import types
from typing import Any

SETTINGS = ("off", "hugepages", "auto")
NETWORKS = ("demo_baseline", "proxyless_mobile")


def _step(network: str, quick: bool):
  """(jitted step, state, (images, labels)) of `network`; imports JAX only in the child."""
  from bench_ops import make_jax_step
  from bench_vs_reference import demo_space

  from pnas_jax.models import zoo
  from pnas_jax.search_space import Arch

  if network == "proxyless_mobile":
    return make_jax_step(zoo.get("proxyless_mobile"), 32 if quick else 128, 4 if quick else 32)[:3]
  space, batch = demo_space(False)
  entry = types.SimpleNamespace(space=space, arch=Arch.uniform(space, "3x3_MBConv6"),
                                dropout_rate=0.0)
  return make_jax_step(entry, space.resolution, 8 if quick else batch)[:3]


def child(network: str, steps: int, warmup: int, quick: bool) -> dict[str, Any]:
  """Times `steps` consecutive training steps of `network` in this process."""
  import jax

  step, state, (images, labels) = _step(network, quick)
  for _ in range(warmup):
    state, loss = step(state, images, labels)
    jax.block_until_ready(loss)
  times, k0 = [], os.times().system
  for _ in range(steps):
    t0 = time.perf_counter()
    state, loss = step(state, images, labels)
    jax.block_until_ready(loss)
    times.append(time.perf_counter() - t0)
  return {"median_s": statistics.median(times), "kernel_cpu_per_step_s":
          (os.times().system - k0) / steps,
          "ld_preload": os.environ.get("LD_PRELOAD"),
          "glibc_tunables": os.environ.get("GLIBC_TUNABLES")}


def _run_child(network: str, setting: str, args: argparse.Namespace) -> dict[str, Any]:
  from pnas_jax.host_malloc import environment_choosing

  env = environment_choosing(os.environ, setting)
  cmd = [sys.executable, os.path.abspath(__file__), "--child", network, "--steps",
         str(args.steps), "--warmup", str(args.warmup)] + (["--quick"] if args.quick else [])
  done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  if done.returncode:
    raise SystemExit(f"{network} with PNAS_HOST_MALLOC={setting} failed:\n{done.stderr[-3000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, Any]:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", type=int, default=15, help="timed steps in a row per child")
  p.add_argument("--warmup", type=int, default=3, help="untimed steps first (the first compiles)")
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--networks", nargs="+", choices=NETWORKS, default=list(NETWORKS))
  p.add_argument("--quick", action="store_true",
                 help="small batches, the demo's net only, 3 steps, 1 round (a smoke run)")
  p.add_argument("--json", action="store_true")
  p.add_argument("--out", default="results/bench_host_malloc.json")
  p.add_argument("--child", choices=NETWORKS, help="(internal) time one network in this process")
  args = p.parse_args(argv)
  if args.child:
    res = child(args.child, args.steps, args.warmup, args.quick)
    print(json.dumps(res))
    return res
  if args.quick:
    args.steps, args.warmup, args.rounds, args.networks = 3, 1, 1, ["demo_baseline"]
  from results_io import write_result

  from pnas_jax import host_malloc
  from pnas_jax.latency.timing import device_description

  runs: dict[str, dict[str, list[dict[str, Any]]]] = {n: {s: [] for s in SETTINGS}
                                                       for n in args.networks}
  for r in range(args.rounds):
    for network in args.networks:
      for setting in SETTINGS:
        res = _run_child(network, setting, args)
        runs[network][setting].append(res)
        print(f"round {r}: {network} {setting}: {res['median_s']:.4f} s/step, kernel "
              f"{res['kernel_cpu_per_step_s']:.4f} s/step", file=sys.stderr)
  table = {n: {s: {"median_s": statistics.median(x["median_s"] for x in v),
                   "kernel_cpu_per_step_s": statistics.median(x["kernel_cpu_per_step_s"]
                                                              for x in v),
                   "ld_preload": v[-1]["ld_preload"], "glibc_tunables": v[-1]["glibc_tunables"]}
               for s, v in by.items()} for n, by in runs.items()}
  result = {"device": device_description(), "tcmalloc": host_malloc.find_tcmalloc(),
            "steps": args.steps, "rounds": args.rounds, "quick": args.quick, "table": table,
            "speedup_auto_over_hugepages": {n: t["hugepages"]["median_s"] / t["auto"]["median_s"]
                                            for n, t in table.items()},
            "speedup_hugepages_over_off": {n: t["off"]["median_s"] / t["hugepages"]["median_s"]
                                           for n, t in table.items()}}
  write_result(result, args.out, args.json)
  return result


if __name__ == "__main__":
  from pnas_jax.host_malloc import reexec_with_host_malloc

  reexec_with_host_malloc()  # in a child: the allocator its PNAS_HOST_MALLOC chooses
  main()
