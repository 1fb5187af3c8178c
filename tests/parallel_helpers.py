"""Subprocess half of tests/test_parallel.py: N fake CPU devices vs one on the same global batch.

  python tests/parallel_helpers.py [--rounds 2] [--devices 4]

Must run in a fresh process (it sets the CPU device count before JAX touches a device). Prints one
JSON line: max |diff| of params / batch_stats / alpha between the 1-device and the N-device runs
(sync BN), whether the sampled paths agreed, and the param / BN diff after one weight step on N
devices with per-device BN statistics (sync_bn=False), which must be large.
"""

from __future__ import annotations

import argparse
import functools
import json


def _max_diff(a, b) -> float:
  import jax
  import numpy as np

  diffs = jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64)
                                                                        - np.asarray(y)))), a, b))
  return max(diffs) if diffs else 0.0


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--devices", type=int, default=4)
  args = p.parse_args()

  import jax

  jax.config.update("jax_num_cpu_devices", args.devices)
  jax.config.update("jax_platforms", "cpu")
  import jax.numpy as jnp
  import numpy as np
  from spaces import TINY_SPACE

  from pnas_jax.arch import get_estimator
  from pnas_jax.arch.supernet import Supernet
  from pnas_jax.latency.expected import expected_cost, macs_table
  from pnas_jax.train import arch_optimizer, create_search_state, weight_optimizer
  from pnas_jax.train.parallel import data_mesh, data_parallel, replicate, to_host
  from pnas_jax.train.steps import arch_step, weight_step

  assert len(jax.devices()) == args.devices, jax.devices()
  space = TINY_SPACE
  model = Supernet(space, dw_impl="lax")
  wtx = weight_optimizer(base_lr=0.1, total_steps=100)
  atx = arch_optimizer()
  cost_fn = functools.partial(expected_cost, macs_table(space))
  target = 0.8 * float(cost_fn([jnp.full(len(b.candidates), 1 / len(b.candidates))
                                for b in space.blocks]))

  def loss_fn(ce, lat):  # "add#linear"
    return ce + 0.1 * (lat - target) / target

  n = 8  # global batch, divisible by every mesh here
  keys = jax.random.split(jax.random.key(1), 2 * args.rounds)
  batches = [{"image": np.asarray(jax.random.normal(k, (n, 16, 16, 3))),
              "label": np.asarray((jnp.arange(n) + i) % 10)} for i, k in enumerate(keys)]

  init = create_search_state(model, jax.random.key(0), wtx, atx)

  def run(num_devices: int, sync_bn: bool, rounds: int, with_arch: bool = True):
    mesh = data_mesh(num_devices)
    wfn = data_parallel(weight_step, mesh, sync_bn=sync_bn, model=model, tx=wtx)
    afn = data_parallel(arch_step, mesh, sync_bn=sync_bn, model=model, tx=atx,
                        estimator=get_estimator("two"), cost_fn=cost_fn, loss_fn=loss_fn)
    state = replicate(jax.tree.map(lambda x: x.copy(), init), mesh)  # the steps donate it
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    paths, first = [], None
    for r in range(rounds):
      state, m = wfn(state, jax.device_put(batches[2 * r], sharding))
      paths.append(to_host(m["active"]).tolist())
      if first is None:  # after the first weight step (the no-sync check compares to this)
        first = to_host({"params": state.params, "batch_stats": state.batch_stats})
      if with_arch:
        state, m = afn(state, jax.device_put(batches[2 * r + 1], sharding))
        paths.append({k: to_host(v).tolist() for k, v in m.items()
                      if np.issubdtype(np.asarray(to_host(v)).dtype, np.integer)
                      or np.asarray(to_host(v)).dtype == bool})
    host = to_host({"params": state.params, "batch_stats": state.batch_stats,
                    "alpha": state.alpha})
    return host, first, paths

  one, one_first, paths_one = run(1, True, args.rounds)
  many, _, paths_many = run(args.devices, True, args.rounds)
  # Sanity (the comparison can fail): one weight step with per-device BN statistics.
  _, nosync, _ = run(args.devices, False, 1, with_arch=False)
  out = {
      "devices": args.devices,
      "rounds": args.rounds,
      "params": _max_diff(one["params"], many["params"]),
      "batch_stats": _max_diff(one["batch_stats"], many["batch_stats"]),
      "alpha": _max_diff(one["alpha"], many["alpha"]),
      "alpha_moved": _max_diff(one["alpha"], to_host(init.alpha)),
      "paths_equal": paths_one == paths_many,
      "paths": paths_one,
      "nosync_params": _max_diff(one_first["params"], nosync["params"]),
      "nosync_batch_stats": _max_diff(one_first["batch_stats"], nosync["batch_stats"]),
  }
  print(json.dumps(out))


if __name__ == "__main__":
  main()
