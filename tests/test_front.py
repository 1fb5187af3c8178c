"""pnas_jax/front.py against independent brute-force references."""

from __future__ import annotations

import itertools
import math
import os
import pathlib
from collections.abc import Callable

import numpy as np
import pytest
import scipy.stats

from pnas_jax import front
from pnas_jax.config_loading import load_config
from pnas_jax.errors import UserValueError
from pnas_jax.latency.measure import NetworkMeasurements
from pnas_jax.latency.predictor import macs_predictor
from pnas_jax.latency.sessions import merge_networks
from pnas_jax.latency.table import TableHeader
from pnas_jax.search_space.sampling import sample_archs
from pnas_jax.search_space.space import Arch, SearchSpace

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _union_area(lat, acc, ref):
  """Exact area of the union of the boxes [lat_i, r_lat] x [r_acc, acc_i] by coordinate
  compression: every elementary cell of the grid of all coordinates is in or out."""
  boxes = [(x, ref[1], ref[0], y) for x, y in zip(lat, acc, strict=True) if x < ref[0] and y > ref[1]]
  xs = sorted({b[0] for b in boxes} | {b[2] for b in boxes})
  ys = sorted({b[1] for b in boxes} | {b[3] for b in boxes})
  area = 0.0
  for (x0, x1), (y0, y1) in itertools.product(itertools.pairwise(xs), itertools.pairwise(ys)):
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if any(b[0] <= cx <= b[2] and b[1] <= cy <= b[3] for b in boxes):
      area += (x1 - x0) * (y1 - y0)
  return area


def test_hypervolume_against_union_of_boxes_and_a_grid_count():
  rng = np.random.default_rng(0)
  for trial in range(20):
    n = int(rng.integers(1, 12))
    lat, acc = rng.uniform(0.2, 1.0, n), rng.uniform(80, 90, n)
    ref = (1.05, 82.0 if trial % 2 else 79.0)  # some points beyond the reference in accuracy
    exact = _union_area(lat, acc, ref)
    assert front.hypervolume(lat, acc, ref) == pytest.approx(exact, rel=1e-12, abs=1e-12)
  # A grid count (independent of any sorting): cell centres dominated by some point.
  lat, acc = rng.uniform(0.2, 1.0, 8), rng.uniform(80, 90, 8)
  gx, gy = np.meshgrid(np.linspace(0, 1.05, 801)[:-1] + 1.05 / 1600,
                       np.linspace(79, 90, 801)[:-1] + 11 / 1600)
  covered = np.zeros(gx.shape, bool)
  for x, y in zip(lat, acc, strict=True):
    covered |= (gx >= x) & (gy <= y)
  grid = covered.mean() * 1.05 * 11
  assert front.hypervolume(lat, acc, (1.05, 79.0)) == pytest.approx(grid, rel=5e-3)
  assert front.hypervolume([2.0], [95.0], (1.0, 80.0)) == 0.0  # beyond the reference latency


def test_pareto_front_is_the_non_dominated_set():
  rng = np.random.default_rng(1)
  lat, acc = rng.integers(0, 6, 30).astype(float), rng.integers(0, 6, 30).astype(float)
  got = front.pareto_front(lat, acc)
  dominated = [any(lat[j] <= lat[i] and acc[j] >= acc[i] and (lat[j] < lat[i] or acc[j] > acc[i])
                   for j in range(30)) for i in range(30)]
  want = {(lat[i], acc[i]) for i in range(30) if not dominated[i]}
  assert {(lat[i], acc[i]) for i in got} == want and len(got) == len(want)
  assert list(lat[got]) == sorted(lat[got])


def test_kendall_tau_against_scipy_and_a_pairwise_count():
  rng = np.random.default_rng(2)
  for _ in range(10):
    x, y = rng.normal(size=15), rng.normal(size=15)
    y = y + rng.uniform(0, 2) * x
    pairs = list(itertools.combinations(range(15), 2))
    conc = sum((x[i] - x[j]) * (y[i] - y[j]) > 0 for i, j in pairs)
    assert front.kendall_tau(x, y) == pytest.approx((2 * conc - len(pairs)) / len(pairs), abs=1e-12)
    assert front.kendall_tau(x, y) == pytest.approx(scipy.stats.kendalltau(x, y).statistic, abs=1e-12)
  x, y = rng.integers(0, 4, 20), rng.integers(0, 3, 20)  # ties: tau-b
  assert front.kendall_tau(x, y) == pytest.approx(
      scipy.stats.kendalltau(x, y, variant="b").statistic, abs=1e-12)
  assert math.isnan(front.kendall_tau([1, 1, 1], [1, 2, 3]))


def test_bootstrap_interval():
  rng = np.random.default_rng(3)
  x = rng.normal(size=20)
  r = front.bootstrap_interval(x, 2 * x + 1, n_resamples=500)
  assert r["estimate"] == 1.0 and r["low"] == 1.0 and r["high"] == 1.0
  # Against the same resamples drawn here, and the normal-theory interval of a mean.
  y = x + rng.normal(size=20)
  r = front.bootstrap_interval(x, y, n_resamples=300, seed=7)
  idx = np.random.default_rng(7).integers(0, 20, size=(300, 20))
  taus = [scipy.stats.kendalltau(x[i], y[i]).statistic for i in idx]
  taus = [t for t in taus if np.isfinite(t)]
  assert (r["low"], r["high"]) == pytest.approx(tuple(np.quantile(taus, [0.025, 0.975])), abs=1e-12)
  z = rng.normal(5.0, 2.0, 400)
  m = front.bootstrap_interval(z, z, statistic=lambda a, b: float(np.mean(a)), n_resamples=2000)
  half = 1.96 * z.std(ddof=1) / math.sqrt(400)
  assert m["high"] - m["low"] == pytest.approx(2 * half, rel=0.1)
  assert m["low"] < z.mean() < m["high"]


def test_expected_max_normal_against_closed_forms_and_sampling():
  assert front.expected_max_normal(1) == pytest.approx(0.0, abs=1e-9)
  assert front.expected_max_normal(2) == pytest.approx(1 / math.sqrt(math.pi), abs=1e-9)
  assert front.expected_max_normal(3) == pytest.approx(1.5 / math.sqrt(math.pi), abs=1e-9)
  draws = np.random.default_rng(0).standard_normal((200_000, 24)).max(axis=1)
  assert front.expected_max_normal(24) == pytest.approx(draws.mean(), abs=0.01)
  with pytest.raises(ValueError, match="k >= 1"):
    front.expected_max_normal(0)


def test_architecture_effect_against_scipy_and_a_simulation():
  groups = [[89.47, 89.94], [89.73, 90.15, 89.9], [89.32, 89.92], [89.24, 89.15]]
  r = front.architecture_effect(groups, k=8)
  f = scipy.stats.f_oneway(*groups)
  assert r["f"] == pytest.approx(f.statistic, rel=1e-12) and r["p"] == pytest.approx(f.pvalue, rel=1e-9)
  within = [v - np.mean(g) for g in groups for v in g]
  assert r["sigma_seed"] == pytest.approx(math.sqrt(np.sum(np.square(within)) / (9 - 4)), rel=1e-12)
  # Equal seeds per architecture: sigma_arch^2 = var(means) - sigma_seed^2 / n.
  eq = [[89.47, 89.94], [89.73, 90.15], [89.32, 89.92], [89.24, 89.15]]
  e = front.architecture_effect(eq, k=24)
  means = np.mean(eq, axis=1)
  assert e["sigma_arch"] ** 2 == pytest.approx(np.var(means, ddof=1) - e["sigma_seed"] ** 2 / 2, rel=1e-9)
  assert e["oracle_gain"] == pytest.approx(front.expected_max_normal(24) * e["sigma_arch"], rel=1e-12)
  assert e["oracle_gain_seed_stds"] == pytest.approx(e["oracle_gain"] / e["sigma_seed"], rel=1e-12)
  # Identical architectures: the between-spread is seed noise only, sigma_arch is (clipped to) 0.
  assert front.architecture_effect([[1.0, 2.0], [1.0, 2.0]])["sigma_arch"] == 0.0
  # 300 architectures with true spread 0.5, 3 seeds each with spread 0.3: both recovered.
  rng = np.random.default_rng(1)
  sim = rng.normal(0, 0.5, (300, 1)) + rng.normal(0, 0.3, (300, 3))
  s = front.architecture_effect(sim)
  assert s["sigma_arch"] == pytest.approx(0.5, rel=0.1) and s["sigma_seed"] == pytest.approx(0.3, rel=0.05)
  with pytest.raises(ValueError, match="more values than architectures"):
    front.architecture_effect([[1.0], [2.0]])


def test_architecture_effect_within_bands():
  # Four latency bands whose means differ by points: the architecture's spread is measured inside
  # each band. Ignoring the bands would count their offsets as architecture.
  rng = np.random.default_rng(2)
  offsets, per_band = (0.0, 3.0, -2.0, 5.0), 80
  groups = [list(o + rng.normal(0, 0.4) + rng.normal(0, 0.3, 3)) for o in offsets
            for _ in range(per_band)]
  bands = [b for b in range(len(offsets)) for _ in range(per_band)]
  e = front.architecture_effect(groups, bands=bands)
  assert e["bands"] == 4 and e["sigma_arch"] == pytest.approx(0.4, rel=0.12)
  assert e["sigma_seed"] == pytest.approx(0.3, rel=0.05)
  assert front.architecture_effect(groups)["sigma_arch"] > 2.0
  # Equal seeds: MS_between over G - B degrees of freedom is the one-way ANOVA of the values centred
  # on their band's mean, rescaled from its G - 1.
  centred = [list(np.asarray(g) - np.mean([groups[i] for i in range(len(groups)) if bands[i] == b]))
             for g, b in zip(groups, bands, strict=True)]
  one_way = scipy.stats.f_oneway(*centred).statistic * (len(groups) - 1) / (len(groups) - 4)
  assert e["f"] == pytest.approx(one_way, rel=1e-9)
  with pytest.raises(ValueError, match="band labels"):
    front.architecture_effect(groups, bands=bands[:-1])
  with pytest.raises(ValueError, match=">= 2 architectures in a band"):
    front.architecture_effect([[1.0, 2.0], [3.0, 4.0]], bands=["a", "b"])


def test_selection_power_in_one_band_against_order_statistics():
  # One band, the reference far below: HV = (r_lat - lat) (acc - r_acc), so d_j is (r_lat - lat)
  # times the found net's accuracy minus the random one's. The expected gain of the best-scored of
  # k is rho E[max of k] sigma_arch (E[z | s] = rho s); a perfect score's pick beats one random
  # draw unless that draw is the largest of k + 1 exchangeable normals: P = k / (k + 1).
  kw = dict(band_means=[90.0], latencies=[1.0], reference=(3.0, 60.0), sigma_arch=0.5,
            sigma_seed=0.001, k=24, trials=4000)
  gain = 2.0 * 0.5 * front.expected_max_normal(24)
  perfect = front.selection_power(score_corr=1.0, **kw)
  assert perfect["expected_diff"] == pytest.approx(gain, abs=0.06)
  assert perfect["p_above"] == pytest.approx(24 / 25, abs=0.015)
  half = front.selection_power(score_corr=0.5, **kw)
  assert half["expected_diff"] == pytest.approx(0.5 * gain, abs=0.06)
  blind = front.selection_power(score_corr=0.0, **kw)
  assert blind["expected_diff"] == pytest.approx(0.0, abs=0.06)
  assert blind["p_above"] == pytest.approx(0.5, abs=0.03)
  # Seed noise: the test's spread grows and a blind search passes it by chance.
  noisy = front.selection_power(score_corr=0.0, **{**kw, "sigma_seed": 0.3, "trials": 2000})
  assert noisy["median_seed_std"] > 0.3 and 0.05 < noisy["p_pass"] < 0.5
  with pytest.raises(ValueError, match="score_corr"):
    front.selection_power(score_corr=1.5, **kw)


def test_search_gain_by_hand_and_its_standard_error_by_simulation():
  found = [("a", [1.0, 2.0]), ("b", [3.0, 3.0]), ("c", [9.0, 9.0])]  # c: no random net, left out
  random = [("a", [0.0, 0.0]), ("a", [1.0, 1.0]), ("b", [2.0, 4.0])]
  g = front.search_gain(found, random, sigma_arch=1.0, sigma_seed=1.0, k=24)
  # g = ((1.5 - 0.5) + (3 - 3)) / 2; se^2 = (1.5 + 1.5) / 4 + (1/2)^2 (1.5 + 1.5) / 4 + (1/2)^2 1.5
  assert g["found"] == 2 and g["bands"] == ["a", "b"] and g["gain"] == pytest.approx(0.5)
  assert g["se"] ** 2 == pytest.approx(0.75 + 0.1875 + 0.375)
  e24 = front.expected_max_normal(24)
  assert g["rho"] == pytest.approx(0.5 / e24)
  assert g["rho_interval"][1] == pytest.approx((0.5 + 1.96 * g["se"]) / e24)
  assert front.search_gain([("c", [1.0, 2.0])], random, 1.0, 1.0) is None
  # The model: 4 bands with offsets, 2-3 found nets each (3 seeds), 1-4 random nets each.
  rng = np.random.default_rng(3)
  sa, ss, plan = 0.3, 0.25, {0: (3, 1), 1: (2, 4), 2: (3, 2), 3: (2, 1)}

  def draw(pick: Callable[[np.ndarray], float]):
    f, r = [], []
    for b, (n_found, n_random) in plan.items():
      f += [(b, list(b + sa * pick(rng.standard_normal(24)) + ss * rng.standard_normal(3)))
            for _ in range(n_found)]
      r += [(b, list(b + sa * rng.standard_normal() + ss * rng.standard_normal(3)))
            for _ in range(n_random)]
    return front.search_gain(f, r, sa, ss, k=24)

  blind = [draw(lambda z: z[0]) for _ in range(3000)]
  assert np.std([x["gain"] for x in blind]) == pytest.approx(blind[0]["se"], rel=0.05)
  assert np.mean([x["gain"] for x in blind]) == pytest.approx(0.0, abs=0.02)
  perfect = [draw(np.max) for _ in range(1000)]
  assert np.mean([x["rho"] for x in perfect]) == pytest.approx(1.0, abs=0.05)


def test_interpolate_front_and_matched_comparison():
  lat, acc, std = [1.0, 2.0, 4.0, 3.0], [80.0, 82.0, 86.0, 81.0], [0.2, 0.4, 0.2, 0.1]
  # (3.0, 81.0) is dominated by (2.0, 82.0): the curve runs 1 -> 2 -> 4.
  r = front.interpolate_front(lat, acc, std, 3.0)
  assert r["mean"] == pytest.approx(84.0) and (r["left"], r["right"]) == (1, 2)
  assert r["std"] == pytest.approx(math.sqrt(0.25 * 0.16 + 0.25 * 0.04))
  assert front.interpolate_front(lat, acc, std, 1.0)["mean"] == pytest.approx(80.0)
  assert front.interpolate_front(lat, acc, std, 4.0)["mean"] == pytest.approx(86.0)
  assert front.interpolate_front(lat, acc, std, 0.5) is None
  beyond = front.interpolate_front(lat, acc, std, 4.5)
  assert (beyond["mean"], beyond["std"], beyond["right"]) == (86.0, 0.2, 2)
  c = front.matched_comparison(85.0, 0.3, 3, 84.0, 0.4, 3)
  assert c["diff"] == pytest.approx(1.0) and c["pooled_std"] == pytest.approx(math.sqrt(0.125))
  assert c["effect"] == pytest.approx(1.0 / math.sqrt(0.125))
  assert c["z"] == pytest.approx(1.0 / math.sqrt(0.25 / 3))


def _net(name, method, lat, accs, target=None):
  return {"name": name, "method": method, "target": target, "latency": {"value": lat, "std": 0.01},
          "accuracy": front.aggregate_seeds(accs)}


def test_front_summary_and_plot(tmp_path):
  nets = [_net(f"h{i}", "hand", lat, [80 + 4 * lat - 0.1, 80 + 4 * lat + 0.1])
          for i, lat in enumerate([0.5, 1.0, 1.5])]
  nets += [_net("f", "found", 0.75, [84.9, 85.1], "t"), _net("r", "random", 0.74, [82.0, 82.2], "t")]
  s = front.front_summary(nets)
  (f,) = s["found_vs"]
  assert f["vs_hand"]["mean"] == pytest.approx(83.0) and f["vs_hand"]["diff"] == pytest.approx(2.0)
  assert f["vs_hand"]["between"] == ["h0", "h1"]
  assert f["vs_random_mean"]["diff"] == pytest.approx(2.9)
  ref = s["reference"]
  assert (ref["latency"], ref["accuracy"]) == pytest.approx((1.65, 81.0))
  assert s["methods"]["hand"]["front"] == ["h0", "h1", "h2"]
  assert s["methods"]["found"]["hypervolume"] == pytest.approx((1.65 - 0.75) * 4.0)
  assert s["methods"]["found"]["hypervolume_per_seed"]["values"] == pytest.approx([0.9 * 3.9, 0.9 * 4.1])
  png = front.plot_fronts(nets, str(tmp_path / "f.png"), title="t")
  assert pathlib.Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_random_search_draws_one_net_per_target_per_draw():
  def net(name, target, lat, acc):
    return {"name": name, "method": "random", "target": target, "latency": {"value": lat},
            "accuracy": front.aggregate_seeds([acc])}

  ref = (2.0, 80.0)
  rnd = [net("a1", "a", 1.0, 85.0), net("a2", "a", 1.1, 83.0), net("b1", "b", 1.5, 84.0),
         net("b2", "b", 1.4, 87.0)]
  d = front.random_search_draws(rnd, ref)
  # Draw 1: (1.0, 85), (1.5, 84) -> only (1.0, 85) on the front: 1.0 x 5. Draw 2: (1.1, 83),
  # (1.4, 87): 0.3 x 3 + 0.6 x 7.
  assert d["draws"] == 2 and d["hypervolume"]["values"] == pytest.approx([5.0, 0.9 + 4.2])
  assert front.random_search_draws(rnd[:1] + rnd[2:3], ref) is None  # one per target: no spread
  summary = front.front_summary(rnd, reference=ref)
  assert summary["random_search_draws"] == d
  assert summary["methods"]["random"]["hypervolume"] == pytest.approx(
      front.hypervolume([1.0, 1.1, 1.5, 1.4], [85, 83, 84, 87], ref))  # the pooled front


def test_aggregate_seeds():
  a = front.aggregate_seeds([1.0, 2.0, 4.0])
  assert a["mean"] == pytest.approx(7 / 3) and a["n"] == 3
  assert a["std"] == pytest.approx(np.std([1.0, 2.0, 4.0], ddof=1))
  assert front.aggregate_seeds([3.0])["std"] == 0.0


def test_hand_designed_family_is_uniform_and_monotone(fmnist_space):
  space = fmnist_space
  assert front.skip_order(space) == [5, 3, 1, 0]
  macs = macs_predictor(space)
  fam = front.hand_designed_family(space)
  assert len(fam) == 10
  for op in ("3x3_MBConv6", "3x3_MBConv3"):
    members = [(n, a) for n, a in fam if n.startswith(op)]
    for k, (name, arch) in enumerate(members):
      assert name == f"{op}-d{k}" and arch.ops.count("Zero") == k
      assert set(arch.ops) - {"Zero"} == {op}  # uniform: every kept block is the op
    lat = macs.of_archs([a for _, a in members])
    assert np.all(np.diff(lat) < 0)  # fewer blocks, less cost
  # Width: expansion 3 is cheaper than 6 at every depth.
  six, three = macs.of_archs([a for _, a in fam[:5]]), macs.of_archs([a for _, a in fam[5:]])
  assert np.all(three < six)
  with pytest.raises(UserValueError, match="not a candidate"):
    front.hand_designed_family(space, ops=("7x7_MBConv6",))


def test_spanning_members():
  lat = [5.0, 1.0, 3.0, 2.0, 4.0, 6.0]
  assert front.spanning_members(lat, 2.5, 4.5) == [3, 2, 4, 0]
  assert front.spanning_members(lat, 0.5, 10.0) == [1, 3, 2, 4, 0, 5]


def test_target_hits_rebase_each_target_on_the_baseline_timed_with_the_found_nets(fmnist_space):
  arch = Arch.uniform(fmnist_space, "3x3_MBConv3")
  targets = [("ratio_0.6", 1.2, arch), ("ratio_0.8", 1.6, arch)]  # predicted baseline: 2.0
  measured = {"found_ratio_0.6": {"value": 1.5}, "found_ratio_0.8": {"value": 2.0}}
  # The device runs 1.25x slower than the model: the baseline measures 2.5, so the targets there
  # are 0.6 x 2.5 = 1.5 (hit exactly) and 0.8 x 2.5 = 2.0 (hit exactly).
  hits = front.target_hits(targets, 2.0, {"value": 2.5}, measured)
  assert [h["ratio"] for h in hits] == pytest.approx([0.6, 0.8])
  assert [h["target_measured"] for h in hits] == pytest.approx([1.5, 2.0])
  assert all(h["hit"] for h in hits)
  # 5.4% over the target misses at 5%, hits at 6%; 4.9% under hits.
  measured["found_ratio_0.6"]["value"] = 1.5 * 1.054
  measured["found_ratio_0.8"]["value"] = 2.0 * 0.951
  hits = front.target_hits(targets, 2.0, {"value": 2.5}, measured)
  assert [h["hit"] for h in hits] == [False, True]
  assert hits[0]["latency_over_target"] == pytest.approx(1.054)
  assert front.target_hits(targets, 2.0, {"value": 2.5}, measured, tolerance=0.06)[0]["hit"]


def test_target_hits_take_the_ratio_to_the_baseline_within_each_timing_session(fmnist_space):
  arch = Arch.uniform(fmnist_space, "3x3_MBConv3")
  targets = [("ratio_0.5", 1.0, arch)]  # predicted baseline 2.0: T = 0.5 x the baseline
  # The third session ran 20% slow for both: per session the found net is 0.5, 0.5 and 0.52 x the
  # baseline (median 0.5: on target), while the medians of the sessions give 1.0 / 2.2 = 0.4545.
  base = {"value": 2.2, "sessions": [2.0, 2.2, 2.5]}
  found = {"value": 1.1, "sessions": [1.0, 1.1, 1.3]}
  (hit,) = front.target_hits(targets, 2.0, base, {"found_ratio_0.5": found})
  assert hit["latency_over_target"] == pytest.approx(1.0) and hit["hit"]
  assert hit["target_measured"] == pytest.approx(1.1) and hit["latency"] == 1.1
  # Without per-session timings (or with sessions that do not pair up): the values' ratio.
  (hit,) = front.target_hits(targets, 2.0, {"value": 2.2}, {"found_ratio_0.5": found})
  assert hit["latency_over_target"] == pytest.approx(1.1 / 1.1)
  found["value"] = 1.0
  (hit,) = front.target_hits(targets, 2.0, {"value": 2.2, "sessions": [2.0, 2.2]},
                             {"found_ratio_0.5": found})
  assert hit["latency_over_target"] == pytest.approx(1.0 / 1.1)


def test_choose_networks_found_hand_bracketing_and_random_in_band(fmnist_space):
  pred = macs_predictor(fmnist_space)
  base = float(pred.of_archs([Arch.uniform(fmnist_space, "3x3_MBConv6")])[0])
  found = sample_archs(fmnist_space, 2, seed=3)
  targets = [("a", 0.6 * base, found[0]), ("b", 0.8 * base, found[1])]
  nets = front.choose_networks(fmnist_space, pred.of_archs, targets, 0.05, n_random=2, max_hand=4)
  assert [n[:3] for n in nets[:2]] == [("found_a", "found", "a"), ("found_b", "found", "b")]
  hand = [n for n in nets if n[1] == "hand"]
  random = [n for n in nets if n[1] == "random"]
  assert 2 <= len(hand) <= 4 and [n[0] for n in random] == ["random_a_1", "random_a_2",
                                                            "random_b_1", "random_b_2"]
  lat = dict(zip([n[0] for n in nets], pred.of_archs([n[3] for n in nets]), strict=True))
  lo = min(0.95 * 0.6 * base, *pred.of_archs(found))
  hi = max(0.8 * base, *pred.of_archs(found))
  hand_lat = sorted(lat[n[0]] for n in hand)
  assert hand_lat[0] <= lo and hand_lat[-1] >= hi  # the hand curve covers the whole range
  for name, _, label, _ in random:
    t = 0.6 * base if label == "a" else 0.8 * base
    assert 0.95 * t <= lat[name] <= t
  assert len({n[3] for n in nets}) == len(nets)  # no architecture twice


def test_choose_networks_never_trains_a_found_net_again_as_a_hand_member(fmnist_space):
  pred = macs_predictor(fmnist_space)
  uniform3 = Arch.uniform(fmnist_space, "3x3_MBConv3")  # a hand-designed member (d0)
  t = float(pred.of_archs([uniform3])[0])
  nets = front.choose_networks(fmnist_space, pred.of_archs, [("a", t, uniform3)], 0.05, max_hand=0)
  assert [n[0] for n in nets].count("found_a") == 1
  assert all(n[3] != uniform3 for n in nets[1:]) and "hand_3x3_MBConv3-d0" not in [n[0] for n in nets]
  with pytest.raises(UserValueError, match="max_hand = 1"):
    front.choose_networks(fmnist_space, pred.of_archs, [("a", t, uniform3)], 0.05, max_hand=1)


def test_trainings_in_child_processes_match_trainings_here(tmp_path):
  """workers=2 runs each training as `pnas train` in a child process: same reports as in-process
  (same seed, same budget), a log per training, and a rerun trains nothing again."""
  import sys

  sys.path.insert(0, os.path.join(REPO, "experiments"))
  from front_common import TINY_CONFIG, TINY_TRAIN, TRAIN_CONFIG

  space = SearchSpace(**load_config(TINY_CONFIG).space.to_dict())
  nets = [(f"n{i}", a) for i, a in enumerate(sample_archs(space, 2, seed=3))]
  over = ["--config.data.name=synthetic", *TINY_TRAIN]
  par, code = front.train_networks(nets, space, str(tmp_path / "par"), TRAIN_CONFIG, over, [0],
                                   progress=False, workers=2)
  assert code == 0 and set(par) == {"n0", "n1"}
  assert all((tmp_path / "par" / "train" / n / "seed0.log").is_file() for n, _ in nets)
  here, code = front.train_networks(nets[:1], space, str(tmp_path / "here"), TRAIN_CONFIG, over, [0],
                                    progress=False)
  assert code == 0 and here["n0"][0]["test_top1"] == par["n0"][0]["test_top1"]
  assert here["n0"][0]["arch"] == list(nets[0][1].ops)
  calls = []
  again, code = front.train_networks(nets, space, str(tmp_path / "par"), TRAIN_CONFIG, over, [0],
                                     progress=False, workers=2, on_done=lambda: calls.append(1))
  assert code == 0 and again == par and len(calls) == 2
  # Another architecture under a finished name: refused before any training starts (the other
  # name's report is gone, so a training would run if the check came after).
  os.remove(tmp_path / "par" / "train" / "n1" / "seed0" / "report.json")
  swapped = [("n0", nets[1][1]), nets[1]]
  with pytest.raises(UserValueError, match="train/n0/seed0 holds a training of another arch"):
    front.train_networks(swapped, space, str(tmp_path / "par"), TRAIN_CONFIG, over, [0],
                         progress=False, workers=2)
  assert not (tmp_path / "par" / "train" / "n1" / "seed0" / "report.json").exists()
  with pytest.raises(UserValueError, match="workers = 0"):
    front.train_networks(nets, space, str(tmp_path / "x"), TRAIN_CONFIG, over, [0], workers=0)


def test_a_child_training_user_error_names_the_training(tmp_path):
  space = SearchSpace(**load_config(os.path.join(REPO, "configs", "search", "tiny.py")).space.to_dict())
  nets = [(f"n{i}", a) for i, a in enumerate(sample_archs(space, 2, seed=3))]
  # Both children fail at once; whichever is seen first is named (the other may still be running).
  with pytest.raises(UserValueError, match=r"training n[01] seed 0: .*schedule.epochs"):
    front.train_networks(nets, space, str(tmp_path), os.path.join(REPO, "configs", "train",
                                                                  "fashion_mnist.py"),
                         ["--config.data.name=synthetic", "--config.schedule.epochs=-1"], [0],
                         progress=False, workers=2)


def test_measure_latencies_reads_the_median_over_timing_processes(tmp_path, monkeypatch, fmnist_space):
  # `pnas latency networks` (faked here) times every network in each of config.sessions processes
  # and writes the merge (latency/sessions.py, tested in test_latency_sessions.py); the result
  # per network is the merged median, the session medians, the calls' std and the fastest call.
  session_medians = {"a": [1.0, 1.3, 1.1], "baseline": [2.0, 2.6, 2.1]}
  calls = []

  def fake_run_pnas(*args):
    calls.append(args)
    out = args[args.index("--out") + 1]
    runs = [NetworkMeasurements(TableHeader(device="cpu: test", backend="cpu", batch=16), fmnist_space, [
        {"name": n, "ops": list(Arch.uniform(fmnist_space, "3x3_MBConv3").ops), "median": m[k],
         "mean": m[k], "var": (0.1 * (k + 1)) ** 2, "count": 10, "min": m[k] - 0.05 * (k + 1)}
        for n, m in session_medians.items()]) for k in range(3)]
    merge_networks(runs).save(out)
    return ""

  monkeypatch.setattr(front, "run_pnas", fake_run_pnas)
  out = str(tmp_path / "lat.json")
  got = front.measure_latencies([("a", "a.json"), ("baseline", "b.json")], "cfg.py", out, sessions=3)
  assert len(calls) == 1 and "--config.sessions=3" in calls[0]
  assert calls[0][-2:] == ("a=a.json", "baseline=b.json")
  assert got["a"]["value"] == pytest.approx(1.1)
  assert got["baseline"]["value"] == pytest.approx(2.1)
  assert got["a"]["sessions"] == pytest.approx([1.0, 1.3, 1.1])
  assert got["a"]["std"] == pytest.approx(0.2)  # the median of the sessions' call stds
  assert got["baseline"]["min"] == pytest.approx(1.95)
  with pytest.raises(UserValueError, match="sessions = 0"):
    front.measure_latencies([("a", "a.json")], "cfg.py", out, sessions=0)


def test_measure_with_baseline_gives_the_latency_config_the_networks_space(tmp_path, monkeypatch,
                                                                         fmnist_space):
  # A pareto run with --config.space.candidates=... saves its nets in that space; `pnas latency
  # networks` refuses nets whose space differs from its config's, so the space goes along.
  from pnas_jax.latency.cli import space_from_config

  calls = []
  monkeypatch.setattr(front, "measure_latencies", lambda paths, cfg, out, over: calls.append(over))
  latency_config = os.path.join(REPO, "configs", "latency", "fashion_mnist.py")
  wide = fmnist_space.replace(candidates=("3x3_MBConv3", "5x5_MBConv6", "7x7_MBConv6"), tail_width=64)
  (tmp_path / "archs").mkdir()
  for space in (fmnist_space, wide):
    front.measure_with_baseline([], Arch.uniform(space, "3x3_MBConv3"), space, str(tmp_path),
                                latency_config, "out.json", ["--config.sessions=1"])
  same, widened = calls
  assert same == ["--config.sessions=1"]
  assert len(widened) == 3 and widened[-1] == "--config.sessions=1"
  assert space_from_config(load_config(latency_config, widened)) == wide


def test_experiment_out_must_be_a_json_file(tmp_path):
  import argparse
  import sys

  sys.path.insert(0, os.path.join(REPO, "experiments"))
  from front_common import parse_with_overrides

  def parse(*argv):
    return parse_with_overrides(argparse.ArgumentParser(), list(argv), "quick", "results/x.json")

  args, overrides = parse("--out", str(tmp_path / "r.json"), "--config.seed=1")
  assert args.out.endswith("r.json") and overrides == ["--config.seed=1"]
  (tmp_path / "d.json").mkdir()
  for bad in (str(tmp_path), str(tmp_path / "d.json"), "results/pareto9"):
    with pytest.raises(SystemExit):
      parse("--out", bad)
