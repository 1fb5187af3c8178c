"""Latency lookup tables: one schema for every device, our JSON and the reference YAML.

ProxylessNAS makes latency differentiable by modelling it per layer (Sec. 3.3 of Cai et al. 2019):
E[LAT] = F(fixed layers) + sum_l sum_j p_lj * F(o_lj), with F read from a table measured on the
target device. Entries are keyed exactly as the reference implementation's tables
(docs/design.md §3.1), so our measured tables and the published Pixel 1 table (mobile_trim.yaml) share one
schema and one lookup:

  Conv-input:224x224x3-output:112x112x32                                  stem (3x3 conv, BN, ReLU6)
  expanded_conv-input:56x56x24-output:28x28x40-expand:6-kernel:5-stride:2-idskip:0   MBConv block
  Conv_1-input:7x7x320-output:7x7x1280                                   1x1 feature-mix conv
  Logits-input:7x7x1280-output:1000                                      pool + classifier

Ops that are not MBConv use their registry name as the kind
(`3x3_Conv-input:...-stride:1-idskip:1`);
Zero costs 0 and has no entry. `idskip:1` marks a block with an identity shortcut (the residual add
is part of the measured block). Each entry holds count, mean and var (ms, ms^2) and, for our
measurements, the median and the 10th percentile (p10, the statistic the lookups of our tables use:
robust to interference from other jobs, pnas_jax/latency/timing.py); reference entries use mean.

Our JSON file:

  {"format": "pnas_jax.latency_table/1",
   "header": {"device", "backend", "batch", "jax_version", "date", "dtype", "dw_impl", "statistic",
              "source", "warmup", "repeats", "clock", "xla_flags", "sessions"},
   "entries": {key: {"count", "mean", "var", "median", "p10"}}}
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import math
import os
import re
from collections.abc import Iterator
from typing import Any

import jax

from pnas_jax.errors import UserValueError
from pnas_jax.file_io import read_json, read_text, write_json
from pnas_jax.latency.expected import CostTable
from pnas_jax.latency.timing import device_description
from pnas_jax.search_space import ops as ops_lib
from pnas_jax.search_space.space import SearchSpace

TABLE_FORMAT = "pnas_jax.latency_table/1"
# What a table's or networks file's latency is (its header's `statistic`): "p10" for our
# measurements (the 10th percentile of the timed calls; timing.py says why), "median" for older
# ones, "mean" for the reference's tables.
STATISTICS = ("p10", "median", "mean")
MEASURED_STATISTIC = "p10"


class LatencyTableError(UserValueError):
  """A latency table that cannot be read, lacks a key, holds a bad value, or does not fit the search."""


def check_latency(value: Any, where: str, *, allow_zero: bool = False, unit: str = "ms") -> float:
  """`value` as a float; LatencyTableError naming `where` (the file and the key) unless it is a
  finite number > 0 (>= 0 with allow_zero, e.g. a Zero candidate's cost)."""
  try:
    v = float(value)
  except (TypeError, ValueError):
    v = math.nan
    shown = repr(value)
  else:
    shown = f"{v:g} {unit}"
  ok = math.isfinite(v) and (v >= 0 if allow_zero else v > 0)
  if not ok:
    need = "a finite number >= 0" if allow_zero else "a finite latency > 0"
    raise LatencyTableError(
        f"{where} = {shown}: must be {need}. Remeasure it (delete the entry or the file and rerun "
        "the command that wrote it) or correct the value."
    )
  return v


def check_finite(value: Any, where: str) -> float:
  """`value` as a float; LatencyTableError naming `where` unless it is finite (predictor weights)."""
  try:
    v = float(value)
  except (TypeError, ValueError):
    v = math.nan
  if not math.isfinite(v):
    raise LatencyTableError(
        f"{where} = {value!r}: must be a finite number; refit the predictor with `pnas latency fit`"
    )
  return v


# --- keys ------------------------------------------------------------------------------------


def _shape(*dims: int) -> str:
  return "x".join(str(int(d)) for d in dims)


def conv_key(in_size: int, in_ch: int, out_size: int, out_ch: int) -> str:
  """The stem convolution (3x3 conv, BN, ReLU6)."""
  return f"Conv-input:{_shape(in_size, in_size, in_ch)}-output:{_shape(out_size, out_size, out_ch)}"


def feature_mix_key(size: int, in_ch: int, out_ch: int) -> str:
  """The 1x1 conv (BN, ReLU6) before pooling."""
  return f"Conv_1-input:{_shape(size, size, in_ch)}-output:{_shape(size, size, out_ch)}"


def logits_key(size: int, in_ch: int, n_classes: int) -> str:
  """Global average pooling and the dense classifier."""
  return f"Logits-input:{_shape(size, size, in_ch)}-output:{n_classes}"


def block_key(
    op: str, in_size: int, in_ch: int, out_size: int, out_ch: int, stride: int, idskip: bool
) -> str | None:
  """Key of one block running `op` (None for Zero, which costs nothing)."""
  spec = ops_lib.get_op(op)
  if spec.is_zero:
    return None
  shapes = f"input:{_shape(in_size, in_size, in_ch)}-output:{_shape(out_size, out_size, out_ch)}"
  if spec.is_mbconv:
    return (
        f"expanded_conv-{shapes}-expand:{spec.expand}-kernel:{spec.kernel}-stride:{stride}"
        f"-idskip:{int(idskip)}"
    )
  return f"{op}-{shapes}-stride:{stride}-idskip:{int(idskip)}"


_KEY_RE = re.compile(
    r"^(?P<kind>[^-]+)-input:(?P<input>[\dx]+)-output:(?P<output>[\dx]+)(?P<rest>.*)$"
)


def parse_key(key: str) -> dict[str, Any]:
  """'expanded_conv-input:56x56x24-...' -> {kind, input: (56, 56, 24), output, expand, ...}."""
  m = _KEY_RE.match(key)
  if not m:
    raise LatencyTableError(
        f"malformed latency-table key {key!r}; expected 'KIND-input:HxWxC-output:HxWxC[-name:v...]'"
    )
  out: dict[str, Any] = {
      "kind": m["kind"],
      "input": tuple(int(v) for v in m["input"].split("x")),
      "output": tuple(int(v) for v in m["output"].split("x")),
  }
  for part in filter(None, m["rest"].split("-")):
    name, _, value = part.partition(":")
    if not value.isdigit():
      raise LatencyTableError(
          f"malformed latency-table key {key!r}: field {part!r} is not 'name:int'"
      )
    out[name] = int(value)
  return out


@dataclasses.dataclass(frozen=True)
class SpaceKeys:
  """Every table key a search space needs: the fixed layers and each block's candidates."""

  fixed: tuple[str, ...]  # stem, first block, feature mix, logits
  blocks: tuple[tuple[str | None, ...], ...]  # [block][candidate] -> key (None for Zero)

  def all_keys(self) -> list[str]:
    """Distinct keys in network order (repeated blocks of a stage share a key)."""
    seen: dict[str, None] = dict.fromkeys(self.fixed[:2])
    for row in self.blocks:
      seen.update(dict.fromkeys(k for k in row if k is not None))
    seen.update(dict.fromkeys(self.fixed[2:]))
    return list(seen)


def space_keys(space: SearchSpace) -> SpaceKeys:
  """The keys of `space`'s layers, in the reference implementation's naming."""
  stem, first = space.stem_channels, space.first_block_channels
  size = space.stem_size
  fixed_first = block_key(space.first_block_op, size, stem, size, first, 1, False)
  last = space.blocks[-1]
  fixed = (
      conv_key(space.resolution, space.in_channels, size, stem),
      fixed_first,
      feature_mix_key(last.out_size, last.out_channels, space.tail_channels),
      logits_key(last.out_size, space.tail_channels, space.n_classes),
  )
  blocks = tuple(
      tuple(
          block_key(op, b.in_size, b.in_channels, b.out_size, b.out_channels, b.stride,
                    b.has_shortcut)
          for op in b.candidates
      )
      for b in space.blocks
  )
  return SpaceKeys(fixed=fixed, blocks=blocks)


# --- entries and header ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Entry:
  """Latency statistics of one layer in milliseconds (var in ms^2)."""

  mean: float
  var: float = 0.0
  count: int = 1
  median: float | None = None
  p10: float | None = None  # the 10th percentile of the timed calls

  def value(self, statistic: str = "median") -> float:
    """The statistic asked for (the table header's) when measured, else the mean."""
    measured = {"median": self.median, "p10": self.p10}.get(statistic)
    return self.mean if measured is None else measured

  def to_dict(self) -> dict[str, Any]:
    d = {"count": self.count, "mean": self.mean, "var": self.var}
    for key in ("median", "p10"):
      if getattr(self, key) is not None:
        d[key] = getattr(self, key)
    return d

  @classmethod
  def from_dict(cls, d: Any, where: str) -> Entry:
    if not isinstance(d, dict) or "mean" not in d:
      raise LatencyTableError(f"{where}: an entry is {{count, mean, var[, median, p10]}}, got {d!r}")
    mean = check_latency(d["mean"], f"{where}: mean")
    median, p10 = (None if d.get(k) is None else check_latency(d[k], f"{where}: {k}")
                   for k in ("median", "p10"))
    var = check_latency(d.get("var", 0.0), f"{where}: var", allow_zero=True, unit="ms^2")
    count = d.get("count", 1)
    if (isinstance(count, bool) or not isinstance(count, (int, float)) or not count >= 1
        or not float(count).is_integer()):
      raise LatencyTableError(f"{where}: count = {count!r} must be an integer >= 1")
    return cls(mean=mean, var=var, count=int(count), median=median, p10=p10)


@dataclasses.dataclass(frozen=True)
class TableHeader:
  """Where and how a table was measured."""

  device: str
  backend: str
  batch: int = 1
  jax_version: str | None = None
  date: str | None = None
  dtype: str = "float32"
  dw_impl: str | None = None
  statistic: str = "median"
  source: str | None = None
  warmup: int | None = None
  repeats: int | None = None
  clock: str = "wall"
  xla_flags: str | None = None
  sessions: int = 1  # timing processes whose medians were merged (pnas_jax/latency/sessions.py)

  def __post_init__(self):
    if self.statistic not in STATISTICS:
      raise LatencyTableError(
          f"table header statistic = {self.statistic!r}; valid: {', '.join(STATISTICS)}"
      )

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Any, where: str) -> TableHeader:
    valid = {f.name for f in dataclasses.fields(cls)}
    if not isinstance(d, dict):
      raise LatencyTableError(f"{where}: 'header' must be an object, got {d!r}")
    unknown = sorted(set(d) - valid)
    if unknown:
      raise LatencyTableError(f"{where}: unknown header field(s) {unknown}; valid: {sorted(valid)}")
    for k in ("device", "backend"):
      if k not in d:
        raise LatencyTableError(f"{where}: header lacks {k!r}")
    return cls(**d)


def current_header(
    batch: int, dw_impl: str | None, warmup: int, repeats: int, clock: str = "wall"
) -> TableHeader:
  """A header describing the device JAX runs on now (and XLA_FLAGS, e.g. CPU thread settings)."""
  return TableHeader(
      device=device_description(),
      backend=jax.default_backend(),
      batch=batch,
      jax_version=jax.__version__,
      date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
      dw_impl=dw_impl,
      statistic=MEASURED_STATISTIC,
      warmup=warmup,
      repeats=repeats,
      clock=clock,
      xla_flags=os.environ.get("XLA_FLAGS") or None,
  )


# --- the table -------------------------------------------------------------------------------


@dataclasses.dataclass
class LatencyTable:
  """A header and entries keyed as in the module docstring; `path` names it in errors."""

  header: TableHeader
  entries: dict[str, Entry] = dataclasses.field(default_factory=dict)
  path: str | None = None

  def __contains__(self, key: str) -> bool:
    return key in self.entries

  def __len__(self) -> int:
    return len(self.entries)

  def __iter__(self) -> Iterator[str]:
    return iter(self.entries)

  @property
  def name(self) -> str:
    return f"latency table {self.path or '<memory>'} ({self.header.device})"

  def nearest_keys(self, key: str, n: int = 3) -> list[str]:
    return difflib.get_close_matches(key, list(self.entries), n=n, cutoff=0.0)

  def lookup(self, key: str) -> float:
    """Milliseconds for `key`; a missing key raises naming it and the nearest keys present."""
    if key not in self.entries:
      near = self.nearest_keys(key)
      raise LatencyTableError(
          f"{self.name} has no entry {key!r}; nearest keys present: {near or 'none (empty)'}"
      )
    return self.entries[key].value(self.header.statistic)

  def to_dict(self) -> dict[str, Any]:
    return {
        "format": TABLE_FORMAT,
        "header": self.header.to_dict(),
        "entries": {k: e.to_dict() for k, e in self.entries.items()},
    }

  def save(self, path: str | os.PathLike | None = None) -> None:
    """Writes our JSON atomically (tmp file + os.replace): an interrupted run keeps a valid file."""
    path = os.fspath(path or self.path)
    if not path:
      raise LatencyTableError("LatencyTable.save: no path given and the table has none")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json(path, self.to_dict(), indent=1)
    self.path = path


def table_from_dict(d: Any, source: str = "<table>") -> LatencyTable:
  if not isinstance(d, dict) or d.get("format") != TABLE_FORMAT:
    got = d.get("format") if isinstance(d, dict) else type(d).__name__
    raise LatencyTableError(
        f"{source}: 'format' is {got!r}, expected {TABLE_FORMAT!r} (or a reference .yaml table)"
    )
  header = TableHeader.from_dict(d.get("header"), source)
  raw = d.get("entries")
  if not isinstance(raw, dict):
    raise LatencyTableError(f"{source}: 'entries' must be an object of key -> entry")
  entries = {k: Entry.from_dict(v, f"{source}: entry {k!r}") for k, v in raw.items()}
  return LatencyTable(header, entries, source)


def read_reference_yaml(path: str | os.PathLike, device: str = "Pixel 1") -> LatencyTable:
  """Reads the reference implementation's YAML table ({key: {count, mean, var}}, ms)."""
  import yaml

  path = os.fspath(path)
  text = read_text(path, "latency table", error=LatencyTableError, missing="no such latency table")
  try:
    raw = yaml.safe_load(text)
  except yaml.YAMLError as e:
    raise LatencyTableError(f"{path}: not valid YAML ({e})") from None
  if not isinstance(raw, dict) or not raw:
    raise LatencyTableError(f"{path}: a reference table maps keys to {{count, mean, var}}")
  entries = {k: Entry.from_dict(v, f"{path}: entry {k!r}") for k, v in raw.items()}
  for k in entries:
    parse_key(k)
  header = TableHeader(
      device=device, backend="reference", batch=1, statistic="mean", source=os.path.basename(path)
  )
  return LatencyTable(header, entries, path)


def load_table(path: str | os.PathLike) -> LatencyTable:
  """Reads our JSON table or a reference YAML table (by extension: .yaml/.yml or .json)."""
  path = os.fspath(path)
  if path.endswith((".yaml", ".yml")):
    return read_reference_yaml(path)
  d = read_json(
      path, LatencyTableError,
      "no such latency table (measure one with `pnas latency measure --config ...`)",
      what="latency table",
  )
  return table_from_dict(d, path)


# --- checks and the cost table used by search ---------------------------------------------------


def check_header(
    header: TableHeader,
    *,
    device: str | None = None,
    backend: str | None = None,
    batch: int | None = None,
    source: str = "latency table",
) -> None:
  """Raises unless the header matches what the search asks for (None = not checked).

  `device` matches when it is a case-insensitive substring of the header's device; the special
  value "local" means the device JAX runs on now (backend and description must both match).
  """
  if device == "local":
    device, backend = device_description(), backend or jax.default_backend()
  problems = []
  if device is not None and device.lower() not in header.device.lower():
    problems.append(f"device is {header.device!r}, the search asks for {device!r}")
  if backend is not None and backend != header.backend:
    problems.append(f"backend is {header.backend!r}, the search asks for {backend!r}")
  if batch is not None and batch != header.batch:
    problems.append(f"batch is {header.batch}, the search asks for {batch}")
  if problems:
    raise LatencyTableError(
        f"{source} does not fit this search: {'; '.join(problems)}. Measure a table on the target "
        "device with `pnas latency measure --config configs/latency/<name>.py`, or change the "
        "search config's latency device/backend/batch."
    )


def cost_table(table: LatencyTable, space: SearchSpace) -> CostTable:
  """The per-candidate latencies of `space` from `table` (ms), aligned with `space.blocks`.

  Every key is looked up before anything is jitted; the error names the first missing key, the
  block it belongs to, the nearest keys present, and how many keys are missing in all (a table
  for another resolution or width misses most of them).
  """
  keys = space_keys(space)
  missing = [k for k in keys.all_keys() if k not in table]
  if missing:
    first = missing[0]
    where = "fixed layer"
    for b, row in zip(space.blocks, keys.blocks, strict=True):
      if first in row:
        where = f"block {b.index} ({b.candidates[row.index(first)]})"
        break
    raise LatencyTableError(
        f"{table.name} has no entry {first!r} for {where}; nearest keys present: "
        f"{table.nearest_keys(first)}. {len(missing)} of {len(keys.all_keys())} keys this search "
        f"space (resolution {space.resolution}, width_mult {space.width_mult}) needs are missing: "
        "the table was measured for another space or shape; measure one with "
        "`pnas latency measure --config ...`."
    )
  return CostTable(
      fixed=float(sum(table.lookup(k) for k in keys.fixed if k is not None)),
      per_block=tuple(
          tuple(0.0 if k is None else table.lookup(k) for k in row) for row in keys.blocks
      ),
      candidates=tuple(b.candidates for b in space.blocks),
      unit="ms",
  )
