"""The per-run report of `pnas train`: accuracy, size, cost and latency, as JSON and Markdown."""

from __future__ import annotations

import os
from typing import Any

from pnas_jax.file_io import write_bytes_atomic, write_json
from pnas_jax.latency.measure import TimingProtocol, measure_network
from pnas_jax.latency.predictor import load_latency_model
from pnas_jax.latency.timing import device_description
from pnas_jax.models.cost import net_cost
from pnas_jax.search_space.io import save_arch
from pnas_jax.search_space.space import Arch, SearchSpace


def network_report(space: SearchSpace, arch: Arch, *, batch: int = 32, repeats: int = 30,
                   clock: str = "process", latency_model: str = "",
                   dw_impl: str = "auto") -> dict[str, Any]:
  """params, MACs, latency measured here at batch 1 and `batch` (repeats 0: not measured), and
  predicted latency (if a model)."""
  cost = net_cost(space, arch)
  out: dict[str, Any] = {"params": cost.params, "macs_m": round(cost.macs_m, 3),
                         "device": device_description(), "latency_clock": clock}
  for b in sorted({1, batch}) if repeats > 0 else ():
    t = measure_network(space, arch, TimingProtocol(batch=b, repeats=repeats, clock=clock,
                                                    dw_impl=dw_impl))
    out[f"latency_ms_b{b}"] = t.median_ms
  if latency_model:
    pred = load_latency_model(latency_model, space)
    out["predicted_latency"] = float(pred.of_archs([arch])[0])
    out["predicted_latency_unit"] = pred.unit
  return out


def write_report(workdir: str, space: SearchSpace, arch: Arch, test: dict[str, Any], config: Any,
                 dataset: Any, result: Any) -> dict[str, Any]:
  """report.json + report.md (+ arch.json of the trained network, with its input normalisation)."""
  save_arch(os.path.join(workdir, "arch.json"), space, arch, name=os.path.basename(workdir),
            meta={"dataset": dataset.name,
                  "normalization": {"mean": list(dataset.mean), "std": list(dataset.std)}})
  dataset = dataset.name
  rep = {"dataset": dataset, "arch": list(arch.ops), "test_top1": test["top1"],
         "test_top5": test["top5"], "test_examples": test["count"],
         **network_report(space, arch, batch=config.report.latency_batch,
                          repeats=config.report.latency_repeats, clock=config.report.latency_clock,
                          latency_model=config.report.latency_model,
                          dw_impl=config.model.dw_impl),
         "train": result.to_dict()}
  write_json(os.path.join(workdir, "report.json"), rep)
  rows = [("data set", dataset), ("test top-1 / top-5", f"{test['top1']:.2f}% / {test['top5']:.2f}%"),
          ("params", f"{rep['params']:,}"), ("MACs", f"{rep['macs_m']:.2f} M")]
  for b in sorted({1, config.report.latency_batch}) if "latency_ms_b1" in rep else ():
    rows.append((f"latency, batch {b} (measured)", f"{rep[f'latency_ms_b{b}']:.3f} ms"))
  if "predicted_latency" in rep:
    rows.append(("latency (predicted)", f"{rep['predicted_latency']:.3f} {rep['predicted_latency_unit']}"))
  rows += [("device", rep["device"]), ("steps", f"{result.step} ({result.images_per_s:.0f} img/s)"),
           ("architecture", " ".join(arch.ops))]
  md = "\n".join([f"# {os.path.basename(workdir)}", "", "| | |", "|---|---|",
                  *[f"| {k} | {v} |" for k, v in rows], ""])
  write_bytes_atomic(os.path.join(workdir, "report.md"), md.encode())
  return rep
