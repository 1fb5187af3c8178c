"""Comparing trained networks: hand-designed and random baselines, seed statistics, Pareto fronts.

The evaluation protocol of experiments/pareto.py (and experiments/supernet_ranking.py), as a
library so `pnas demo` can show the same front:

- `hand_designed_family`: MobileNetV2-style uniform networks of a space (every block one op), scaled
  in width through the expansion ratio (e.g. 3x3_MBConv6 and 3x3_MBConv3) and in depth (Zero in the
  last skippable blocks of the stages). They stay inside the space, so the latency predictor and
  `pnas latency networks` apply to them; `spanning_members` picks the ones that bracket a latency
  range.
- random search under a latency constraint is search_space/sampling.py's `sample_in_band`.
- `aggregate_seeds`: mean and standard deviation over the seeds of one network.
- `pareto_front`, `hypervolume` (2-D: maximise accuracy, minimise latency), `interpolate_front` and
  `matched_comparison` (a network against a front at its own latency, in seed-std units), and
  `front_summary`, which puts them together for several methods.
- `kendall_tau` and `bootstrap_interval`: rank agreement of two accuracies over architectures.
- `architecture_effect`: how much of the retrained accuracies' spread the architecture explains
  (against the seeds'), and what a perfect pick of the best of k draws would gain;
  `selection_power`: how often the protocol's test against random search passes for a search of
  a given quality in such a population; `search_gain`: the mean gain of many found nets over
  their bands' random nets, the test of the method itself.
- `plot_fronts`: accuracy against latency with error bars, one front per method.
- `train_networks` (each network x seed trained with one budget, each in its own resumable workdir)
  and `measure_latencies` (all networks timed interleaved in each of several child processes, the
  median per network over them: the demo's protocol).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import scipy.integrate
import scipy.stats
from tqdm.auto import tqdm

from pnas_jax import plots
from pnas_jax.child_process import pnas_command, run_pnas
from pnas_jax.config_loading import load_config
from pnas_jax.errors import UserFileError, UserValueError
from pnas_jax.file_io import read_json
from pnas_jax.latency.cli import space_from_config
from pnas_jax.latency.measure import load_network_measurements
from pnas_jax.latency.on_device import device_target, measured_ratio, over_target
from pnas_jax.latency.sessions import DEFAULT_SESSIONS
from pnas_jax.search_space.io import save_arch
from pnas_jax.search_space.sampling import LatencyFn, sample_in_band
from pnas_jax.search_space.space import Arch, SearchSpace
from pnas_jax.train.retrain import train

# How measure_latencies times (with a CPU latency config: pnas_jax/latency/config.py's protocol).
MEASURED_PROTOCOL = ("batch {batch}, one core (a child process pinned to one CPU, single-threaded "
                     "XLA, process CPU-time clock), every network and the baseline interleaved in "
                     f"each of {DEFAULT_SESSIONS} timing processes; the median over the processes "
                     "of each one's 10th percentile of the timed calls (+- the calls' std)")

# --- the hand-designed family ---------------------------------------------------------------------


def skip_order(space: SearchSpace) -> list[int]:
  """The blocks a depth-scaled uniform network skips first: the last skippable block of every stage
  (later stages first), then the second-to-last of every stage, and so on.

  A block is skippable where Zero is one of its candidates (an identity shortcut).
  """
  per_stage: dict[int, list[int]] = {}
  for b in space.blocks:
    if "Zero" in b.candidates:
      per_stage.setdefault(b.stage, []).append(b.index)
  order, rank = [], 1
  while any(len(v) >= rank for v in per_stage.values()):
    order += [v[-rank] for _, v in sorted(per_stage.items(), reverse=True) if len(v) >= rank]
    rank += 1
  return order


def hand_designed_family(space: SearchSpace, ops: Sequence[str] = ("3x3_MBConv6", "3x3_MBConv3"),
                         max_skips: int | None = None) -> list[tuple[str, Arch]]:
  """(name, arch) of the uniform networks of `space`: every block `op` (blocks where `op` cannot run
  keep their first candidate, as Arch.uniform does), with the first k blocks of `skip_order` set to
  Zero, for every op and k = 0 .. max_skips (default: every skippable block). Names: "<op>-d<k>"."""
  for op in ops:
    if op not in space.candidates:
      raise UserValueError(f"hand-designed op {op!r} is not a candidate of the space "
                           f"({', '.join(space.candidates)})")
  order = skip_order(space)
  n = len(order) if max_skips is None else min(max_skips, len(order))
  family = []
  for op in ops:
    base = list(Arch.uniform(space, op).ops)
    for k in range(n + 1):
      ops_k = list(base)
      for i in order[:k]:
        ops_k[i] = "Zero"
      family.append((f"{op}-d{k}", Arch(tuple(ops_k))))
  return family


def spanning_members(latencies: Sequence[float], lo: float, hi: float) -> list[int]:
  """Indices (sorted by latency) of the members inside [lo, hi] plus the nearest one below `lo` and
  the nearest one above `hi`, so that a curve through them covers the whole range."""
  lat = np.asarray(latencies, np.float64)
  order = [int(i) for i in np.argsort(lat, kind="stable")]
  inside = [i for i in order if lo <= lat[i] <= hi]
  below = [i for i in order if lat[i] < lo][-1:]
  above = [i for i in order if lat[i] > hi][:1]
  return below + inside + above


# --- seed statistics, fronts, hypervolume -----------------------------------------------------------


def aggregate_seeds(values: Sequence[float]) -> dict[str, Any]:
  """{"mean", "std", "n", "values"} of one network's per-seed values; std is the sample standard
  deviation s = sqrt(sum_i (v_i - mean)^2 / (n - 1)) (0 for one seed)."""
  v = np.asarray(values, np.float64)
  if v.size == 0:
    raise ValueError("aggregate_seeds needs at least one value")
  return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
          "n": int(v.size), "values": [float(x) for x in v]}


def pareto_front(latency: Sequence[float], accuracy: Sequence[float]) -> list[int]:
  """Indices of the non-dominated points, by increasing latency: no other point is at least as
  fast and at least as accurate and strictly better in one (of equal points, the first is kept)."""
  lat, acc = np.asarray(latency, np.float64), np.asarray(accuracy, np.float64)
  front, best = [], -math.inf
  for i in np.lexsort((-acc, lat)):  # latency ascending, accuracy descending on ties
    if acc[i] > best:
      front.append(int(i))
      best = acc[i]
  return front


def hypervolume(latency: Sequence[float], accuracy: Sequence[float],
                reference: tuple[float, float]) -> float:
  """The area dominated by the points and bounded by the reference point (r_lat, r_acc):

    HV = area( union_i [lat_i, r_lat] x [r_acc, acc_i] )
       = sum_k (lat_{k+1} - lat_k) (acc_k - r_acc)

  over the Pareto front's points k with lat_k < r_lat and acc_k > r_acc, in increasing latency
  (lat_{K+1} = r_lat). Units: latency unit x accuracy unit; larger is better.
  """
  r_lat, r_acc = reference
  lat, acc = np.asarray(latency, np.float64), np.asarray(accuracy, np.float64)
  keep = (lat < r_lat) & (acc > r_acc)
  lat, acc = lat[keep], acc[keep]
  front = pareto_front(lat, acc)
  xs = [lat[i] for i in front] + [r_lat]
  return float(sum((xs[k + 1] - xs[k]) * (acc[i] - r_acc) for k, i in enumerate(front)))


def interpolate_front(latency: Sequence[float], accuracy: Sequence[float], std: Sequence[float],
                      x: float) -> dict[str, float] | None:
  """The front of (latency, accuracy) points linearly interpolated at latency x: None below its
  fastest point; beyond its slowest (most accurate) point, that point (it is available at any
  larger latency).

  Between front points a = (l_a, m_a, s_a) and b with l_a <= x <= l_b, w = (x - l_a) / (l_b - l_a):
  mean = (1 - w) m_a + w m_b and, the two networks' seeds being independent,
  std = sqrt((1 - w)^2 s_a^2 + w^2 s_b^2).
  """
  front = pareto_front(latency, accuracy)
  lat = np.asarray(latency, np.float64)[front]
  acc, s = np.asarray(accuracy, np.float64)[front], np.asarray(std, np.float64)[front]
  if not front or x < lat[0]:
    return None
  x = min(x, lat[-1])
  b = min(max(int(np.searchsorted(lat, x)), 1), len(lat) - 1)  # lat is strictly increasing
  a = max(b - 1, 0)
  w = 0.0 if lat[b] == lat[a] else (x - lat[a]) / (lat[b] - lat[a])
  return {"mean": float((1 - w) * acc[a] + w * acc[b]),
          "std": float(math.sqrt((1 - w) ** 2 * s[a] ** 2 + w ** 2 * s[b] ** 2)),
          "left": int(front[a]), "right": int(front[b]), "weight": float(w)}


def matched_comparison(mean: float, std: float, n: int, other_mean: float, other_std: float,
                       other_n: int) -> dict[str, float]:
  """One network (per-seed mean, std, n seeds) against another accuracy at the same latency.

  diff = m - m'; pooled seed std s_p = sqrt((s^2 + s'^2) / 2); effect = diff / s_p (the difference
  in seed-std units); standard error se = sqrt(s^2 / n + s'^2 / n'); z = diff / se. effect and z
  are None when the seed std is 0 (a single seed).
  """
  diff = mean - other_mean
  pooled = math.sqrt((std ** 2 + other_std ** 2) / 2)
  se = math.sqrt(std ** 2 / n + other_std ** 2 / other_n)
  return {"diff": diff, "pooled_std": pooled, "effect": diff / pooled if pooled > 0 else None,
          "se": se, "z": diff / se if se > 0 else None}


# --- several methods: fronts, hypervolumes, matched-latency comparisons --------------------------


def default_reference(networks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """The hypervolume reference point shared by every method: 1.1 x the slowest network's latency
  and 1 point below the least accurate network's mean accuracy."""
  lat = [n["latency"]["value"] for n in networks]
  acc = [n["accuracy"]["mean"] for n in networks]
  return {"latency": 1.1 * max(lat), "accuracy": min(acc) - 1.0,
          "rule": "1.1 x the slowest network's latency; the least accurate network's mean - 1"}


def _method_front(nets: list[Mapping[str, Any]], ref: tuple[float, float]) -> dict[str, Any]:
  lat = [n["latency"]["value"] for n in nets]
  acc = [n["accuracy"]["mean"] for n in nets]
  out = {"front": [nets[i]["name"] for i in pareto_front(lat, acc)],
         "hypervolume": hypervolume(lat, acc, ref)}
  n_seeds = min(n["accuracy"]["n"] for n in nets)
  if n_seeds > 1:  # the same seed index of every network: a paired spread of the hypervolume
    per_seed = [hypervolume(lat, [n["accuracy"]["values"][k] for n in nets], ref)
                for k in range(n_seeds)]
    out["hypervolume_per_seed"] = aggregate_seeds(per_seed)
  return out


def random_search_draws(random: Sequence[Mapping[str, Any]], ref: tuple[float, float]
                        ) -> dict[str, Any] | None:
  """Random search with the found nets' budget, one trained net per target, when each target has
  several random nets: draw d is the d-th random net of every target, and its front's hypervolume
  is one sample of what that search gets. {"draws", "hypervolume": aggregate_seeds over the
  draws}; None with fewer than two nets per target. (The "random" method's own front pools every
  draw, so it is the best of several searches.)"""
  by_target: dict[Any, list[Mapping[str, Any]]] = {}
  for r in random:
    by_target.setdefault(r.get("target"), []).append(r)
  draws = min((len(v) for v in by_target.values()), default=0)
  if draws < 2:
    return None
  hv = [hypervolume([v[d]["latency"]["value"] for v in by_target.values()],
                    [v[d]["accuracy"]["mean"] for v in by_target.values()], ref) for d in range(draws)]
  return {"draws": draws, "hypervolume": aggregate_seeds(hv)}


def _against(net: Mapping[str, Any], mean: float, std: float, n: int, **extra: Any) -> dict[str, Any]:
  a = net["accuracy"]
  return {**extra, "mean": mean, "std": std,
          **matched_comparison(a["mean"], a["std"], a["n"], mean, std, n)}


def against_front(net: Mapping[str, Any], hand: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
  """`net` against the front of the `hand` networks interpolated at its latency (interpolate_front;
  None below the fastest): the front's mean and std there, the two members it lies between, and
  matched_comparison's diff / effect / z (the front's n: the fewer seeds of those two)."""
  curve = interpolate_front([h["latency"]["value"] for h in hand],
                            [h["accuracy"]["mean"] for h in hand],
                            [h["accuracy"]["std"] for h in hand], net["latency"]["value"])
  if curve is None:
    return None
  left, right = hand[curve["left"]], hand[curve["right"]]
  return _against(net, curve["mean"], curve["std"],
                  min(left["accuracy"]["n"], right["accuracy"]["n"]),
                  between=[left["name"], right["name"]], weight=curve["weight"])


def compare_found(found: Mapping[str, Any], hand: Sequence[Mapping[str, Any]],
                  random: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """One found network against the hand-designed front interpolated at its measured latency, and
  against the random networks of its target (each, and their mean with the pooled seed std)."""
  out: dict[str, Any] = {"name": found["name"], "target": found.get("target"),
                         "latency": found["latency"]["value"], "accuracy": found["accuracy"]["mean"]}
  if hand:
    out["vs_hand"] = against_front(found, hand)
  same = [r for r in random if r.get("target") == found.get("target")]
  if same:
    out["vs_random"] = [_against(found, r["accuracy"]["mean"], r["accuracy"]["std"],
                                 r["accuracy"]["n"], name=r["name"]) for r in same]
    means = [r["accuracy"]["mean"] for r in same]
    pooled = math.sqrt(np.mean([r["accuracy"]["std"] ** 2 for r in same]))
    out["vs_random_mean"] = _against(found, float(np.mean(means)), pooled,
                                     sum(r["accuracy"]["n"] for r in same), n_networks=len(same))
  return out


def front_summary(networks: Sequence[Mapping[str, Any]],
                  reference: tuple[float, float] | None = None) -> dict[str, Any]:
  """Per method its Pareto front and hypervolume (common reference point), and every "found"
  network compared at matched latency with the "hand" front and the "random" networks; with
  several random nets per target, "random_search_draws" (random_search_draws).

  Each network: {"name", "method", "target" (a label or None), "accuracy": aggregate_seeds(...),
  "latency": {"value", "std"}}. Methods are the distinct "method" values.
  """
  if not networks:
    raise ValueError("front_summary needs at least one network")
  ref = dict(default_reference(networks))
  if reference is not None:
    ref = {"latency": float(reference[0]), "accuracy": float(reference[1]), "rule": "given"}
  point = (ref["latency"], ref["accuracy"])
  by_method: dict[str, list[Mapping[str, Any]]] = {}
  for n in networks:
    by_method.setdefault(n["method"], []).append(n)
  hand, random = by_method.get("hand", []), by_method.get("random", [])
  out = {"reference": ref,
         "methods": {m: _method_front(nets, point) for m, nets in by_method.items()},
         "found_vs": [compare_found(f, hand, random) for f in by_method.get("found", [])]}
  draws = random_search_draws(random, point)
  if draws is not None:
    out["random_search_draws"] = draws
  return out


def plot_fronts(networks: Sequence[Mapping[str, Any]], path: str, *,
                x_label: str = "measured latency (ms)", y_label: str = "test top-1 (%)",
                title: str | None = None) -> str:
  """Accuracy (mean +- seed std) against latency (+- timing std) of every network, one colour per
  method, each method's Pareto front drawn as a line."""
  points = [{"label": n["name"], "kind": n["method"], "x": n["latency"]["value"],
             "xerr": n["latency"].get("std") or 0.0, "y": n["accuracy"]["mean"],
             "yerr": n["accuracy"]["std"]} for n in networks]
  lines = {}
  for m in dict.fromkeys(n["method"] for n in networks):
    nets = [n for n in networks if n["method"] == m]
    front = pareto_front([n["latency"]["value"] for n in nets], [n["accuracy"]["mean"] for n in nets])
    lines[m] = [(nets[i]["latency"]["value"], nets[i]["accuracy"]["mean"]) for i in front]
  return plots.plot_pareto_errorbars(points, path, lines=lines, x_label=x_label, y_label=y_label,
                                     title=title)


# --- rank agreement -------------------------------------------------------------------------------


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
  """Kendall's tau-b of two scores of the same items:

    tau_b = sum_{i<j} sgn(x_i - x_j) sgn(y_i - y_j) / sqrt((n_0 - n_x) (n_0 - n_y))

  with n_0 = n (n - 1) / 2 pairs and n_x, n_y the pairs tied in x, in y (the numerator is
  concordant minus discordant pairs). NaN when x or y is constant.
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.shape != y.shape or x.ndim != 1:
    raise ValueError(f"kendall_tau needs two 1-D arrays of one length, got {x.shape} and {y.shape}")
  sx, sy = np.sign(x[:, None] - x[None, :]), np.sign(y[:, None] - y[None, :])
  upper = np.triu(np.ones_like(sx, bool), k=1)
  untied_x, untied_y = np.sum(sx[upper] != 0), np.sum(sy[upper] != 0)
  if untied_x == 0 or untied_y == 0:
    return math.nan
  return float(np.sum((sx * sy)[upper]) / math.sqrt(untied_x * untied_y))


def bootstrap_interval(x: Sequence[float], y: Sequence[float],
                       statistic: Callable[[np.ndarray, np.ndarray], float] = kendall_tau,
                       n_resamples: int = 2000, level: float = 0.95, seed: int = 0) -> dict[str, Any]:
  """Percentile bootstrap interval of statistic(x, y) over the items (pairs resampled together):

    for b = 1..B: I_b = n indices drawn with replacement, t_b = statistic(x[I_b], y[I_b]);
    interval = [q_{(1 - level) / 2}, q_{(1 + level) / 2}] of the finite t_b.

  Returns {"estimate", "low", "high", "level", "n_resamples" (finite ones), "std"}.
  """
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, len(x), size=(n_resamples, len(x)))
  t = np.asarray([statistic(x[i], y[i]) for i in idx])
  t = t[np.isfinite(t)]
  lo, hi = np.quantile(t, [(1 - level) / 2, (1 + level) / 2]) if t.size else (math.nan, math.nan)
  return {"estimate": float(statistic(x, y)), "low": float(lo), "high": float(hi), "level": level,
          "n_resamples": int(t.size), "std": float(t.std(ddof=1)) if t.size > 1 else math.nan}


# --- how much the architecture matters: a variance decomposition -----------------------------------


@functools.cache
def expected_max_normal(k: int) -> float:
  """E[max of k independent standard normals] = int x k phi(x) Phi(x)^(k-1) dx (0.85 for k = 3,
  1.42 for 8, 1.95 for 24)."""
  if k < 1:
    raise ValueError(f"expected_max_normal needs k >= 1, got {k}")
  value, _ = scipy.integrate.quad(
      lambda x: x * k * scipy.stats.norm.pdf(x) * scipy.stats.norm.cdf(x) ** (k - 1),
      -math.inf, math.inf)
  return float(value)


def architecture_effect(per_arch: Sequence[Sequence[float]], k: int = 24,
                        bands: Sequence[Any] | None = None) -> dict[str, Any]:
  """How much of the spread of retrained accuracies the architecture explains (a random-effects
  ANOVA over G architectures, y_gj the accuracy of architecture g with seed j; with `bands`, the
  label of each architecture's latency band, the architectures are nested in B bands and each is
  compared with its band's mean m_b(g), as a search compares nets of one band; without, B = 1):

    MS_between = sum_g n_g (m_g - m_b(g))^2 / (G - B),  MS_within = sum_gj (y_gj - m_g)^2 / (N - G),
    n_0 = (N - sum_b sum_{g in b} n_g^2 / N_b) / (G - B),
    sigma_arch^2 = max(0, (MS_between - MS_within) / n_0),  sigma_seed^2 = MS_within,
    F = MS_between / MS_within, p = P(F_{G-B, N-G} > F).

  sigma_arch is the spread of the architectures' true (infinite-seed) accuracies within a band,
  sigma_seed the spread of one architecture over seeds. A search that picks the best of `k` draws
  of this population by a perfect score gains, over the mean of a random draw, E[max of k normals]
  x sigma_arch (`oracle_gain`); `oracle_gain_seed_stds` is that gain over sigma_seed: below 1, no
  search can beat random draws from this population by more than the seed std.
  """
  groups = [np.asarray(g, np.float64) for g in per_arch]
  labels = [0] * len(groups) if bands is None else list(bands)
  if len(labels) != len(groups):
    raise ValueError(f"architecture_effect: {len(labels)} band labels for {len(groups)} architectures")
  sizes = np.asarray([g.size for g in groups], np.float64)
  n_total, n_groups, n_bands = sizes.sum(), len(groups), len(set(labels))
  if n_groups - n_bands < 1 or sizes.min() < 1 or n_total <= n_groups:
    raise ValueError("architecture_effect needs >= 2 architectures in a band and more values than "
                     f"architectures, got sizes {sizes.astype(int).tolist()} in {n_bands} band(s)")
  means = np.asarray([g.mean() for g in groups])
  band_mean, band_n, band_sq = {}, {}, {}
  for b in set(labels):
    idx = [i for i, x in enumerate(labels) if x == b]
    band_mean[b] = float(np.concatenate([groups[i] for i in idx]).mean())
    band_n[b], band_sq[b] = float(sizes[idx].sum()), float(np.sum(sizes[idx] ** 2))
  df_between = n_groups - n_bands
  ms_between = float(sum(n * (m - band_mean[b]) ** 2 for n, m, b in zip(sizes, means, labels,
                                                                          strict=True)) / df_between)
  ms_within = float(sum(np.sum((g - g.mean()) ** 2) for g in groups) / (n_total - n_groups))
  n0 = float((n_total - sum(band_sq[b] / band_n[b] for b in band_n)) / df_between)
  sigma_arch = math.sqrt(max(0.0, (ms_between - ms_within) / n0))
  sigma_seed = math.sqrt(ms_within)
  f_stat = ms_between / ms_within if ms_within > 0 else math.inf
  gain = expected_max_normal(k) * sigma_arch
  return {"architectures": n_groups, "bands": n_bands, "values": int(n_total),
          "mean": float(np.concatenate(groups).mean()), "sigma_arch": sigma_arch,
          "sigma_seed": sigma_seed, "f": f_stat,
          "p": float(scipy.stats.f.sf(f_stat, df_between, n_total - n_groups)),
          "k": k, "oracle_gain": gain,
          "oracle_gain_seed_stds": gain / sigma_seed if sigma_seed > 0 else None}


def selection_power(band_means: Sequence[float], latencies: Sequence[float],
                    reference: tuple[float, float], sigma_arch: float, sigma_seed: float, *,
                    score_corr: float, k: int = 24, seeds: int = 3, random_draws: int = 1,
                    trials: int = 2000, seed: int = 0) -> dict[str, Any]:
  """How often the protocol's test against random search passes, for a search of known quality
  (a Monte-Carlo simulation of experiments/pareto.py under architecture_effect's model).

  Per band b (mean accuracy mu_b, latency lat_b) and trial: k candidates with true accuracies
  mu_b + sigma_arch z_i, z_i ~ N(0, 1); the search scores them s_i = rho z_i + sqrt(1 - rho^2) e_i
  (rho = `score_corr`, the correlation of its score with the architectures' own accuracies inside
  a band) and keeps the best-scored one; random search keeps `random_draws` uniform draws. Each net
  is retrained with `seeds` seeds, y_j = its true accuracy + sigma_seed e_j. With the fronts'
  hypervolumes per seed index j (`hypervolume`, all nets of a band at lat_b):

    d_j = HV(found_j) - (1 / R) sum_r HV(random_rj),   the test passes when mean_j d_j > std_j d_j

  ("above random search by more than the seed std"). Returns {"p_pass", "p_above" (mean d > 0),
  "expected_diff" (E[mean_j d_j]), "median_seed_std" (of d_j), ...}. rho = 0 is a search no better
  than a random draw, rho = 1 a perfect one (its expected gain per band: E[max of k] sigma_arch).
  """
  if not 0.0 <= score_corr <= 1.0:
    raise ValueError(f"selection_power: score_corr = {score_corr} is not in [0, 1]")
  if seeds < 2 or random_draws < 1 or k < 1 or len(band_means) != len(latencies):
    raise ValueError(f"selection_power needs seeds >= 2, random_draws >= 1, k >= 1 and one latency "
                     f"per band (seeds={seeds}, random_draws={random_draws}, k={k}, "
                     f"{len(band_means)} means, {len(latencies)} latencies)")
  rng = np.random.default_rng(seed)
  mu, n_bands = np.asarray(band_means, np.float64), len(band_means)
  z = rng.standard_normal((trials, n_bands, k))
  score = score_corr * z + math.sqrt(1.0 - score_corr ** 2) * rng.standard_normal(z.shape)
  picked = np.take_along_axis(z, score.argmax(-1)[..., None], -1)[..., 0]
  found = (mu + sigma_arch * picked)[..., None] + sigma_seed * rng.standard_normal(
      (trials, n_bands, seeds))
  random = ((mu[:, None] + sigma_arch * rng.standard_normal((trials, n_bands, random_draws)))[..., None]
            + sigma_seed * rng.standard_normal((trials, n_bands, random_draws, seeds)))
  diffs = np.empty((trials, seeds))
  for t in range(trials):
    for j in range(seeds):
      hv_random = [hypervolume(latencies, random[t, :, r, j], reference) for r in range(random_draws)]
      diffs[t, j] = hypervolume(latencies, found[t, :, j], reference) - float(np.mean(hv_random))
  mean, std = diffs.mean(1), diffs.std(1, ddof=1)
  return {"score_corr": score_corr, "k": k, "seeds": seeds, "random_draws": random_draws,
          "trials": trials, "p_pass": float(np.mean(mean > std)), "p_above": float(np.mean(mean > 0)),
          "expected_diff": float(mean.mean()), "median_seed_std": float(np.median(std))}


def search_gain(found: Sequence[tuple[Any, Sequence[float]]], random: Sequence[tuple[Any, Sequence[float]]],
                sigma_arch: float, sigma_seed: float, k: int = 24) -> dict[str, Any] | None:
  """The search's mean gain over random draws from the same bands, over many found nets: the test
  of the method, where one protocol run's hypervolume test judges one outcome (selection_power).

  `found` and `random` are (band, per-seed accuracies) per network; found nets of bands without a
  random net are left out. With r_b the mean over band b's R_b random nets of their seed means,

    g = (1 / N) sum_i (mean(y_i) - r_b(i)),
    se^2 = (1 / N^2) sum_i (s_a^2 + s_s^2 / n_i) + sum_b (N_b / N)^2 (1 / R_b^2) sum_r (s_a^2 + s_s^2 / n_r)

  (each found net an independent draw of its band, as for a search no better than random; s_a,
  s_s from architecture_effect). A search whose in-band score correlates rho with the nets' own
  accuracies gains rho E[max of k normals] s_a per net in expectation, so
  rho_hat = g / (E[max of k] s_a), with the 95% interval of g scaled alike. None without a found
  net in a band that has random nets, or with sigma_arch = 0.
  """
  by_band: dict[Any, list[Sequence[float]]] = {}
  for band, values in random:
    by_band.setdefault(band, []).append(values)
  used = [(b, v) for b, v in found if b in by_band]
  if not used or sigma_arch <= 0:
    return None
  def net_var(values: Sequence[float]) -> float:  # of one net's seed mean, around its band's mean
    return sigma_arch ** 2 + sigma_seed ** 2 / len(values)

  n = len(used)
  r_mean = {b: float(np.mean([np.mean(v) for v in vs])) for b, vs in by_band.items()}
  r_var = {b: sum(map(net_var, vs)) / len(vs) ** 2 for b, vs in by_band.items()}
  gain = float(np.mean([np.mean(v) - r_mean[b] for b, v in used]))
  share = {b: sum(1 for x, _ in used if x == b) / n for b in by_band}
  var = sum(net_var(v) for _, v in used) / n ** 2 + sum(share[b] ** 2 * r_var[b] for b in by_band)
  se = math.sqrt(var)
  per_rho = expected_max_normal(k) * sigma_arch
  low, high = gain - 1.96 * se, gain + 1.96 * se
  return {"found": n, "bands": sorted({str(b) for b, _ in used}), "gain": gain, "se": se,
          "interval": [low, high], "k": k, "gain_if_perfect": per_rho, "rho": gain / per_rho,
          "rho_interval": [low / per_rho, high / per_rho]}


# --- running: training with seeds, latency in several timing processes ------------------------------


def train_networks(networks: Sequence[tuple[str, Arch]], space: SearchSpace, workdir: str,
                   config_path: str, overrides: Sequence[str], seeds: Sequence[int],
                   progress: bool = True, on_done: Callable[[], None] | None = None,
                   workers: int | None = None) -> tuple[dict[str, list[dict[str, Any]]], int]:
  """Trains every (name, arch) once per seed with one budget (`pnas train` with `config_path` and
  `overrides`); returns ({name: [report.json per seed]}, exit code). With `progress`, a bar over
  the trainings (and, in this process, one within each); `on_done()` is called after each training.

  workers > 1 runs that many trainings at a time, each `pnas train` in a child process (its output
  in workdir/train/NAME/seedS.log); the bar then names the running ones and their last logged
  step. Small networks leave a multi-threaded XLA:CPU process partly idle, so two at a time finish
  a batch of trainings sooner on a CPU (docs/design.md §2.15). None: 2 on a CPU backend with >= 2
  cores, else 1 (an accelerator is not shared between processes).

  The arch files go to workdir/archs/NAME.json and each training to workdir/train/NAME/seedS, so a
  rerun skips finished trainings (their report.json) and resumes an interrupted one. An
  interrupted or failed training stops the loop (running ones finish) and returns its non-zero
  exit code with the reports so far.
  """
  if workers is None:
    workers = 2 if jax.default_backend() == "cpu" and (os.cpu_count() or 1) >= 2 else 1
  if workers < 1:
    raise UserValueError(f"workers = {workers}: give the number of trainings to run at once (>= 1)")
  os.makedirs(os.path.join(workdir, "archs"), exist_ok=True)
  jobs = []
  for name, arch in networks:
    arch_path = os.path.join(workdir, "archs", f"{name}.json")
    save_arch(arch_path, space, arch, name=name)
    for seed in seeds:
      run_dir = os.path.join(workdir, "train", name, f"seed{seed}")
      jobs.append(_TrainJob(name, seed, run_dir, [
          *overrides, f"--config.arch={arch_path}", f"--config.seed={seed}",
          "--config.log.progress=False", "--config.report.latency_repeats=0"]))
  arch_of = dict(networks)
  todo = [j for j in jobs if _finished_report(j, arch_of[j.name]) is None]
  bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc="train", disable=not progress,
             file=sys.stderr)
  for _ in range(len(jobs) - len(todo)):
    if on_done is not None:
      on_done()

  def finished(job: _TrainJob) -> None:
    bar.update()
    if on_done is not None:
      on_done()

  try:
    if workers > 1 and len(todo) > 1:
      code = _train_in_children(todo, config_path, workers, bar, finished)
    else:
      code = _train_here(todo, config_path, progress, bar, finished)
  finally:
    bar.close()
  reports: dict[str, list[dict[str, Any]]] = {}
  for job in jobs:
    rep = _finished_report(job, arch_of[job.name])
    if rep is None:
      return reports, code or 1
    reports.setdefault(job.name, []).append(rep)
  return reports, 0


def _finished_report(job: _TrainJob, arch: Arch) -> dict[str, Any] | None:
  """The job's report.json, None before it finished; an error (before anything is trained) when
  it holds a training of another architecture under the same name."""
  if not os.path.exists(job.report):
    return None
  rep = read_json(job.report, UserFileError)
  if tuple(rep["arch"]) != arch.ops:
    raise UserValueError(f"{job.run_dir} holds a training of another architecture "
                         f"({' '.join(rep['arch'])}, not {' '.join(arch.ops)}): the networks "
                         "chosen for this name changed; use another workdir or delete that folder")
  return rep


@dataclasses.dataclass(frozen=True)
class _TrainJob:
  """One training of train_networks: `pnas train --config CONFIG *overrides --workdir run_dir`."""

  name: str
  seed: int
  run_dir: str
  overrides: list[str]

  @property
  def report(self) -> str:
    return os.path.join(self.run_dir, "report.json")

  @property
  def log(self) -> str:
    return f"{self.run_dir}.log"


def _train_here(jobs: Sequence[_TrainJob], config_path: str, progress: bool, bar: Any,
                finished: Callable[[_TrainJob], None]) -> int:
  """The trainings one after another in this process; the first non-zero exit code, else 0."""
  for job in jobs:
    bar.set_description(f"train {job.name} seed {job.seed}")
    result = train(load_config(config_path, job.overrides), job.run_dir, progress=progress)
    if result.exit_code or not os.path.exists(job.report):
      return result.exit_code or 1
    finished(job)
  return 0


def _train_in_children(jobs: Sequence[_TrainJob], config_path: str, workers: int, bar: Any,
                       finished: Callable[[_TrainJob], None]) -> int:
  """The trainings `workers` at a time, each `pnas train` in a child process; the first non-zero
  exit code, else 0. A failure starts no new training; the running ones are waited for."""
  pending, running, code = list(jobs), [], 0
  try:
    while pending or running:
      while pending and len(running) < workers and not code:
        job = pending.pop(0)
        os.makedirs(os.path.dirname(job.log), exist_ok=True)
        with open(job.log, "w") as log:
          cmd = pnas_command("train", "--config", config_path, *job.overrides, "--workdir",
                             job.run_dir)
          running.append((job, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)))
      if not running:
        break
      time.sleep(0.5)
      for job, proc in list(running):
        if proc.poll() is None:
          continue
        running.remove((job, proc))
        if proc.returncode == 0 and os.path.exists(job.report):
          finished(job)
        elif not code:
          code = proc.returncode or 1
          _report_failure(job, proc.returncode)
      bar.set_description("train " + ", ".join(f"{j.name} seed {j.seed} @ {_last_step(j.run_dir)}"
                                               for j, _ in running))
  finally:
    for _, proc in running:  # an interrupt: each child saves its checkpoint on the signal too
      try:
        proc.wait(timeout=120)
      except subprocess.TimeoutExpired:
        proc.kill()
  return code


def _last_step(run_dir: str) -> str:
  """The training step last logged in run_dir/metrics.jsonl ('start' before the first)."""
  try:
    with open(os.path.join(run_dir, "metrics.jsonl"), "rb") as f:
      f.seek(max(0, os.fstat(f.fileno()).st_size - 400))
      last = f.read().decode(errors="replace").strip().splitlines()[-1]
    return f"step {json.loads(last)['step']}"
  except (OSError, IndexError, ValueError, KeyError):
    return "start"


def _report_failure(job: _TrainJob, returncode: int) -> None:
  """A failed child training: a user error (exit 2) raises its message; else say where its log is."""
  try:
    with open(job.log, errors="replace") as f:
      tail = f.read().strip().splitlines()[-1:]
  except OSError:
    tail = []
  if returncode == 2:
    raise UserValueError(f"training {job.name} seed {job.seed}: "
                         f"{tail[0] if tail else 'a user error'} (log: {job.log})")
  print(f"training {job.name} seed {job.seed} stopped (exit {returncode}); its output: {job.log}",
        file=sys.stderr)


def measure_latencies(arch_paths: Sequence[tuple[str, str]], latency_config: str, out: str,
                      overrides: Sequence[str] = (), sessions: int = DEFAULT_SESSIONS
                      ) -> dict[str, dict[str, Any]]:
  """{name: {"value", "std", "min", "sessions"}} of every (name, arch.json), in ms.

  A `pnas latency networks` child times every network, interleaved, with its latency config's
  protocol (on a CPU one pinned core, single-threaded XLA and the process CPU-time clock) in each
  of `sessions` fresh processes, and writes the merge to `out` (latency/sessions.py; resumable).
  "value" is the median over the sessions of each session's latency (the 10th percentile of its
  timed calls, latency/timing.py), "sessions" those latencies, "std" the typical standard deviation
  of the timed calls, "min" the fastest call of all.
  """
  if sessions < 1:
    raise UserValueError(f"sessions = {sessions}: give the number of timing processes (>= 1)")
  run_pnas("latency", "networks", "--config", latency_config, *overrides,
           f"--config.sessions={sessions}", "--out", out, "--json",
           *[f"{name}={arch}" for name, arch in arch_paths])
  summaries = load_network_measurements(out).summaries()
  return {name: summaries[name] for name, _ in arch_paths}


# --- the protocol: which networks, their records, the targets they hit, the report table ----------


def choose_networks(space: SearchSpace, latency_fn: LatencyFn, targets: Sequence[tuple[str, float, Arch]],
                    band: float, *, n_random: int = 1, hand_ops: Sequence[str] = ("3x3_MBConv6",
                                                                                    "3x3_MBConv3"),
                    max_hand: int = 6, sample_seed: int = 0) -> list[tuple[str, str, str | None, Arch]]:
  """(name, method, target label, arch) of the networks that decide whether a search won.

  `targets`: (label, T, found arch) per latency target. The networks: the found net of every
  target ("found_<label>"); the hand-designed members bracketing [(1 - band) min T, max T] and the
  found nets' predicted latencies, at most `max_hand` of them (0: all; else >= 2), evenly spaced
  with both ends kept ("hand_<op>-d<k>"); `n_random` random architectures per target, drawn
  uniformly from the space conditioned on predicted latency in [(1 - band) T, T], so they meet the
  target as the found net does ("random_<label>_<j>"). Hand-designed and random nets never repeat
  an architecture already chosen (two targets may find the same one).
  """
  if max_hand == 1:
    raise UserValueError("max_hand = 1: the hand-designed curve needs both ends of the range "
                         "(give 0 for all members, or >= 2)")
  nets = [(f"found_{label}", "found", label, arch) for label, _, arch in targets]
  found = {arch for _, _, arch in targets}
  family = [(a, n) for a, n in dict((a, n) for n, a in hand_designed_family(space, hand_ops)).items()
            if a not in found]
  lat = latency_fn([a for a, _ in family])
  found_lat = list(latency_fn([arch for _, _, arch in targets]))
  ts = [t for _, t, _ in targets]
  idx = spanning_members(lat, min([(1 - band) * min(ts), *found_lat]), max([*ts, *found_lat]))
  if max_hand and len(idx) > max_hand:
    idx = [idx[i] for i in sorted(set(np.linspace(0, len(idx) - 1, max_hand).round().astype(int)))]
  nets += [(f"hand_{family[i][1]}", "hand", None, family[i][0]) for i in idx]
  taken = [n[3] for n in nets]
  for k, (label, target, _) in enumerate(targets):
    for j, a in enumerate(sample_in_band(space, latency_fn, target, band, n_random,
                                         seed=sample_seed + k, exclude=taken)):
      nets.append((f"random_{label}_{j + 1}", "random", label, a))
      taken.append(a)
  return nets


def network_records(nets: Sequence[tuple[str, str, str | None, Arch]],
                    reports: Mapping[str, Sequence[Mapping[str, Any]]],
                    latency: Mapping[str, Mapping[str, float]], latency_fn: LatencyFn
                    ) -> list[dict[str, Any]]:
  """The records front_summary and plot_fronts take: per network its seed statistics of the test
  top-1 (`reports`: report.json per seed), its measured latency, predicted latency and size."""
  pred = latency_fn([n[3] for n in nets])
  out = []
  for (name, method, label, arch), p in zip(nets, pred, strict=True):
    rep = reports[name]
    out.append({"name": name, "method": method, "target": label, "ops": list(arch.ops),
                "accuracy": aggregate_seeds([r["test_top1"] for r in rep]),
                "latency": dict(latency[name]), "predicted_latency": float(p),
                "params": rep[0]["params"], "macs_m": rep[0]["macs_m"]})
  return out


def target_hits(targets: Sequence[tuple[str, float, Arch]], predicted_baseline: float,
                measured_baseline: Mapping[str, Any], measured: Mapping[str, Mapping[str, Any]],
                tolerance: float = 0.05) -> list[dict[str, Any]]:
  """Did each found net land on its target, on the device?

  A target T searched under the latency model is T / predicted(baseline) times the baseline; on
  the device it is T_dev = T x measured(baseline) / predicted(baseline), with the baseline timed in
  the same sessions as the found nets (so a drift of the machine between the search and the
  measurement cancels). The found net's measured(found) / T_dev is its ratio to the baseline taken
  within each timing session, the median over them, x predicted(baseline) / T
  (latency/on_device.py); a target is hit when it is within `tolerance` of 1. `measured_baseline`
  and `measured[name]`: measurement records {"value", "sessions"} (measure_latencies).
  """
  out = []
  base_value = float(measured_baseline["value"])
  for label, target, arch in targets:
    found = measured[f"found_{label}"]
    over = over_target(measured_ratio(found, measured_baseline), target, predicted_baseline)
    out.append({"label": label, "target": target, "ratio": target / predicted_baseline,
                "target_measured": device_target(target, predicted_baseline, base_value),
                "found": f"found_{label}", "ops": list(arch.ops), "latency": found["value"],
                "latency_over_target": over, "hit": abs(over - 1.0) <= tolerance,
                "tolerance": tolerance})
  return out


def evaluate_networks(nets: Sequence[tuple[str, str, str | None, Arch]],
                      reports: Mapping[str, Sequence[Mapping[str, Any]]],
                      targets: Sequence[tuple[str, float, Arch]], baseline: Arch,
                      latency: Mapping[str, Mapping[str, float]], latency_fn: LatencyFn
                      ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
  """(network_records, target_hits) of trained `nets` whose latencies, the baseline's ("baseline")
  included, were taken together (`latency`, measure_latencies)."""
  hits = target_hits(targets, float(latency_fn([baseline])[0]), latency["baseline"], latency)
  return network_records(nets, reports, latency, latency_fn), hits


def measure_with_baseline(nets: Sequence[tuple[str, str, str | None, Arch]], baseline: Arch,
                          space: SearchSpace, workdir: str, latency_config: str, out: str,
                          overrides: Sequence[str] = ()) -> dict[str, dict[str, float]]:
  """measure_latencies of `nets` (their workdir/archs/NAME.json, as train_networks writes them)
  and of the baseline ("baseline", saved to workdir/archs/baseline.json), timed together."""
  save_arch(os.path.join(workdir, "archs", "baseline.json"), space, baseline, name="baseline")
  names = [n[0] for n in nets] + ["baseline"]
  return measure_latencies([(name, os.path.join(workdir, "archs", f"{name}.json")) for name in names],
                           latency_config, out, [*space_overrides(space, latency_config, overrides),
                                                 *overrides])


def space_overrides(space: SearchSpace, latency_config: str, overrides: Sequence[str] = ()
                    ) -> list[str]:
  """`--config.space.KEY=VALUE` for each field where `latency_config`'s space differs from `space`.

  A search run with `--config.space.candidates=...` (or any other space override) saves its
  networks in that space; `pnas latency networks` refuses networks of another space than its
  config's, so the latency config is given the same space.
  """
  have = space_from_config(load_config(latency_config, overrides)).to_dict()
  as_literal = lambda v: repr(tuple(v) if isinstance(v, list) else v)  # noqa: E731
  return [f"--config.space.{key}={as_literal(value)}"
          for key, value in space.to_dict().items() if have[key] != value]


def front_markdown(networks: Sequence[Mapping[str, Any]], summary: Mapping[str, Any],
                   hits: Sequence[Mapping[str, Any]], unit: str) -> list[str]:
  """Markdown lines: the targets and how each found net hit it, every network (mean +- seed std),
  each method's hypervolume and front, and each found net against the hand front and the random
  nets at its latency."""
  lines = ["| target | x baseline | target (re-based on the baseline) | found net | of the target "
           "(its ratio to the baseline per timing process, median) | hit |", "|---|---|---|---|---|---|"]
  lines += [f"| {h['label']} | {h['ratio']:.2f} | {h['target_measured']:.4g} {unit} | "
            f"{h['latency']:.4g} {unit} | {100 * h['latency_over_target']:.1f}% | "
            f"{'yes' if h['hit'] else 'NO'} (within {100 * h['tolerance']:.0f}%) |" for h in hits]
  lines += ["", f"| network | method | target | test top-1 (%) | latency ({unit}) | predicted | params "
            "| architecture |", "|---|---|---|---|---|---|---|---|"]
  for n in networks:
    a, lt = n["accuracy"], n["latency"]
    lines.append(f"| {n['name']} | {n['method']} | {n['target'] or ''} | {a['mean']:.2f} +- "
                 f"{a['std']:.2f} | {lt['value']:.4g} +- {lt['std']:.2g} | "
                 f"{n['predicted_latency']:.4g} | {n['params']:,} | {' '.join(n['ops'])} |")
  ref = summary["reference"]
  lines += ["", f"Hypervolume (reference: latency {ref['latency']:.4g}, accuracy {ref['accuracy']:.2f}; "
            f"{ref['rule']}):", "", "| method | hypervolume | per seed index | front |", "|---|---|---|---|"]
  for m, f in summary["methods"].items():
    ps = f.get("hypervolume_per_seed")
    per_seed = "" if ps is None else f"{ps['mean']:.4g} +- {ps['std']:.2g}"
    lines.append(f"| {m} | {f['hypervolume']:.4g} | {per_seed} | {', '.join(f['front'])} |")
  if "random_search_draws" in summary:
    d = summary["random_search_draws"]
    lines += ["", f"Random search with one net per target (each of the {d['draws']} draws: the d-th "
              f"random net of every target): hypervolume {d['hypervolume']['mean']:.4g} +- "
              f"{d['hypervolume']['std']:.2g} over the draws (the random front above pools them all)."]
  lines += ["", "Found nets at matched latency (diff in points; effect = diff / pooled seed std; "
            "z = diff / standard error):", "", "| found | vs | diff | effect | z |", "|---|---|---|---|---|"]
  fmt = lambda v: "" if v is None else f"{v:+.2f}"  # noqa: E731
  for c in summary["found_vs"]:
    rows = [("hand front (" + " / ".join(c["vs_hand"]["between"]) + ")", c["vs_hand"])] if c.get(
        "vs_hand") else [("hand front", None)]
    rows += [(x["name"], x) for x in c.get("vs_random", [])]
    for what, x in rows:
      lines.append(f"| {c['name']} | {what} | " + (
          "faster than every hand-designed net | | |" if x is None else
          f"{fmt(x['diff'])} | {fmt(x['effect'])} | {fmt(x['z'])} |"))
  return lines
