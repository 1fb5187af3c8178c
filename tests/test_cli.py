"""The `pnas` command line: zoo table/JSON, arch show, and error exits."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

from pnas_jax import cli


def test_zoo_json_counts(capsys):
  assert cli.main(["zoo", "--json", "--no-latency"]) == 0
  out = json.loads(capsys.readouterr().out)
  rows = {r["name"]: r for r in out["networks"]}
  assert set(rows) == {"proxyless_mobile", "proxyless_mobile_14", "proxyless_gpu", "proxyless_cpu",
                       "mobilenet_v2"}
  for r in rows.values():
    assert r["params"] == r["published_params"]
    assert r["macs_m"] == r["published_macs_m"]
  assert out["device"].startswith("cpu")


def test_zoo_measures_latency(capsys):
  assert cli.main(["zoo", "proxyless_mobile", "--json", "--resolution", "64", "--repeats", "3"]) == 0
  (row,) = json.loads(capsys.readouterr().out)["networks"]
  assert row["latency_ms"] > 0 and row["latency_batch"] == 1 and row["resolution"] == 64
  assert cli.main(["zoo", "proxyless_gpu", "--resolution", "64", "--repeats", "2"]) == 0
  text = capsys.readouterr().out
  assert "proxyless_gpu" in text and "7,119,848" in text and "median of 2 runs" in text


def test_arch_show_reference_file(reference_dir, capsys):
  assert cli.main(["arch", "show", str(reference_dir / "proxyless_cpu.config"), "--json"]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["params"] == 4_361_648 and out["macs_m"] == 439.2 and len(out["ops"]) == 21
  assert cli.main(["arch", "show", "proxyless_mobile"]) == 0
  text = capsys.readouterr().out
  assert "7x7_MBConv6" in text and "4,080,512" in text


def test_arch_show_errors(tmp_path, capsys):
  assert cli.main(["arch", "show", "no_such_net"]) == 2
  assert "neither a zoo network" in capsys.readouterr().err
  bad = tmp_path / "bad.json"
  bad.write_text("{")
  assert cli.main(["arch", "show", str(bad)]) == 2
  assert "bad.json: not valid JSON" in capsys.readouterr().err


def test_console_script_installed():
  # The environment running the tests must have the `pnas` entry point (pip install -e .).
  script = pathlib.Path(sys.executable).parent / "pnas"
  assert script.exists(), f"{script} missing: install the package with pip install -e '.[test]'"
  out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True).stdout
  assert "zoo" in out and "arch" in out
