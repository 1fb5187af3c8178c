r"""How much room does the benchmark leave? Every network ever retrained, against the hand front.

experiments/pareto.py asks whether the found net of each target is above the hand-designed front by
more than the seed std, and whether its front beats random search's. This script asks whether any
architecture trained so far does: it pools the networks of several pareto.py results (the same
retraining budget), each architecture once, and compares every one that is not hand-designed with
the union hand front at its latency. If even the best of them is within a seed std of that front at
a latency, no search can be shown to win there with that budget.

Against random search (`against_random`, per target band): every found and random network of the
band, the best one's margin over the random ones' mean, and front.architecture_effect over them:
the spread of the architectures' own accuracies (sigma_arch) against one architecture's spread over
seeds (sigma_seed), and the gain of a perfect pick of the best of --k draws (E[max of k normals] x
sigma_arch). Where that gain is below sigma_seed, no search can beat random draws from the band by
more than the seed std with that budget.

  - Latency is compared as a ratio to the baseline timed in the same run (runs from different
    sessions time differently; the ratio moves ~1-3%), averaged over the runs that timed the net.
  - Accuracy: retraining is deterministic (same seeds, same budget, same accuracies), so a net
    trained in two runs counts once, with its first run's seeds.
  - Per network: diff = mean - hand front interpolated at its ratio (front.interpolate_front),
    effect = diff / pooled seed std (front.against_front, as pareto.py compares). Per
    latency bin [lo, hi): the best.

  python experiments/pareto_ceiling.py results/pareto7.json results/pareto9.json ... \
      [--bins 0.4,0.47,0.57,0.67,0.77,0.9] [--out results/pareto_ceiling.json] [--json]

Writes the JSON, a .png (every network's accuracy against its latency ratio, the hand front drawn)
and prints the JSON (one line with --json).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from results_io import write_result

from pnas_jax import front


def pool_networks(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """Each architecture once: its first run's record, latency replaced by the mean over the runs of
  its ratio to that run's baseline ({"value": ratio, "std": 0, "runs": n})."""
  for key, what in (("train_overrides", "retrained with different budgets"),
                    ("latency_protocol", "timed with different protocols")):
    seen = {json.dumps(r.get(key)) for r in results}
    if len(seen) > 1:
      raise SystemExit(f"error: the results were {what} ({key}): {sorted(seen)}; pool runs of one")
  pooled: dict[tuple[str, ...], dict[str, Any]] = {}
  ratios: dict[tuple[str, ...], list[float]] = {}
  for r in results:
    base = r["baseline"]["latency"]["value"]
    for n in r["networks"]:
      key = tuple(n["ops"])
      pooled.setdefault(key, dict(n))
      ratios.setdefault(key, []).append(n["latency"]["value"] / base)
  for key, n in pooled.items():
    n["latency"] = {"value": sum(ratios[key]) / len(ratios[key]), "std": 0.0, "runs": len(ratios[key])}
  return sorted(pooled.values(), key=lambda n: n["latency"]["value"])


def ceiling(networks: Sequence[dict[str, Any]], bins: Sequence[float]) -> dict[str, Any]:
  """Every non-hand network against the union hand front, and the best per latency bin."""
  hand = [n for n in networks if n["method"] == "hand"]
  rows = []
  for n in networks:
    cmp = None if n["method"] == "hand" else front.against_front(n, hand)
    if cmp is None:
      continue
    rows.append({"name": n["name"], "method": n["method"], "ops": n["ops"],
                 "ratio": n["latency"]["value"], "accuracy": n["accuracy"]["mean"],
                 "std": n["accuracy"]["std"], "hand_front": cmp["mean"], "diff": cmp["diff"],
                 "effect": cmp["effect"]})
  per_bin = []
  for lo, hi in zip(bins[:-1], bins[1:], strict=True):
    inside = sorted((r for r in rows if lo <= r["ratio"] < hi), key=lambda r: -r["diff"])
    per_bin.append({"lo": lo, "hi": hi, "networks": len(inside),
                    "best": inside[0] if inside else None,
                    "above_by_a_seed_std": sum(1 for r in inside if (r["effect"] or 0) > 1)})
  front_idx = front.pareto_front([h["latency"]["value"] for h in hand],
                                 [h["accuracy"]["mean"] for h in hand])
  return {"hand_front": [{"name": hand[i]["name"], "ratio": hand[i]["latency"]["value"],
                          "accuracy": hand[i]["accuracy"]["mean"]} for i in front_idx],
          "networks": rows, "bins": per_bin}


def against_random(networks: Sequence[dict[str, Any]], k: int) -> list[dict[str, Any]]:
  """Per target band: how far the best of its networks (found or random, every run's) is above the
  mean of its random ones, and how much the architecture matters there at all
  (front.architecture_effect over every network of the band, each with its seeds)."""
  bands: dict[str, list[dict[str, Any]]] = {}
  for n in networks:
    if n["method"] != "hand" and n.get("target"):
      bands.setdefault(n["target"], []).append(n)
  rows = []
  for label, nets in sorted(bands.items()):
    random = [n["accuracy"]["mean"] for n in nets if n["method"] == "random"]
    best = max(nets, key=lambda n: n["accuracy"]["mean"])
    row = {"target": label, "networks": len(nets), "random_networks": len(random),
           "random_mean": float(sum(random) / len(random)) if random else None,
           "best": {"name": best["name"], "method": best["method"], "ops": best["ops"],
                    "accuracy": best["accuracy"]["mean"], "std": best["accuracy"]["std"]}}
    if random:
      row["best_minus_random_mean"] = best["accuracy"]["mean"] - row["random_mean"]
    seeds = [n["accuracy"]["values"] for n in nets]
    row["mean"] = float(np.mean([v for s in seeds for v in s]))
    row["ratio"] = float(np.mean([n["latency"]["value"] for n in nets]))
    if len(seeds) >= 2 and sum(len(v) for v in seeds) > len(seeds):
      row["effect"] = front.architecture_effect(seeds, k=k)
    rows.append(row)
  return rows


def power(networks: Sequence[dict[str, Any]], bands: Sequence[dict[str, Any]], k: int,
          random_draws: int, trials: int, seeds: int | None = None) -> dict[str, Any] | None:
  """Can the protocol tell a search from random draws here? sigma_arch and sigma_seed pooled over
  the bands (front.architecture_effect, architectures nested in bands), then
  front.selection_power for searches whose score correlates 0, 0.3, 0.5 or 1 with the
  architectures' own accuracies inside a band: the chance that "hypervolume above random search's
  by more than the seed std" holds, with the runs' seeds, one net per band at the bands' mean
  latency and accuracy, and the hypervolume reference of every pooled network. `seeds`: per
  simulated net (None: the most any pooled network has, the protocol's). And the test of the method
  rather than of one run: every distinct found net's gain over its band's random nets
  (front.search_gain), the rho it implies."""
  banded = [n for n in networks if n["method"] != "hand" and n.get("target")]
  n_bands = len({n["target"] for n in banded})
  if len(banded) - n_bands < 1 or sum(n["accuracy"]["n"] for n in banded) <= len(banded):
    return None  # no band with two networks, or one seed each: no spread to decompose
  effect = front.architecture_effect([n["accuracy"]["values"] for n in banded], k=k,
                                     bands=[n["target"] for n in banded])
  ref = front.default_reference(networks)
  seeds = seeds or max(n["accuracy"]["n"] for n in banded)
  runs = [front.selection_power([b["mean"] for b in bands], [b["ratio"] for b in bands],
                                (ref["latency"], ref["accuracy"]), effect["sigma_arch"],
                                effect["sigma_seed"], score_corr=rho, k=k, seeds=seeds,
                                random_draws=random_draws, trials=trials)
          for rho in (0.0, 0.3, 0.5, 1.0)]
  of = {m: [(n["target"], n["accuracy"]["values"]) for n in banded if n["method"] == m]
        for m in ("found", "random")}
  gain = front.search_gain(of["found"], of["random"], effect["sigma_arch"], effect["sigma_seed"], k)
  return {"pooled_effect": effect, "reference": ref, "by_score_corr": runs, "found_gain": gain}


def plot(result: dict[str, Any], path: Any) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  pw = result.get("power")
  fig, axes = plt.subplots(1, 2 if pw else 1, figsize=(12 if pw else 7, 4.5), squeeze=False)
  ax = axes[0, 0]
  hf = result["hand_front"]
  ax.plot([h["ratio"] for h in hf], [h["accuracy"] for h in hf], "k-", label="hand front (union)")
  for method, marker in (("found", "o"), ("random", "s")):
    pts = [r for r in result["networks"] if r["method"] == method]
    ax.errorbar([r["ratio"] for r in pts], [r["accuracy"] for r in pts],
                yerr=[r["std"] for r in pts], fmt=marker, capsize=3, label=method, alpha=0.8)
  for b in result["bins"]:
    ax.axvline(b["lo"], color="0.85", lw=0.8)
  ax.set_xlabel("latency / baseline (timed in the same run)")
  ax.set_ylabel("test top-1 (%), mean +- seed std")
  ax.set_title(f"{len(result['networks'])} networks from {len(result['runs'])} runs")
  ax.legend()
  if pw:
    _plot_power(axes[0, 1], pw)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _plot_power(ax: Any, pw: dict[str, Any]) -> None:
  runs = pw["by_score_corr"]
  rho = [r["score_corr"] for r in runs]
  ax.plot(rho, [r["p_pass"] for r in runs], "o-", label="HV above random by > seed std")
  ax.plot(rho, [r["p_above"] for r in runs], "s--", label="HV above random")
  e = pw["pooled_effect"]
  ax.set_xlabel("the search's in-band score correlation with true accuracy (rho)")
  ax.set_ylabel("share of simulated protocol runs")
  ax.set_title(f"sigma_arch {e['sigma_arch']:.2f}, sigma_seed {e['sigma_seed']:.2f}; "
               f"{runs[0]['seeds']} seeds, {runs[0]['random_draws']} random net(s) per band", fontsize=9)
  gain = pw.get("found_gain")
  if gain:
    lo, hi = (min(max(x, 0.0), 1.0) for x in gain["rho_interval"])
    ax.axvspan(lo, hi, color="0.9", zorder=0,
               label=f"the found nets' rho: {gain['rho']:+.2f}, 95% [{gain['rho_interval'][0]:+.2f}, "
                     f"{gain['rho_interval'][1]:+.2f}] ({gain['found']} nets)")
  ax.set_xlim(-0.05, 1.05)
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc="lower right")


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("results", nargs="+", help="experiments/pareto.py result JSON files")
  p.add_argument("--bins", default="0.4,0.47,0.57,0.67,0.77,0.9",
                 help="latency-ratio bin edges, comma-separated")
  p.add_argument("--k", type=int, default=24,
                 help="draws a search picks from, for the oracle gain (latency.derive_candidates)")
  p.add_argument("--random-draws", type=int, default=1,
                 help="random nets per band in the simulated protocol (pareto.py --random)")
  p.add_argument("--trials", type=int, default=2000, help="simulated protocol runs per search")
  p.add_argument("--seeds", type=int, default=None,
                 help="seeds per net in the simulated protocol (default: the most any run used)")
  p.add_argument("--out", default="results/pareto_ceiling.json")
  p.add_argument("--json", action="store_true")
  args = p.parse_args(argv)
  bins = [float(b) for b in args.bins.split(",")]
  if len(bins) < 2 or bins != sorted(bins):
    p.error(f"--bins {args.bins}: give at least two increasing edges, e.g. 0.4,0.5,0.6")
  results = []
  for path in args.results:
    with open(path) as f:
      results.append(json.load(f))
  pooled = pool_networks(results)
  bands = against_random(pooled, args.k)
  result = {"runs": args.results, **ceiling(pooled, bins), "against_random": bands,
            "power": power(pooled, bands, args.k, args.random_draws, args.trials, args.seeds)}
  write_result(result, args.out, args.json, plot=plot)
  return 0


if __name__ == "__main__":
  sys.exit(main())
