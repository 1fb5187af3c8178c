"""Comparisons of float32 results with a reference, shared by the kernel tests."""

from __future__ import annotations

import numpy as np


def assert_close_to_scale(actual, expected, rtol: float, floor: float = 1e-6) -> None:
  """|a - e| <= rtol * max(max|e|, floor) elementwise: an error relative to the tensor's scale
  (float32 sums of many products; an elementwise relative test would fail near zeros)."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape
  scale = max(float(np.max(np.abs(expected))), floor)
  np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale)
