"""Tiny spaces and synthetic latency tables shared by the tests/test_latency_*.py files."""

from __future__ import annotations

import numpy as np

from pnas_jax.latency.table import Entry, LatencyTable, TableHeader, space_keys
from pnas_jax.search_space.space import SearchSpace

CONFIG_TEMPLATE = '''
import ml_collections

from pnas_jax.latency.config import latency_config


def get_config(arg=None):
  c = latency_config()
  c.space = ml_collections.ConfigDict({space!r})
  c.warmup = 1
  c.repeats = 3
  c.per_round = 1
  c.chunk = 4
  c.clock = "wall"
  c.cpu_threads = None
  c.sessions = 1
  c.table = {table!r}
  c.networks = {networks!r}
  c.predictor = {predictor!r}
  c.train_fraction = 0.7
  return c
'''


def tiny_space(**kw) -> SearchSpace:
  """3 searchable blocks (one Zero-capable), 16x16 inputs: compiles and times in seconds."""
  d = dict(
      stage_widths=(8, 16), stage_depths=(2, 1), stage_strides=(2, 2), stem_width=8,
      first_block_width=8, tail_width=32, n_classes=5, resolution=16,
      candidates=("3x3_MBConv3", "5x5_MBConv3"),
  )
  d.update(kw)
  return SearchSpace(**d)


def synthetic_table(space: SearchSpace, seed: int = 0, device: str = "cpu: test") -> LatencyTable:
  """A table holding every key of `space` with random positive latencies."""
  rng = np.random.default_rng(seed)
  entries = {k: Entry(mean=float(rng.uniform(0.1, 1.0)), var=0.01, count=10,
                      median=float(rng.uniform(0.1, 1.0)))
             for k in space_keys(space).all_keys()}
  return LatencyTable(TableHeader(device=device, backend="cpu", batch=1), entries)


def write_config(path, space: SearchSpace, out_dir) -> str:
  path.write_text(CONFIG_TEMPLATE.format(
      space=space.to_dict(), table=str(out_dir / "table.json"),
      networks=str(out_dir / "networks.json"), predictor=str(out_dir / "predictor.json")))
  return str(path)
