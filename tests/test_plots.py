"""pnas_jax.plots: every plot writes a real, non-blank PNG on realistic search outputs."""

from __future__ import annotations

import math

import matplotlib.image
import numpy as np
import pytest

from pnas_jax import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OPS = ["3x3_MBConv3", "3x3_MBConv6", "5x5_MBConv3", "5x5_MBConv6", "7x7_MBConv3", "7x7_MBConv6"]


def _assert_png(path: str) -> None:
  with open(path, "rb") as f:
    data = f.read()
  assert len(data) > 1000
  assert data[:8] == PNG_MAGIC
  img = matplotlib.image.imread(path)
  assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
  assert float(np.std(img)) > 0


def _softmax_history(candidates: list[list[str]], n_records: int, seed: int = 0) -> list:
  rng = np.random.default_rng(seed)
  history = []
  logits = [np.zeros(len(c)) for c in candidates]
  for _ in range(n_records):
    rec = []
    for b, lg in enumerate(logits):
      lg += rng.normal(0, 0.3, size=lg.shape) + 0.1 * (np.arange(len(lg)) == b % len(lg))
      e = np.exp(lg - lg.max())
      rec.append((e / e.sum()).tolist())
    history.append(rec)
  return history


def test_alpha_history_21_blocks(tmp_path):
  candidates = [OPS + ["Zero"] if b % 4 else list(OPS) for b in range(21)]
  history = _softmax_history(candidates, 30)
  out = plots.plot_alpha_history(
      history, candidates, tmp_path / "sub" / "alpha.png", steps=list(range(0, 300, 10)), title="alphas"
  )
  assert out == str(tmp_path / "sub" / "alpha.png")
  _assert_png(out)


def test_alpha_history_one_block_one_record(tmp_path):
  candidates = [["3x3_MBConv3", "5x5_MBConv6", "Zero"]]
  out = plots.plot_alpha_history([[[0.2, 0.5, 0.3]]], candidates, tmp_path / "a.png")
  _assert_png(out)


def test_alpha_history_rejects_mismatched_lengths(tmp_path):
  with pytest.raises(ValueError, match="candidates"):
    plots.plot_alpha_history([[[0.5, 0.5]]], [["a", "b", "c"]], tmp_path / "a.png")


def _blocks(ops_per_stage: list[list[str]]) -> list[dict]:
  blocks, index, channels = [], 0, 16
  for stage, ops in enumerate(ops_per_stage):
    out = channels * 2
    for i, op in enumerate(ops):
      stride = 2 if i == 0 else 1
      blocks.append({"index": index, "stage": stage, "op": op, "in": channels, "out": out, "stride": stride})
      channels, index = out, index + 1
  return blocks


def test_architecture_9_blocks_4_stages(tmp_path):
  blocks = _blocks(
      [
          ["3x3_MBConv3", "Zero"],
          ["5x5_MBConv6", "3x3_MBConv3", "Zero"],
          ["7x7_MBConv6"],
          ["5x5_MBConv3", "Identity", "7x7_MBConv6"],
      ]
  )
  assert len(blocks) == 9
  _assert_png(plots.plot_architecture(blocks, tmp_path / "arch.png", title="found"))


def test_architecture_21_blocks(tmp_path):
  rng = np.random.default_rng(1)
  ops = OPS + ["Zero"]
  stages = [[ops[rng.integers(len(ops))] for _ in range(n)] for n in (4, 4, 4, 4, 4, 1)]
  _assert_png(plots.plot_architecture(_blocks(stages), tmp_path / "arch21.png"))


def test_curves_with_missing_keys_and_nan(tmp_path):
  records = []
  for step in range(1, 41):
    rec = {"step": step, "kind": "train", "loss": 2.0 / step, "expected_latency_ms": 20 - step * 0.2}
    if step % 7 == 0:
      rec["loss"] = float("nan")
    if step % 5 == 0:
      del rec["expected_latency_ms"]
    records.append(rec)
    if step % 10 == 0:
      records.append({"step": step, "kind": "eval", "valid_acc": 50 + step, "loss": 1.0 / step})
  records.append({"step": 41, "kind": "eval", "valid_acc": None})
  out = plots.plot_curves(
      records,
      tmp_path / "curves.png",
      keys=[("expected_latency_ms", "E[LAT] (ms)"), ("valid_acc", "held-out acc (%)"), ("loss", "loss"),
            ("absent", "missing metric")],
      targets={"expected_latency_ms": 12.3},
      title="search",
  )
  _assert_png(out)


def test_pareto(tmp_path):
  points = [
      {"label": "found@12ms", "x": 12.1, "y": 74.6, "kind": "found"},
      {"label": "MobileNetV2", "x": 14.0, "y": 72.0, "kind": "baseline"},
      {"label": "rand-0", "x": 11.0, "y": 71.2, "kind": "random"},
      {"label": "rand-1", "x": 13.5, "y": 72.3, "kind": "random"},
      {"label": "MnasNet", "x": math.nan, "y": 74.0, "kind": "baseline"},
  ]
  out = plots.plot_pareto(points, tmp_path / "pareto.png", title="pareto", target=12.0)
  _assert_png(out)
  _assert_png(plots.plot_pareto(points[:2] + [{"label": "z", "x": 9, "y": 70, "kind": "zoo"},
                                              {"label": "o", "x": 8, "y": 69, "kind": "mine"}],
                                tmp_path / "pareto2.png"))
