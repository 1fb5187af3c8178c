r"""Latency table and model for a CPU-sized search space, measured on the machine JAX runs on.

A reduced ImageNet-style space (64x64 inputs, width multiplier 0.75, 9 searchable blocks, 10
classes, one CPU thread) whose whole table measures in a minute or two on 2 CPU cores, in each of
the three timing processes whose median is kept (pnas_jax/latency/sessions.py);
experiments/latency_model.py uses it.

  pnas latency measure --config configs/latency/cpu.py
  pnas latency measure --config configs/latency/cpu.py --config.n_networks=0   # table only
  pnas latency fit --config configs/latency/cpu.py
  pnas latency expected --table results/latency/cpu_table.json --space configs/latency/cpu.py \
      --uniform
"""

import ml_collections

from pnas_jax.latency.config import latency_config


def get_config(arg=None):
  del arg
  config = latency_config()  # the one-core CPU timing protocol (pnas_jax/latency/config.py)
  config.name = "cpu"
  # SearchSpace fields (pnas_jax.search_space.SearchSpace).
  config.space = ml_collections.ConfigDict(dict(
      stage_widths=(24, 40, 80, 96, 192, 320),
      stage_depths=(1, 2, 2, 2, 1, 1),
      stage_strides=(2, 2, 2, 1, 2, 1),
      width_mult=0.75,
      tail_width=640,
      n_classes=10,
      resolution=64,
  ))
  config.table = "results/latency/cpu_table.json"
  config.networks = "results/latency/cpu_networks.json"
  config.predictor = "results/latency/cpu_predictor.json"
  config.n_networks = 100
  config.zoo = True
  return config
