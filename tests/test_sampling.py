"""Drawing architectures: uniform, in a latency band, spread over the latency range."""

import numpy as np
import pytest

from pnas_jax.errors import UserValueError
from pnas_jax.latency.predictor import macs_predictor
from pnas_jax.search_space.sampling import sample_archs, sample_in_band, sample_spread
from pnas_jax.search_space.space import Arch


def test_sample_in_band_is_in_band_distinct_and_seeded(fmnist_space):
  macs = macs_predictor(fmnist_space)
  full = float(macs.of_archs([Arch.uniform(fmnist_space, "3x3_MBConv6")])[0])
  target, band = 0.7 * full, 0.05
  archs = sample_in_band(fmnist_space, macs.of_archs, target, band, 6, seed=1)
  lat = macs.of_archs(archs)
  assert np.all((lat >= (1 - band) * target) & (lat <= target)) and len(set(archs)) == 6
  assert archs == sample_in_band(fmnist_space, macs.of_archs, target, band, 6, seed=1)
  assert archs[0] not in sample_in_band(fmnist_space, macs.of_archs, target, band, 3, seed=1,
                                        exclude=archs[:1])
  with pytest.raises(UserValueError, match="widen the band"):
    sample_in_band(fmnist_space, macs.of_archs, 1e-3, band, 1, max_draws=5000)


def test_sample_spread_covers_the_latency_range(fmnist_space):
  macs = macs_predictor(fmnist_space)
  archs = sample_spread(fmnist_space, macs.of_archs, 12, seed=0, n_draws=5000)
  assert len(set(archs)) == 12
  lat = np.sort(macs.of_archs(archs))
  everything = macs.of_archs(sample_archs(fmnist_space, 5000, seed=1))
  lo, hi = np.percentile(everything, [1, 99])
  assert lat[0] < lo + 0.1 * (hi - lo) and lat[-1] > hi - 0.1 * (hi - lo)
  assert np.max(np.diff(lat)) < 0.25 * (hi - lo)  # no big gap
