"""Smoke tests of the experiment scripts' --quick mode: they run, print the JSON and write the PNG."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from pnas_jax import front
from pnas_jax.config_loading import load_config
from pnas_jax.errors import PnasError

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_SEARCH = REPO / "configs" / "search" / "tiny.py"


def _run(script: str, out: pathlib.Path, *args: str, plot: bool = True) -> dict:
  """Runs an experiment script with --quick --json; its printed result, checked against the JSON
  file it wrote (and its .png, for a script that plots)."""
  proc = subprocess.run(
      [sys.executable, str(REPO / "experiments" / script), "--quick", "--json", "--out", str(out),
       *args],
      cwd=REPO, capture_output=True, text=True, timeout=900, check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert json.loads(out.read_text()) == result
  if plot:
    png = out.with_suffix(".png")
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  return result


def test_zoo_latency_quick(tmp_path):
  nets = ("proxyless_mobile", "mobilenet_v2")  # two of the zoo keep the test short
  r = _run("zoo_latency.py", tmp_path / "zoo.json", "--nets", *nets)
  assert {"device", "resolution", "batch", "clock", "networks"} <= r.keys()
  assert (r["resolution"], r["batch"], r["clock"]) == (64, 1, "process")
  assert [n["name"] for n in r["networks"]] == list(nets)
  for n in r["networks"]:
    assert {"name", "params", "macs_m", "latency_ms_median", "latency_ms_min", "published_top1",
            "published_latency"} <= n.keys()
    assert 0 < n["latency_ms_min"] <= n["latency_ms_median"]
    assert n["params"] > 1e6 and n["macs_m"] > 0
  # params do not depend on the resolution: ours match the published counts.
  assert r["networks"][0]["params"] == r["networks"][0]["published_params"]


def test_bench_input_pipeline_quick(tmp_path):
  # One block per stage: the supernet's compile dominates the run time.
  r = _run("bench_input_pipeline.py", tmp_path / "pipe.json", "--synthetic",
           "--set", "space.stage_depths=(1,1,1,1)")
  assert {"device", "batch", "steps", "rounds", "pipeline", "resident", "pipeline_over_resident",
          "host_batch_ms"} <= r.keys()
  assert (r["batch"], r["steps"], r["rounds"], r["dataset"]) == (32, 8, 2, "synthetic")
  for feed in ("pipeline", "resident"):
    assert {"step_ms", "steps_per_s", "images_per_s", "round_step_ms"} <= r[feed].keys()
    assert len(r[feed]["round_step_ms"]) == 2 and r[feed]["images_per_s"] > 0
  assert r["pipeline_over_resident"] > 0 and r["host_batch_ms"]["median_ms"] > 0


def test_bench_trainings_quick(tmp_path):
  r = _run("bench_trainings.py", tmp_path / "bench_trainings.json", plot=False)
  assert r["networks"] == ["3x3_MBConv6-d0", "3x3_MBConv6-d1"]
  med = r["median_s"]
  assert set(med) == {"workers_1", "workers_2", "workers_2_hugepages", "workers_2_4k_pages"}
  assert r["speedup"] == pytest.approx(med["workers_1"] / med["workers_2"])
  assert r["hugepage_speedup"] == pytest.approx(med["workers_2_4k_pages"]
                                                / med["workers_2_hugepages"])
  assert r["allocator_speedup"] == pytest.approx(med["workers_2_hugepages"] / med["workers_2"])
  assert all(len(v) == 1 and v[0] > 0 for v in r["wall_s"].values())


def test_pareto_and_supernet_ranking_tiny(tmp_path):
  # Seconds: configs/search/tiny.py (synthetic 16x16 data, MACs as the latency model, so nothing is
  # timed), 3-step trainings. The ranking reuses the sweep's warm-up as its supernet.
  r = _run("pareto.py", tmp_path / "pareto.json", "--tiny", "--seeds", "2", "--max-hand", "2",
           "--no-progress", "--workdir", str(tmp_path / "p"))
  methods = {n["method"] for n in r["networks"]}
  assert methods == {"found", "hand", "random"} and r["seeds"] == 2
  for n in r["networks"]:
    assert n["accuracy"]["n"] == 2 and n["latency"]["value"] == pytest.approx(n["predicted_latency"])
  (target,) = r["targets"]
  (hit,) = r["target_hits"]  # latency from the model here: the device target is the model's
  assert hit["target_measured"] == pytest.approx(target["target"]) and hit["found"] == "found_ratio_0.8"
  assert r["baseline"]["latency"]["value"] * hit["ratio"] == pytest.approx(target["target"])
  (rand,) = [n for n in r["networks"] if n["method"] == "random"]
  assert (1 - r["band"]) * target["target"] <= rand["latency"]["value"] <= target["target"]
  assert set(r["summary"]["methods"]) == methods
  assert all(m["hypervolume"] >= 0 for m in r["summary"]["methods"].values())
  (found,) = r["summary"]["found_vs"]
  assert found["vs_hand"] is not None and found["vs_random"][0]["name"] == rand["name"]
  assert (tmp_path / "pareto.md").read_text().startswith("# Found vs hand-designed")
  k = _run("supernet_ranking.py", tmp_path / "rank.json", "--tiny", "--n-archs", "4", "--bootstrap",
           "100", "--no-progress", "--workdir", str(tmp_path / "r"),
           "--supernet", str(tmp_path / "p" / "sweep" / "warmup"))
  assert k["n_archs"] == 4 and len({tuple(a["ops"]) for a in k["archs"]}) == 4
  t = k["kendall_tau"]
  assert -1 <= t["low"] <= t["high"] <= 1 and k["supernet"]["step"] == 6
  assert all(0 <= a["supernet_top1"] <= 100 for a in k["archs"])
  # The pareto run's own trainings ranked (no new training): every network, its mean over 2 seeds.
  k2 = _run("supernet_ranking.py", tmp_path / "rank2.json", "--tiny", "--bootstrap", "100",
            "--no-progress", "--workdir", str(tmp_path / "r2"), "--trained", str(tmp_path / "p"),
            "--supernet", str(tmp_path / "p" / "sweep" / "warmup"))
  by_name = {n["name"]: n for n in r["networks"]}
  assert {a["name"] for a in k2["archs"]} == set(by_name) and k2["seeds"] == 2
  for a in k2["archs"]:
    assert a["ops"] == by_name[a["name"]]["ops"]
    assert a["standalone_top1"]["mean"] == pytest.approx(by_name[a["name"]]["accuracy"]["mean"])
  assert not (tmp_path / "r2" / "train").exists()
  # A supernet built with other weight sharing than the config given is named, not mis-restored.
  sys.path.insert(0, str(REPO / "experiments"))
  import supernet_ranking

  warmup = str(tmp_path / "p" / "sweep" / "warmup")
  with pytest.raises(PnasError, match="model.weight_sharing: 'none' -> 'mbconv'"):
    supernet_ranking.check_same_supernet(
        load_config(str(TINY_SEARCH), ["--config.model.weight_sharing=mbconv"]), warmup)
  supernet_ranking.check_same_supernet(load_config(str(TINY_SEARCH), []), warmup)
  # A supernet saved before the key existed was built without sharing: accepted as "none" only.
  old = tmp_path / "old_warmup"
  old.mkdir()
  saved = json.loads((tmp_path / "p" / "sweep" / "warmup" / "config.json").read_text())
  del saved["model"]["weight_sharing"]
  (old / "config.json").write_text(json.dumps(saved))
  supernet_ranking.check_same_supernet(load_config(str(TINY_SEARCH), []), str(old))
  with pytest.raises(PnasError, match="model.weight_sharing: None -> 'mbconv'"):
    supernet_ranking.check_same_supernet(
        load_config(str(TINY_SEARCH), ["--config.model.weight_sharing=mbconv"]), str(old))
  (band,) = k2["bands"]  # found_ratio_0.8 and the random net of its band
  assert band["target"] == "ratio_0.8" and band["n"] == 2
  assert band["supernet_pick"] in {"found_ratio_0.8", rand["name"]}
  assert band["found_standalone_top1"] == pytest.approx(by_name["found_ratio_0.8"]["accuracy"]["mean"])
  # The supernet's pick among 2 new in-band draws, retrained with the run's budget and seeds.
  pk = _run("supernet_pick.py", tmp_path / "pick.json", "--pareto", str(tmp_path / "pareto.json"),
            "--candidates", "2", "--no-progress")  # the tiny band holds 2 new ones
  (row,) = pk["targets"]
  assert row["pick"] == "pick_ratio_0.8" and len(row["candidates"]) == 2
  assert row["supernet_top1"] == max(c["supernet_top1"] for c in row["candidates"])
  assert row["ops"] in [c["ops"] for c in row["candidates"]]
  assert row["ops"] not in [n["ops"] for n in r["networks"]]
  assert (1 - r["band"]) * target["target"] <= row["predicted_latency"] <= target["target"]
  assert row["standalone_top1"]["n"] == 2
  assert row["found_standalone_top1"] == pytest.approx(by_name["found_ratio_0.8"]["accuracy"]["mean"])


def test_band_rankings_per_target():
  sys.path.insert(0, str(REPO / "experiments"))
  import supernet_ranking

  def net(name, sup, alone):
    return {"name": name, "supernet_top1": sup, "standalone_top1": {"mean": alone}}

  archs = [net("found_r_0.4", 80.0, 89.0), net("random_r_0.4_1", 82.0, 90.0),
           net("random_r_0.4_2", 81.0, 89.5), net("random_r_0.45_1", 90.0, 95.0),  # another band
           net("found_r_0.45", 83.0, 91.0), net("hand_x", 99.0, 99.0)]
  b04, b045 = supernet_ranking.band_rankings(archs)
  # Band r_0.4: the supernet's order (82 > 81 > 80) is the stand-alone one: tau 1; it picks random 1.
  assert b04["target"] == "r_0.4" and b04["n"] == 3 and b04["kendall_tau"] == pytest.approx(1.0)
  assert b04["supernet_pick"] == "random_r_0.4_1" and b04["pick_minus_found"] == pytest.approx(1.0)
  assert b04["random_mean_standalone_top1"] == pytest.approx(89.75)
  assert b045["n"] == 2 and b045["supernet_pick"] == "random_r_0.45_1"
  archs[1]["standalone_top1"]["mean"] = 88.0  # now discordant with the supernet on 2 of 3 pairs
  assert supernet_ranking.band_rankings(archs)[0]["kendall_tau"] == pytest.approx(-1 / 3)


def _pareto_result(base: float, nets: list[tuple[str, str, float, list[float]]], epochs: int = 3):
  return {"train_overrides": [f"--config.schedule.epochs={epochs}"], "latency_protocol": "p",
          "baseline": {"latency": {"value": base}},
          "networks": [{"name": n, "method": m, "ops": [n], "latency": {"value": lat},
                        "accuracy": {"mean": sum(v) / len(v), "n": len(v), "values": v,
                                     "std": float(np.std(v, ddof=1))}}
                       for n, m, lat, v in nets]}


def test_pareto_ceiling_pools_runs_by_architecture_and_rebases_latency(tmp_path):
  sys.path.insert(0, str(REPO / "experiments"))
  import pareto_ceiling

  hand = [("A", "hand", 0.8, [87.0, 87.2, 86.8]), ("B", "hand", 1.2, [88.0, 88.1, 87.9])]
  run1 = _pareto_result(2.0, [*hand, ("F", "found", 1.0, [88.0, 88.2, 87.8])])
  # F again, timed slower against a slower baseline; R only here, below the hand front's start.
  run2 = _pareto_result(2.5, [("F", "found", 1.3, [88.0, 88.2, 87.8]), ("R", "random", 0.5, [86.0] * 3)])
  pooled = pareto_ceiling.pool_networks([run1, run2])
  assert [n["name"] for n in pooled] == ["R", "A", "F", "B"]
  f = pooled[2]
  assert f["latency"]["value"] == pytest.approx((1.0 / 2.0 + 1.3 / 2.5) / 2) and f["latency"]["runs"] == 2
  out = pareto_ceiling.ceiling(pooled, [0.0, 0.45, 0.7])
  (row,) = out["networks"]  # R lies below the fastest hand net: no front to compare with
  w = (0.51 - 0.4) / (0.6 - 0.4)
  hand_at = (1 - w) * 87.0 + w * 88.0
  assert row["name"] == "F" and row["hand_front"] == pytest.approx(hand_at)
  assert row["diff"] == pytest.approx(88.0 - hand_at)
  pooled_std = ((0.2 ** 2 + ((1 - w) ** 2 * 0.2 ** 2 + w ** 2 * 0.1 ** 2)) / 2) ** 0.5
  assert row["effect"] == pytest.approx((88.0 - hand_at) / pooled_std)
  assert out["bins"][0]["best"] is None and out["bins"][1]["best"]["name"] == "F"
  assert out["bins"][1]["above_by_a_seed_std"] == 1
  with pytest.raises(SystemExit, match="different budgets"):
    pareto_ceiling.pool_networks([run1, _pareto_result(2.0, hand, epochs=6)])
  paths = [tmp_path / "r1.json", tmp_path / "r2.json"]
  for path, run in zip(paths, (run1, run2), strict=True):
    path.write_text(json.dumps(run))
  assert pareto_ceiling.main([*map(str, paths), "--bins", "0,0.45,0.7", "--out",
                              str(tmp_path / "c.json")]) == 0
  saved = json.loads((tmp_path / "c.json").read_text())
  assert saved["bins"] == json.loads(json.dumps(out["bins"]))
  assert saved["against_random"] == []  # no network of run1/run2 names a target
  assert saved["power"] is None
  assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_pareto_ceiling_against_random_per_band():
  sys.path.insert(0, str(REPO / "experiments"))
  import pareto_ceiling

  run = _pareto_result(2.0, [("H", "hand", 1.0, [87.0, 87.2]), ("F", "found", 1.0, [88.6, 88.4]),
                             ("R1", "random", 1.0, [88.0, 88.2]), ("R2", "random", 1.0, [87.5, 87.9]),
                             ("G", "found", 1.5, [89.0, 89.2])])
  for n, t in zip(run["networks"], (None, "t1", "t1", "t1", "t2"), strict=True):
    n["target"] = t
  t1, t2 = pareto_ceiling.against_random(pareto_ceiling.pool_networks([run]), k=8)
  assert t1["target"] == "t1" and (t1["networks"], t1["random_networks"]) == (3, 2)
  assert t1["random_mean"] == pytest.approx((88.1 + 87.7) / 2) and t1["best"]["name"] == "F"
  assert t1["best_minus_random_mean"] == pytest.approx(88.5 - 87.9)
  assert t1["effect"] == front.architecture_effect([[88.6, 88.4], [88.0, 88.2], [87.5, 87.9]], k=8)
  assert t2["random_mean"] is None and "effect" not in t2  # one network: nothing to decompose
  assert (t1["mean"], t1["ratio"]) == pytest.approx((np.mean([88.6, 88.4, 88.0, 88.2, 87.5, 87.9]), 0.5))
  pooled = pareto_ceiling.pool_networks([run])
  pw = pareto_ceiling.power(pooled, [t1, t2], k=8, random_draws=2, trials=50)
  banded = [n for n in pooled if n["method"] != "hand"]
  assert pw["pooled_effect"] == front.architecture_effect(
      [n["accuracy"]["values"] for n in banded], k=8, bands=[n["target"] for n in banded])
  ref = front.default_reference(pooled)
  assert [r["score_corr"] for r in pw["by_score_corr"]] == [0.0, 0.3, 0.5, 1.0]
  assert pw["by_score_corr"][2] == front.selection_power(
      [t1["mean"], t2["mean"]], [0.5, 0.75], (ref["latency"], ref["accuracy"]),
      pw["pooled_effect"]["sigma_arch"], pw["pooled_effect"]["sigma_seed"], score_corr=0.5, k=8,
      seeds=2, random_draws=2, trials=50)
  e = pw["pooled_effect"]
  assert pw["found_gain"] == front.search_gain(  # G's band has no random net: F alone counts
      [("t1", [88.6, 88.4])], [("t1", [88.0, 88.2]), ("t1", [87.5, 87.9])], e["sigma_arch"],
      e["sigma_seed"], 8)
  assert pw["found_gain"]["found"] == 1
  assert pareto_ceiling.power([n for n in pooled if n["name"] in ("H", "G")], [t2], 8, 1, 50) is None


def test_bench_host_malloc_quick(tmp_path):
  r = _run("bench_host_malloc.py", tmp_path / "bench_host_malloc.json", plot=False)
  assert set(r["table"]) == {"demo_baseline"}  # --quick: the demo's net only
  for net, by in r["table"].items():
    assert set(by) == {"off", "hugepages", "auto"}
    assert all(v["median_s"] > 0 and v["kernel_cpu_per_step_s"] >= 0 for v in by.values())
    assert by["off"]["ld_preload"] is None and by["off"]["glibc_tunables"] is None
    # Each child ran with the allocator its setting chose, not the one this process inherited.
    if r["tcmalloc"]:
      assert by["auto"]["ld_preload"] == r["tcmalloc"]
    assert "tcmalloc" not in (by["hugepages"]["ld_preload"] or "")
    assert r["speedup_auto_over_hugepages"][net] == pytest.approx(
        by["hugepages"]["median_s"] / by["auto"]["median_s"])


def test_bench_batch_norm_quick(tmp_path):
  r = _run("bench_batch_norm.py", tmp_path / "bn.json")
  impls = ["xla", "native"] if jax.default_backend() == "cpu" else ["xla"]
  assert r["impls"] == impls
  (op,) = r["op"].values()
  for impl in impls:
    assert op[f"{impl}_fwd_ms"] > 0 and op[f"{impl}_fwd_bwd_ms"] > 0
  assert set(r["steps"]) == {"proxyless_mobile", "demo_baseline"}
  for row in r["steps"].values():
    assert all(row[f"{impl}_s"] > 0 for impl in impls)
    if "native" in impls:
      assert row["native_speedup"] == pytest.approx(row["xla_s"] / row["native_s"])


def test_bench_vs_reference_quick(tmp_path):
  # Tiny spaces: every step compiled cold and warm, the new-process warm starts (traced, and through
  # the trace cache: a miss here first, then a hit on both caches in the new process), the rounds.
  r = _run("bench_vs_reference.py", tmp_path / "bvr.json")
  im = r["imagenet"]
  assert set(im["compile"]) == {"child", "weight", "two", "full"}
  for times in im["compile"].values():
    assert times["cold_cache_hits"] == 0 and times["warm_cache_hits"] == 1
  assert im["weight_warm_new_process"]["cache_hits"] == 1
  tc = im["weight_trace_cache"]
  assert tc["first"]["trace_cache_hit"] is False and tc["first"]["cache_hits"] == 0
  assert tc["warm_new_process"]["trace_cache_hit"] is True
  assert tc["warm_new_process"]["cache_hits"] == 1 and tc["warm_new_process"]["s"] > 0
  for name in ("child", "weight", "two", "full", "proxyless_mobile", "demo_baseline"):
    t = r["step_time"][name]
    assert t["median_s"] > 0 and t["first_call_median_s"] > 0 and t["samples"] >= 1
  assert set(r["goals_met"]) >= {"weight_step_s", "two_step_s", "warm_compile_weight_new_process_s",
                                 "warm_compile_weight_trace_cached_s"}
