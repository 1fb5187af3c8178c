r"""Latency table and predictor for configs/search/fashion_mnist.py's space, measured on this CPU.

The demo's target device is one core of the machine it runs on, at the search config's batch
(16): single-threaded XLA timed with the process CPU-time clock (repeatable on a shared machine;
see pnas_jax/latency/timing.py), in its own process so training can still use every core.

  pnas latency measure --config configs/latency/fashion_mnist.py
  pnas latency fit --config configs/latency/fashion_mnist.py
  pnas search --config configs/search/fashion_mnist.py --workdir results/search_fmnist \
      --config.latency.model=results/latency/fashion_mnist_predictor.json
"""

import os

from pnas_jax.config_loading import load_config
from pnas_jax.latency.config import latency_config


def get_config(arg=None):
  del arg
  search = load_config(os.path.join(os.path.dirname(__file__), "..", "search", "fashion_mnist.py"))
  config = latency_config()  # the one-core CPU timing protocol (pnas_jax/latency/config.py)
  config.name = "fashion_mnist"
  config.space = search.space.to_dict()  # one source of truth: the search config's space ...
  config.batch = search.latency.batch  # ... and target batch
  config.table = "results/latency/fashion_mnist_table.json"
  config.networks = "results/latency/fashion_mnist_networks.json"
  config.predictor = "results/latency/fashion_mnist_predictor.json"
  config.n_networks = 24
  config.repeats = search.latency.repeats  # ~1 ms a call: 200 timed calls cost little
  config.baseline_op = "3x3_MBConv6"  # also measure the hand-designed baseline (every block this op)
  return config
