"""Latency tables: keys, the reference Pixel 1 YAML (76.048 ms check), our JSON, header checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from latency_helpers import synthetic_table, tiny_space

from pnas_jax import cli
from pnas_jax.latency import expected
from pnas_jax.latency.predictor import load_latency_model
from pnas_jax.latency.table import (
    LatencyTable,
    LatencyTableError,
    TableHeader,
    block_key,
    check_header,
    cost_table,
    current_header,
    load_table,
    parse_key,
    space_keys,
)
from pnas_jax.search_space import Arch, SearchSpace


def test_block_key_matches_reference_naming():
  assert block_key("5x5_MBConv6", 56, 24, 28, 40, 2, False) == (
      "expanded_conv-input:56x56x24-output:28x28x40-expand:6-kernel:5-stride:2-idskip:0"
  )
  assert block_key("Zero", 8, 8, 8, 8, 1, True) is None
  assert parse_key("expanded_conv-input:56x56x24-output:28x28x40-expand:6-kernel:5-stride:2"
                   "-idskip:1") == {"kind": "expanded_conv", "input": (56, 56, 24),
                                    "output": (28, 28, 40), "expand": 6, "kernel": 5,
                                    "stride": 2, "idskip": 1}
  assert parse_key("Logits-input:7x7x1280-output:1000")["output"] == (1000,)
  with pytest.raises(LatencyTableError, match="malformed"):
    parse_key("Conv-input:axb")


def test_default_space_keys():
  keys = space_keys(SearchSpace())
  assert keys.fixed == (
      "Conv-input:224x224x3-output:112x112x32",
      "expanded_conv-input:112x112x32-output:112x112x16-expand:1-kernel:3-stride:1-idskip:0",
      "Conv_1-input:7x7x320-output:7x7x1280",
      "Logits-input:7x7x1280-output:1000",
  )
  # Block 1 (stage 0, second block) has an identity shortcut; Zero has no key.
  assert keys.blocks[1][0].endswith("stride:1-idskip:1") and keys.blocks[1][-1] is None


def test_reference_table_all_3x3_mbconv3_is_76_048_ms(reference_dir):
  table = load_table(reference_dir / "mobile_trim.yaml")
  assert table.header.statistic == "mean" and len(table) == 72
  space = SearchSpace()
  costs = cost_table(table, space)
  arch = Arch.uniform(space, "3x3_MBConv3")
  assert costs.of_arch(arch) == pytest.approx(76.048, abs=5e-4)
  probs = expected.one_hot_probs(space, arch)
  assert float(expected.expected_cost(costs, probs)) == pytest.approx(76.048, abs=1e-3)
  # The fixed first block (expand 1) is in the table, and Zero costs nothing.
  assert costs.fixed == pytest.approx(4.0838 + 3.0886 + 0.3096 + table.lookup(
      space_keys(space).fixed[1]), abs=1e-3)
  zero = Arch.uniform(space, "Zero")
  assert costs.of_arch(zero) < costs.of_arch(arch)


def test_cli_expected_reference_table(reference_dir, capsys):
  yaml_path = str(reference_dir / "mobile_trim.yaml")
  assert cli.main(["latency", "expected", "--table", yaml_path, "--all", "3x3_MBConv3"]) == 0
  assert capsys.readouterr().out.startswith("76.048 ms")
  assert cli.main(["latency", "expected", "--table", yaml_path, "--uniform", "--json"]) == 0
  out = json.loads(capsys.readouterr().out)
  costs = cost_table(load_table(yaml_path), SearchSpace())
  mean = costs.fixed + sum(np.mean(c) for c in costs.per_block)
  assert out["expected_latency_ms"] == pytest.approx(mean, rel=1e-5)


def test_missing_key_names_the_key_and_nearest_present(reference_dir):
  table = load_table(reference_dir / "mobile_trim.yaml")
  with pytest.raises(LatencyTableError) as e:
    cost_table(table, SearchSpace(resolution=192))
  msg = str(e.value)
  assert "'Conv-input:192x192x3-output:96x96x32'" in msg
  assert "Conv-input:224x224x3-output:112x112x32" in msg  # nearest present
  with pytest.raises(LatencyTableError, match=r"no entry 'Logits-input:7x7x1280-output:10'"):
    cost_table(table, SearchSpace(n_classes=10))
  with pytest.raises(LatencyTableError, match="nearest keys present"):
    table.lookup("expanded_conv-input:56x56x24-output:28x28x40-expand:4-kernel:5-stride:2-idskip:0")


def test_json_round_trip_and_atomic_save(tmp_path):
  space = tiny_space()
  table = synthetic_table(space)
  path = tmp_path / "t.json"
  table.save(path)
  assert [p.name for p in tmp_path.iterdir()] == ["t.json"]
  again = load_table(path)
  assert again.header == table.header and again.entries == table.entries
  c1, c2 = cost_table(table, space), cost_table(again, space)
  assert c1 == c2
  # Uses the median where measured.
  key = space_keys(space).fixed[0]
  assert again.lookup(key) == table.entries[key].median


def test_bad_files(tmp_path):
  p = tmp_path / "x.json"
  p.write_text(json.dumps({"format": "something/else"}))
  with pytest.raises(LatencyTableError, match="format"):
    load_table(p)
  with pytest.raises(LatencyTableError, match="no such latency table"):
    load_table(tmp_path / "absent.json")
  p.write_text(json.dumps({"format": "pnas_jax.latency_table/1", "header": {"device": "d"},
                           "entries": {}}))
  with pytest.raises(LatencyTableError, match="backend"):
    load_table(p)


def test_check_header_names_the_mismatch():
  h = TableHeader(device="Pixel 1", backend="reference", batch=1)
  check_header(h, device="pixel", batch=1)
  with pytest.raises(LatencyTableError, match=r"device is 'Pixel 1', the search asks for 'H100'"):
    check_header(h, device="H100")
  with pytest.raises(LatencyTableError, match="batch is 1, the search asks for 8"):
    check_header(h, batch=8)
  with pytest.raises(LatencyTableError, match="backend"):
    check_header(h, device="local")
  check_header(current_header(1, "auto", 1, 1), device="local", batch=1)


def test_table_from_another_device_or_shape_fails_before_search(tmp_path):
  space = tiny_space()
  table = synthetic_table(space, device="cpu: other machine")
  table.save(tmp_path / "t.json")
  model = load_latency_model(tmp_path / "t.json", space, device="cpu: other", batch=1)
  assert model.unit == "ms"
  with pytest.raises(LatencyTableError, match="device is 'cpu: other machine'"):
    load_latency_model(tmp_path / "t.json", space, device="local")
  with pytest.raises(LatencyTableError, match="no entry"):
    load_latency_model(tmp_path / "t.json", tiny_space(resolution=32))


def test_empty_table_error():
  t = LatencyTable(TableHeader(device="d", backend="cpu"))
  with pytest.raises(LatencyTableError, match="empty"):
    t.lookup("Conv-input:1x1x1-output:1x1x1")


@pytest.mark.parametrize("field, value, shown", [
    ("mean", float("nan"), "mean = nan ms"), ("median", -3.613, "median = -3.613 ms"),
    ("mean", float("inf"), "mean = inf ms"), ("median", 0.0, "median = 0 ms"),
    ("var", -1.0, "var = -1 ms^2"), ("mean", "fast", "mean = 'fast'"),
])
def test_bad_latency_in_table_json_names_file_and_key(tmp_path, capsys, field, value, shown):
  space = tiny_space()
  path = tmp_path / "t.json"
  synthetic_table(space).save(path)
  d = json.loads(path.read_text())
  key = space_keys(space).fixed[0]
  d["entries"][key][field] = value
  path.write_text(json.dumps(d))  # json writes NaN / Infinity as Python reads them back
  with pytest.raises(LatencyTableError) as e:
    load_table(path)
  msg = str(e.value)
  assert str(path) in msg and repr(key) in msg and shown in msg and "Remeasure" in msg
  # `pnas latency expected` reports it (exit 2) instead of printing "nan ms".
  assert cli.main(["latency", "expected", "--table", str(path), "--uniform"]) == 2
  assert shown in capsys.readouterr().err


@pytest.mark.parametrize("value", [".nan", "-2.5", ".inf"])
def test_bad_latency_in_reference_yaml(tmp_path, value):
  path = tmp_path / "table.yaml"
  path.write_text("Logits-input:7x7x1280-output:1000:\n  count: 10\n  mean: 0.3\n  var: 0.01\n"
                  f"Conv-input:224x224x3-output:112x112x32:\n  count: 10\n  mean: {value}\n"
                  "  var: 0.01\n")
  with pytest.raises(LatencyTableError, match=r"table.yaml: entry 'Conv-input:224x224x3-output:"
                     r"112x112x32': mean = .*must be a finite latency > 0"):
    load_table(path)


def test_table_that_is_a_directory_or_binary(tmp_path):
  with pytest.raises(LatencyTableError, match="is a directory"):
    load_table(tmp_path)
  (tmp_path / "t.yaml").write_bytes(b"\xff\xfe\x00binary")
  with pytest.raises(LatencyTableError, match=r"t.yaml: not a text latency table"):
    load_table(tmp_path / "t.yaml")
