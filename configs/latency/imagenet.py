r"""Latency table for the paper's ImageNet search space (224x224, 21 blocks), for real devices.

Measures every candidate block at every position plus the fixed layers on the device JAX runs on
(GPU/TPU; on CPU expect tens of minutes), then the zoo nets' ops and sampled architectures.

  pnas latency measure --config configs/latency/imagenet.py
  pnas latency measure --config configs/latency/imagenet.py --config.batch=8 \
      --config.table=results/latency/imagenet_b8.json
  pnas latency fit --config configs/latency/imagenet.py
  pnas latency expected --table results/latency/imagenet_table.json --all 3x3_MBConv3
"""

import ml_collections

from pnas_jax.latency.config import latency_config


def get_config(arg=None):
  del arg
  config = latency_config()
  config.name = "imagenet"
  config.space = ml_collections.ConfigDict(dict(
      stage_widths=(24, 40, 80, 96, 192, 320),
      stage_depths=(4, 4, 4, 4, 4, 1),
      stage_strides=(2, 2, 2, 1, 2, 1),
      width_mult=1.0,
      tail_width=1280,
      n_classes=1000,
      resolution=224,
  ))
  # A device of its own (GPU/TPU): wall clock, XLA's default threading, more repeats.
  config.warmup = 10
  config.repeats = 100
  config.per_round = 10
  config.chunk = 20
  config.clock = "wall"
  config.cpu_threads = None
  config.table = "results/latency/imagenet_table.json"
  config.networks = "results/latency/imagenet_networks.json"
  config.predictor = "results/latency/imagenet_predictor.json"
  config.n_networks = 100
  config.zoo = True
  return config
