r"""Latency table and predictor for configs/search/fashion_mnist.py's space, measured on this CPU.

The demo's target device is one core of the machine it runs on, at batch 1: single-threaded XLA
timed with the process CPU-time clock (repeatable on a shared machine; see
pnas_jax/latency/timing.py), in its own process so training can still use every core.

  pnas latency measure --config configs/latency/fashion_mnist.py
  pnas latency fit --config configs/latency/fashion_mnist.py
  pnas search --config configs/search/fashion_mnist.py --workdir results/search_fmnist \
      --config.latency.model=results/latency/fashion_mnist_predictor.json
"""

import os

import ml_collections

from pnas_jax.config_loading import load_config


def get_config(arg=None):
  del arg
  search = load_config(os.path.join(os.path.dirname(__file__), "..", "search", "fashion_mnist.py"))
  config = ml_collections.ConfigDict()
  config.name = "fashion_mnist"
  config.space = search.space.to_dict()  # one source of truth: the search config's space
  config.batch = 1
  config.warmup = 3
  config.repeats = 60
  config.per_round = 3
  config.chunk = 60
  config.clock = "process"
  config.cpu_threads = 1
  config.dw_impl = "auto"
  config.seed = 0
  config.table = "results/latency/fashion_mnist_table.json"
  config.networks = "results/latency/fashion_mnist_networks.json"
  config.predictor = "results/latency/fashion_mnist_predictor.json"
  config.n_networks = 24
  config.zoo = False  # the zoo's ImageNet nets do not fit this space
  config.baseline_op = "3x3_MBConv6"  # also measure the hand-designed baseline (every block this op)
  config.predictor_kind = "linear"
  config.train_fraction = 0.8
  return config
