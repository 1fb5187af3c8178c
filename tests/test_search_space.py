"""SearchSpace / Arch: widths, block layout, validation errors, JSON round trips."""

from __future__ import annotations

import json

import pytest

from pnas_jax.search_space import (
    DEFAULT_CANDIDATES,
    Arch,
    SearchSpace,
    SearchSpaceError,
    load_arch,
    make_divisible,
    save_arch,
)


@pytest.mark.parametrize(
    "value,expected",
    [(32 * 1.35, 40), (16 * 1.35, 24), (96 * 1.35, 128), (1280 * 1.35, 1728), (12, 16), (20, 24),
     (10, 16), (3, 8), (320 * 1.4, 448)],
)
def test_make_divisible(value, expected):
  # 10 -> 8 would drop more than 10% of the channels, so the rule adds 8: 16.
  assert make_divisible(value) == expected


def test_default_space_layout():
  s = SearchSpace()
  blocks = s.blocks
  assert len(blocks) == s.n_blocks == 21
  assert [b.stride for b in blocks if b.stride == 2] == [2, 2, 2, 2]
  assert [b.out_channels for b in blocks][::4] == [24, 40, 80, 96, 192, 320]
  shortcut = [b.index for b in blocks if b.has_shortcut]
  # Every stage's first block changes width or stride; stage 6 has a single block.
  assert shortcut == [1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15, 17, 18, 19]
  for b in blocks:
    expected = DEFAULT_CANDIDATES + (("Zero",) if b.has_shortcut else ())
    assert b.candidates == expected
  assert s.stem_size == 112 and s.final_size == 7
  assert [b.in_size for b in blocks][::4] == [112, 56, 28, 14, 14, 7]


def test_width_multiplier_reproduces_gpu_widths():
  # proxyless_gpu was searched with width multiplier 1.35 on the default space.
  s = SearchSpace(width_mult=1.35)
  assert (s.stem_channels, s.first_block_channels, s.tail_channels) == (40, 24, 1728)
  assert [s.scale(w) for w in s.stage_widths] == [32, 56, 112, 128, 256, 432]
  # The tail only grows.
  assert SearchSpace(width_mult=0.5).tail_channels == 1280


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"stage_depths": (4, 4)}, "stage_depths has 2 entries but stage_widths has 6"),
        ({"stage_strides": (2, 2, 3, 1, 2, 1)}, r"stage_strides\[2\] = 3: must be 1 or 2"),
        ({"stage_widths": (24, 0, 80, 96, 192, 320)}, r"stage_widths\[1\] = 0"),
        ({"candidates": ("3x3_MBConv3", "4x4_MBConv3")}, r"candidates\[1\].*4x4_MBConv3"),
        ({"candidates": ("3x3_MBConv3", "Conv9")}, r"unknown op 'Conv9'; valid ops: .*Identity"),
        ({"candidates": ("3x3_MBConv3", "3x3_MBConv3")}, "duplicates"),
        ({"candidates": ("Zero",)}, "has no valid candidate"),
        ({"resolution": 0}, "resolution = 0"),
        ({"width_mult": -1.0}, "width_mult"),
        ({"first_block_op": "Zero"}, "cannot be skipped"),
    ],
)
def test_space_validation_errors(kw, match):
  with pytest.raises(SearchSpaceError, match=match):
    SearchSpace(**kw)


def test_space_from_dict_rejects_unknown_keys():
  d = SearchSpace().to_dict()
  d["stage_width"] = d.pop("stage_widths")
  with pytest.raises(SearchSpaceError, match=r"spec.json: unknown search-space key\(s\) \['stage_width'\]"):
    SearchSpace.from_dict(d, source="spec.json")


def test_space_is_hashable_and_json_round_trips():
  s = SearchSpace(width_mult=0.75, n_classes=10, resolution=64)
  again = SearchSpace.from_dict(json.loads(json.dumps(s.to_dict())))
  assert again == s and hash(again) == hash(s)


def test_arch_validation():
  s = SearchSpace()
  with pytest.raises(SearchSpaceError, match=r"block 3: unknown op 'Nope'"):
    Arch(("3x3_MBConv3",) * 3 + ("Nope",))
  with pytest.raises(SearchSpaceError, match="20 blocks but the search space has 21"):
    s.check_arch(Arch(("3x3_MBConv3",) * 20))
  ops = ["3x3_MBConv3"] * 21
  ops[4] = "Zero"  # block 4 is the first block of stage 2 (stride 2): no shortcut.
  with pytest.raises(SearchSpaceError, match=r"arch.json: block 4: op 'Zero' needs an identity"):
    s.check_arch(Arch(ops), source="arch.json")
  ops[4] = "9x9_MBConv2"  # registered by pattern but not a candidate of the space.
  s.check_arch(Arch(ops))
  with pytest.raises(SearchSpaceError, match="block 4: op '9x9_MBConv2' is not a candidate"):
    s.check_arch(Arch(ops), strict=True)


def test_arch_uniform_keeps_zero_off_stride_blocks():
  s = SearchSpace()
  a = Arch.uniform(s, "Zero")
  assert [op == "Zero" for op in a.ops] == [b.has_shortcut for b in s.blocks]
  s.check_arch(a, strict=True)


def test_arch_file_round_trip(tmp_path):
  s = SearchSpace(n_classes=10, resolution=32)
  a = Arch.uniform(s, "Zero")
  path = tmp_path / "arch.json"
  save_arch(path, s, a, name="mine", meta={"note": 1})
  assert load_arch(path) == (s, a)
  d = json.loads(path.read_text())
  assert d["format"] == "pnas_jax.arch/1" and d["meta"] == {"note": 1}
