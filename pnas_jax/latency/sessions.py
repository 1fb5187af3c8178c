"""Timing in several processes: the median over timing sessions of every table entry and network.

On a CPU shared with other work, one process's timings are not a stable yardstick: interference
from outside (other VMs on the host, the other core's job) comes in bursts, and a process that
runs through a noisy stretch is slower in all its figures, some networks more than others.
timing.py's 10th percentile over many short turns removes most of it within a process; what is
left still moved the Fashion-MNIST baseline's p10 by 9% between the three sessions of one
predictor measurement (1.505, 1.375, 1.413 ms, 2026-11-30, one pinned core, batch 16), and other
networks' ratios to it by up to 5.7%. The median over sessions discards the odd one out.

A measurement therefore runs in `sessions` fresh processes. Session k writes its own files
(session_path(path, k), each resumable), and the files at the given paths hold the merge
(docs/design.md §3.2):

  p10, median = the median over the sessions of each session's p10, median   (lookups use p10)
  mean = mean of the sessions' means,  var = median of their variances,  count = sum of counts
  min  = the fastest call of any session (networks),  sessions = each session's latency (p10)

With one session the measurement is written to the given paths directly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pnas_jax.compile_cache import enable_compilation_cache
from pnas_jax.errors import UserValueError
from pnas_jax.latency import measure
from pnas_jax.latency.measure import NetworkMeasurements, TimingProtocol, record_latency
from pnas_jax.latency.table import Entry, LatencyTable, load_table
from pnas_jax.search_space.space import Arch, SearchSpace

DEFAULT_SESSIONS = 3


def session_path(path: str, session: int) -> str:
  """Where session `session` (1-based) of a multi-session measurement writes `path`'s data."""
  root, ext = os.path.splitext(path)
  return f"{root}.session{session}{ext or '.json'}"


@dataclasses.dataclass(frozen=True)
class TimingJob:
  """What one timing process measures: `space`'s latency table and/or named whole networks.

  table / networks: output paths (None: not measured). cpu_threads: measure.set_cpu_threads's
  argument, applied in the process that times (1: one pinned core, single-threaded XLA).
  """

  space: SearchSpace
  protocol: TimingProtocol
  table: str | None = None
  networks: str | None = None
  named_archs: tuple[tuple[str, Arch], ...] = ()
  cpu_threads: int | None = None
  progress: bool = True

  def in_session(self, session: int) -> TimingJob:
    """This job writing session `session`'s files."""
    return dataclasses.replace(
        self, table=self.table and session_path(self.table, session),
        networks=self.networks and session_path(self.networks, session))

  def run_here(self) -> None:
    """Times the job in this process (pinned first when cpu_threads asks; before JAX starts)."""
    measure.set_cpu_threads(self.cpu_threads)
    if self.table:
      measure.measure_table(self.space, self.table, self.protocol, self.progress)
    if self.networks and self.named_archs:
      measure.measure_networks(self.space, list(self.named_archs), self.networks, self.protocol,
                               self.progress)

  def to_json(self) -> str:
    return json.dumps({"space": self.space.to_dict(), "protocol": dataclasses.asdict(self.protocol),
                       "table": self.table, "networks": self.networks,
                       "named_archs": [[n, list(a.ops)] for n, a in self.named_archs],
                       "cpu_threads": self.cpu_threads, "progress": self.progress})

  @classmethod
  def from_json(cls, text: str) -> TimingJob:
    d = json.loads(text)
    return cls(SearchSpace.from_dict(d["space"]), TimingProtocol(**d["protocol"]), d["table"],
               d["networks"], tuple((n, Arch(tuple(ops))) for n, ops in d["named_archs"]),
               d["cpu_threads"], d["progress"])

  def run_in_child(self) -> None:
    """Times the job in a fresh process (its own XLA flags and CPU affinity, set at its start)."""
    code = "import sys; from pnas_jax.latency.sessions import child_main; child_main(sys.stdin.read())"
    child = subprocess.run([sys.executable, "-c", code], input=self.to_json(), text=True,
                           stdout=subprocess.PIPE)
    if child.returncode != 0:
      where = ", ".join(p for p in (self.table, self.networks) if p)
      raise RuntimeError(f"timing {where} failed in its child process (exit {child.returncode}; "
                         "its error is printed above)")


def child_main(job_json: str) -> None:
  """The entry point of TimingJob.run_in_child's process.

  The persistent compilation cache is on, for every program however quick to compile: each session
  compiles the same layers and networks, so the second and later sessions load them.
  """
  enable_compilation_cache(min_compile_s=0.0)
  TimingJob.from_json(job_json).run_here()


def time_in_sessions(job: TimingJob, sessions: int, *, in_child: bool = True
                     ) -> tuple[LatencyTable | None, NetworkMeasurements | None]:
  """Runs `job` in `sessions` fresh processes and writes the merge to job.table / job.networks.

  One session runs in a child process, or with in_child=False in this one (which must not have
  started JAX's backend yet when job.cpu_threads pins it). Every session resumes its own files, so
  an interrupted measurement continues where it stopped when run again. Returns the (merged) table
  and networks (None where the job measures none).
  """
  if sessions < 1:
    raise UserValueError(f"sessions = {sessions!r}: give the number of timing processes (>= 1)")
  if sessions == 1:
    if in_child:
      job.run_in_child()
    else:
      job.run_here()
    return _load(job.table, load_table), _load(job.networks, measure.load_network_measurements)
  parts = [job.in_session(k) for k in range(1, sessions + 1)]
  for k, part in enumerate(parts, 1):
    if job.progress:
      print(f"timing session {k} of {sessions} (a fresh process)", file=sys.stderr)
    part.run_in_child()
  table = networks = None
  if job.table:
    table = merge_tables([load_table(p.table) for p in parts])
    table.save(job.table)
  if job.networks and job.named_archs:
    networks = merge_networks([measure.load_network_measurements(p.networks) for p in parts])
    networks.save(job.networks)
  return table, networks


def _load(path: str | None, loader: Any) -> Any:
  return loader(path) if path and os.path.exists(path) else None


def merge_tables(tables: Sequence[LatencyTable]) -> LatencyTable:
  """One table from several sessions' tables of the same layers (the module docstring's merge)."""
  first = tables[0]
  entries = {}
  for key in first.entries:
    es = _in_every_session(key, [(t.path, t.entries) for t in tables], "")
    entries[key] = Entry(**_merged_statistics([e.to_dict() for e in es]))
  return LatencyTable(dataclasses.replace(first.header, sessions=len(tables)), entries)


def merge_networks(runs: Sequence[NetworkMeasurements]) -> NetworkMeasurements:
  """One networks file from several sessions' files of the same networks (the docstring's merge)."""
  first = runs[0]
  sessions = [(run.path, {r["name"]: r for r in run.records}) for run in runs]
  records = []
  for rec in first.records:
    rs = _in_every_session(rec["name"], sessions, "network ")
    records.append({"name": rec["name"], "ops": rec["ops"], **_merged_statistics(rs),
                    "min": float(min(r["min"] for r in rs)),
                    "sessions": [record_latency(r, first.header.statistic) for r in rs]})
  return NetworkMeasurements(dataclasses.replace(first.header, sessions=len(runs)), first.space,
                             records)


def _in_every_session(key: str, sessions: Sequence[tuple[str | None, Mapping[str, Any]]],
                      kind: str) -> list[Any]:
  """sessions' (path, {key: item}) -> each session's item for `key`; names the file lacking it."""
  for path, items in sessions:
    if key not in items:
      raise UserValueError(f"{path}: lacks {kind}{key!r}, which another timing session measured; "
                           "rerun the measurement to complete it")
  return [items[key] for _, items in sessions]


def _merged_statistics(stats: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """The merge of one item's per-session {mean, var, count[, median, p10]} (module docstring);
  median / p10 only where every session has it."""
  out = {"mean": float(np.mean([d["mean"] for d in stats])),
         "var": float(np.median([d["var"] for d in stats])),
         "count": int(sum(d["count"] for d in stats))}
  for key in ("median", "p10"):
    if all(d.get(key) is not None for d in stats):
      out[key] = float(np.median([d[key] for d in stats]))
  return out
