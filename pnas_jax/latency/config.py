"""The latency-measurement config's schema and defaults; configs/latency/*.py start from it.

Read by `pnas latency measure / networks / fit` (pnas_jax/latency/cli.py). The default timing
protocol is the one-core CPU protocol: single-threaded XLA timed with the process CPU-time clock,
which measures what one dedicated core would take even on a CPU shared with other jobs
(pnas_jax/latency/timing.py). RANGES below are the valid values, enforced by
config_loading.load_config.
"""

from __future__ import annotations

import ml_collections

from pnas_jax.config_loading import INT_GE0, INT_GE1, SEED, Range
from pnas_jax.latency.measure import TimingProtocol
from pnas_jax.latency.sessions import DEFAULT_SESSIONS


def latency_config() -> ml_collections.ConfigDict:
  """Defaults every latency config shares; a config sets its space, outputs and what differs."""
  c = ml_collections.ConfigDict()
  c.name = "latency"
  # SearchSpace fields (pnas_jax.search_space.SearchSpace); empty: SearchSpace's defaults.
  c.space = ml_collections.ConfigDict()
  # Timing protocol: batch, warm-up calls (the first compiles), timed repeats (median kept),
  # taken round-robin `per_round` at a time over chunks of `chunk` layers/networks. The defaults
  # are TimingProtocol's, which a search's latency.model = "measure" uses too.
  default = TimingProtocol()
  c.batch = default.batch
  c.warmup = default.warmup
  c.repeats = 60
  c.per_round = default.per_round
  c.chunk = default.chunk
  c.clock = "process"  # "process" (CPU time of this process) or "wall"
  c.cpu_threads = 1  # None: XLA's default threading
  # Timing processes: every layer and network is timed in each, and the median over them is kept
  # (one process's timings vary by up to +-10% per network on a VM; pnas_jax/latency/sessions.py).
  c.sessions = DEFAULT_SESSIONS
  c.dw_impl = "auto"
  c.seed = 0
  # Outputs (resumable: rerun the same command to continue an interrupted measurement).
  c.table = "results/latency/table.json"
  c.networks = "results/latency/networks.json"
  c.predictor = "results/latency/predictor.json"
  # Whole networks for validation and for fitting the predictor (0: the table only).
  c.n_networks = 0
  c.zoo = False  # also the zoo nets' ops, where they fit the space
  c.baseline_op = ""  # also measure the hand-designed baseline (every block this op); "": none
  c.predictor_kind = "linear"
  c.train_fraction = 0.8
  return c


# Valid values of every numeric key (config_loading.load_config checks them).
RANGES: dict[str, Range] = {
    "batch": INT_GE1,
    "warmup": INT_GE0,
    "repeats": INT_GE1,
    "per_round": INT_GE1,
    "chunk": INT_GE1,
    "cpu_threads": Range(1, 1, integer=True, optional=True, note="None: XLA's default threading"),
    "sessions": INT_GE1,
    "seed": SEED,
    "n_networks": Range(0, integer=True, note="0: the table only"),
    "train_fraction": Range(0, 1, low_open=True, high_open=True),
}

