"""Measuring latency tables and whole networks on the device JAX runs on (CPU, GPU or TPU).

ProxylessNAS is "direct on target hardware" because the latency term is measured on the target
device (Sec. 3.3 of Cai et al. 2019): every candidate block at every position's input shape, plus
the fixed layers, is timed once and stored in a table (pnas_jax.latency.table), and
E[LAT] = sum of table entries weighted by the path probabilities. Whole networks are measured too,
to validate the table and to fit the predictor that learns what the sum misses
(pnas_jax.latency.predictor).

Protocol for one layer or network: random weights and input (values do not change the work done),
`jax.jit(module.apply)` at the configured batch, warm-up calls (the first compiles), then timed
calls each ended by block_until_ready; the 10th percentile (the estimate, timing.py says why) is
stored with the median, mean, variance and count. Layers
and networks are timed in chunks, round-robin within a chunk (timing.time_interleaved), so a change
of the machine's load does not bias one candidate against another. Tables and network files are
rewritten atomically after every chunk, so an interrupted run is continued by running the same
command again (entries already present are skipped).
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pnas_jax.file_io import read_json, write_json
from pnas_jax.latency.table import (
    Entry,
    LatencyTable,
    LatencyTableError,
    TableHeader,
    check_latency,
    current_header,
    load_table,
    space_keys,
)
from pnas_jax.latency.timing import Timing, time_fn, time_interleaved
from pnas_jax.layers.core import Classifier, ConvBNReLU6
from pnas_jax.layers.depthwise import resolve_impl
from pnas_jax.models import zoo
from pnas_jax.models.child import ChildNet, build_op
from pnas_jax.search_space.space import Arch, SearchSpace

NETWORKS_FORMAT = "pnas_jax.latency_networks/1"
SINGLE_THREAD_FLAGS = ("--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1")


def set_cpu_threads(threads: int | None) -> None:
  """threads=1: a one-core CPU target; None: XLA's default threading (every core).

  One core means both single-threaded kernels (XLA_FLAGS) and a process pinned to one CPU
  (sched_setaffinity). The flags alone are not enough: XLA:CPU still runs independent thunks on an
  intra-op pool with one thread per schedulable CPU, so a "single-threaded" network used both
  cores of a 2-core machine (measured here: 2.1 ms wall, 3.4 ms of process CPU time per call of
  the Fashion-MNIST baseline, split over two pool threads whose idle spinning the CPU-time clock
  also counted; medians of one network moved 1.7x between sessions). Pinned, the pool has one
  thread, wall and CPU time agree, and the 10-90% spread of the calls is about +-10%.

  Must run before JAX initialises its backend (XLA reads XLA_FLAGS and sizes its pool once);
  raises otherwise.
  """
  if threads is None:
    return
  if threads != 1:
    raise ValueError(f"cpu_threads = {threads!r}; supported: 1 (single-threaded) or None (default)")
  flags = os.environ.get("XLA_FLAGS", "").split()
  missing = [f for f in SINGLE_THREAD_FLAGS if f not in flags]
  cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
  if not missing and len(cpus) <= 1:
    return
  from jax._src import xla_bridge

  if xla_bridge.backends_are_initialized():
    raise RuntimeError(
        "cpu_threads=1 must be set before JAX starts its backend; run the command in a fresh "
        f"process, or export XLA_FLAGS='{' '.join(SINGLE_THREAD_FLAGS)}' and pin it to one CPU "
        "(taskset -c N)"
    )
  os.environ["XLA_FLAGS"] = " ".join(flags + missing)
  if len(cpus) > 1:
    os.sched_setaffinity(0, {cpus[-1]})


@dataclasses.dataclass(frozen=True)
class TimingProtocol:
  """How each layer or network is timed (see timing.py for the clocks and the interleaving).

  Layers (or networks) are processed in chunks of `chunk`: each chunk is compiled, then timed in
  interleaved rounds of `per_round` calls until every member has `repeats` samples, then saved.

  Short turns, many of them: interference from other work comes and goes within a second, so a
  network's calls should be spread over the whole session. Measured on one pinned core at batch 16
  (Fashion-MNIST space, 14 networks of ~1 ms, 200 calls each): in 4 turns of 50 calls a network's
  ratio to the baseline moved by 3.0% rms between processes (p10; 3.1% with the median); in 20 turns
  of 10 calls, by 1.0%. The first calls of a turn are slower (another network's code and weights
  are in the caches), which biased the median with 3-call turns by up to 4 points; p10 leaves them
  out: 10- and 30-call turns gave the same ratios within 1%.
  """

  batch: int = 1
  warmup: int = 3
  repeats: int = 30
  per_round: int = 10
  chunk: int = 60
  clock: str = "wall"
  dw_impl: str = "auto"
  seed: int = 0


# --- modules for the table's layers -------------------------------------------------------------


class Residual(nn.Module):
  """op(x) + x where the block has an identity shortcut (the reference's idskip:1), else op(x)."""

  op: nn.Module
  shortcut: bool

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    y = self.op(x, train=train)
    return x + y if self.shortcut else y


class Logits(nn.Module):
  """Global average pooling and the dense classifier (the reference's 'Logits' entry)."""

  n_classes: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    return Classifier(self.n_classes, name="classifier")(jnp.mean(x, axis=(1, 2)), train)


def layer_modules(
    space: SearchSpace, dw_impl: str = "auto"
) -> dict[str, tuple[nn.Module, tuple[int, int, int]]]:
  """Table key -> (module, input shape HWC) for every distinct layer of `space`, network order."""
  keys = space_keys(space)
  stem_size, stem, first = space.stem_size, space.stem_channels, space.first_block_channels
  last = space.blocks[-1]
  out: dict[str, tuple[nn.Module, tuple[int, int, int]]] = {}
  out[keys.fixed[0]] = (
      ConvBNReLU6(stem, 3, space.stem_stride),
      (space.resolution, space.resolution, space.in_channels),
  )
  out[keys.fixed[1]] = (
      build_op(space.first_block_op, stem, first, 1, dw_impl),
      (stem_size, stem_size, stem),
  )
  for b, row in zip(space.blocks, keys.blocks, strict=True):
    for op, key in zip(b.candidates, row, strict=True):
      if key is None or key in out:
        continue
      module = Residual(build_op(op, b.in_channels, b.out_channels, b.stride, dw_impl),
                        b.has_shortcut)
      out[key] = (module, (b.in_size, b.in_size, b.in_channels))
  out[keys.fixed[2]] = (
      ConvBNReLU6(space.tail_channels, 1, 1),
      (last.out_size, last.out_size, last.out_channels),
  )
  out[keys.fixed[3]] = (
      Logits(space.n_classes),
      (last.out_size, last.out_size, space.tail_channels),
  )
  return out


def random_variables(module: nn.Module, x: jax.Array, seed: int = 0) -> Any:
  """Variables of `module` filled from a seeded numpy generator, without compiling `init`.

  Weights ~ N(0, 0.1^2); BN scale and running variance 1, BN bias and running mean 0 (so the
  activations stay finite and free of denormals, which would distort CPU timings).
  """
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x, train=False))
  rng = np.random.default_rng(seed)

  def fill(path: tuple[Any, ...], s: jax.ShapeDtypeStruct) -> jax.Array:
    name = getattr(path[-1], "key", str(path[-1]))
    if name in ("scale", "var"):
      return jnp.ones(s.shape, s.dtype)
    if name in ("bias", "mean"):
      return jnp.zeros(s.shape, s.dtype)
    return jnp.asarray(rng.normal(0.0, 0.1, s.shape).astype(s.dtype))

  return jax.tree_util.tree_map_with_path(fill, shapes)


def prepare_call(
    module: nn.Module, input_shape: Sequence[int], protocol: TimingProtocol = TimingProtocol()
) -> tuple[Any, tuple[Any, ...]]:
  """(jitted `module.apply(v, x, train=False)`, (v, x)) with random weights, at protocol.batch."""
  rng = np.random.default_rng(protocol.seed)
  x = jnp.asarray(rng.normal(size=(protocol.batch, *input_shape)).astype(np.float32))
  variables = random_variables(module, x, protocol.seed)
  return jax.jit(lambda v, x: module.apply(v, x, train=False)), (variables, x)


def time_module(
    module: nn.Module, input_shape: Sequence[int], protocol: TimingProtocol = TimingProtocol()
) -> Timing:
  """Median-of-repeats latency of `module.apply(v, x, train=False)`, jitted, at protocol.batch."""
  fn, args = prepare_call(module, input_shape, protocol)
  return time_fn(fn, *args, warmup=protocol.warmup, repeats=protocol.repeats, clock=protocol.clock)


def _entry(t: Timing) -> Entry:
  return Entry(mean=t.mean_ms, var=t.var_ms2, count=t.count, median=t.median_ms, p10=t.p10_ms)


def _time_chunks(
    items: Sequence[Any],
    make_call: Callable[[Any], tuple[Any, tuple[Any, ...]]],
    protocol: TimingProtocol,
    desc: str,
    progress: bool,
    commit: Callable[[list[Any], list[Timing]], None],
) -> None:
  """Chunked, interleaved timing of `items`; `commit(chunk, timings)` after each chunk."""
  from tqdm import tqdm

  bar = tqdm(total=len(items), desc=desc, disable=not progress or not sys.stderr.isatty(),
             unit="item")
  size = max(1, protocol.chunk)
  for start in range(0, len(items), size):
    chunk = list(items[start : start + size])
    calls = [make_call(item) for item in chunk]
    timings = time_interleaved(
        calls, warmup=protocol.warmup, repeats=protocol.repeats, per_round=protocol.per_round,
        clock=protocol.clock, on_warm=lambda _i: bar.update(0.5),
    )
    bar.update(len(chunk) - 0.5 * len(chunk))
    commit(chunk, timings)
  bar.close()


def _header(protocol: TimingProtocol) -> TableHeader:
  # The implementation that runs ("auto" resolved: native and shift time differently on CPU).
  return current_header(protocol.batch, resolve_impl(protocol.dw_impl), protocol.warmup,
                        protocol.repeats, protocol.clock)


def _check_resume(old: TableHeader, new: TableHeader, path: str) -> None:
  for f in ("device", "backend", "batch", "dw_impl", "dtype", "clock", "xla_flags", "statistic"):
    if getattr(old, f) != getattr(new, f):
      raise LatencyTableError(
          f"{path} was measured with {f} = {getattr(old, f)!r} but this run has "
          f"{getattr(new, f)!r}; delete the file or write to another path (--config.table=...)"
      )


# --- tables -----------------------------------------------------------------------------------


def measure_table(
    space: SearchSpace,
    path: str | os.PathLike | None,
    protocol: TimingProtocol = TimingProtocol(),
    progress: bool = True,
    max_new: int | None = None,
) -> LatencyTable:
  """Measures every layer `space` needs on this device; resumes a half-built table at `path`.

  Args:
    space: the search space (every candidate at every position's input shape, plus fixed layers).
    path: our JSON table, rewritten after each entry (None: keep in memory only).
    protocol: batch, warm-up, repeats, depthwise implementation, seed.
    progress: show a tqdm bar (on a terminal).
    max_new: stop after this many new entries (a time budget; rerun to continue).
  """
  header = _header(protocol)
  path = None if path is None else os.fspath(path)
  if path and os.path.exists(path):
    table = load_table(path)
    _check_resume(table.header, header, path)
  else:
    table = LatencyTable(header, {}, path)
  modules = layer_modules(space, protocol.dw_impl)
  todo = [k for k in modules if k not in table]
  if max_new is not None:
    todo = todo[:max_new]

  def commit(keys: list[str], timings: list[Timing]) -> None:
    for key, t in zip(keys, timings, strict=True):
      table.entries[key] = _entry(t)
    if path:
      table.save(path)

  _time_chunks(todo, lambda k: prepare_call(*modules[k], protocol), protocol, "latency table",
               progress, commit)
  return table


# --- whole networks ---------------------------------------------------------------------------


def zoo_archs(space: SearchSpace) -> list[tuple[str, Arch]]:
  """The zoo networks' op choices placed in `space`, where they fit its blocks (deduplicated)."""
  out: dict[Arch, str] = {}
  for name, e in zoo.ZOO.items():
    try:
      space.check_arch(e.arch, strict=True)
    except ValueError:
      continue
    out.setdefault(e.arch, f"zoo:{name}")
  return [(name, arch) for arch, name in out.items()]


def network_call(
    space: SearchSpace, arch: Arch, protocol: TimingProtocol = TimingProtocol()
) -> tuple[Any, tuple[Any, ...]]:
  """The jitted inference-mode ChildNet forward and its arguments, at protocol.batch."""
  net = ChildNet(space, arch, dw_impl=protocol.dw_impl)
  return prepare_call(net, (space.resolution, space.resolution, space.in_channels), protocol)


def measure_network(
    space: SearchSpace, arch: Arch, protocol: TimingProtocol = TimingProtocol()
) -> Timing:
  """Latency of the whole ChildNet (inference mode) at protocol.batch."""
  fn, args = network_call(space, arch, protocol)
  return time_fn(fn, *args, warmup=protocol.warmup, repeats=protocol.repeats, clock=protocol.clock)


@dataclasses.dataclass
class NetworkMeasurements:
  """Measured whole-network latencies of one space on one device."""

  header: TableHeader
  space: SearchSpace
  records: list[dict[str, Any]]  # {name, ops, median, p10, mean, var, count, min}
  path: str | None = None

  def archs(self) -> list[Arch]:
    return [Arch(r["ops"]) for r in self.records]

  def latencies(self, statistic: str | None = None) -> np.ndarray:
    """Each network's latency: `statistic` of its calls (default: the header's, e.g. p10)."""
    return np.asarray([record_latency(r, statistic or self.header.statistic)
                       for r in self.records], np.float64)

  def by_name(self) -> dict[str, float]:
    """{name: latency (the header's statistic)}."""
    return {r["name"]: record_latency(r, self.header.statistic) for r in self.records}

  def summaries(self) -> dict[str, dict[str, Any]]:
    """{name: {"value", "std", "min", "sessions"}}: the latency (the header's statistic), the
    typical standard deviation of the timed calls, the fastest call, and each timing session's
    latency ([value] for a measurement of one session)."""
    values = self.by_name()
    return {r["name"]: {"value": values[r["name"]], "std": math.sqrt(r["var"]),
                        "min": float(r["min"]),
                        "sessions": [float(m) for m in r.get("sessions", [values[r["name"]]])]}
            for r in self.records}

  def save(self, path: str | os.PathLike | None = None) -> None:
    path = os.fspath(path or self.path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    d = {"format": NETWORKS_FORMAT, "header": self.header.to_dict(), "space": self.space.to_dict(),
         "networks": self.records}
    write_json(path, d, indent=1)
    self.path = path


def load_network_measurements(path: str | os.PathLike) -> NetworkMeasurements:
  path = os.fspath(path)
  d = read_json(
      path, LatencyTableError,
      "no such measurements file (make one with `pnas latency measure --config ...`)",
      what="network measurements file",
  )
  if not isinstance(d, dict) or d.get("format") != NETWORKS_FORMAT:
    raise LatencyTableError(f"{path}: 'format' is not {NETWORKS_FORMAT!r}")
  for key in ("header", "space", "networks"):
    if key not in d:
      raise LatencyTableError(f"{path}: missing key {key!r}; remeasure with `pnas latency measure`")
  if not isinstance(d["networks"], list):
    raise LatencyTableError(f"{path}: 'networks' must be a list of measured networks")
  records = [_check_record(r, f"{path}: networks[{i}]") for i, r in enumerate(d["networks"])]
  return NetworkMeasurements(
      TableHeader.from_dict(d["header"], path), SearchSpace.from_dict(d["space"], source=path),
      records, path,
  )


def record_latency(record: dict[str, Any], statistic: str) -> float:
  """`statistic` of one measured network's calls (a file from before p10 existed: its median)."""
  return float(record.get(statistic, record["median"]))


def _check_record(r: Any, where: str) -> dict[str, Any]:
  """One measured network: a name, its ops, and finite positive latencies (ms)."""
  if not isinstance(r, dict) or "ops" not in r or "median" not in r:
    raise LatencyTableError(f"{where}: a measured network is {{name, ops, median, ...}}, got {r!r}")
  where = f"{where} ({r.get('name', '?')})"
  for key in ("median", "p10", "mean", "min"):
    if key in r:
      check_latency(r[key], f"{where}: {key}")
  if "var" in r:
    check_latency(r["var"], f"{where}: var", allow_zero=True, unit="ms^2")
  return r


def measure_networks(
    space: SearchSpace,
    named_archs: Sequence[tuple[str, Arch]],
    path: str | os.PathLike | None,
    protocol: TimingProtocol = TimingProtocol(),
    progress: bool = True,
) -> NetworkMeasurements:
  """Measures each (name, arch) in one process; the file at `path` is rewritten per chunk.

  A file that already holds every requested network is kept as it is. One that lacks some (an
  interrupted run, or networks added to a finished one) is timed again whole, its networks with
  the new ones: the networks of a file are compared with each other (ratios to a baseline timed
  with them, sessions.py), and a process's speed moves every figure it times, so networks timed
  in two processes are not comparable.
  """
  header = _header(protocol)
  path = None if path is None else os.fspath(path)
  if path and os.path.exists(path):
    meas = load_network_measurements(path)
    _check_resume(meas.header, header, path)
    if meas.space != space:
      raise LatencyTableError(
          f"{path} holds networks of another search space; delete it or write elsewhere"
      )
  else:
    meas = NetworkMeasurements(header, space, [], path)
  done = {r["name"] for r in meas.records}
  todo = [(n, a) for n, a in named_archs if n not in done]
  if todo and meas.records:
    asked = {n for n, _ in named_archs}
    kept = [(r["name"], Arch(tuple(r["ops"]))) for r in meas.records if r["name"] not in asked]
    if progress:
      print(f"{path}: {len(todo)} of the {len(named_archs)} networks are new; timing all "
            f"{len(named_archs) + len(kept)} again in this process", file=sys.stderr)
    todo = [*named_archs, *kept]
    meas = NetworkMeasurements(header, space, [], path)
  for _, arch in todo:
    space.check_arch(arch, strict=True)

  def commit(chunk: list[tuple[str, Arch]], timings: list[Timing]) -> None:
    for (name, arch), t in zip(chunk, timings, strict=True):
      meas.records.append({"name": name, "ops": list(arch.ops), "median": t.median_ms,
                           "p10": t.p10_ms, "mean": t.mean_ms, "var": t.var_ms2,
                           "count": t.count, "min": t.min_ms})
    if path:
      meas.save(path)

  _time_chunks(todo, lambda item: network_call(space, item[1], protocol), protocol, "networks",
               progress, commit)
  return meas

