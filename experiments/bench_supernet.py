"""Supernet memory and speed: binarized paths cost about what one child network costs.

Run (CPU, ~the paper's ImageNet space at 128x128, batch 32; serialise benchmarks on a shared box):

    flock /tmp/pnas_bench.lock python experiments/bench_supernet.py --json
    python experiments/bench_supernet.py --quick --json      # tiny space, smoke run

Reports compiled temp memory (XLA memory_analysis, deterministic) and median step time of: the
ChildNet training step for the sampled architecture; the supernet weight step (same architecture;
default "remat" mixed op, and the "packed" custom-VJP one); the arch steps "two" and "full"; a
DARTS-style all-paths weighted-sum step for contrast. Then memory vs the number of candidates N in
{1, 3, 7, 13} on a probe (the first stages of the space): N = 1 is the largest candidate alone, the
others are no larger (other kernels / expand ratios, Identity), so an ideal implementation stays
flat; the mixed-op backwards ("remat", "packed", "plain" autodiff through lax.switch) are compared.
Writes results/bench_supernet.json and .png; with
--json the last line printed is the JSON object.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from results_io import write_result

from pnas_jax.arch import Sample, get_estimator
from pnas_jax.arch.supernet import Supernet
from pnas_jax.host_malloc import reexec_with_host_malloc
from pnas_jax.latency.expected import expected_cost, macs_table
from pnas_jax.latency.timing import device_description, time_fn
from pnas_jax.models.child import ChildNet
from pnas_jax.search_space import Arch, SearchSpace
from pnas_jax.train import (
  arch_optimizer,
  arch_step,
  create_search_state,
  cross_entropy,
  weight_optimizer,
  weight_step,
)

SWEEP = {
    1: ("7x7_MBConv6",),
    3: ("7x7_MBConv6", "5x5_MBConv6", "3x3_MBConv6"),
    7: ("7x7_MBConv6", "7x7_MBConv3", "5x5_MBConv6", "5x5_MBConv3", "3x3_MBConv6", "3x3_MBConv3",
        "Identity"),
    13: ("7x7_MBConv6", "7x7_MBConv4", "7x7_MBConv3", "7x7_MBConv2", "5x5_MBConv6", "5x5_MBConv4",
         "5x5_MBConv3", "5x5_MBConv2", "3x3_MBConv6", "3x3_MBConv4", "3x3_MBConv3", "3x3_MBConv2",
         "Identity"),
}
MIB = 2**20


def _log(msg: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _compile(fn, *args):
  t0 = time.perf_counter()
  compiled = jax.jit(fn, donate_argnums=0).lower(*args).compile()
  mem = compiled.memory_analysis()
  return compiled, {
      "temp_mib": mem.temp_size_in_bytes / MIB,
      "argument_mib": mem.argument_size_in_bytes / MIB,
      "compile_s": time.perf_counter() - t0,
  }


def _time_loop(compiled, state, batch, repeats: int) -> tuple[float, object]:
  """Median ms of `state = step(state, batch)` (the donated state is threaded through)."""
  box = {"s": state}

  def call():
    box["s"], m = compiled(box["s"], batch)
    return m

  t = time_fn(call, warmup=1, repeats=repeats)
  return t.median_ms, box["s"]


def _pinned_alpha(space: SearchSpace, indices) -> tuple[jax.Array, ...]:
  """Logits that make sample_gates('single') return `indices` (p = 1 - O(e^-50))."""
  return tuple(
      jnp.asarray(50.0 * np.eye(len(b.candidates))[i], jnp.float32)
      for b, i in zip(space.blocks, indices, strict=True)
  )


def child_step(state, batch, *, model, tx, label_smoothing=0.1):
  """The ChildNet training step the supernet weight step is compared with."""
  params, stats, opt = state

  def loss_of(p):
    logits, upd = model.apply({"params": p, "batch_stats": stats}, batch["image"], train=True,
                              mutable=["batch_stats"])
    return cross_entropy(logits, batch["label"], label_smoothing), upd["batch_stats"]

  (loss, stats), g = jax.value_and_grad(loss_of, has_aux=True)(params)
  updates, opt = tx.update(g, opt, params)
  return (optax.apply_updates(params, updates), stats, opt), {"loss": loss}


def darts_step(state, batch, *, model, wtx, atx):
  """All paths, y_l = sum_j softmax(alpha_l)_j o_lj(x); weights and alpha from one backward."""

  def loss_of(params, alpha):
    logits, upd = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, batch["image"],
        Sample(active=jnp.zeros((len(alpha),), jnp.int32)), train=True,
        weights=tuple(jax.nn.softmax(a) for a in alpha), mutable=["batch_stats"])
    return cross_entropy(logits, batch["label"], 0.1), upd["batch_stats"]

  (loss, stats), (gp, ga) = jax.value_and_grad(loss_of, argnums=(0, 1), has_aux=True)(
      state.params, state.alpha)
  up, wopt = wtx.update(gp, state.weight_opt_state, state.params)
  outs = [atx.update(g, s, a) for g, s, a in zip(ga, state.arch_opt_state, state.alpha,
                                                  strict=True)]
  return state.replace(
      params=optax.apply_updates(state.params, up), batch_stats=stats, weight_opt_state=wopt,
      alpha=tuple(a + u for a, (u, _) in zip(state.alpha, outs, strict=True)),
      arch_opt_state=tuple(s for _, s in outs)), {"loss": loss}


def main_steps(space, batch, repeats, key, out):
  wtx, atx = weight_optimizer(0.025, 10_000), arch_optimizer()
  model = Supernet(space)
  state = create_search_state(model, key, wtx, atx)
  # The sampled architecture (uniform, as in warm-up), pinned so the weight step runs it.
  rng = np.random.default_rng(0)
  indices = [int(rng.integers(len(b.candidates))) for b in space.blocks]
  arch = Arch(tuple(b.candidates[i] for b, i in zip(space.blocks, indices, strict=True)))
  out["arch"] = list(arch.ops)
  state = state.replace(alpha=_pinned_alpha(space, indices))
  res = {}

  # ChildNet step, same architecture, same optimizer and loss.
  child = ChildNet(space, arch)
  cv = jax.jit(child.init)(jax.random.key(1), batch["image"][:1])
  cstate = (cv["params"], cv["batch_stats"], wtx.init(cv["params"]))
  comp, res["child"] = _compile(functools.partial(child_step, model=child, tx=wtx), cstate, batch)
  _log(f"child compiled {res['child']}")
  res["child"]["time_ms"], _ = _time_loop(comp, cstate, batch, repeats)
  _log(f"child {res['child']}")

  # The same for the largest architecture: the floor of any static-shape mixed op's memory.
  big = Arch.uniform(space, "7x7_MBConv6")
  if all("7x7_MBConv6" in b.candidates for b in space.blocks):
    bchild = ChildNet(space, big)
    bv = jax.eval_shape(bchild.init, jax.random.key(1), batch["image"][:1])
    bstate = (bv["params"], bv["batch_stats"], jax.eval_shape(wtx.init, bv["params"]))
    _, res["child_largest"] = _compile(functools.partial(child_step, model=bchild, tx=wtx),
                                       bstate, batch)
    _log(f"child largest {res['child_largest']}")

  steps = {
      "weight": functools.partial(weight_step, model=model, tx=wtx),
      "weight_packed": functools.partial(weight_step, model=Supernet(space, impl="packed"),
                                         tx=wtx),
      "two": functools.partial(arch_step, model=model, tx=atx, estimator=get_estimator("two"),
                               cost_fn=functools.partial(expected_cost, macs_table(space))),
      "full": functools.partial(arch_step, model=model, tx=atx, estimator=get_estimator("full"),
                                cost_fn=functools.partial(expected_cost, macs_table(space))),
  }
  for name, fn in steps.items():
    comp, res[name] = _compile(fn, state, batch)
    _log(f"{name} compiled {res[name]}")
    res[name]["time_ms"], state = _time_loop(comp, state, batch, repeats)
    if name.startswith("weight"):
      state = state.replace(alpha=_pinned_alpha(space, indices))  # unchanged by weight steps.
    _log(f"{name} {res[name]}")

  darts = Supernet(space)
  dfn = functools.partial(darts_step, model=darts, wtx=wtx, atx=atx)
  comp, res["darts"] = _compile(dfn, state, batch)
  _log(f"darts compiled {res['darts']}")
  res["darts"]["time_ms"], state = _time_loop(comp, state, batch, max(2, repeats // 3))
  _log(f"darts {res['darts']}")
  return res


def sweep(space, batch, key, quick):
  """Compiled temp memory vs N on a probe: the space's first stages, N candidates per block."""
  probe_depths = (1, 1) if quick else (2, 2)
  ns = (1, 3) if quick else (1, 3, 7, 13)
  res = {}
  wtx, atx = weight_optimizer(), arch_optimizer()
  for n in ns:
    probe = space.replace(
        stage_widths=space.stage_widths[:2], stage_depths=probe_depths,
        stage_strides=space.stage_strides[:2], candidates=SWEEP[n], zero_allowed=False)
    row = {}
    # With N = 1 lax.switch calls its only branch: the three impls are the same program there.
    impls = ("remat", "packed", "plain") if n == max(ns) or n == 7 else ("remat",)
    for impl in impls:
      model = Supernet(probe, impl=impl)
      state = jax.eval_shape(functools.partial(create_search_state, model, key, wtx, atx))
      _, row[f"weight_{impl}"] = _compile(
          functools.partial(weight_step, model=model, tx=wtx), state, batch)
    model = Supernet(probe)
    state = jax.eval_shape(functools.partial(create_search_state, model, key, wtx, atx))
    for est in ("two", "full"):
      _, row[est] = _compile(functools.partial(
          arch_step, model=model, tx=atx, estimator=get_estimator(est)), state, batch)
    res[n] = {k: v["temp_mib"] for k, v in row.items()}
    _log(f"sweep N={n}: {res[n]}")
  return res


def plot(out, path):
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(1, 2, figsize=(11, 4))
  ns = sorted(int(n) for n in out["sweep_temp_mib"])
  for key, style in (("weight_remat", "o-"), ("two", "s-"), ("full", "^-"),
                     ("weight_plain", "x--"), ("weight_packed", "d:")):
    pts = [(n, out["sweep_temp_mib"][n][key]) for n in ns if key in out["sweep_temp_mib"][n]]
    if pts:
      ax[0].plot(*zip(*pts, strict=True), style, label=key)
  ax[0].set_xlabel("candidates per block N")
  ax[0].set_ylabel("compiled temp memory (MiB)")
  ax[0].set_title("memory vs N (probe)")
  ax[0].legend()
  names = [n for n in ("child", "weight", "two", "full", "darts") if n in out["steps"]]
  ax[1].bar(names, [out["steps"][n]["temp_mib"] for n in names])
  ax[1].set_ylabel("compiled temp memory (MiB)")
  ax[1].set_title(f"steps at {out['resolution']}px, batch {out['batch']}")
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--resolution", type=int, default=128)
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--quick", action="store_true", help="tiny space and batch (a smoke run)")
  ap.add_argument("--json", action="store_true", help="print the JSON object as the last line")
  ap.add_argument("--out", default="results")
  args = ap.parse_args(argv)
  t0 = time.perf_counter()
  if args.quick:
    space = SearchSpace(stage_widths=(16, 24), stage_depths=(1, 2), stage_strides=(2, 2),
                        candidates=("3x3_MBConv3", "7x7_MBConv6"), stem_width=8,
                        first_block_width=8, tail_width=32, n_classes=10, resolution=32)
    bsz, repeats = 4, 3
  else:
    space = SearchSpace(resolution=args.resolution)
    bsz, repeats = args.batch, args.repeats
  key = jax.random.key(0)
  batch = {
      "image": jax.random.normal(key, (bsz, space.resolution, space.resolution, 3), jnp.float32),
      "label": jnp.arange(bsz, dtype=jnp.int32) % space.n_classes,
  }
  out = {"device": device_description(), "resolution": space.resolution, "batch": bsz,
         "quick": args.quick}
  out["steps"] = main_steps(space, batch, repeats, key, out)
  sw = sweep(space, batch, key, args.quick)
  out["sweep_temp_mib"] = sw
  s, nmax = out["steps"], max(sw)
  out["memory_ratio_n13_over_n1"] = {
      "weight": sw[nmax]["weight_remat"] / sw[1]["weight_remat"],
      "two": sw[nmax]["two"] / sw[1]["two"],
      "full": sw[nmax]["full"] / sw[1]["full"],
  }
  if 3 in sw and nmax > 3:  # N = 1 is a different program: lax.switch inlines a lone branch.
    out[f"memory_ratio_n{nmax}_over_n3"] = {
        k: sw[nmax][c] / sw[3][c] for k, c in (("weight", "weight_remat"), ("two", "two"),
                                               ("full", "full"))}
  if nmax != 13:
    out["memory_ratio_note"] = f"--quick: N={nmax} over N=1"
  for impl in ("plain", "packed"):
    n = 7 if 7 in sw else nmax
    out[f"memory_ratio_{impl}_n{n}_over_n1"] = sw[n][f"weight_{impl}"] / sw[1]["weight_remat"]
  for name in ("weight", "two", "full", "darts"):
    out[f"{name}_step_memory_over_child"] = s[name]["temp_mib"] / s["child"]["temp_mib"]
  if "child_largest" in s:
    out["weight_step_memory_over_largest_child"] = (
        s["weight"]["temp_mib"] / s["child_largest"]["temp_mib"])
  out["weight_step_time_over_child"] = s["weight"]["time_ms"] / s["child"]["time_ms"]
  out["weight_packed_step_time_over_child"] = (
      s["weight_packed"]["time_ms"] / s["child"]["time_ms"])
  out["weight_packed_step_memory_over_child"] = (
      s["weight_packed"]["temp_mib"] / s["child"]["temp_mib"])
  out["wall_s"] = time.perf_counter() - t0
  write_result(out, os.path.join(args.out, "bench_supernet.json"), args.json, plot)


if __name__ == "__main__":
  reexec_with_host_malloc()  # as `pnas` does (pnas_jax/host_malloc.py)
  main()
