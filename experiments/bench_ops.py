"""Benchmarks the depthwise convolution implementations and a full proxyless_mobile training step.

Run (on the machine to measure; other benchmarks on a shared machine should take the same lock):

  flock /tmp/pnas_bench.lock python experiments/bench_ops.py --json [--quick]

1. Depthwise kxk (B=32, 32x32, C=96 by default), k in {3, 5, 7}, stride 1 and 2: forward and
   forward+backward (values, input and kernel gradients) of every implementation that runs here:
   `lax` (a grouped lax.conv, what XLA:GPU/TPU want), on CPU `shift` (pure XLA) and `native` (the
   C++ kernels, when built); `auto` names the one this backend picks.
2. One training step of proxyless_mobile at batch 32, 128x128: train-mode forward (BN batch
   statistics), cross-entropy with label smoothing 0.1, gradients, SGD Nesterov 0.9 + weight decay
   4e-5, jitted with donated state; against the same network in PyTorch eager
   (experiments/torch_proxyless.py, built from the same SearchSpace/Arch; param counts asserted
   equal). Rounds of JAX and torch steps alternate so background load hits both alike; medians.

Writes results/bench_ops.json and results/bench_ops.png; with --json the last stdout line is the
JSON object.
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
import jax.numpy as jnp
import numpy as np
import optax
from results_io import save_figure, write_result

from pnas_jax.host_malloc import reexec_with_host_malloc
from pnas_jax.latency.timing import device_description, time_fn
from pnas_jax.layers import depthwise, native
from pnas_jax.models import zoo
from pnas_jax.models.child import ChildNet

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

LABEL_SMOOTHING = 0.1
WEIGHT_DECAY = 4e-5
MOMENTUM = 0.9
LR = 0.05


# --- depthwise op ------------------------------------------------------------------------------


def bench_depthwise(
    k: int, batch: int, size: int, channels: int, stride: int, repeats: int
) -> dict[str, float]:
  """Median ms of forward and forward+backward of each implementation of impls_here()."""
  kx, kw, kc = jax.random.split(jax.random.key(k), 3)
  x = jax.random.normal(kx, (batch, size, size, channels), jnp.float32)
  w = jax.random.normal(kw, (k, k, channels), jnp.float32)
  ho = depthwise.output_size(size, k, stride)
  ct = jax.random.normal(kc, (batch, ho, ho, channels), jnp.float32)
  out: dict[str, float | str] = {}
  for impl in impls_here():
    f = functools.partial(depthwise.depthwise_conv, stride=stride, impl=impl)

    def fwd_bwd(x, w, ct, f=f):
      y, vjp = jax.vjp(f, x, w)
      return y, vjp(ct)

    out[f"{impl}_fwd_ms"] = time_fn(jax.jit(f), x, w, warmup=2, repeats=repeats).median_ms
    out[f"{impl}_fwd_bwd_ms"] = time_fn(
        jax.jit(fwd_bwd), x, w, ct, warmup=2, repeats=repeats
    ).median_ms
  out["auto"] = depthwise.resolve_impl("auto")
  return out


def impls_here() -> list[str]:
  """The depthwise implementations this backend runs: lax everywhere; shift and native on CPU."""
  if jax.default_backend() != "cpu":
    return ["lax"]
  return ["lax", "shift"] + (["native"] if native.available() else [])


# --- JAX training step -------------------------------------------------------------------------


def make_jax_step(entry: zoo.ZooEntry, resolution: int, batch: int):
  """Returns (step, state, (images, labels), n_params) for ChildNet with the backend's dw impl."""
  space = entry.space.replace(resolution=resolution)
  net = ChildNet(space, entry.arch, dropout_rate=entry.dropout_rate, dw_impl="auto")
  kx, ky, kinit = jax.random.split(jax.random.key(0), 3)
  images = jax.random.normal(kx, (batch, resolution, resolution, space.in_channels), jnp.float32)
  labels = jax.random.randint(ky, (batch,), 0, space.n_classes)
  variables = jax.jit(functools.partial(net.init, train=False))(kinit, images[:1])
  params, batch_stats = variables["params"], variables["batch_stats"]
  tx = optax.chain(
      optax.add_decayed_weights(WEIGHT_DECAY), optax.sgd(LR, momentum=MOMENTUM, nesterov=True)
  )
  state = (params, batch_stats, tx.init(params), jax.random.key(1))
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))

  def step(state, images, labels):
    params, batch_stats, opt_state, key = state
    key, dropout_key = jax.random.split(key)

    def loss_fn(params):
      logits, updates = net.apply(
          {"params": params, "batch_stats": batch_stats},
          images,
          train=True,
          mutable=["batch_stats"],
          rngs={"dropout": dropout_key},
      )
      targets = optax.smooth_labels(jax.nn.one_hot(labels, space.n_classes), LABEL_SMOOTHING)
      loss = optax.softmax_cross_entropy(logits, targets).mean()
      return loss, updates["batch_stats"]

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, new_stats, opt_state, key), loss

  return jax.jit(step, donate_argnums=(0,)), state, (images, labels), n_params


# --- PyTorch training step ---------------------------------------------------------------------


def make_torch_step(entry: zoo.ZooEntry, resolution: int, batch: int):
  """Returns (step, n_params) for the PyTorch twin (eager, default threads)."""
  import torch
  import torch_proxyless

  torch.manual_seed(0)
  space = entry.space.replace(resolution=resolution)
  net = torch_proxyless.TorchChildNet(space, entry.arch, entry.dropout_rate)
  net.train()
  opt = torch.optim.SGD(
      net.parameters(), lr=LR, momentum=MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY
  )
  loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)
  images = torch.randn(batch, space.in_channels, resolution, resolution)
  labels = torch.randint(0, space.n_classes, (batch,))

  def step():
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(net(images), labels)
    loss.backward()
    opt.step()
    return loss.item()

  return step, torch_proxyless.n_params(net)


def bench_steps(entry, resolution: int, batch: int, rounds: int, steps: int) -> dict:
  """Alternating rounds of `steps` JAX and torch steps; median seconds per step of each."""
  jstep, state, (images, labels), jax_params = make_jax_step(entry, resolution, batch)
  for _ in range(2):  # compile + warm-up
    state, loss = jstep(state, images, labels)
  jax.block_until_ready(loss)
  try:
    import torch
  except ImportError:
    torch = None
  res = {"jax_params": jax_params, "torch_params": None, "torch_child_step_s": None,
         "torch_threads": None, "child_step_over_torch": None}
  tstep = None
  if torch is None:
    print("torch is not installed: pip install -e '.[bench]' to compare with PyTorch",
          file=sys.stderr)
  else:
    tstep, torch_params = make_torch_step(entry, resolution, batch)
    assert torch_params == jax_params, (torch_params, jax_params)
    res["torch_params"] = torch_params
    res["torch_threads"] = torch.get_num_threads()
    for _ in range(2):
      tstep()
  jax_t, torch_t = [], []
  for _ in range(rounds):
    for _ in range(steps):
      t0 = time.perf_counter()
      state, loss = jstep(state, images, labels)
      jax.block_until_ready(loss)
      jax_t.append(time.perf_counter() - t0)
    if tstep is not None:
      for _ in range(steps):
        t0 = time.perf_counter()
        tstep()
        torch_t.append(time.perf_counter() - t0)
  res["child_step_s"] = statistics.median(jax_t)
  res["child_step_samples"] = len(jax_t)
  if torch_t:
    res["torch_child_step_s"] = statistics.median(torch_t)
    res["child_step_over_torch"] = res["child_step_s"] / res["torch_child_step_s"]
  return res


def plot(result: dict, path: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  ks = list(result["dw"])
  xs = np.arange(len(ks))
  bars = [(f"{impl}_{kind}_ms", f"{impl} {kind.replace('_', '+')}")
          for kind in ("fwd", "fwd_bwd") for impl in result["dw_impls"]]
  width = 0.8 / len(bars)
  for i, (key, label) in enumerate(bars):
    ax1.bar(xs + (i - (len(bars) - 1) / 2) * width, [result["dw"][k][key] for k in ks], width,
            label=label)
  ax1.set_xticks(xs, ks, fontsize=8)
  ax1.set_ylabel("ms (median)")
  ax1.set_yscale("log")
  ax1.set_title(f"depthwise conv, {result['dw_shape']}")
  ax1.legend(fontsize=8)
  names = ["JAX (jit)"]
  vals = [result["child_step_s"]]
  if result.get("torch_child_step_s") is not None:
    names.append("PyTorch eager")
    vals.append(result["torch_child_step_s"])
  ax2.bar(names, vals, color=["tab:blue", "tab:orange"][: len(vals)])
  ax2.set_ylabel("s / step (median)")
  ax2.set_title(f"proxyless_mobile train step, batch {result['batch']}, {result['resolution']}px")
  save_figure(fig, result["device"], path)


def main(argv: list[str] | None = None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--json", action="store_true", help="print the JSON object as the last line")
  p.add_argument("--quick", action="store_true", help="fewer repeats")
  p.add_argument("--batch", type=int, default=32, help="training-step batch size")
  p.add_argument("--resolution", type=int, default=128, help="training-step image size")
  p.add_argument("--dw-batch", type=int, default=32)
  p.add_argument("--dw-size", type=int, default=32)
  p.add_argument("--dw-channels", type=int, default=96)
  p.add_argument("--skip-step", action="store_true", help="depthwise op benchmark only")
  p.add_argument("--out", default=str(ROOT / "results" / "bench_ops.json"))
  args = p.parse_args(argv)

  repeats = 5 if args.quick else 15
  result: dict = {
      "device": device_description(),
      "jax_threads": os.cpu_count(),
      "dw_shape": f"B={args.dw_batch} {args.dw_size}x{args.dw_size} C={args.dw_channels}",
      "dw_impls": impls_here(),
      "dw": {},
      "batch": args.batch,
      "resolution": args.resolution,
  }
  for k in (3, 5, 7):
    for stride in (1, 2):
      r = bench_depthwise(k, args.dw_batch, args.dw_size, args.dw_channels, stride, repeats)
      result["dw"][f"k{k}s{stride}"] = r
      print(f"depthwise k={k} stride {stride}: {r}", file=sys.stderr)
  # Speed-up of the implementation "auto" picks over lax, and (CPU) native over shift.
  for kind in ("fwd", "fwd_bwd"):
    result[f"dw_speedup_{kind}"] = {
        k: v[f"lax_{kind}_ms"] / v[f"{v['auto']}_{kind}_ms"] for k, v in result["dw"].items()}
    if "native" in result["dw_impls"]:
      result[f"dw_native_over_shift_{kind}"] = {
          k: v[f"shift_{kind}_ms"] / v[f"native_{kind}_ms"] for k, v in result["dw"].items()}
  if not args.skip_step:
    rounds, steps = (2, 5) if args.quick else (3, 5)
    result.update(bench_steps(zoo.get("proxyless_mobile"), args.resolution, args.batch, rounds,
                              steps))
  else:
    result.update({"child_step_s": None, "torch_child_step_s": None,
                   "child_step_over_torch": None, "jax_params": None, "torch_params": None,
                   "torch_threads": None})
  write_result(result, args.out, args.json, plot if result["child_step_s"] is not None else None)
  return result


if __name__ == "__main__":
  reexec_with_host_malloc()  # as `pnas` does (pnas_jax/host_malloc.py)
  main()
