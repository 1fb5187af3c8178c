"""Benchmarks the BatchNorm implementations: the op alone, and whole training steps A/B.

Run (on the machine to measure; nothing else running):

  python experiments/bench_batch_norm.py --json [--quick]

1. Training-mode BN with its fused ReLU6 (layers/batchnorm.py) on activation shapes of the two
   workloads (the demo net's 14x14 expansion at batch 128; proxyless_mobile's 64x64, 32x32 and
   8x8 at batch 32): forward, and forward + backward (the gradients of x, scale and bias), of
   "xla" (flax's formula in jnp) and, where its kernels built, "native" (the C++ kernels).
2. One training step of proxyless_mobile (batch 32, 128x128) and of the demo's baseline net
   (every block 3x3_MBConv6, batch 128, 28x28, as experiments/bench_vs_reference.py builds them)
   with each implementation, in interleaved rounds in this one process (so background load hits
   both alike); medians.

Writes results/bench_batch_norm.json and .png; with --json the last stdout line is the JSON object.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
from bench_ops import make_jax_step
from bench_vs_reference import demo_space, interleaved_medians
from results_io import save_figure, write_result

from pnas_jax.host_malloc import reexec_with_host_malloc
from pnas_jax.latency.timing import device_description, time_fn
from pnas_jax.layers import batchnorm
from pnas_jax.layers.core import BN_EPSILON, batch_norm_impl
from pnas_jax.models import zoo
from pnas_jax.search_space import Arch

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHAPES = {  # (B, H, W, C) inputs of BN layers in the two workloads
    "demo 128x14x14x96": (128, 14, 14, 96),
    "mobile 32x64x64x48": (32, 64, 64, 48),
    "mobile 32x32x32x144": (32, 32, 32, 144),
    "mobile 32x8x8x960": (32, 8, 8, 960),
}
QUICK_SHAPES = {"quick 8x6x6x37": (8, 6, 6, 37)}
FUNCTIONS = {"xla": batchnorm.batch_norm_train_xla, "native": batchnorm.batch_norm_train_native}


def impls_here() -> list[str]:
  """"xla" everywhere; "native" where its kernels run (CPU, float32, built)."""
  return ["xla"] + (["native"] if batchnorm.resolve_impl("auto") == "native" else [])


def bench_op(shape: tuple[int, ...], repeats: int) -> dict[str, float]:
  """Median ms of forward and forward+backward of each implementation at one shape."""
  kx, kc = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, shape, jnp.float32)
  ct = jax.random.normal(kc, shape, jnp.float32)
  scale, bias = jnp.ones(shape[-1]), jnp.zeros(shape[-1])
  out = {}
  for impl in impls_here():
    fn = FUNCTIONS[impl]

    def fwd(x, scale, bias, fn=fn):
      return fn(x, scale, bias, BN_EPSILON, "relu6")[0]

    def fwd_bwd(x, scale, bias, ct, fwd=fwd):
      y, vjp = jax.vjp(fwd, x, scale, bias)
      return y, vjp(ct)

    out[f"{impl}_fwd_ms"] = time_fn(jax.jit(fwd), x, scale, bias, warmup=2,
                                    repeats=repeats).median_ms
    out[f"{impl}_fwd_bwd_ms"] = time_fn(jax.jit(fwd_bwd), x, scale, bias, ct, warmup=2,
                                        repeats=repeats).median_ms
  if "native_fwd_bwd_ms" in out:
    out["native_speedup_fwd_bwd"] = out["xla_fwd_bwd_ms"] / out["native_fwd_bwd_ms"]
  return out


def step_call(entry, resolution: int, batch: int, impl: str):
  """A zero-argument training step of `entry` whose BN layers use `impl` (traced here, inside
  batch_norm_impl, and compiled by its first call)."""
  jstep, state, (images, labels), _ = make_jax_step(entry, resolution, batch)
  box = {"s": state}

  def call():
    box["s"], loss = jstep(box["s"], images, labels)
    return loss

  with batch_norm_impl(impl):
    jax.block_until_ready(call())
  return call


def bench_steps(quick: bool, rounds: int, per_round: int) -> dict[str, dict]:
  dspace, dbatch = demo_space(quick)
  baseline = types.SimpleNamespace(space=dspace, arch=Arch.uniform(dspace, "3x3_MBConv6"),
                                   dropout_rate=0.0)
  nets = {"proxyless_mobile": (zoo.get("proxyless_mobile"), 32 if quick else 128, 4 if quick else 32),
          "demo_baseline": (baseline, dspace.resolution, 8 if quick else dbatch)}
  calls = {f"{name}/{impl}": step_call(entry, res, b, impl)
           for name, (entry, res, b) in nets.items() for impl in impls_here()}
  medians = interleaved_medians(calls, rounds, per_round)
  out = {}
  for name, (_, res, b) in nets.items():
    row = {"resolution": res, "batch": b,
           **{f"{impl}_s": medians[f"{name}/{impl}"]["median_s"] for impl in impls_here()}}
    if "native_s" in row:
      row["native_speedup"] = row["xla_s"] / row["native_s"]
    out[name] = row
  return out


def _bars(ax, rows: dict[str, dict], impls: list[str], key: str) -> None:
  """Grouped bars: per row name, one bar of rows[name][key.format(impl)] per implementation."""
  names = list(rows)
  xs = np.arange(len(names))
  width = 0.8 / len(impls)
  for i, impl in enumerate(impls):
    ax.bar(xs + (i - (len(impls) - 1) / 2) * width, [rows[n][key.format(impl)] for n in names],
           width, label=impl)
  ax.set_xticks(xs, names, fontsize=7)
  ax.legend(fontsize=8)


def plot(result: dict, path: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  _bars(ax1, result["op"], result["impls"], "{}_fwd_bwd_ms")
  ax1.set_ylabel("ms, forward + backward (median)")
  ax1.set_title("BatchNorm + ReLU6, training mode")
  _bars(ax2, result["steps"], result["impls"], "{}_s")
  ax2.set_ylabel("s / training step (median)")
  ax2.set_title("whole training step")
  save_figure(fig, result["device"], path)


def main(argv: list[str] | None = None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--json", action="store_true", help="print the JSON object as the last line")
  p.add_argument("--quick", action="store_true", help="tiny shapes and steps, few repeats")
  p.add_argument("--out", default=str(ROOT / "results" / "bench_batch_norm.json"))
  args = p.parse_args(argv)
  repeats, rounds, per_round = (3, 1, 2) if args.quick else (15, 4, 6)
  result = {"device": device_description(), "impls": impls_here(), "op": {}}
  for name, shape in (QUICK_SHAPES if args.quick else SHAPES).items():
    result["op"][name] = bench_op(shape, repeats)
    print(f"{name}: {result['op'][name]}", file=sys.stderr)
  result["steps"] = bench_steps(args.quick, rounds, per_round)
  write_result(result, args.out, args.json, plot)
  return result


if __name__ == "__main__":
  reexec_with_host_malloc()  # as `pnas` does (pnas_jax/host_malloc.py)
  main()
