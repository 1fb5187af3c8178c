"""The paper's tables, reproduced from JAX: the zoo, the cross-hardware table, Pixel-1 predictions.

Run (on the machine to measure; a shared machine should take the benchmark lock):

  flock /tmp/pnas_bench.lock python experiments/paper_tables.py --json \
      [--mobile-table mobile_trim.yaml] [--quick]

(a) The zoo: params and MACs of our Flax networks (models.cost.net_cost, 224x224, 1000 classes)
    next to the published counts, with the paper's top-1 and latency.
(b) Cross-hardware (Sec. 4.2 of Cai et al. 2019, "hardware prefers specialised models"):
    proxyless_gpu, proxyless_cpu, proxyless_mobile and mobilenet_v2 measured here on this CPU and,
    when JAX's default device is a GPU/TPU, on it too: a jitted inference-mode ChildNet
    (latency.measure.network_call), the four nets timed round-robin in one session
    (latency.timing.time_interleaved, so a change of load on a shared machine hits all of them
    alike), at batch 1 (latency) and at --throughput-batch (images/s). Next to them, the paper's
    GPU (V100), CPU (Xeon) and Pixel-1 figures; each column says which net is fastest.
(c) Pixel-1 predictions from the reference lookup table (--mobile-table, the reference
    implementation's mobile_trim.yaml; default $PNAS_REFERENCE_DIR/mobile_trim.yaml when that is
    set): the sum of the table's entries over a net's layers. The table covers the search space at
    width 1.0 (first stage 24 wide) at 224x224, so each published architecture is predicted at those
    widths; the published nets' own widths (proxyless_mobile's first stage is 32; gpu/cpu/_14 are
    wider) are reported with the number of layers the table lacks.

Writes results/paper_tables.json and results/paper_tables.md (the Markdown tables); with --json the
last stdout line is the JSON object.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time
from typing import Any

import jax
from results_io import write_result

from pnas_jax.host_malloc import reexec_with_host_malloc
from pnas_jax.latency.measure import TimingProtocol, network_call
from pnas_jax.latency.table import LatencyTable, load_table, space_keys
from pnas_jax.latency.timing import CLOCKS, time_interleaved
from pnas_jax.models.cost import net_cost
from pnas_jax.models.zoo import ZOO
from pnas_jax.search_space.space import Arch, SearchSpace

ROOT = pathlib.Path(__file__).resolve().parents[1]

CROSS_HARDWARE_NETS = ("proxyless_gpu", "proxyless_cpu", "proxyless_mobile", "mobilenet_v2")

# The paper's cross-hardware latencies, ms (Cai et al. 2019, Sec. 4.2: "hardware prefers specialized
# models"; the three Proxyless rows), with MobileNetV2's from the paper's GPU table (6.1 ms) and
# mobile table (75 ms). The paper gives no CPU latency for MobileNetV2 (None). proxyless_mobile_14 is
# not in the cross-hardware table (its Pixel-1 latency is from the mobile table).
PAPER_DEVICES = {"gpu": "V100 GPU", "cpu": "Intel Xeon CPU", "mobile": "Google Pixel 1"}
PAPER_LATENCY_MS: dict[str, dict[str, float | None]] = {
    "proxyless_gpu": {"gpu": 5.1, "cpu": 204.9, "mobile": 124.0},
    "proxyless_cpu": {"gpu": 7.4, "cpu": 138.7, "mobile": 116.0},
    "proxyless_mobile": {"gpu": 7.2, "cpu": 164.1, "mobile": 78.0},
    "mobilenet_v2": {"gpu": 6.1, "cpu": None, "mobile": 75.0},
    "proxyless_mobile_14": {"gpu": None, "cpu": None, "mobile": 147.0},  # the paper's mobile table
}


def zoo_table(resolution: int = 224) -> list[dict[str, Any]]:
  """(a): one row per zoo network, ours next to the published numbers."""
  rows = []
  for name, e in ZOO.items():
    cost = net_cost(e.space.replace(resolution=resolution), e.arch)
    rows.append({
        "name": name, "params": cost.params, "published_params": e.params,
        "macs_m": round(cost.macs_m, 1), "published_macs_m": e.macs_m,
        "params_match": cost.params == e.params,
        "macs_match": round(cost.macs_m, 1) == e.macs_m,
        "paper_top1": e.top1, "paper_latency": e.latency,
    })
  return rows


def _fastest(values: dict[str, float | None], among: tuple[str, ...]) -> str | None:
  known = {n: v for n, v in values.items() if n in among and v is not None}
  return min(known, key=known.get) if known else None


def describe_device(device: jax.Device) -> str:
  """latency.timing.device_description() for any device (e.g. the CPU while a GPU is the default)."""
  if device.platform == "cpu":
    return f"cpu: {device.device_kind} ({os.cpu_count()} cores, jax {jax.__version__})"
  return f"{device.platform}: {device.device_kind} (jax {jax.__version__})"


def measure_cross_hardware(resolution: int, throughput_batch: int, repeats: int, warmup: int,
                           clock: str, nets: tuple[str, ...] = CROSS_HARDWARE_NETS,
                           device: jax.Device | None = None) -> dict[str, Any]:
  """(b), measured part: batch-1 latency and throughput of `nets` on `device` (default: JAX's),
  the nets interleaved per batch size. Accelerators are timed with the wall clock."""
  device = device or jax.devices()[0]
  clock = clock if device.platform == "cpu" else "wall"
  out: dict[str, Any] = {"device": describe_device(device), "platform": device.platform,
                         "resolution": resolution, "clock": clock, "repeats": repeats,
                         "throughput_batch": throughput_batch, "networks": {}}
  for batch, key in ((1, "latency_ms"), (throughput_batch, "throughput_ms")):
    protocol = TimingProtocol(batch=batch, warmup=warmup, repeats=repeats, per_round=max(1, repeats // 4),
                              clock=clock)
    t0 = time.perf_counter()
    with jax.default_device(device):
      calls = [network_call(ZOO[n].space.replace(resolution=resolution), ZOO[n].arch, protocol)
               for n in nets]
      timings = time_interleaved(calls, warmup=warmup, repeats=repeats, per_round=protocol.per_round,
                                 clock=clock)
    for n, t in zip(nets, timings, strict=True):
      rec = out["networks"].setdefault(n, {})
      rec[key] = round(t.median_ms, 3)
      rec[f"{key}_min"] = round(t.min_ms, 3)
      if key == "throughput_ms":
        rec["images_per_s"] = round(batch * 1e3 / t.median_ms, 1)
    times = ", ".join(f"{n} {t.median_ms:.2f} ms" for n, t in zip(nets, timings, strict=True))
    print(f"{device.platform}, batch {batch}: {times} ({time.perf_counter() - t0:.0f} s incl. compile)",
          file=sys.stderr)
  return out


def cross_hardware_table(measured: list[dict[str, Any]]) -> dict[str, Any]:
  """(b): the measured columns (per device: batch 1, throughput batch) next to the paper's, and the
  fastest net of every column."""
  nets = tuple(measured[0]["networks"])
  proxyless = tuple(n for n in nets if n.startswith("proxyless"))
  columns: dict[str, str] = {}
  rows = [{"name": n} for n in nets]
  for m in measured:
    plat = m["platform"]
    columns[f"{plat}_latency_ms"] = f"this {plat.upper()}, batch 1"
    columns[f"{plat}_throughput_ms"] = f"this {plat.upper()}, batch {m['throughput_batch']}"
    for r in rows:
      rec = m["networks"][r["name"]]
      r.update({f"{plat}_latency_ms": rec["latency_ms"], f"{plat}_throughput_ms": rec["throughput_ms"],
                f"{plat}_images_per_s": rec["images_per_s"]})
  for d, label in PAPER_DEVICES.items():
    columns[f"paper_{d}_ms"] = f"paper, {label}"
    for r in rows:
      r[f"paper_{d}_ms"] = PAPER_LATENCY_MS.get(r["name"], {}).get(d)
  fastest = {}
  for col in columns:
    vals = {r["name"]: r[col] for r in rows}
    fastest[col] = {"all": _fastest(vals, nets), "proxyless": _fastest(vals, proxyless)}
  return {"rows": rows, "columns": columns, "fastest": fastest}


def _arch_keys(space: SearchSpace, arch: Arch) -> list[str]:
  keys = space_keys(space)
  out = list(keys.fixed)
  for b, row, op in zip(space.blocks, keys.blocks, arch.ops, strict=True):
    if op != "Zero":
      out.append(row[b.candidates.index(op)])
  return out


def _table_sum(table: LatencyTable, space: SearchSpace, arch: Arch) -> tuple[float | None, list[str]]:
  keys = _arch_keys(space, arch)
  missing = [k for k in keys if k not in table]
  return (None if missing else round(sum(table.lookup(k) for k in keys), 3)), missing


def mobile_predictions(table: LatencyTable) -> list[dict[str, Any]]:
  """(c): the table sum of each zoo architecture at its published widths (where the table has every
  layer) and at the search space's widths (width 1.0, first stage 24), plus two uniform baselines.

  Each row: architecture, widths ("published" / "search space"), table_ms (None when a layer is
  missing), missing (layers not in the table), layers, paper_mobile_ms.
  """
  search_space = SearchSpace()
  rows = []

  def row(name: str, widths: str, space: SearchSpace, arch: Arch) -> None:
    total, missing = _table_sum(table, space, arch)
    rows.append({"architecture": name, "widths": widths, "table_ms": total, "missing": len(missing),
                 "layers": len(_arch_keys(space, arch)),
                 "paper_mobile_ms": PAPER_LATENCY_MS.get(name, {}).get("mobile")
                 if widths == "published" else None})

  for name, e in ZOO.items():
    row(name, "published", e.space, e.arch)
  seen: set[Arch] = set()
  for name, e in ZOO.items():
    try:
      search_space.check_arch(e.arch)
    except ValueError:  # mobilenet_v2's depths (2, 3, 4, 3, 3, 1) are not the space's
      continue
    if e.arch not in seen:  # proxyless_mobile_14 has proxyless_mobile's ops
      seen.add(e.arch)
      row(name, "search space", search_space, e.arch)
  for op in ("3x3_MBConv3", "3x3_MBConv6"):
    row(f"every block {op}", "search space", search_space, Arch.uniform(search_space, op))
  return rows


def _fmt(v: Any) -> str:
  if v is None:
    return "-"
  if isinstance(v, bool):
    return "yes" if v else "no"
  if isinstance(v, int):
    return f"{v:,}"
  return f"{v:g}" if isinstance(v, float) else str(v)


def _md(headers: list[str], rows: list[list[Any]]) -> str:
  lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
  lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
  return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
  parts = ["### (a) The zoo (ours at 224x224, 1000 classes, vs published)", "",
           _md(["network", "params", "published", "MACs (M)", "published", "paper top-1", "paper latency"],
               [[r["name"], r["params"], r["published_params"], r["macs_m"], r["published_macs_m"],
                 r["paper_top1"], r["paper_latency"]] for r in result["zoo"]])]
  if result.get("cross_hardware"):
    ch = result["cross_hardware"]
    cols = list(ch["columns"])
    rows = [[r["name"], *[r[c] for c in cols]] for r in ch["rows"]]
    rows.append(["fastest (proxyless nets)", *[ch["fastest"][c]["proxyless"] for c in cols]])
    rows.append(["fastest (all four)", *[ch["fastest"][c]["all"] for c in cols]])
    res = result["measured"][0]["resolution"]
    parts += ["", f"### (b) Cross-hardware latency, ms ({res}x{res})", "",
              _md(["network", *ch["columns"].values()], rows)]
    for m in result["measured"]:
      parts += ["", f"Measured on {m['device']}: jitted inference, median of {m['repeats']} calls per "
                f"net after warm-up, the four nets interleaved, {m['clock']} clock; throughput batch "
                f"{m['throughput_batch']}: "
                + ", ".join(f"{n} {v['images_per_s']:g} images/s" for n, v in m["networks"].items())
                + "."]
  if result.get("mobile_prediction"):
    parts += ["", f"### (c) Pixel-1 latency predicted by the reference lookup table "
              f"({result['mobile_table']}), ms", "",
              _md(["architecture", "widths", "table sum", "layers missing from the table",
                   "paper (Pixel 1)"],
                  [[r["architecture"], r["widths"], r["table_ms"], f"{r['missing']} of {r['layers']}",
                    r["paper_mobile_ms"]] for r in result["mobile_prediction"]])]
  return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--json", action="store_true", help="print the JSON object as the last line")
  p.add_argument("--quick", action="store_true",
                 help="resolution 32, throughput batch 2, 2 repeats (a smoke test, not a measurement)")
  p.add_argument("--resolution", type=int, default=224)
  p.add_argument("--throughput-batch", type=int, default=8)
  p.add_argument("--repeats", type=int, default=20, help="timed calls per net and batch size")
  p.add_argument("--warmup", type=int, default=2, help="untimed calls after compiling")
  p.add_argument("--clock", choices=sorted(CLOCKS), default="process",
                 help="the CPU's clock (accelerators: always the wall clock)")
  p.add_argument("--no-measure", action="store_true", help="skip (b)'s measurement")
  p.add_argument("--mobile-table", default=None,
                 help="the reference Pixel-1 table (mobile_trim.yaml); default "
                      "$PNAS_REFERENCE_DIR/mobile_trim.yaml if set, else (c) is skipped")
  p.add_argument("--out", default=str(ROOT / "results" / "paper_tables.json"))
  args = p.parse_args(argv)
  if args.quick:
    args.resolution, args.throughput_batch, args.repeats, args.warmup = 32, 2, 2, 1

  t0 = time.perf_counter()
  result: dict[str, Any] = {"zoo": zoo_table()}
  if not args.no_measure:
    devices = [jax.devices("cpu")[0]]  # this CPU always; the default device too when it is not one
    if jax.default_backend() != "cpu":
      devices.append(jax.devices()[0])
    result["measured"] = [measure_cross_hardware(args.resolution, args.throughput_batch, args.repeats,
                                                 args.warmup, args.clock, device=d) for d in devices]
    result["cross_hardware"] = cross_hardware_table(result["measured"])
    result["paper_devices"] = PAPER_DEVICES
  table_path = args.mobile_table
  if table_path is None and os.environ.get("PNAS_REFERENCE_DIR"):
    table_path = os.path.join(os.environ["PNAS_REFERENCE_DIR"], "mobile_trim.yaml")
  if table_path:
    result["mobile_table"] = os.path.basename(table_path)
    result["mobile_prediction"] = mobile_predictions(load_table(table_path))
  else:
    print("(c) skipped: give --mobile-table mobile_trim.yaml (or set PNAS_REFERENCE_DIR)", file=sys.stderr)
  result["wall_s"] = round(time.perf_counter() - t0, 1)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.with_suffix(".md").write_text(markdown(result))
  write_result(result, out, args.json)
  return result


if __name__ == "__main__":
  reexec_with_host_malloc()  # as `pnas` does (pnas_jax/host_malloc.py)
  main()
