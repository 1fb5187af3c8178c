"""The published ProxylessNAS networks and MobileNetV2, buildable by name.

Architectures are those of Cai et al. 2019 (Fig. 4 / the released models); widths per the released
models (proxyless_mobile's first stage is 32 wide, not the search space's 24). Published numbers are
kept with each entry so reports can put ours next to the paper's.
"""

from __future__ import annotations

import dataclasses
import os

from pnas_jax.errors import UnknownNameError
from pnas_jax.search_space import io as ss_io
from pnas_jax.search_space.space import Arch, SearchSpace, SearchSpaceError


@dataclasses.dataclass(frozen=True)
class ZooEntry:
  name: str
  space: SearchSpace
  arch: Arch
  dropout_rate: float
  params: int  # published trainable parameters (224x224, 1000 classes)
  macs_m: float  # published multiply-accumulates, millions
  top1: float | None  # published ImageNet top-1 (%)
  latency: str | None  # published latency and device


def _ops(*stages: str) -> tuple[str, ...]:
  return tuple(op for stage in stages for op in stage.split())


_MOBILE_OPS = _ops(
    "5x5_MBConv3 3x3_MBConv3 Zero Zero",
    "7x7_MBConv3 3x3_MBConv3 5x5_MBConv3 5x5_MBConv3",
    "7x7_MBConv6 5x5_MBConv3 5x5_MBConv3 5x5_MBConv3",
    "5x5_MBConv6 5x5_MBConv3 5x5_MBConv3 5x5_MBConv3",
    "7x7_MBConv6 7x7_MBConv6 7x7_MBConv3 7x7_MBConv3",
    "7x7_MBConv6",
)
_GPU_OPS = _ops(
    "5x5_MBConv3 Zero Zero Zero",
    "7x7_MBConv3 Zero Zero 3x3_MBConv3",
    "7x7_MBConv6 Zero Zero 5x5_MBConv3",
    "5x5_MBConv6 Zero 3x3_MBConv3 5x5_MBConv3",
    "7x7_MBConv6 7x7_MBConv6 7x7_MBConv6 5x5_MBConv6",
    "7x7_MBConv6",
)
_CPU_OPS = _ops(
    "3x3_MBConv6 3x3_MBConv3 3x3_MBConv3 3x3_MBConv3",
    "3x3_MBConv6 3x3_MBConv3 3x3_MBConv3 5x5_MBConv3",
    "3x3_MBConv6 Zero Zero 3x3_MBConv3",
    "5x5_MBConv6 3x3_MBConv3 3x3_MBConv3 3x3_MBConv3",
    "5x5_MBConv6 5x5_MBConv3 5x5_MBConv3 3x3_MBConv3",
    "5x5_MBConv6",
)


def _space(stem: int, first: int, widths: tuple[int, ...], tail: int) -> SearchSpace:
  return SearchSpace(stage_widths=widths, stem_width=stem, first_block_width=first, tail_width=tail)


_MBV2_SPACE = SearchSpace(
    stage_widths=(24, 32, 64, 96, 160, 320), stage_depths=(2, 3, 4, 3, 3, 1)
)

ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry(
            "proxyless_mobile", _space(32, 16, (32, 40, 80, 96, 192, 320), 1280), Arch(_MOBILE_OPS),
            0.1, 4_080_512, 320.4, 74.6, "78 ms Pixel 1",
        ),
        ZooEntry(
            "proxyless_mobile_14", _space(48, 24, (40, 56, 112, 136, 256, 448), 1792),
            Arch(_MOBILE_OPS), 0.3, 6_857_568, 580.9, 76.7, "147 ms Pixel 1",
        ),
        ZooEntry(
            "proxyless_gpu", _space(40, 24, (32, 56, 112, 128, 256, 432), 1728), Arch(_GPU_OPS),
            0.3, 7_119_848, 465.3, 75.1, "5.1 ms V100",
        ),
        ZooEntry(
            "proxyless_cpu", _space(40, 24, (32, 48, 88, 104, 216, 360), 1432), Arch(_CPU_OPS),
            0.2, 4_361_648, 439.2, 75.3, "138.7 ms Xeon",
        ),
        ZooEntry(
            "mobilenet_v2", _MBV2_SPACE, Arch.uniform(_MBV2_SPACE, "3x3_MBConv6"),
            0.2, 3_504_872, 300.8, 72.0, "75 ms Pixel 1 (paper's Table 2)",
        ),
    )
}


def get(name: str) -> ZooEntry:
  if name not in ZOO:
    raise UnknownNameError(f"unknown zoo network {name!r}; available: {', '.join(ZOO)}")
  return ZOO[name]


def resolve_network(
    ref: str, resolution: int | None = None, n_classes: int | None = None
) -> tuple[SearchSpace, Arch]:
  """A zoo name, an arch.json or a net.config path -> (space, arch), optionally re-sized."""
  if ref in ZOO:
    space, arch = ZOO[ref].space, ZOO[ref].arch
  elif os.path.exists(ref):
    space, arch = ss_io.load_arch(ref)
  else:
    raise SearchSpaceError(
        f"{ref!r} is neither a zoo network ({', '.join(ZOO)}) nor an existing arch.json/net.config"
    )
  kw = {}
  if resolution is not None:
    kw["resolution"] = resolution
  if n_classes is not None:
    kw["n_classes"] = n_classes
  return (space.replace(**kw) if kw else space), arch
