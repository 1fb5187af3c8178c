"""Measured inference latency of the zoo networks (ProxylessNAS mobile/GPU/CPU, MobileNetV2) here.

Run (on the machine to measure; other benchmarks on a shared machine should take the same lock):

  flock /tmp/pnas_bench.lock python experiments/zoo_latency.py --json [--quick] [--resolution 224]

Each network of pnas_jax.models.zoo.ZOO, resized to --resolution (1000 classes), is timed as a whole
jitted inference-mode ChildNet (latency.measure.measure_network: warm-up/compile first, then
--repeats timed calls at --batch, each call synchronised). The default clock is `process` (CPU
time of this process, all threads: less sensitive to other jobs on a shared machine; on a
multi-threaded CPU backend it can exceed wall time); `--clock wall` gives elapsed time. Params and
MACs are ours (models.cost.net_cost at the measured resolution), next to the published top-1 and
latency (224x224, on the paper's devices).

Writes results/zoo_latency.json and results/zoo_latency.png; with --json the last stdout line is the
JSON object.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np
from results_io import save_figure, write_result

from pnas_jax.host_malloc import reexec_with_host_malloc
from pnas_jax.latency.measure import TimingProtocol, measure_network
from pnas_jax.latency.timing import CLOCKS, device_description
from pnas_jax.models.cost import net_cost
from pnas_jax.models.zoo import ZOO

ROOT = pathlib.Path(__file__).resolve().parents[1]


def measure_zoo(resolution: int, batch: int, repeats: int, warmup: int, clock: str,
                names: list[str] | None = None) -> list[dict]:
  """One record per zoo network: our params/MACs, measured latency and the published numbers."""
  protocol = TimingProtocol(batch=batch, warmup=warmup, repeats=repeats, clock=clock)
  out = []
  for name in names or list(ZOO):
    entry = ZOO[name]
    space = entry.space.replace(resolution=resolution)
    cost = net_cost(space, entry.arch)
    t0 = time.perf_counter()
    timing = measure_network(space, entry.arch, protocol)
    rec = {
        "name": name,
        "params": cost.params,
        "macs_m": cost.macs_m,
        "latency_ms_median": timing.median_ms,
        "latency_ms_min": timing.min_ms,
        "latency_ms_mean": timing.mean_ms,
        "count": timing.count,
        "published_params": entry.params,
        "published_macs_m": entry.macs_m,
        "published_top1": entry.top1,
        "published_latency": entry.latency,
    }
    print(f"{name}: {rec['macs_m']:.1f} MMACs, median {timing.median_ms:.2f} ms, "
          f"min {timing.min_ms:.2f} ms ({time.perf_counter() - t0:.1f} s incl. compile)",
          file=sys.stderr)
    out.append(rec)
  return out


def plot(result: dict, path: pathlib.Path) -> None:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  nets = result["networks"]
  names = [n["name"] for n in nets]
  med = np.array([n["latency_ms_median"] for n in nets])
  lo = np.array([n["latency_ms_min"] for n in nets])
  macs = np.array([n["macs_m"] for n in nets])
  fig = Figure(figsize=(11, 4.2))
  FigureCanvasAgg(fig)
  ax1, ax2 = fig.subplots(1, 2)
  xs = np.arange(len(nets))
  bars = ax1.bar(xs, med, color="tab:blue", label="median")
  ax1.scatter(xs, lo, color="k", marker="_", s=200, zorder=3, label="min")
  for b, m in zip(bars, macs, strict=True):
    ax1.annotate(f"{m:.0f} M MACs", (b.get_x() + b.get_width() / 2, b.get_height()),
                 ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
  ax1.set_xticks(xs, names, rotation=20, ha="right", fontsize=8)
  ax1.set_ylabel(f"latency, ms ({result['clock']} clock)")
  ax1.set_ylim(0, med.max() * 1.15)
  ax1.set_title(f"zoo networks, batch {result['batch']}, {result['resolution']}px")
  ax1.legend(fontsize=8)
  ax2.scatter(macs, med, color="tab:blue")
  for name, x, y in zip(names, macs, med, strict=True):
    ax2.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
  ax2.set_xlabel("MACs (millions, ours at this resolution)")
  ax2.set_ylabel("median latency, ms")
  ax2.set_title("latency vs MACs")
  ax2.grid(alpha=0.3)
  save_figure(fig, result["device"], path)


def main(argv: list[str] | None = None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--json", action="store_true", help="print the JSON object as the last line")
  p.add_argument("--quick", action="store_true", help="resolution 64, 5 repeats")
  p.add_argument("--resolution", type=int, default=224)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--repeats", type=int, default=20)
  p.add_argument("--warmup", type=int, default=3, help="untimed calls after compiling")
  p.add_argument("--clock", choices=sorted(CLOCKS), default="process")
  p.add_argument("--nets", nargs="*", default=None, choices=sorted(ZOO), help="subset of the zoo")
  p.add_argument("--out", default=str(ROOT / "results" / "zoo_latency.json"))
  args = p.parse_args(argv)
  if args.quick:
    args.resolution, args.repeats, args.warmup = 64, 5, 1

  result = {
      "device": device_description(),
      "resolution": args.resolution,
      "batch": args.batch,
      "clock": args.clock,
      "repeats": args.repeats,
      "networks": measure_zoo(args.resolution, args.batch, args.repeats, args.warmup, args.clock,
                              args.nets),
  }
  write_result(result, args.out, args.json, plot)
  return result


if __name__ == "__main__":
  reexec_with_host_malloc()  # as `pnas` does (pnas_jax/host_malloc.py)
  main()
