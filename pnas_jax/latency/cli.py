"""`pnas latency ...`: measure tables and networks, fit the predictor, print expected latencies.

  pnas latency measure --config configs/latency/cpu.py [--config.n_networks=0 ...]
  pnas latency fit --config configs/latency/cpu.py [--kind linear] [--json]
  pnas latency fit --measurements NETS.json --table TABLE.json --out PRED.json
  pnas latency expected --table FILE [--space CONFIG] (--arch FILE | --uniform | --all OPNAME)
  pnas latency networks --config CONFIG --out FILE [NAME=]ARCH.json ...   (interleaved)

On a CPU both measuring commands time in config.sessions fresh processes and keep the median
per entry (pnas_jax/latency/sessions.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pnas_jax.config_loading import OverrideParser, load_config
from pnas_jax.errors import UserValueError


def space_from_config(config: Any):
  """The SearchSpace of a config with a `space` field (dict of SearchSpace fields)."""
  from pnas_jax.search_space.space import SearchSpace

  if "space" not in config:
    raise UserValueError("the config has no 'space' field (a dict of SearchSpace fields)")
  space = config.space
  return SearchSpace.from_dict(space.to_dict() if hasattr(space, "to_dict") else dict(space),
                               source="config.space")


def protocol_from_config(config: Any):
  from pnas_jax.latency.measure import TimingProtocol

  return TimingProtocol(
      batch=config.batch, warmup=config.warmup, repeats=config.repeats,
      per_round=config.per_round, chunk=config.chunk, clock=config.clock,
      dw_impl=config.dw_impl, seed=config.seed,
  )


def _timing_job(config: Any, space: Any, named: list, *, table: str | None, networks: str | None,
                progress: bool = True):
  """The TimingJob of a latency config: its protocol, core pinning and output paths."""
  from pnas_jax.latency.sessions import TimingJob

  return TimingJob(space, protocol_from_config(config), table=table, networks=networks,
                   named_archs=tuple(named), cpu_threads=config.get("cpu_threads"),
                   progress=progress)


def _in_child(config: Any) -> bool:
  """Whether the timing runs in child processes (several sessions) or in this CLI process."""
  return config.sessions > 1


def _time(config: Any, job: Any):
  """Times `job` in config.sessions processes."""
  from pnas_jax.latency.sessions import time_in_sessions

  return time_in_sessions(job, config.sessions, in_child=_in_child(config))


def cmd_measure(args: argparse.Namespace) -> int:
  from pnas_jax.latency import measure
  from pnas_jax.latency.timing import device_description
  from pnas_jax.search_space.sampling import sample_archs

  config = load_config(args.config, args.config_overrides)
  space = space_from_config(config)
  named = [(f"sample{i:03d}", a) for i, a in
           enumerate(sample_archs(space, config.n_networks, config.seed))]
  if config.get("baseline_op"):
    from pnas_jax.search_space.space import Arch

    named.insert(0, ("baseline", Arch.uniform(space, config.baseline_op)))
  if config.get("zoo", False):
    zoo = measure.zoo_archs(space)
    print(f"zoo: {len(zoo)} zoo networks' ops fit this space "
          f"({', '.join(n for n, _ in zoo) or 'none'})", file=sys.stderr)
    named += zoo
  if not _in_child(config):
    measure.set_cpu_threads(config.get("cpu_threads"))  # before device_description starts JAX
    print(f"measuring on {device_description()}, batch {config.batch}, clock {config.clock}",
          file=sys.stderr)
  table, meas = _time(config, _timing_job(config, space, named, table=config.table,
                                          networks=config.networks if named else None))
  print(f"table: {len(table)} entries ({table.header.device}, {config.sessions} timing "
        f"session(s)) -> {config.table}")
  if meas is not None:
    print(f"networks: {len(meas.records)} measured -> {config.networks}")
  return 0


def cmd_networks(args: argparse.Namespace) -> int:
  """Measures given architectures (interleaved, in each of config.sessions processes)."""
  from pnas_jax.search_space.io import load_arch

  config = load_config(args.config, args.config_overrides)
  space = space_from_config(config)
  named = []
  for item in args.archs:
    name, _, path = item.rpartition("=")
    arch_space, arch = load_arch(path)
    if arch_space != space:
      raise UserValueError(f"{path}: its space differs from {args.config}'s space")
    named.append((name or path, arch))
  _, meas = _time(config, _timing_job(config, space, named, table=None, networks=args.out,
                                      progress=not args.json))
  rows = meas.by_name()
  if args.json:
    print(json.dumps(rows))
  else:
    for name, ms in rows.items():
      print(f"{name}: {ms:.4f} ms")
  return 0


def _print_report(report: dict[str, Any], as_json: bool) -> None:
  if as_json:
    print(json.dumps({k: v for k, v in report.items() if k != "test_indices"}, indent=2))
    return
  print(f"fitted {report['kind']} predictor on {report['n_train']} networks, "
        f"held out {report['n_test']}")
  for label, key in (("table sum", "table_sum_test"), (report["kind"], "test")):
    e = report[key]
    print(f"  {label:>10}: held-out RMSE {e['rmse_ms']:.4f} ms, relative RMSE "
          f"{100 * e['rel_rmse']:.2f}%")


def cmd_fit(args: argparse.Namespace) -> int:
  from pnas_jax.latency import measure, predictor
  from pnas_jax.latency import table as table_lib

  meas_path, table_path, out, kind = args.measurements, args.table, args.out, args.kind
  train_fraction, seed = args.train_fraction, args.seed
  if args.config:
    config = load_config(args.config, args.config_overrides)
    meas_path = meas_path or config.networks
    table_path = table_path or config.table
    out = out or config.predictor
    kind = kind or config.predictor_kind
    train_fraction = train_fraction or config.train_fraction
    seed = config.seed if seed is None else seed
  missing = [n for n, v in (("--measurements", meas_path), ("--table", table_path),
                            ("--out", out)) if not v]
  if missing:
    raise UserValueError(f"pnas latency fit needs {', '.join(missing)} (or --config with them)")
  meas = measure.load_network_measurements(meas_path)
  table = table_lib.load_table(table_path)
  costs = table_lib.cost_table(table, meas.space)
  pred, report = predictor.fit_and_evaluate(
      meas.space, costs, meas.archs(), meas.latencies(), kind or "linear", table.header,
      train_fraction or 0.8, 0 if seed is None else seed,
  )
  if kind != "table_sum" and report["n_test"]:
    # Refit on every measured network for the saved predictor; the report keeps the held-out split.
    _, fitter = predictor.get_predictor_kind(kind or "linear")
    pred = fitter(meas.space, costs, meas.archs(), meas.latencies(), header=table.header,
                  seed=seed or 0)
  predictor.save_predictor(out, pred, {k: v for k, v in report.items() if k != "test_indices"})
  _print_report(report, args.json)
  if not args.json:
    print(f"predictor -> {out}")
  return 0


def _space_arg(spec: str | None, overrides: list[str]):
  from pnas_jax.search_space.space import SearchSpace

  if spec is None:
    return SearchSpace()
  if spec.split(":", 1)[0].endswith(".py"):
    return space_from_config(load_config(spec, overrides))
  from pnas_jax.search_space.io import load_arch

  return load_arch(spec)[0]


def cmd_expected(args: argparse.Namespace) -> int:
  import numpy as np

  from pnas_jax.latency import expected, predictor
  from pnas_jax.search_space.io import load_arch
  from pnas_jax.search_space.space import Arch

  space = _space_arg(args.space, args.config_overrides)
  if args.arch:
    arch_space, arch = load_arch(args.arch)
    if args.space is None:
      space = arch_space
    probs, what = expected.one_hot_probs(space, arch), f"architecture {args.arch}"
  elif args.uniform:
    probs, what = expected.uniform_probs(space), "uniform probabilities"
  else:
    arch = Arch.uniform(space, args.all)
    probs, what = expected.one_hot_probs(space, arch), f"every block {args.all}"
  model = predictor.load_latency_model(args.table, space)
  ms = float(model.predict([np.asarray(p) for p in probs]))
  if args.json:
    print(json.dumps({"expected_latency_ms": ms, "what": what, "table": args.table,
                      "predictor": model.kind, "device": getattr(model.header, "device", None)}))
  else:
    print(f"{ms:.3f} ms  ({what}; {model.kind} of {args.table})")
  return 0


def add_commands(subparsers: Any) -> None:
  """Registers `pnas latency measure | fit | expected`."""
  p = subparsers.add_parser("latency", help="latency tables, measurement, predictor, E[LAT]")
  sub = p.add_subparsers(dest="latency_command", required=True, metavar="LATENCY_COMMAND",
                         parser_class=OverrideParser)

  m = sub.add_parser("measure", help="measure a latency table and whole networks on this device")
  m.add_argument("--config", required=True, help="configs/latency/<name>.py[:arg]")
  m.set_defaults(func=cmd_measure)

  f = sub.add_parser("fit", help="fit the latency predictor on measured networks")
  f.add_argument("--config", help="a latency config naming the files (or give them below)")
  f.add_argument("--measurements", help="networks JSON from `pnas latency measure`")
  f.add_argument("--table", help="latency table (our JSON)")
  f.add_argument("--out", help="where to write the predictor JSON")
  f.add_argument("--kind", default=None, help="predictor kind: linear (default) or table_sum")
  f.add_argument("--train-fraction", type=float, default=None, help="default 0.8")
  f.add_argument("--seed", type=int, default=None)
  f.add_argument("--json", action="store_true")
  f.set_defaults(func=cmd_fit)

  n = sub.add_parser("networks", help="measure given arch files with a config's protocol")
  n.add_argument("--config", required=True, help="a latency config (space, protocol)")
  n.add_argument("--out", required=True, help="measurements JSON (resumable)")
  n.add_argument("archs", nargs="+", metavar="[NAME=]ARCH_JSON")
  n.add_argument("--json", action="store_true")
  n.set_defaults(func=cmd_networks)

  e = sub.add_parser("expected", help="expected latency (ms) of an arch or probabilities")
  e.add_argument("--table", required=True,
                 help="our table JSON, a reference .yaml table, or a fitted predictor JSON")
  e.add_argument("--space", default=None,
                 help="a config with a 'space' field, or an arch.json (default: ImageNet space)")
  which = e.add_mutually_exclusive_group(required=True)
  which.add_argument("--arch", help="arch.json or net.config")
  which.add_argument("--uniform", action="store_true", help="uniform probabilities per block")
  which.add_argument("--all", metavar="OPNAME", help="every block set to OPNAME where valid")
  e.add_argument("--json", action="store_true")
  e.set_defaults(func=cmd_expected)
