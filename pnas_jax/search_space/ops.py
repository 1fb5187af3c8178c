"""Candidate-op registry: op name -> how to build it, how to export it.

A searchable block chooses one candidate op by name ("3x3_MBConv3", "Zero", ...). This module is the
one place that maps names to Flax modules, so extending the search space is one registration:

  import flax.linen as nn
  from pnas_jax.search_space import register_op

  @register_op("3x3_Conv")
  def _conv3x3(in_ch, out_ch, stride):
    return MyConvBNReLU(out_ch, stride)   # any nn.Module mapping NHWC -> NHWC

Every MBConv "KxK_MBConvE" (K odd, E >= 1) is built on demand by a name pattern, so "9x9_MBConv4"
works without registration. "Zero" and "Identity" are valid only where the block has an identity
shortcut (stride 1, in == out width): Zero + shortcut skips the block (the paper's depth search,
Sec. 3.1 / Fig. 2 of Cai et al. 2019).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import flax.linen as nn

from pnas_jax.errors import UnknownNameError, UserValueError
from pnas_jax.layers import blocks
from pnas_jax.registry import Registry

# (in_channels, out_channels, stride) -> module mapping NHWC to NHWC. `dw_impl` is forwarded to ops
# that contain a depthwise convolution when the builder accepts it (see layers/depthwise.py).
OpBuilder = Callable[..., nn.Module]

_MBCONV_RE = re.compile(r"^(\d+)x(\d+)_MBConv(\d+)$")


@dataclasses.dataclass(frozen=True)
class OpSpec:
  """What the library knows about one candidate op.

  Attributes:
    name: the registry name.
    build: (in_ch, out_ch, stride, **kw) -> nn.Module.
    needs_identity_position: the op is only valid where the block has an identity shortcut
      (stride 1 and in == out): true for "Zero" and "Identity".
    is_zero: the op outputs zeros, so the block is skipped entirely (the shortcut carries x).
    kernel, expand: MBConv hyper-parameters (None for other ops); used by latency tables.
    to_net_config: (in_ch, out_ch, stride) -> the reference "mobile_inverted_conv" JSON dict, or None
      when the op has no representation in the reference format.
  """

  name: str
  build: OpBuilder
  needs_identity_position: bool = False
  is_zero: bool = False
  kernel: int | None = None
  expand: int | None = None
  to_net_config: Callable[[int, int, int], dict[str, Any]] | None = None
  net_config_name: str | None = None

  @property
  def is_mbconv(self) -> bool:
    return self.kernel is not None and self.expand is not None


OPS: Registry[OpSpec] = Registry("candidate op")
# net.config layer name -> (mobile_inverted_conv dict) -> op name.
_NET_CONFIG_PARSERS: dict[str, Callable[[dict[str, Any]], str]] = {}


def register_op(
    name: str,
    *,
    needs_identity_position: bool = False,
    net_config_name: str | None = None,
    to_net_config: Callable[[int, int, int], dict[str, Any]] | None = None,
    from_net_config: Callable[[dict[str, Any]], str] | None = None,
    overwrite: bool = False,
) -> Callable[[OpBuilder], OpBuilder]:
  """Decorator registering `builder(in_ch, out_ch, stride) -> nn.Module` under `name`.

  Args:
    name: the op's name in search spaces, Arch files and configs.
    needs_identity_position: restrict the op to blocks with an identity shortcut.
    net_config_name: the reference "mobile_inverted_conv".name this op is read from, if any.
    to_net_config: exporter to the reference format (see OpSpec).
    from_net_config: parser from a reference dict to this op's name (defaults to `name`).
    overwrite: allow replacing an existing registration (otherwise a clash is an error).
  """

  def decorator(builder: OpBuilder) -> OpBuilder:
    if _MBCONV_RE.match(name):
      raise ValueError(f"op name {name!r} collides with the built-in 'KxK_MBConvE' pattern")
    OPS.add(name, OpSpec(name=name, build=builder, needs_identity_position=needs_identity_position,
                         to_net_config=to_net_config, net_config_name=net_config_name),
            overwrite=overwrite)
    if net_config_name is not None:
      _NET_CONFIG_PARSERS[net_config_name] = from_net_config or (lambda _d: name)
    return builder

  return decorator


def unregister_op(name: str) -> None:
  """Removes a user registration (tests and notebooks that re-run cells)."""
  spec = OPS.remove(name)
  if spec.net_config_name is not None:
    _NET_CONFIG_PARSERS.pop(spec.net_config_name, None)


def registered_op_names() -> list[str]:
  """Explicitly registered names, plus the default MBConv grid for display."""
  grid = [f"{k}x{k}_MBConv{e}" for k in (3, 5, 7) for e in (3, 6)]
  return sorted(OPS.names()) + grid


def _mbconv_spec(name: str, kernel: int, expand: int) -> OpSpec:
  def build(in_ch: int, out_ch: int, stride: int, **kw: Any) -> nn.Module:
    return blocks.MBConv(
        out_channels=out_ch, kernel_size=kernel, expand_ratio=expand, stride=stride, **kw
    )

  def export(in_ch: int, out_ch: int, stride: int) -> dict[str, Any]:
    return {
        "name": "MBInvertedConvLayer",
        "in_channels": in_ch,
        "out_channels": out_ch,
        "kernel_size": kernel,
        "stride": stride,
        "expand_ratio": expand,
    }

  return OpSpec(name=name, build=build, kernel=kernel, expand=expand, to_net_config=export)


def get_op(name: str) -> OpSpec:
  """Looks an op up by name; raises UnknownNameError listing the valid names."""
  if not isinstance(name, str):
    raise UnknownNameError(f"op names are strings, got {name!r} ({type(name).__name__})")
  if name in OPS:
    return OPS.get(name)
  m = _MBCONV_RE.match(name)
  if m:
    kh, kw, expand = (int(g) for g in m.groups())
    if kh != kw or kh % 2 == 0 or kh < 1 or expand < 1:
      raise UnknownNameError(
          f"bad MBConv op {name!r}: kernel must be square and odd (e.g. 3x3, 5x5, 7x7) and the "
          "expand ratio >= 1, as in '5x5_MBConv6'"
      )
    return _mbconv_spec(name, kh, expand)
  raise UnknownNameError(
      f"unknown op {name!r}; valid ops: {', '.join(registered_op_names())}, or any 'KxK_MBConvE' "
      "(K odd, E >= 1). Register new ones with pnas_jax.search_space.register_op."
  )


def mbconv_name(kernel: int, expand: int) -> str:
  return f"{kernel}x{kernel}_MBConv{expand}"


def op_from_net_config(layer: dict[str, Any]) -> str:
  """Maps a reference "mobile_inverted_conv" dict to an op name."""
  if not isinstance(layer, dict) or "name" not in layer:
    raise UserValueError(f"expected a layer object with a 'name', got {layer!r}")
  lname = layer["name"]
  if lname == "MBInvertedConvLayer":
    try:
      return mbconv_name(int(layer["kernel_size"]), int(layer["expand_ratio"]))
    except KeyError as e:
      raise UserValueError(f"MBInvertedConvLayer lacks key {e.args[0]!r}") from None
  if lname in _NET_CONFIG_PARSERS:
    return _NET_CONFIG_PARSERS[lname](layer)
  raise UserValueError(
      f"unknown layer {lname!r}; known: MBInvertedConvLayer, {', '.join(sorted(_NET_CONFIG_PARSERS))}"
  )


# --- built-in non-MBConv ops -----------------------------------------------------------------


register_op(
    "Identity",
    needs_identity_position=True,
    net_config_name="IdentityLayer",
    to_net_config=lambda i, o, s: {
        "name": "IdentityLayer",
        "in_channels": i,
        "out_channels": o,
        "use_bn": False,
        "act_func": None,
        "dropout_rate": 0,
        "ops_order": "weight_bn_act",
    },
)(lambda in_ch, out_ch, stride, **kw: blocks.Identity())

register_op(
    "Zero",
    needs_identity_position=True,
    net_config_name="ZeroLayer",
    to_net_config=lambda i, o, s: {"name": "ZeroLayer", "stride": s},
)(lambda in_ch, out_ch, stride, **kw: blocks.Zero(out_channels=out_ch, stride=stride))
OPS.add("Zero", dataclasses.replace(OPS.get("Zero"), is_zero=True), overwrite=True)
