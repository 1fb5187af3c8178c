"""Reading and writing architectures: our Arch JSON and the reference "net.config" JSON.

Our format (arch.json) holds the space and the ops, so one file rebuilds the network:

  {"format": "pnas_jax.arch/1", "name": "...", "space": {SearchSpace fields}, "ops": [21 names],
   "meta": {...anything: search alpha, latency, ...}}

The reference format (docs/design.md §4.2) is the original implementation's net.config: keys name, bn,
first_conv, blocks[{mobile_inverted_conv, shortcut}], feature_mix_layer, classifier; a skipped block
has mobile_inverted_conv.name == "ZeroLayer". Stages are recovered from the blocks: a new stage
starts at every block that changes the width or has stride 2.
"""

from __future__ import annotations

import os
from typing import Any

from pnas_jax.errors import UnknownNameError
from pnas_jax.file_io import read_json, write_json
from pnas_jax.search_space import ops as ops_lib
from pnas_jax.search_space.space import DEFAULT_CANDIDATES, Arch, SearchSpace, SearchSpaceError

ARCH_FORMAT = "pnas_jax.arch/1"
_BN = {"momentum": 0.1, "eps": 1e-3}


def _read_json(path: str | os.PathLike) -> Any:
  """An arch.json / net.config; a missing, binary, unreadable or invalid file (or a directory)
  raises SearchSpaceError naming it."""
  return read_json(path, SearchSpaceError, what="arch file")


def is_net_config(d: Any) -> bool:
  return isinstance(d, dict) and "blocks" in d and "first_conv" in d


# --- our format ---------------------------------------------------------------------------------


def arch_to_dict(
    space: SearchSpace, arch: Arch, name: str | None = None, meta: dict[str, Any] | None = None
) -> dict[str, Any]:
  space.check_arch(arch)
  d: dict[str, Any] = {"format": ARCH_FORMAT}
  if name:
    d["name"] = name
  d["space"] = space.to_dict()
  d["ops"] = list(arch.ops)
  if meta:
    d["meta"] = meta
  return d


def arch_from_dict(d: Any, source: str | None = None) -> tuple[SearchSpace, Arch]:
  where = source or "<arch>"
  if not isinstance(d, dict):
    raise SearchSpaceError(f"{where}: an arch file is a JSON object, got {type(d).__name__}")
  if d.get("format") != ARCH_FORMAT:
    raise SearchSpaceError(
        f"{where}: 'format' is {d.get('format')!r}, expected {ARCH_FORMAT!r} (or a reference "
        "net.config with 'first_conv' and 'blocks')"
    )
  for key in ("space", "ops"):
    if key not in d:
      raise SearchSpaceError(f"{where}: missing key {key!r}")
  space = SearchSpace.from_dict(d["space"], source=where)
  try:
    arch = Arch(d["ops"])
  except SearchSpaceError as e:
    raise SearchSpaceError(f"{where}: {e}") from None
  space.check_arch(arch, source=where)
  return space, arch


def save_arch(
    path: str | os.PathLike,
    space: SearchSpace,
    arch: Arch,
    name: str | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
  write_json(path, arch_to_dict(space, arch, name, meta))


def load_arch(path: str | os.PathLike) -> tuple[SearchSpace, Arch]:
  """Reads our arch.json or a reference net.config (auto-detected)."""
  d = _read_json(path)
  if is_net_config(d):
    return from_net_config(d, source=os.fspath(path))
  return arch_from_dict(d, source=os.fspath(path))


def read_arch_meta(path: str | os.PathLike) -> dict[str, Any]:
  """The 'meta' object of our arch.json ({} for a net.config or an arch.json without one)."""
  d = _read_json(path)
  return {} if is_net_config(d) or not isinstance(d, dict) else dict(d.get("meta") or {})


# --- reference net.config -----------------------------------------------------------------------


def _conv_layer(in_ch: int, out_ch: int, kernel: int, stride: int) -> dict[str, Any]:
  return {
      "name": "ConvLayer",
      "kernel_size": kernel,
      "stride": stride,
      "dilation": 1,
      "groups": 1,
      "bias": False,
      "has_shuffle": False,
      "in_channels": in_ch,
      "out_channels": out_ch,
      "use_bn": True,
      "act_func": "relu6",
      "dropout_rate": 0,
      "ops_order": "weight_bn_act",
  }


def _block(op: str, in_ch: int, out_ch: int, stride: int, shortcut: bool) -> dict[str, Any]:
  spec = ops_lib.get_op(op)
  if spec.to_net_config is None:
    raise SearchSpaceError(
        f"op {op!r} has no reference net.config representation; register it with to_net_config="
    )
  identity = ops_lib.get_op("Identity").to_net_config(in_ch, out_ch, 1)
  return {
      "name": "MobileInvertedResidualBlock",
      "mobile_inverted_conv": spec.to_net_config(in_ch, out_ch, stride),
      "shortcut": identity if shortcut else None,
  }


def to_net_config(space: SearchSpace, arch: Arch, name: str = "ProxylessNASNets") -> dict[str, Any]:
  """Exports (space, arch) as a reference net.config dict."""
  space.check_arch(arch)
  stem, first = space.stem_channels, space.first_block_channels
  blocks = [_block(space.first_block_op, stem, first, 1, False)]
  for b, op in zip(space.blocks, arch.ops, strict=True):
    blocks.append(_block(op, b.in_channels, b.out_channels, b.stride, b.has_shortcut))
  last = space.blocks[-1].out_channels
  return {
      "name": name,
      "bn": dict(_BN),
      "first_conv": _conv_layer(space.in_channels, stem, 3, space.stem_stride),
      "blocks": blocks,
      "feature_mix_layer": _conv_layer(last, space.tail_channels, 1, 1),
      "classifier": {
          "name": "LinearLayer",
          "in_features": space.tail_channels,
          "out_features": space.n_classes,
          "bias": True,
          "use_bn": False,
          "act_func": None,
          "dropout_rate": 0,
          "ops_order": "weight_bn_act",
      },
  }


def _get(d: Any, key: str, where: str) -> Any:
  if not isinstance(d, dict):
    raise SearchSpaceError(f"{where}: expected a JSON object, got {d!r}")
  if key not in d:
    raise SearchSpaceError(f"{where}: missing key {key!r}")
  return d[key]


def _int(d: Any, key: str, where: str) -> int:
  v = _get(d, key, where)
  if not isinstance(v, int) or isinstance(v, bool) or v < 1:
    raise SearchSpaceError(f"{where}: {key} = {v!r} must be a positive integer")
  return v


def _parse_block(blocks: list[Any], i: int, src: str) -> tuple[str, int, Any, bool]:
  """(op, stride, out_channels, has shortcut) of a net.config's blocks[i]."""
  where = f"{src}: blocks[{i}]"
  conv = _get(blocks[i], "mobile_inverted_conv", where)
  shortcut = _get(blocks[i], "shortcut", where) is not None
  try:
    op = ops_lib.op_from_net_config(conv)
    ops_lib.get_op(op)
  except (ValueError, UnknownNameError) as e:
    raise SearchSpaceError(f"{where}: {e}") from None
  stride = conv.get("stride", 1)
  if stride not in (1, 2):
    raise SearchSpaceError(f"{where}: stride = {stride!r}, must be 1 or 2")
  return op, stride, conv.get("out_channels"), shortcut


def _checked_out_channels(conv: dict[str, Any], op: str, stride: int, out: Any, shortcut: bool,
                          cur: int, where: str) -> int:
  """A searchable block's output width, after checking it chains to the previous block (`cur`
  channels) and has the identity shortcut exactly where pnas_jax puts one."""
  if ops_lib.get_op(op).needs_identity_position:
    out = cur if out is None else out
    if not shortcut or stride != 1 or out != cur:
      raise SearchSpaceError(
          f"{where}: {conv['name']} ({op}) needs an identity shortcut with stride 1 and in == out"
          f" (got shortcut={shortcut}, stride={stride}, {cur}->{out})"
      )
    return out
  in_ch = conv.get("in_channels", cur)
  if in_ch != cur:
    raise SearchSpaceError(
        f"{where}: in_channels = {in_ch} but the previous block outputs {cur} channels"
    )
  if not isinstance(out, int) or out < 1:
    raise SearchSpaceError(f"{where}: out_channels = {out!r} must be a positive integer")
  identity_pos = stride == 1 and out == cur
  if shortcut != identity_pos:
    raise SearchSpaceError(
        f"{where}: shortcut is {'set' if shortcut else 'null'} but stride={stride} and "
        f"{cur}->{out} channels {'allow' if identity_pos else 'do not allow'} an identity "
        "shortcut (pnas_jax adds it exactly when stride is 1 and in == out)"
    )
  return out


def _stages(blocks: list[Any], src: str, first: int):
  """(stage widths, depths, strides, ops, last width) of a net.config's searchable blocks: a new
  stage starts at every block that changes the width or has stride 2."""
  widths, depths, strides, arch_ops = [], [], [], []
  cur = first
  for i in range(1, len(blocks)):
    op, stride, out, shortcut = _parse_block(blocks, i, src)
    out = _checked_out_channels(blocks[i]["mobile_inverted_conv"], op, stride, out, shortcut, cur,
                                f"{src}: blocks[{i}]")
    if stride == 2 or out != cur or not widths:
      widths.append(out)
      depths.append(0)
      strides.append(stride)
    depths[-1] += 1
    arch_ops.append(op)
    cur = out
  return widths, depths, strides, arch_ops, cur


def from_net_config(
    d: Any, source: str | None = None, resolution: int = 224
) -> tuple[SearchSpace, Arch]:
  """Imports a reference net.config dict; errors name the source, the block index and the value.

  Block indices in messages are the file's `blocks[i]` indices (blocks[0] is the fixed first block).
  """
  src = source or "<net.config>"
  if not isinstance(d, dict):
    raise SearchSpaceError(f"{src}: a net.config is a JSON object, got {type(d).__name__}")
  for key in ("first_conv", "blocks", "feature_mix_layer", "classifier"):
    _get(d, key, src)
  fc = d["first_conv"]
  where = f"{src}: first_conv"
  if _int(fc, "kernel_size", where) != 3:
    raise SearchSpaceError(f"{where}: kernel_size = {fc['kernel_size']}, only 3 is supported")
  stem = _int(fc, "out_channels", where)
  blocks = d["blocks"]
  if not isinstance(blocks, list) or len(blocks) < 2:
    raise SearchSpaceError(f"{src}: 'blocks' must list the first block and >= 1 searchable block")

  op0, stride0, first, _ = _parse_block(blocks, 0, src)
  if stride0 != 1:
    raise SearchSpaceError(f"{src}: blocks[0]: the fixed first block must have stride 1")
  if blocks[0]["mobile_inverted_conv"].get("in_channels", stem) != stem:
    raise SearchSpaceError(
        f"{src}: blocks[0]: in_channels = {blocks[0]['mobile_inverted_conv']['in_channels']} "
        f"but first_conv has {stem} output channels"
    )
  widths, depths, strides, arch_ops, cur = _stages(blocks, src, first)
  where = f"{src}: feature_mix_layer"
  if _int(d["feature_mix_layer"], "in_channels", where) != cur:
    raise SearchSpaceError(
        f"{where}: in_channels = {d['feature_mix_layer']['in_channels']} but the last block "
        f"outputs {cur} channels"
    )
  tail = _int(d["feature_mix_layer"], "out_channels", where)
  where = f"{src}: classifier"
  if _int(d["classifier"], "in_features", where) != tail:
    raise SearchSpaceError(
        f"{where}: in_features = {d['classifier']['in_features']} but feature_mix_layer outputs "
        f"{tail} channels"
    )
  try:
    space = SearchSpace(
        stage_widths=tuple(widths),
        stage_depths=tuple(depths),
        stage_strides=tuple(strides),
        candidates=DEFAULT_CANDIDATES,
        stem_width=stem,
        stem_stride=_int(fc, "stride", f"{src}: first_conv"),
        first_block_width=first,
        first_block_op=op0,
        tail_width=tail,
        n_classes=_int(d["classifier"], "out_features", where),
        resolution=resolution,
        in_channels=fc.get("in_channels", 3),
    )
    arch = Arch(tuple(arch_ops))
  except SearchSpaceError as e:
    raise SearchSpaceError(f"{src}: {e}") from None
  space.check_arch(arch, source=src)
  return space, arch


def load_net_config(path: str | os.PathLike, resolution: int = 224) -> tuple[SearchSpace, Arch]:
  return from_net_config(_read_json(path), source=os.fspath(path), resolution=resolution)


def save_net_config(
    path: str | os.PathLike, space: SearchSpace, arch: Arch, name: str = "ProxylessNASNets"
) -> None:
  write_json(path, to_net_config(space, arch, name), indent=4)
