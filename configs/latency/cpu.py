r"""Latency table and model for a CPU-sized search space, measured on the machine JAX runs on.

A reduced ImageNet-style space (64x64 inputs, width multiplier 0.75, 9 searchable blocks, 10
classes, one CPU thread) whose whole table measures in a minute or two on 2 CPU cores;
experiments/latency_model.py and the offline demo use it.

  pnas latency measure --config configs/latency/cpu.py
  pnas latency measure --config configs/latency/cpu.py --config.n_networks=0   # table only
  pnas latency fit --config configs/latency/cpu.py
  pnas latency expected --table results/latency/cpu_table.json --space configs/latency/cpu.py \
      --uniform
"""

import ml_collections


def get_config(arg=None):
  del arg
  config = ml_collections.ConfigDict()
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
  # Timing protocol: batch, warm-up calls (the first compiles), timed repeats (median kept),
  # taken round-robin `per_round` at a time over chunks of `chunk` layers/networks. On a CPU shared
  # with other jobs, single-threaded execution timed with the process CPU-time clock measures what
  # one dedicated core would take, unaffected by time spent preempted (pnas_jax/latency/timing.py).
  config.batch = 1
  config.warmup = 3
  config.repeats = 60
  config.per_round = 3
  config.chunk = 60
  config.clock = "process"
  config.cpu_threads = 1  # None: XLA's default threading
  config.dw_impl = "auto"
  config.seed = 0
  # Outputs (resumable: rerun the same command to continue an interrupted measurement).
  config.table = "results/latency/cpu_table.json"
  config.networks = "results/latency/cpu_networks.json"
  config.predictor = "results/latency/cpu_predictor.json"
  # Whole networks for validation and for fitting the predictor.
  config.n_networks = 100
  config.zoo = True  # also the zoo nets' ops, where they fit this space
  config.predictor_kind = "linear"
  config.train_fraction = 0.8
  return config
