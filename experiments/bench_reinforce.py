"""What a REINFORCE update costs, in weight steps, at the reference's setting and at the demo's.

    python experiments/bench_reinforce.py --json      # Fashion-MNIST search space, this CPU

The reference implementation scores K = 10 sampled architectures on one reward batch of 1000
held-out images per update; configs/search/fashion_mnist.py uses K = 4 on the 128-image arch
batch. For each (K, reward batch) this times the compiled weight step (batch 128) and the arch step
in the same run (median of --repeats steps after one warm-up step) and reports their ratio, the
figure behind that config's choice. Writes results/bench_reinforce.json.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from results_io import write_result

from pnas_jax.config_loading import load_config
from pnas_jax.host_malloc import reexec_with_host_malloc
from pnas_jax.latency.timing import device_description
from pnas_jax.train.parallel import global_batch, replicate
from pnas_jax.train.search import compiled_steps, setup_search
from pnas_jax.train.state import create_search_state

SETTINGS = ((4, 128), (10, 1000))  # (K, reward batch): the demo's, the reference's


def _median_step_s(fn, state, batch, repeats: int):
  state, m = fn(state, batch)
  jax.block_until_ready(m)
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    state, m = fn(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
  return state, float(np.median(times))


def _batch(source, n, mesh):
  data = source.take(np.arange(n))
  data["label"] = np.asarray(data["label"], np.int32)
  return global_batch(data, mesh)


def measure(config_path: str, k: int, reward_batch: int, repeats: int) -> dict[str, float]:
  config = load_config(config_path, [
      "--config.latency.model=macs", f"--config.arch.reinforce.k={k}",
      f"--config.arch.reinforce.batch_size={reward_batch}"])
  setup = setup_search(config, "results/bench_reinforce_workdir")
  state = replicate(create_search_state(setup.model, jax.random.key(0), setup.weight_tx,
                                        setup.arch_tx), setup.mesh)
  weight_fn, arch_fn = compiled_steps(setup)
  state, weight_s = _median_step_s(
      weight_fn, state, _batch(setup.data.train, setup.batches["batch_size"], setup.mesh), repeats)
  _, arch_s = _median_step_s(arch_fn, state, _batch(setup.data.holdout, reward_batch, setup.mesh),
                             repeats)
  return {"k": k, "reward_batch": reward_batch, "weight_step_s": weight_s, "arch_step_s": arch_s,
          "arch_step_in_weight_steps": arch_s / weight_s}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="configs/search/fashion_mnist.py")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--json", action="store_true")
  p.add_argument("--out", default="results/bench_reinforce.json")
  args = p.parse_args()
  rows = [measure(args.config, k, b, args.repeats) for k, b in SETTINGS]
  write_result({"device": device_description(), "config": args.config, "settings": rows},
               args.out, args.json)


if __name__ == "__main__":
  reexec_with_host_malloc()  # as `pnas` does (pnas_jax/host_malloc.py)
  main()
