"""Reference net.config import/export: round trips of the published nets and clear input errors."""

from __future__ import annotations

import copy
import json

import pytest
from conftest import REFERENCE_NETS

from pnas_jax.models import zoo
from pnas_jax.search_space import (
  SearchSpaceError,
  from_net_config,
  load_arch,
  load_net_config,
  save_arch,
  save_net_config,
  to_net_config,
)


@pytest.mark.parametrize("name", REFERENCE_NETS)
def test_reference_round_trip(reference_dir, tmp_path, name):
  path = reference_dir / f"{name}.config"
  original = json.loads(path.read_text())
  space, arch = load_net_config(path)
  # Same network as our zoo definition (ops, widths, strides, shortcuts).
  entry = zoo.get(name)
  assert (space, arch) == (entry.space, entry.arch)
  exported = to_net_config(space, arch, name=original["name"])
  assert exported == original
  # And through files: export, re-import, and via our own arch.json format.
  save_net_config(tmp_path / "net.config", space, arch)
  assert load_arch(tmp_path / "net.config") == (space, arch)
  save_arch(tmp_path / "arch.json", space, arch)
  assert load_arch(tmp_path / "arch.json") == (space, arch)


def _mobile():
  return to_net_config(zoo.get("proxyless_mobile").space, zoo.get("proxyless_mobile").arch)


def _write(tmp_path, d, name="bad.config"):
  p = tmp_path / name
  p.write_text(json.dumps(d) if not isinstance(d, str) else d)
  return p


def test_bad_json_names_file_and_position(tmp_path):
  p = _write(tmp_path, '{"blocks": [1, 2,,]}')
  msg = r"bad.config: not valid JSON \(line 1, column 18: Expecting value"
  with pytest.raises(SearchSpaceError, match=msg):
    load_arch(p)


def test_unknown_layer_names_block_and_value(tmp_path):
  d = _mobile()
  d["blocks"][5]["mobile_inverted_conv"]["name"] = "SepConvLayer"
  msg = r"bad.config: blocks\[5\]: unknown layer 'SepConvLayer'"
  with pytest.raises(SearchSpaceError, match=msg):
    load_arch(_write(tmp_path, d))


def test_bad_kernel_names_block(tmp_path):
  d = _mobile()
  d["blocks"][2]["mobile_inverted_conv"]["kernel_size"] = 4
  with pytest.raises(SearchSpaceError, match=r"blocks\[2\]: bad MBConv op '4x4_MBConv3'"):
    load_arch(_write(tmp_path, d))


def test_width_inconsistency_names_block_and_values(tmp_path):
  d = _mobile()
  d["blocks"][7]["mobile_inverted_conv"]["in_channels"] = 48
  with pytest.raises(SearchSpaceError, match=r"blocks\[7\]: in_channels = 48 but the previous block "
                                             r"outputs 40 channels"):
    load_arch(_write(tmp_path, d))


def test_stride_errors(tmp_path):
  d = _mobile()
  d["blocks"][1]["mobile_inverted_conv"]["stride"] = 3
  with pytest.raises(SearchSpaceError, match=r"blocks\[1\]: stride = 3, must be 1 or 2"):
    load_arch(_write(tmp_path, d))
  d = _mobile()
  d["blocks"][2]["mobile_inverted_conv"]["stride"] = 2  # stride 2 but shortcut kept
  with pytest.raises(SearchSpaceError, match=r"blocks\[2\]: shortcut is set but stride=2"):
    load_arch(_write(tmp_path, d))


def test_zero_without_shortcut(tmp_path):
  d = _mobile()
  d["blocks"][3]["shortcut"] = None
  with pytest.raises(SearchSpaceError, match=r"blocks\[3\]: ZeroLayer \(Zero\) needs an identity"):
    load_arch(_write(tmp_path, d))


def test_missing_keys_and_tail_mismatch(tmp_path):
  d = _mobile()
  del d["classifier"]
  with pytest.raises(SearchSpaceError, match="bad.config: missing key 'classifier'"):
    load_arch(_write(tmp_path, d))
  d = _mobile()
  d["feature_mix_layer"]["in_channels"] = 300
  with pytest.raises(SearchSpaceError, match="feature_mix_layer: in_channels = 300 but the last"):
    from_net_config(d, source="x.config")


def test_arch_file_wrong_block_count_and_unknown_op(tmp_path):
  space, arch = zoo.get("proxyless_mobile").space, zoo.get("proxyless_mobile").arch
  save_arch(tmp_path / "a.json", space, arch)
  d = json.loads((tmp_path / "a.json").read_text())
  short = copy.deepcopy(d)
  short["ops"] = short["ops"][:-1]
  with pytest.raises(SearchSpaceError, match=r"a2.json: architecture has 20 blocks but the search "
                                             r"space has 21"):
    load_arch(_write(tmp_path, short, "a2.json"))
  d["ops"][6] = "11x11_Conv"
  with pytest.raises(SearchSpaceError, match=r"a3.json: block 6: unknown op '11x11_Conv'"):
    load_arch(_write(tmp_path, d, "a3.json"))
  d["format"] = "something/else"
  with pytest.raises(SearchSpaceError, match="'format' is 'something/else'"):
    load_arch(_write(tmp_path, d, "a4.json"))
