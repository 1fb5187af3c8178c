"""SearchSpace (the over-parameterised network's layout) and Arch (one op per searchable block).

The default space is the paper's ImageNet space (Sec. 4.1 / Appendix of Cai et al. 2019): a 3x3
stride-2 stem, a fixed MBConv(k3, e1) first block, then six stages of searchable blocks, widths
24/40/80/96/192/320, depths 4/4/4/4/4/1, first-block strides 2/2/2/1/2/1 (21 searchable blocks), each
choosing among MBConv {3,5,7} x {3,6}, plus Zero where the block has an identity shortcut, and a
1x1 conv to 1280 before pooling and the classifier.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

from pnas_jax.errors import UnknownNameError, UserValueError
from pnas_jax.layers.depthwise import output_size  # the padding rule of every conv here
from pnas_jax.search_space import ops as ops_lib

DEFAULT_CANDIDATES = (
    "3x3_MBConv3",
    "3x3_MBConv6",
    "5x5_MBConv3",
    "5x5_MBConv6",
    "7x7_MBConv3",
    "7x7_MBConv6",
)


class SearchSpaceError(UserValueError):
  """Invalid search space, architecture or file; the message names the source and the value."""


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
  """Rounds a width to a multiple of `divisor` (the reference / MobileNetV2 rule).

  w' = max(min_value, int(v + divisor / 2) // divisor * divisor), plus `divisor` if that is below
  0.9 * v, so rounding never removes more than 10% of the channels.
  """
  min_value = divisor if min_value is None else min_value
  new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
  if new_v < 0.9 * v:
    new_v += divisor
  return new_v


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One searchable block of a space, with every shape it sees."""

  index: int  # 0-based among searchable blocks.
  stage: int
  in_channels: int
  out_channels: int
  stride: int
  in_size: int  # input height == width (square inputs).
  out_size: int
  candidates: tuple[str, ...]

  @property
  def has_shortcut(self) -> bool:
    """Identity shortcut: stride 1 and in == out (where Zero/Identity are valid)."""
    return self.stride == 1 and self.in_channels == self.out_channels


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


@dataclasses.dataclass(frozen=True)
class SearchSpace:
  """The search space; immutable, hashable (usable as a Flax module field), validated on creation.

  Widths given here are the width-multiplier-1.0 widths; the `*_channels` properties apply
  `width_mult` with `make_divisible` (no rounding when width_mult == 1.0, so explicit widths such as
  the published nets' are kept exactly). The tail width only grows (mult > 1), as in the reference.
  """

  stage_widths: tuple[int, ...] = (24, 40, 80, 96, 192, 320)
  stage_depths: tuple[int, ...] = (4, 4, 4, 4, 4, 1)
  stage_strides: tuple[int, ...] = (2, 2, 2, 1, 2, 1)
  candidates: tuple[str, ...] = DEFAULT_CANDIDATES
  zero_allowed: bool = True
  stem_width: int = 32
  stem_stride: int = 2
  first_block_width: int = 16
  first_block_op: str = "3x3_MBConv1"
  tail_width: int = 1280
  width_mult: float = 1.0
  n_classes: int = 1000
  resolution: int = 224
  in_channels: int = 3

  def __post_init__(self):
    # Lists from JSON/configs become tuples so the space stays hashable.
    for f in ("stage_widths", "stage_depths", "stage_strides", "candidates"):
      v = getattr(self, f)
      if isinstance(v, str) or not isinstance(v, Sequence):
        raise SearchSpaceError(f"SearchSpace.{f} must be a list, got {v!r}")
      object.__setattr__(self, f, tuple(v))
    n = len(self.stage_widths)
    if n == 0:
      raise SearchSpaceError("SearchSpace.stage_widths is empty: a space needs at least one stage")
    for f in ("stage_depths", "stage_strides"):
      if len(getattr(self, f)) != n:
        raise SearchSpaceError(
            f"SearchSpace.{f} has {len(getattr(self, f))} entries but stage_widths has {n}: "
            "give one width, depth and stride per stage"
        )
    for f in ("stage_widths", "stage_depths"):
      for i, v in enumerate(getattr(self, f)):
        if not _is_int(v) or v < 1:
          raise SearchSpaceError(f"SearchSpace.{f}[{i}] = {v!r}: must be a positive integer")
    for i, v in enumerate(self.stage_strides):
      if v not in (1, 2):
        raise SearchSpaceError(f"SearchSpace.stage_strides[{i}] = {v!r}: must be 1 or 2")
    for f in ("stem_width", "first_block_width", "tail_width", "n_classes", "resolution",
              "in_channels", "stem_stride"):
      v = getattr(self, f)
      if not _is_int(v) or v < 1:
        raise SearchSpaceError(f"SearchSpace.{f} = {v!r}: must be a positive integer")
    if not isinstance(self.width_mult, (int, float)) or not self.width_mult > 0:
      raise SearchSpaceError(f"SearchSpace.width_mult = {self.width_mult!r}: must be > 0")
    object.__setattr__(self, "width_mult", float(self.width_mult))
    if not self.candidates:
      raise SearchSpaceError("SearchSpace.candidates is empty: give at least one op name")
    if len(set(self.candidates)) != len(self.candidates):
      raise SearchSpaceError(f"SearchSpace.candidates has duplicates: {list(self.candidates)}")
    for i, name in enumerate(self.candidates):
      try:
        ops_lib.get_op(name)
      except UnknownNameError as e:
        raise SearchSpaceError(f"SearchSpace.candidates[{i}]: {e}") from None
    try:
      first = ops_lib.get_op(self.first_block_op)
    except UnknownNameError as e:
      raise SearchSpaceError(f"SearchSpace.first_block_op: {e}") from None
    if first.needs_identity_position:
      raise SearchSpaceError(f"SearchSpace.first_block_op = {self.first_block_op!r} cannot be skipped")
    size = self.stem_size
    for stride in self.stage_strides:
      size = math.ceil(size / stride)
    if size < 1:
      raise SearchSpaceError(f"SearchSpace.resolution = {self.resolution} is too small")
    for b in self.blocks:
      if not b.candidates:
        raise SearchSpaceError(
            f"block {b.index} (stage {b.stage}, stride {b.stride}, {b.in_channels}->{b.out_channels})"
            f" has no valid candidate: {list(self.candidates)} are all identity-only ops"
        )

  # --- widths -------------------------------------------------------------------------------

  def scale(self, width: int) -> int:
    return width if self.width_mult == 1.0 else make_divisible(width * self.width_mult)

  @property
  def stem_channels(self) -> int:
    return self.scale(self.stem_width)

  @property
  def first_block_channels(self) -> int:
    return self.scale(self.first_block_width)

  @property
  def tail_channels(self) -> int:
    if self.width_mult > 1.0:
      return make_divisible(self.tail_width * self.width_mult)
    return self.tail_width

  @property
  def stem_size(self) -> int:
    return output_size(self.resolution, 3, self.stem_stride)

  # --- blocks -------------------------------------------------------------------------------

  @property
  def blocks(self) -> tuple[BlockSpec, ...]:
    """Every searchable block, in order, with shapes and the per-block candidate list."""
    out = []
    in_ch, size = self.first_block_channels, self.stem_size
    for stage, (w, d, s) in enumerate(
        zip(self.stage_widths, self.stage_depths, self.stage_strides, strict=True)
    ):
      out_ch = self.scale(w)
      for j in range(d):
        stride = s if j == 0 else 1
        out_size = output_size(size, 3, stride)
        shortcut = stride == 1 and in_ch == out_ch
        cands = tuple(
            c
            for c in self.candidates
            if shortcut or not ops_lib.get_op(c).needs_identity_position
        )
        if shortcut and self.zero_allowed and "Zero" not in cands:
          cands = cands + ("Zero",)
        out.append(BlockSpec(len(out), stage, in_ch, out_ch, stride, size, out_size, cands))
        in_ch, size = out_ch, out_size
    return tuple(out)

  @property
  def n_blocks(self) -> int:
    return sum(self.stage_depths)

  @property
  def final_size(self) -> int:
    return self.blocks[-1].out_size

  def check_arch(self, arch: Arch, source: str | None = None, strict: bool = False) -> None:
    """Raises SearchSpaceError (naming source, block index and op) if arch does not fit the space.

    strict=True also requires every op to be one of the block's candidates (search results);
    otherwise any registered op valid at that position is accepted (retraining any network).
    """
    where = f"{source}: " if source else ""
    if len(arch.ops) != self.n_blocks:
      raise SearchSpaceError(
          f"{where}architecture has {len(arch.ops)} blocks but the search space has "
          f"{self.n_blocks} searchable blocks (stage depths {list(self.stage_depths)})"
      )
    for b, name in zip(self.blocks, arch.ops, strict=True):
      spec = ops_lib.get_op(name)
      if spec.needs_identity_position and not b.has_shortcut:
        raise SearchSpaceError(
            f"{where}block {b.index}: op {name!r} needs an identity shortcut (stride 1, in == out) "
            f"but this block has stride {b.stride}, {b.in_channels}->{b.out_channels} channels"
        )
      if strict and name not in b.candidates:
        raise SearchSpaceError(
            f"{where}block {b.index}: op {name!r} is not a candidate here; candidates: "
            f"{list(b.candidates)}"
        )

  # --- I/O ----------------------------------------------------------------------------------

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    for k, v in d.items():
      if isinstance(v, tuple):
        d[k] = list(v)
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any], source: str | None = None) -> SearchSpace:
    where = f"{source}: " if source else ""
    if not isinstance(d, dict):
      raise SearchSpaceError(f"{where}a search space is a JSON object, got {type(d).__name__}")
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - valid)
    if unknown:
      raise SearchSpaceError(
          f"{where}unknown search-space key(s) {unknown}; valid keys: {sorted(valid)}"
      )
    try:
      return cls(**d)
    except SearchSpaceError as e:
      raise SearchSpaceError(f"{where}{e}") from None

  def replace(self, **kw: Any) -> SearchSpace:
    return dataclasses.replace(self, **kw)


@dataclasses.dataclass(frozen=True)
class Arch:
  """One op name per searchable block ("Zero" = the block is skipped). Immutable and hashable."""

  ops: tuple[str, ...]

  def __post_init__(self):
    if isinstance(self.ops, str) or not isinstance(self.ops, Sequence):
      raise SearchSpaceError(f"Arch.ops must be a list of op names, got {self.ops!r}")
    object.__setattr__(self, "ops", tuple(self.ops))
    if not self.ops:
      raise SearchSpaceError("Arch.ops is empty")
    for i, name in enumerate(self.ops):
      try:
        ops_lib.get_op(name)
      except UnknownNameError as e:
        raise SearchSpaceError(f"block {i}: {e}") from None

  @classmethod
  def uniform(cls, space: SearchSpace, op: str) -> Arch:
    """Every block set to `op`, where valid; blocks where it is not valid keep their first candidate."""
    spec = ops_lib.get_op(op)
    return cls(
        tuple(
            op if (b.has_shortcut or not spec.needs_identity_position) else b.candidates[0]
            for b in space.blocks
        )
    )

  def __len__(self) -> int:
    return len(self.ops)

  def to_json(self) -> str:
    return json.dumps(list(self.ops))
