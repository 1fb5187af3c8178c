"""experiments/paper_tables.py and experiments/accelerator_check.py on tiny settings."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))

import paper_tables  # noqa: E402  (an experiment script, importable from its directory)


def _run(script: str, out: pathlib.Path, *args: str) -> dict:
  proc = subprocess.run([sys.executable, str(REPO / "experiments" / script), "--json", "--out", str(out),
                         *args], cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
                        env=dict(os.environ, PYTHONPATH=str(REPO)))  # this checkout's pnas_jax
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert json.loads(out.read_text()) == result
  return result


def test_zoo_table_matches_published_counts():
  rows = paper_tables.zoo_table()
  assert [r["name"] for r in rows] == list(paper_tables.ZOO)
  assert all(r["params_match"] and r["macs_match"] for r in rows)


def test_cross_hardware_measured_and_fastest():
  nets = ("proxyless_gpu", "proxyless_mobile")
  measured = paper_tables.measure_cross_hardware(32, 2, repeats=1, warmup=1, clock="wall", nets=nets)
  assert set(measured["networks"]) == set(nets)
  for rec in measured["networks"].values():
    assert rec["latency_ms"] > 0 and rec["throughput_ms"] > 0 and rec["images_per_s"] > 0
  assert measured["platform"] == "cpu" and measured["clock"] == "wall"
  table = paper_tables.cross_hardware_table([measured])
  assert list(table["columns"]) == ["cpu_latency_ms", "cpu_throughput_ms", "paper_gpu_ms", "paper_cpu_ms",
                                    "paper_mobile_ms"]
  # The paper's columns: each specialised net is fastest on its own hardware.
  fastest = table["fastest"]
  assert fastest["paper_gpu_ms"]["proxyless"] == "proxyless_gpu"
  assert fastest["paper_mobile_ms"]["proxyless"] == "proxyless_mobile"
  assert fastest["cpu_latency_ms"]["all"] in nets
  md = paper_tables.markdown({"zoo": paper_tables.zoo_table(), "measured": [measured],
                              "cross_hardware": table})
  assert "| this CPU, batch 1 | this CPU, batch 2 | paper, V100 GPU |" in md


def test_mobile_predictions(reference_dir):
  from pnas_jax.latency.table import load_table

  rows = paper_tables.mobile_predictions(load_table(reference_dir / "mobile_trim.yaml"))
  by = {(r["architecture"], r["widths"]): r for r in rows}
  assert by[("every block 3x3_MBConv3", "search space")]["table_ms"] == pytest.approx(76.048, abs=1e-3)
  assert by[("proxyless_mobile", "search space")]["missing"] == 0
  # The published proxyless_mobile's first stage is 32 wide; the table only has the space's 24.
  assert by[("proxyless_mobile", "published")]["table_ms"] is None
  assert by[("proxyless_mobile", "published")]["missing"] == 3


def test_paper_tables_script_without_measurement(tmp_path, reference_dir):
  r = _run("paper_tables.py", tmp_path / "t.json", "--no-measure", "--mobile-table",
           str(reference_dir / "mobile_trim.yaml"))
  assert {"zoo", "mobile_prediction", "mobile_table", "wall_s"} <= r.keys()
  md = (tmp_path / "t.md").read_text()
  assert "### (a) The zoo" in md and "### (c) Pixel-1" in md and "| proxyless_gpu |" in md


def test_accelerator_check_tiny(tmp_path):
  r = _run("accelerator_check.py", tmp_path / "acc.json", "--tiny")
  assert r["tiny"] is True and r["batch"] == 2 and r["resolution"] == 16
  assert {"device", "backend", "jax_version", "n_blocks", "n_candidates", "steps", "projection",
          "wall_s"} <= r.keys()
  assert set(r["steps"]) == {"weight", "two", "full", "child_proxyless_gpu"}
  for step in r["steps"].values():
    assert {"compile_s", "temp_mib", "argument_mib", "output_mib", "generated_code_mib", "step_ms",
            "images_per_s", "peak_mib"} <= step.keys()
    assert step["step_ms"] > 0 and step["compile_s"] > 0
  proj = r["projection"]
  assert proj["weight_steps"] == int((40 + 120) * ((1_281_167 - 50_000) // 2))
  assert set(proj["gpu_hours"]) == {"two", "full"} and proj["paper_search_gpu_hours"] == 200.0
