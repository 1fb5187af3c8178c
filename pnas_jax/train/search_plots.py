"""The search's plots (workdir/plots/): alpha per block over time, the found arch, the curves."""

from __future__ import annotations

import os
from typing import Any

from pnas_jax import plots
from pnas_jax.search_space.space import Arch, SearchSpace


def arch_blocks(space: SearchSpace, arch: Arch) -> list[dict[str, Any]]:
  """plots.plot_architecture's block records for `arch` in `space`."""
  return [{"index": b.index, "stage": b.stage, "op": op, "in": b.in_channels,
           "out": b.out_channels, "stride": b.stride}
          for b, op in zip(space.blocks, arch.ops, strict=True)]


def write_search_plots(workdir: str, space: SearchSpace, arch: Arch, records: list[dict[str, Any]],
                       result: Any) -> dict[str, str]:
  """alpha.png (per-block probabilities at each alpha record), arch.png, curves.png."""
  out_dir = os.path.join(workdir, "plots")
  paths = {}
  epochs = [r for r in records if r.get("kind") == "alpha" and r.get("probs")]
  if epochs:
    paths["alpha"] = plots.plot_alpha_history(
        [r["probs"] for r in epochs], [b.candidates for b in space.blocks],
        os.path.join(out_dir, "alpha.png"), steps=[r["step"] for r in epochs],
        title="architecture probabilities per block over the search (x: weight step)")
  paths["arch"] = plots.plot_architecture(
      arch_blocks(space, arch), os.path.join(out_dir, "arch.png"),
      title=f"found architecture ({sum(op != 'Zero' for op in arch.ops)} of {len(arch)} blocks)")
  unit = result.latency_unit or ""
  keys = [("loss", "train loss"), ("acc", "train accuracy"),
          ("holdout_top1", "held-out top-1 of argmax arch (%)")]
  targets = {}
  if result.target is not None:
    keys.append(("expected_latency", f"E[LAT] ({unit})"))
    targets["expected_latency"] = result.target
  paths["curves"] = plots.plot_curves(records, os.path.join(out_dir, "curves.png"), keys,
                                      targets=targets, title="search")
  return paths
