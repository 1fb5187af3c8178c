"""The `pnas` command line: one subcommand per job, each a thin wrapper around library functions.

  pnas zoo [--json]                      published networks: params, MACs, latency measured here
  pnas arch show FILE|NAME [--json]      an arch.json / net.config / zoo net: blocks, params, MACs

Other subcommands (latency, search, train, ...) register themselves from their packages through
COMMAND_MODULES: each module has `add_commands(subparsers)`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

from pnas_jax.compile_cache import collect_garbage_less_often, enable_compilation_cache
from pnas_jax.errors import PnasError
from pnas_jax.host_malloc import reexec_with_host_malloc

# Modules contributing subcommands; each defines add_commands(subparsers).
COMMAND_MODULES: tuple[str, ...] = ("pnas_jax.latency.cli", "pnas_jax.train.cli", "pnas_jax.demo",
                                   "pnas_jax.interop.cli")


def _measure_latency_ms(space, arch, batch: int, repeats: int) -> float:
  """Median latency of the ChildNet here (latency.measure's protocol, wall clock)."""
  from pnas_jax.latency.measure import TimingProtocol, measure_network

  protocol = TimingProtocol(batch=batch, warmup=3, repeats=repeats, clock="wall")
  return measure_network(space, arch, protocol).median_ms


def network_summary(
    name: str, space, arch, measure: bool, batch: int = 1, repeats: int = 20
) -> dict[str, Any]:
  """Fields shared by `pnas zoo` and `pnas arch show`."""
  from pnas_jax.models.cost import net_cost

  cost = net_cost(space, arch)
  row: dict[str, Any] = {
      "name": name,
      "params": cost.params,
      "macs": cost.macs,
      "macs_m": round(cost.macs_m, 1),
      "resolution": space.resolution,
      "n_classes": space.n_classes,
      "skipped_blocks": sum(op == "Zero" for op in arch.ops),
  }
  if measure:
    row["latency_ms"] = round(_measure_latency_ms(space, arch, batch, repeats), 3)
    row["latency_batch"] = batch
  return row


def _fmt_table(rows: list[dict[str, Any]], cols: list[tuple[str, str]]) -> str:
  cells = [[h for _, h in cols]] + [
      ["" if r.get(k) is None else f"{r[k]:,}" if isinstance(r.get(k), int) else str(r[k])
       for k, _ in cols]
      for r in rows
  ]
  widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
  lines = [
      "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
      for row in cells
  ]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def cmd_zoo(args: argparse.Namespace) -> int:
  from tqdm import tqdm

  from pnas_jax.latency.timing import device_description
  from pnas_jax.models import zoo

  names = args.names or list(zoo.ZOO)
  rows = []
  for name in tqdm(names, desc="measuring zoo", disable=args.json or not sys.stderr.isatty()):
    e = zoo.get(name)
    space = e.space.replace(resolution=args.resolution)
    row = network_summary(name, space, e.arch, not args.no_latency, 1, args.repeats)
    row.update(published_params=e.params, published_macs_m=e.macs_m, published_top1=e.top1,
               published_latency=e.latency)
    rows.append(row)
  device = device_description()
  if args.json:
    print(json.dumps({"device": device, "networks": rows}, indent=2))
    return 0
  cols = [("name", "network"), ("params", "params"), ("macs_m", "MACs (M)"),
          ("latency_ms", "latency (ms)"), ("published_top1", "paper top-1"),
          ("published_latency", "paper latency")]
  if args.no_latency:
    cols.remove(("latency_ms", "latency (ms)"))
  print(_fmt_table(rows, cols))
  if not args.no_latency:
    print(f"\nlatency: batch 1, {args.resolution}x{args.resolution}, median of {args.repeats} runs "
          f"after warm-up, on {device}")
  return 0


def cmd_arch_show(args: argparse.Namespace) -> int:
  from pnas_jax.latency.timing import device_description
  from pnas_jax.models import zoo

  space, arch = zoo.resolve_network(args.file, resolution=args.resolution)
  row = network_summary(args.file, space, arch, args.latency, 1, args.repeats)
  blocks = [
      {"block": b.index, "stage": b.stage, "op": op, "in": b.in_channels, "out": b.out_channels,
       "stride": b.stride, "size": f"{b.in_size}->{b.out_size}"}
      for b, op in zip(space.blocks, arch.ops, strict=True)
  ]
  if args.json:
    print(json.dumps({**row, "device": device_description() if args.latency else None,
                      "space": space.to_dict(), "ops": list(arch.ops)}, indent=2))
    return 0
  print(_fmt_table(blocks, [(k, k) for k in ("block", "stage", "op", "in", "out", "stride", "size")]))
  print()
  cols = [("name", "network"), ("params", "params"), ("macs_m", "MACs (M)"),
          ("skipped_blocks", "skipped")]
  if args.latency:
    cols.append(("latency_ms", "latency (ms)"))
  print(_fmt_table([row], cols))
  if args.latency:
    print(f"\nlatency: batch 1, median of {args.repeats} runs, on {device_description()}")
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="pnas", description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  p = sub.add_parser("zoo", help="published networks: params, MACs, measured latency")
  p.add_argument("names", nargs="*", help="subset of networks (default: all)")
  p.add_argument("--json", action="store_true", help="print JSON instead of a table")
  p.add_argument("--resolution", type=int, default=224)
  p.add_argument("--repeats", type=int, default=20, help="timed runs per network")
  p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
  p.set_defaults(func=cmd_zoo)

  p = sub.add_parser("arch", help="inspect architectures")
  arch_sub = p.add_subparsers(dest="arch_command", required=True, metavar="ARCH_COMMAND")
  p = arch_sub.add_parser("show", help="print an arch.json, net.config or zoo network")
  p.add_argument("file", help="arch.json, net.config, or a zoo name")
  p.add_argument("--json", action="store_true")
  p.add_argument("--resolution", type=int, default=None, help="override the input resolution")
  p.add_argument("--latency", action="store_true", help="also measure batch-1 latency here")
  p.add_argument("--repeats", type=int, default=20)
  p.set_defaults(func=cmd_arch_show)

  for module in COMMAND_MODULES:
    importlib.import_module(module).add_commands(sub)
  return parser


def _command_name(args: argparse.Namespace) -> str:
  sub = getattr(args, "latency_command", None) or getattr(args, "arch_command", None)
  return f"pnas {args.command}" + (f" {sub}" if sub else "")


def main(argv: list[str] | None = None) -> int:
  """Runs one subcommand. A user error (PnasError: a bad value or file) prints one line naming it
  and the fix, exit status 2; any other exception is a bug and keeps its traceback.

  Run as a program (argv None), it first re-executes itself with the host allocator
  (host_malloc.py: XLA:CPU's per-call temporaries stop page-faulting).
  """
  if argv is None:
    reexec_with_host_malloc()
  args = build_parser().parse_args(argv)
  enable_compilation_cache()
  collect_garbage_less_often()
  try:
    return int(args.func(args) or 0)
  except PnasError as e:
    print(f"{_command_name(args)}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
