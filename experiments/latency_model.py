r"""Latency model: predicted vs measured whole-network latency on this machine.

Cai et al. 2019 (Sec. 3.3 / 4) validate their latency model by plotting predicted against real
latency of sampled
networks. Here: measure the per-layer table of a CPU-sized space (configs/latency/cpu.py) and
~100 random architectures of that space as whole networks (batch 1), all in one interleaved
session, fit the "linear" predictor on 80% of the networks, and compare held-out errors of the
plain table sum and of the fitted predictor. The
first few architectures are measured twice more, each time compiled anew: once in the same
interleaved session (measurement noise) and once in a later session (plus drift of the machine's
load), to report the repeatability.

  flock /tmp/pnas_bench.lock python experiments/latency_model.py [--quick] [--json]
  python experiments/latency_model.py --config configs/latency/imagenet.py   # on a GPU/TPU

Writes results/latency_model.json and results/latency_model.png; with --json the last output line is
one JSON object with predictor_rel_rmse, table_sum_rel_rmse, n_train, n_test, device, ...
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

from pnas_jax.host_malloc import reexec_with_host_malloc


def _plot(path: str, measured, table_pred, fitted_pred, test_idx, report, device: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  test = np.zeros(len(measured), bool)
  test[test_idx] = True
  fig, ax = plt.subplots(figsize=(5.5, 5))
  lo = 0.9 * min(measured.min(), table_pred.min(), fitted_pred.min())
  hi = 1.05 * max(measured.max(), table_pred.max(), fitted_pred.max())
  ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
  t, f = report["table_sum_test"], report["test"]
  ax.scatter(measured[test], table_pred[test], s=18, c="tab:orange", marker="s",
             label=f"table sum (test RMSE {t['rmse_ms']:.3f} ms, {100 * t['rel_rmse']:.1f}%)")
  ax.scatter(measured[~test], fitted_pred[~test], s=10, c="tab:blue", alpha=0.35,
             label="fitted predictor, train")
  ax.scatter(measured[test], fitted_pred[test], s=18, c="tab:blue",
             label=f"fitted predictor (test RMSE {f['rmse_ms']:.3f} ms, "
             f"{100 * f['rel_rmse']:.1f}%)")
  ax.set_xlabel("measured latency (ms)")
  ax.set_ylabel("predicted latency (ms)")
  ax.set_title(f"Latency model, batch 1\n{device}", fontsize=9)
  ax.set_xlim(lo, hi)
  ax.set_ylim(lo, hi)
  ax.legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/latency/cpu.py")
  parser.add_argument("--quick", action="store_true", help="30 architectures instead of ~100")
  parser.add_argument("--n", type=int, default=None, help="number of random architectures")
  parser.add_argument("--repeat", type=int, default=5, help="archs measured a second time")
  parser.add_argument("--repeats", type=int, default=150, help="timed calls per network")
  parser.add_argument("--out", default="results/latency_model.json")
  parser.add_argument("--plot", default="results/latency_model.png")
  parser.add_argument("--json", action="store_true", help="last line: one JSON object")
  from pnas_jax.config_loading import load_config, split_config_args

  rest, overrides = split_config_args(sys.argv[1:] if argv is None else argv)
  args = parser.parse_args(rest)
  config = load_config(args.config, overrides)

  from pnas_jax.latency import measure
  from pnas_jax.search_space.sampling import sample_archs

  measure.set_cpu_threads(config.get("cpu_threads"))  # before JAX starts its backend

  from pnas_jax.latency import predictor as pred_lib
  from pnas_jax.latency import table as table_lib
  from pnas_jax.latency.cli import protocol_from_config, space_from_config
  from pnas_jax.latency.timing import device_description, time_interleaved

  start = time.time()
  space = space_from_config(config)
  protocol = protocol_from_config(config)
  device = device_description()
  log = lambda msg: print(msg, file=sys.stderr, flush=True)
  log(f"device: {device}; clock {protocol.clock}; space: {space.n_blocks} blocks, "
      f"resolution {space.resolution}")

  n = args.n or (30 if args.quick else config.n_networks)
  k = min(args.repeat, n)
  archs = sample_archs(space, n, config.seed)
  named = [(f"sample{i:03d}", a) for i, a in enumerate(archs)]
  # One interleaved session: every layer of the table, every network, and a second, separately
  # compiled copy of the first k networks are compiled, then all are timed round-robin, so changes
  # of the machine's load hit the table and the networks alike (a fair table-sum baseline).
  session = dataclasses.replace(protocol, repeats=args.repeats)
  modules = measure.layer_modules(space, protocol.dw_impl)
  calls = [measure.prepare_call(m, shape, session) for m, shape in modules.values()]
  calls += [measure.network_call(space, a, session) for _, a in named + named[:k]]

  def on_warm(i: int) -> None:
    if (i + 1) % 25 == 0 or i + 1 == len(calls):
      log(f"compiled {i + 1}/{len(calls)} ({time.time() - start:.0f}s)")

  timings = time_interleaved(calls, warmup=session.warmup, repeats=session.repeats,
                             per_round=session.per_round, clock=session.clock, on_warm=on_warm)
  header = table_lib.current_header(session.batch, session.dw_impl, session.warmup,
                                    session.repeats, session.clock)
  table = table_lib.LatencyTable(header, {
      key: table_lib.Entry(mean=t.mean_ms, var=t.var_ms2, count=t.count, median=t.median_ms)
      for key, t in zip(modules, timings, strict=False)
  })
  table.save(os.path.splitext(args.out)[0] + "_table.json")
  costs = table_lib.cost_table(table, space)
  nets = timings[len(modules):]
  log(f"measured {len(table)} table entries and {len(nets)} networks ({time.time() - start:.0f}s)")
  # The first k once more in a later session of their own: drift of the machine's load.
  later = measure.measure_networks(space, named[:k], None,
                                   dataclasses.replace(session, chunk=max(k, 1)))
  later = later.latencies()
  y_all = np.array([t.median_ms for t in nets])
  y, y_dup = y_all[:n], y_all[n:]
  same_session = np.abs(y_dup / y[:k] - 1.0)
  later_session = np.abs(later / y[:k] - 1.0)
  # Per-network spread of the timed calls within one measurement: std / median.
  within = np.sqrt([t.var_ms2 for t in nets[:n]]) / y

  pred, report = pred_lib.fit_and_evaluate(
      space, costs, archs, y, config.predictor_kind, table.header, config.train_fraction,
      config.seed,
  )
  tsum = pred_lib.TableSumPredictor(space, costs, table.header)
  table_pred, fitted_pred = tsum.of_archs(archs), pred.of_archs(archs)
  _plot(args.plot, y, table_pred, fitted_pred, report["test_indices"], report,
        f"{device}, {protocol.clock} clock")

  result = {
      "device": device,
      "backend": table.header.backend,
      "clock": protocol.clock,
      "xla_flags": table.header.xla_flags,
      "batch": protocol.batch,
      "space": space.to_dict(),
      "predictor_kind": report["kind"],
      "n_train": report["n_train"],
      "n_test": report["n_test"],
      "predictor_rel_rmse": report["test"]["rel_rmse"],
      "predictor_rmse_ms": report["test"]["rmse_ms"],
      "table_sum_rel_rmse": report["table_sum_test"]["rel_rmse"],
      "table_sum_rmse_ms": report["table_sum_test"]["rmse_ms"],
      "predictor_train_rel_rmse": report["train"]["rel_rmse"],
      "fitted_scale": getattr(pred, "scale", None),
      "fitted_bias_ms": getattr(pred, "bias", None),
      "measured_ms_range": [float(y.min()), float(y.max())],
      "timed_calls_per_network": session.repeats,
      "repeat_n": int(k),
      "repeat_rel_diff_mean": float(same_session.mean()) if k else None,
      "repeat_rel_diff_max": float(same_session.max()) if k else None,
      "later_session_rel_diff_mean": float(later_session.mean()) if k else None,
      "later_session_rel_diff_max": float(later_session.max()) if k else None,
      "within_run_rel_std_median": float(np.median(within)),
      "table_entries": len(table),
      "wall_time_s": round(time.time() - start, 1),
      "networks": [
          {"ops": list(a.ops), "measured_ms": float(m), "table_sum_ms": float(t),
           "predicted_ms": float(p), "test": bool(i in set(report["test_indices"]))}
          for i, (a, m, t, p) in enumerate(zip(archs, y, table_pred, fitted_pred, strict=True))
      ],
      "repeats": [
          {"first_ms": float(a), "same_session_ms": float(b), "later_session_ms": float(c)}
          for a, b, c in zip(y[:k], y_dup, later, strict=True)
      ],
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
    f.write("\n")
  summary = {k: v for k, v in result.items() if k not in ("networks", "repeats", "space")}
  if args.json:
    print(json.dumps(summary))
  else:
    print(f"table sum: held-out RMSE {summary['table_sum_rmse_ms']:.3f} ms "
          f"({100 * summary['table_sum_rel_rmse']:.1f}%)")
    print(f"fitted {summary['predictor_kind']}: held-out RMSE {summary['predictor_rmse_ms']:.3f} "
          f"ms ({100 * summary['predictor_rel_rmse']:.1f}%)")
    print(f"repeatability ({k} archs measured twice): mean |diff| "
          f"{100 * (summary['repeat_rel_diff_mean'] or 0):.1f}% in the same session, "
          f"{100 * (summary['later_session_rel_diff_mean'] or 0):.1f}% in a later one")
    print(f"wrote {args.out} and {args.plot}")
  return 0


if __name__ == "__main__":
  reexec_with_host_malloc()  # as `pnas` does (pnas_jax/host_malloc.py)
  sys.exit(main())
