"""Where a training step's time goes on this backend: a jax.profiler trace, by layer kind.

Run (serialise with other benchmarks; ImageNet space at 128x128, batch 32 unless --quick):

    flock /tmp/pnas_bench.lock python experiments/profile_step.py --json [--steps child,weight,two]

Each step is compiled, warmed up and traced for a few calls with `jax.profiler.trace`; every
executed XLA op (a fusion, a matmul, a copy) is attributed, through the `op_name` metadata of the
compiled HLO (the JAX name stack: module path and transform), to a layer kind (depthwise, BN,
1x1 conv (`expand`/`project`/`feature_mix`), stem, classifier, optimizer update, loss, other) and a
direction (forward, or backward when the name stack holds a transpose). XLA fuses producers into
consumers (e.g. BN + ReLU6 into the depthwise padding), so an op counts for the layer its root
belongs to. The time not covered by XLA ops (host work between steps, dispatch, waiting for
threads) is reported as `host_and_gaps`. Writes results/profile_step.json and .png; with --json
the last line printed is the JSON object.
"""

from __future__ import annotations

import argparse
import collections
import functools
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from bench_supernet import _pinned_alpha, child_step
from results_io import write_result

from pnas_jax.arch import get_estimator
from pnas_jax.arch.supernet import Supernet
from pnas_jax.host_malloc import reexec_with_host_malloc
from pnas_jax.latency.expected import expected_cost, macs_table
from pnas_jax.latency.timing import device_description
from pnas_jax.models.child import ChildNet
from pnas_jax.search_space import Arch, SearchSpace
from pnas_jax.train import (
  arch_optimizer,
  arch_step,
  create_search_state,
  weight_optimizer,
  weight_step,
)

_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?metadata=\{[^}]*op_name=\"([^\"]*)\"")
_CONTROL = ("while", "conditional", "call")
KINDS = (("depthwise", "/depthwise"), ("bn", "_bn/"), ("bn", "/bn/"), ("conv1x1", "/expand/"),
         ("conv1x1", "/project/"), ("conv1x1", "feature_mix/conv"), ("stem", "stem/conv"),
         ("classifier", "classifier"))


def _log(msg: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def op_names(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> op_name metadata (every computation of the compiled module)."""
  out = {}
  for line in hlo_text.splitlines():
    m = _INSTR.match(line)
    if m:
      out[m.group(1)] = m.group(2)
  return out


def kind_of(op_name: str) -> str:
  """The layer kind and direction of an op from its JAX name stack."""
  if "ChildNet" not in op_name and "Supernet" not in op_name:
    if "update" in op_name or "optax" in op_name or "masked" in op_name or "tree" in op_name:
      return "optimizer"
    return "loss_and_other"
    # (the loss, the gate sampling and the estimators' arithmetic)
  direction = "bwd" if "transpose(" in op_name else "fwd"
  for kind, pattern in KINDS:
    if pattern in op_name:
      return f"{kind}_{direction}"
  return f"other_{direction}"


def profile(compiled: Any, state: Any, batch: Any, calls: int) -> dict[str, Any]:
  """Traces `calls` threaded calls; per-kind ms per step, and the wall time per step."""
  for _ in range(2):
    state, m = compiled(state, batch)
  jax.block_until_ready(m)
  names = op_names(compiled.as_text())
  with tempfile.TemporaryDirectory() as d:
    t0 = time.perf_counter()
    with jax.profiler.trace(d, create_perfetto_trace=True):
      for _ in range(calls):
        state, m = compiled(state, batch)
        jax.block_until_ready(m)
    wall = (time.perf_counter() - t0) / calls
    path = glob.glob(os.path.join(d, "**", "perfetto_trace.json.gz"), recursive=True)[0]
    with gzip.open(path) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  per_kind: collections.Counter[str] = collections.Counter()
  per_op: collections.Counter[str] = collections.Counter()
  for e in events:
    name = e.get("name", "")
    if e.get("ph") != "X" or name not in names or name.split(".")[0] in _CONTROL:
      continue
    ms = e.get("dur", 0) / 1e3 / calls
    per_kind[kind_of(names[name])] += ms
    per_op[name] += ms
  ops_ms = sum(per_kind.values())
  return {
      "wall_ms": wall * 1e3,
      "ops_ms": ops_ms,
      "host_and_gaps_ms": wall * 1e3 - ops_ms,
      "ms": dict(per_kind.most_common()),
      "percent_of_ops": {k: 100 * v / ops_ms for k, v in per_kind.most_common()},
      "top_ops": [{"name": n, "ms": v, "op_name": names[n]} for n, v in per_op.most_common(10)],
  }


def build(space: SearchSpace, batch: dict[str, jax.Array], which: str) -> tuple[Any, Any]:
  """(compiled step, state) of `which`: child, weight, two or full (the pinned sampled path)."""
  wtx, atx = weight_optimizer(0.025, 10_000), arch_optimizer()
  rng = np.random.default_rng(0)
  idx = [int(rng.integers(len(b.candidates))) for b in space.blocks]
  arch = Arch(tuple(b.candidates[i] for b, i in zip(space.blocks, idx, strict=True)))
  if which == "child":
    net = ChildNet(space, arch)
    v = jax.jit(net.init)(jax.random.key(1), batch["image"][:1])
    state = (v["params"], v["batch_stats"], wtx.init(v["params"]))
    fn = functools.partial(child_step, model=net, tx=wtx)
  else:
    model = Supernet(space)
    state = create_search_state(model, jax.random.key(0), wtx, atx)
    state = state.replace(alpha=_pinned_alpha(space, idx))
    if which == "weight":
      fn = functools.partial(weight_step, model=model, tx=wtx)
    else:
      fn = functools.partial(arch_step, model=model, tx=atx, estimator=get_estimator(which),
                             cost_fn=functools.partial(expected_cost, macs_table(space)))
  return jax.jit(fn, donate_argnums=0).lower(state, batch).compile(), state


def plot(out: dict[str, Any], path: Any) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  steps = list(out["steps"])
  kinds = sorted({k for s in steps for k in out["steps"][s]["ms"]})
  fig, ax = plt.subplots(figsize=(9, 4))
  bottom = np.zeros(len(steps))
  for k in kinds:
    vals = np.array([out["steps"][s]["ms"].get(k, 0.0) for s in steps])
    ax.bar(steps, vals, bottom=bottom, label=k)
    bottom += vals
  ax.bar(steps, [out["steps"][s]["host_and_gaps_ms"] for s in steps], bottom=bottom,
         label="host_and_gaps", color="lightgray")
  ax.set_ylabel("ms per step")
  ax.legend(fontsize=7, ncol=2)
  ax.set_title(f"{out['resolution']}px, batch {out['batch']}: {out['device']}", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--steps", default="child,weight,two")
  ap.add_argument("--calls", type=int, default=3)
  ap.add_argument("--quick", action="store_true", help="tiny space and batch (a smoke run)")
  ap.add_argument("--json", action="store_true", help="print the JSON object as the last line")
  ap.add_argument("--out", default="results")
  args = ap.parse_args(argv)
  if args.quick:
    space = SearchSpace(stage_widths=(16, 24), stage_depths=(1, 2), stage_strides=(2, 2),
                        candidates=("3x3_MBConv3", "7x7_MBConv6"), stem_width=8,
                        first_block_width=8, tail_width=32, n_classes=10, resolution=32)
    bsz = 4
  else:
    space, bsz = SearchSpace(resolution=128), 32
  key = jax.random.key(0)
  batch = {"image": jax.random.normal(key, (bsz, space.resolution, space.resolution, 3)),
           "label": jnp.arange(bsz, dtype=jnp.int32) % space.n_classes}
  out: dict[str, Any] = {"device": device_description(), "resolution": space.resolution,
                         "batch": bsz, "steps": {}}
  for which in args.steps.split(","):
    compiled, state = build(space, batch, which)
    out["steps"][which] = profile(compiled, state, batch, args.calls)
    _log(f"{which}: {out['steps'][which]['wall_ms']:.0f} ms, "
         f"{out['steps'][which]['percent_of_ops']}")
  path = args.out if args.out.endswith(".json") else os.path.join(args.out, "profile_step.json")
  write_result(out, path, args.json, plot)
  return out


if __name__ == "__main__":
  reexec_with_host_malloc()  # as `pnas` does (pnas_jax/host_malloc.py)
  main()
