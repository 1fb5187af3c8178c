"""`pnas convert-weights`: the reference implementation's PyTorch checkpoints <-> our weights.msgpack.

  pnas convert-weights proxyless_mobile.pth --arch proxyless_mobile --out weights.msgpack
  pnas convert-weights weights.msgpack --arch proxyless_mobile --out proxyless_mobile.pth
  pnas convert-weights results/train_run --out model.pth       # a `pnas train` workdir

The direction follows the file names (.pth / .pt / .pth.tar: the reference format; .msgpack: ours).
PyTorch is not needed: checkpoints are read with a restricted unpickler that executes nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from pnas_jax.errors import PnasError, UserValueError


def _resolve(args: argparse.Namespace) -> tuple[Any, Any, str, str]:
  """(space, arch, weights path, network name) of the command's input."""
  from pnas_jax.models import zoo

  source, ref = args.input, args.arch
  if os.path.isdir(source):  # a `pnas train` workdir: its arch.json and weights.msgpack
    ref = ref or os.path.join(source, "arch.json")
    source = os.path.join(source, "weights.msgpack")
  if not ref:
    raise UserValueError(f"give --arch for {args.input}: a zoo name ({', '.join(zoo.ZOO)}), an "
                         "arch.json or the reference net.config the checkpoint was trained from")
  space, arch = zoo.resolve_network(ref, resolution=args.resolution)
  return space, arch, source, ref


def cmd_convert_weights(args: argparse.Namespace) -> int:
  from pnas_jax.interop import torch_file, weights_files
  from pnas_jax.models.cost import net_cost

  space, arch, source, name = _resolve(args)
  if weights_files.is_reference_file(source) == weights_files.is_reference_file(args.out):
    raise UserValueError(
        f"{source} -> {args.out}: both names are in the same format; convert a .pth/.pt/.pth.tar "
        "(reference) to a .msgpack (ours) or back")
  if weights_files.is_reference_file(source):
    sd = torch_file.load_state_dict(source)
    classifier = sd.get("classifier.linear.weight")
    if classifier is not None and classifier.ndim == 2 and classifier.shape[0] != space.n_classes:
      space = space.replace(n_classes=int(classifier.shape[0]))  # e.g. a net fine-tuned elsewhere
  variables = weights_files.load_variables(source, space, arch, name)
  weights_files.save_variables(args.out, variables, space, arch)
  fmt = "the reference PyTorch format" if weights_files.is_reference_file(args.out) else "weights.msgpack"
  print(f"wrote {args.out} ({fmt}): {name}, {net_cost(space, arch).params:,} params, "
        f"{space.n_classes} classes, from {source}")
  return 0


def _guarded(fn):
  def wrapped(args: argparse.Namespace) -> int:
    from pnas_jax.search_space.space import SearchSpaceError

    try:
      return fn(args)
    except (PnasError, SearchSpaceError) as e:
      print(f"pnas {args.command}: error: {e}", file=sys.stderr)
      return 2

  return wrapped


def add_commands(subparsers: Any) -> None:
  """Registers `pnas convert-weights`."""
  p = subparsers.add_parser(
      "convert-weights", help="reference PyTorch checkpoint (.pth) <-> weights.msgpack",
      description=__doc__.split("\n\n")[0])
  p.add_argument("input", help="a .pth/.pt/.pth.tar checkpoint, a weights.msgpack, or a `pnas train` "
                 "workdir")
  p.add_argument("--arch", default=None, help="zoo name, arch.json or net.config of the network "
                 "(default for a workdir: its arch.json)")
  p.add_argument("--out", required=True, help="output: .msgpack (ours) or .pth (reference format)")
  p.add_argument("--resolution", type=int, default=None, help="input size recorded with the network")
  p.set_defaults(func=_guarded(cmd_convert_weights))
