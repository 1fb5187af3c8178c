"""Timing in several processes: the merge of the sessions' tables and networks, and the resume."""

from __future__ import annotations

import dataclasses
import statistics

import pytest
from latency_helpers import tiny_space

from pnas_jax.errors import UserValueError
from pnas_jax.latency import sessions
from pnas_jax.latency.measure import NetworkMeasurements, TimingProtocol
from pnas_jax.latency.table import Entry, LatencyTable, TableHeader, load_table
from pnas_jax.search_space.space import Arch

HEADER = TableHeader(device="cpu: test", backend="cpu", batch=16)


def _sessions_of(per_session):
  """Session k's (median, mean, var, count) of each key from per_session[key] = [tuple per k]."""
  n = len(next(iter(per_session.values())))
  return [{key: values[k] for key, values in per_session.items()} for k in range(n)]


def test_merge_tables_keeps_each_entrys_median_over_the_sessions():
  per_session = {"a": [(1.0, 1.1, 0.01, 30), (1.4, 1.5, 0.04, 30), (1.2, 1.2, 0.09, 30)],
                 "b": [(2.0, 2.0, 0.16, 30), (1.8, 1.9, 0.01, 20), (2.6, 2.7, 0.04, 30)]}
  tables = [LatencyTable(HEADER, {key: Entry(mean=mean, var=var, count=count, median=median)
                                  for key, (median, mean, var, count) in session.items()})
            for session in _sessions_of(per_session)]
  merged = sessions.merge_tables(tables)
  assert merged.header.sessions == 3
  for key, rows in per_session.items():
    medians, means, variances, counts = zip(*rows, strict=True)
    e = merged.entries[key]
    assert e.median == pytest.approx(sorted(medians)[1])  # the middle of three
    assert e.mean == pytest.approx(sum(means) / 3)
    assert e.var == pytest.approx(sorted(variances)[1])
    assert e.count == sum(counts)
  assert merged.entries["a"].median == pytest.approx(1.2)  # not the mean of the medians (1.2 too)
  assert merged.entries["b"].median == pytest.approx(2.0)  # ... here the mean would be 2.133


def test_merge_networks_keeps_each_networks_median_min_and_session_medians():
  space = tiny_space()
  ops = list(Arch.uniform(space, space.blocks[0].candidates[0]).ops)
  medians = {"baseline": [2.0, 2.6, 2.1, 1.9], "a": [1.0, 1.3, 1.1, 1.05]}
  runs = [NetworkMeasurements(HEADER, space, [
      {"name": n, "ops": ops, "median": m[k], "mean": m[k] + 0.01, "var": 0.01 * (k + 1),
       "count": 10, "min": m[k] - 0.1} for n, m in medians.items()], f"s{k}.json")
      for k in range(4)]
  merged = sessions.merge_networks(runs)
  assert merged.header.sessions == 4
  assert [r["name"] for r in merged.records] == ["baseline", "a"]
  for rec in merged.records:
    m = medians[rec["name"]]
    assert rec["median"] == pytest.approx(statistics.median(m))  # even count: the middle two's mean
    assert rec["sessions"] == pytest.approx(m)
    assert rec["min"] == pytest.approx(min(m) - 0.1)
    assert rec["mean"] == pytest.approx(statistics.mean(m) + 0.01)
    assert rec["var"] == pytest.approx(0.025)
    assert rec["count"] == 40
  assert merged.records[0]["median"] == pytest.approx(2.05)


def test_merge_names_the_session_that_lacks_a_network():
  space = tiny_space()
  ops = list(Arch.uniform(space, space.blocks[0].candidates[0]).ops)
  rec = {"name": "a", "ops": ops, "median": 1.0, "mean": 1.0, "var": 0.0, "count": 1, "min": 1.0}
  full = NetworkMeasurements(HEADER, space, [rec, {**rec, "name": "b"}], "one.json")
  short = NetworkMeasurements(HEADER, space, [rec], "two.json")
  with pytest.raises(UserValueError, match=r"two.json: lacks network 'b'.*rerun"):
    sessions.merge_networks([full, short])
  with pytest.raises(UserValueError, match=r"t2.json: lacks 'k'"):
    sessions.merge_tables([LatencyTable(HEADER, {"k": Entry(1.0)}, "t1.json"),
                           LatencyTable(HEADER, {}, "t2.json")])


def test_session_paths_and_bad_session_counts(tmp_path):
  assert sessions.session_path("out/lat.json", 2) == "out/lat.session2.json"
  assert sessions.session_path("out/lat", 1) == "out/lat.session1.json"
  job = sessions.TimingJob(tiny_space(), TimingProtocol(), table=str(tmp_path / "t.json"))
  assert job.in_session(3).table == str(tmp_path / "t.session3.json")
  assert job.in_session(3).networks is None
  with pytest.raises(UserValueError, match="sessions = 0"):
    sessions.time_in_sessions(job, 0)


def test_time_in_sessions_times_each_session_in_its_own_process_and_resumes(tmp_path, monkeypatch):
  monkeypatch.setenv("PNAS_COMPILATION_CACHE", str(tmp_path / "cache"))  # the children inherit it
  space = tiny_space()
  named = (("baseline", Arch.uniform(space, space.blocks[0].candidates[0])),
           ("other", Arch.uniform(space, space.blocks[0].candidates[-1])))
  job = sessions.TimingJob(space, TimingProtocol(batch=2, warmup=1, repeats=3, per_round=2),
                           table=str(tmp_path / "t.json"), networks=str(tmp_path / "n.json"),
                           named_archs=named, progress=False)
  table, nets = sessions.time_in_sessions(job, 2)
  parts = [load_table(tmp_path / f"t.session{k}.json") for k in (1, 2)]
  assert table.header.sessions == 2 and load_table(tmp_path / "t.json").header.sessions == 2
  for key, e in table.entries.items():
    assert e.median == pytest.approx((parts[0].entries[key].median + parts[1].entries[key].median) / 2)
  assert [r["name"] for r in nets.records] == ["baseline", "other"]
  assert all(len(r["sessions"]) == 2 for r in nets.records)
  assert any((tmp_path / "cache").iterdir())  # later sessions load what the first compiled
  # Run again: every session file is complete, so nothing is timed and the merge is the same.
  before = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.session*.json")}
  again, _ = sessions.time_in_sessions(job, 2)
  assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.session*.json")} == before
  assert {k: e.median for k, e in again.entries.items()} == {k: e.median for k, e in table.entries.items()}



def test_a_networks_latency_is_its_files_statistic_and_an_old_file_gives_its_median():
  space = tiny_space()
  ops = list(Arch.uniform(space, space.blocks[0].candidates[0]).ops)
  new = {"name": "a", "ops": ops, "median": 1.2, "p10": 1.0, "mean": 1.3, "var": 0.0, "count": 9,
         "min": 0.9}
  old = {k: v for k, v in new.items() if k != "p10"}
  p10_header = dataclasses.replace(HEADER, statistic="p10")
  assert NetworkMeasurements(p10_header, space, [new]).by_name() == {"a": 1.0}
  assert NetworkMeasurements(p10_header, space, [new]).latencies("mean").tolist() == [1.3]
  assert NetworkMeasurements(HEADER, space, [old]).by_name() == {"a": 1.2}
  assert NetworkMeasurements(p10_header, space, [old]).latencies().tolist() == [1.2]
