"""The supernet-scored derivation: config.latency.derive = "supernet" (our extension of Sec. 3.2).

The paper derives the final path as the argmax of p per block; the budgeted derivation
(arch/derive.py) takes the most probable path whose modelled latency is in the band
B = [(1 - derive_band) T, T]. After a short search both follow what the policy learnt from a few
hundred noisy rewards, and that choice ranked 4th of 5 inside its band against random in-band
nets, retrained (docs/design.md §2.14). The supernet itself ranked the same nets better: its
held-out accuracy with inherited weights agreed with their stand-alone accuracy (Kendall tau 0.4-0.6
inside a band), as it was at the end of the warm-up, when every path had been trained equally.
After a search phase it favours the paths the policy trained (tau 0.0).

So this derivation chooses among candidates C by that accuracy:

    a* = argmax_{a in C} acc_holdout(a; W_warm-up),   C = {a_budget} + {a_1 .. a_{N-1} ~ U(B)}

- a_budget: the budgeted derivation's architecture (the policy's pick, kept as a candidate);
- a_i: N - 1 = latency.derive_candidates - 1 distinct architectures drawn uniformly from the space
  conditioned on the modelled latency in B (search_space/sampling.py; seeded by config.seed on a
  stream of its own, so they are not the random baseline's draws);
- acc_holdout: top-1 on the held-out split with the weights the path inherits from the supernet
  as the warm-up left them (WARMUP_WEIGHTS_FILE, saved by the search when it passes the warm-up's
  end), BN statistics re-estimated on the path (train/evaluation.PathEvaluator). A search without
  a warm-up, or one resumed past it without that file, scores in its final weights and says so.
  Ties go to the earlier candidate (a_budget first).

With latency.derive_warmups = W > 1 (`pnas sweep` warms up W supernets with consecutive seeds and
lists the others in latency.derive_scoring_warmups) each candidate is scored in every one, each on
the held-out split of its own seed, and the candidates are ordered by their mean rank over the W
(PoolScores): one warm-up's order at the top is noisy (a second seed's warm-up put the first one's
pick 4th to 9th of 24 in the six-op space).

With config.latency.verify_top = k > 0 the model's latency is checked on the device for the k
best-scored candidates (latency/on_device.py): they and the baseline are timed together, and the
choice is the best-scored of them whose measured latency hits the target re-based on the measured
baseline (per timing session, latency/on_device.py), |measured(a) / T_dev - 1| <=
latency.verify_tolerance. When none does, the model is off for
architectures like these by a factor b (the median of their device / model latency ratios), and a
second round draws N candidates in the band under T / b, scores them and times its k best; the
choice is the best-scored hit of both rounds, else the timed candidate closest to T_dev, with a
warning.

Every candidate's score (and measured latency) is written to WORKDIR/derivation.json, and a
finished search rerun reads its choice back from there instead of scoring again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from scipy.stats import rankdata

from pnas_jax.errors import UserValueError
from pnas_jax.file_io import load_msgpack, read_json, save_msgpack, write_json
from pnas_jax.latency.on_device import DeviceCheck, device_target, over_target
from pnas_jax.search_space.sampling import sample_in_band
from pnas_jax.search_space.space import Arch
from pnas_jax.train.evaluation import PathEvaluator
from pnas_jax.train.loop import RunStateError, final_state
from pnas_jax.train.parallel import replicate, to_host
from pnas_jax.train.state import create_search_state

log = logging.getLogger(__name__)
WARMUP_WEIGHTS_FILE = "warmup_supernet.msgpack"
DERIVATION_FILE = "derivation.json"
ON_DEVICE_FILE = os.path.join("latency", "candidates.json")  # verify_top's timings, in WORKDIR
# The candidates' draws: seed = config.seed + this, apart from the seeds random baselines use.
CANDIDATE_SEED_OFFSET = 7_001
# What a derivation.json written before these keys existed means by their absence.
_KEYS_ADDED_LATER = {"verify_top": 0, "verify_tolerance": None, "scoring_warmups": []}


def save_warmup_weights(workdir: str, params: Any, batch_stats: Any, write: bool = True) -> None:
  """The supernet at the end of the warm-up, the weights the candidates are scored in (every
  process gathers them; the one with `write` saves)."""
  host = to_host({"params": params, "batch_stats": batch_stats})
  if write:
    save_msgpack(os.path.join(workdir, WARMUP_WEIGHTS_FILE), host)


def candidates(objective: Any, space: Any, policy_arch: Arch, n: int, seed: int) -> list[Arch]:
  """[policy_arch] + n - 1 distinct uniform draws with modelled latency in the derivation's band."""
  draws = sample_in_band(space, objective.predictor.of_archs, objective.target,
                         objective.derive_band, n - 1, seed=seed + CANDIDATE_SEED_OFFSET,
                         exclude=[policy_arch]) if n > 1 else []
  return [policy_arch, *draws]


def supernet_accuracies(evaluator: PathEvaluator, weights: dict[str, Any], archs: Sequence[Arch], *,
                        data: Any, batch_size: int, bn_batches: int, max_batches: int | None
                        ) -> list[float]:
  """Held-out top-1 of each arch with the supernet weights it inherits ({"params",
  "batch_stats"}, replicated), its BN statistics re-estimated on `bn_batches` training batches."""
  return [evaluator(weights["params"], weights["batch_stats"], a, holdout=data.holdout,
                    train=data.train, batch_size=batch_size, bn_batches=bn_batches,
                    max_batches=max_batches)["top1"] for a in archs]


def _scoring_weights(workdir: str, params: Any, batch_stats: Any, mesh: Any) -> tuple[dict, str]:
  """(replicated weights, "warm-up" or "final") for scoring: the warm-up's snapshot if saved."""
  path = os.path.join(workdir, WARMUP_WEIGHTS_FILE)
  final = {"params": params, "batch_stats": batch_stats}
  if not os.path.exists(path):
    log.warning("no %s in %s: the candidates are scored in the search's final weights", WARMUP_WEIGHTS_FILE,
                workdir)
    return final, "final"
  return replicate(load_msgpack(path, to_host(final), "warm-up supernet"), mesh), "warm-up"


def choose(setup: Any, workdir: str, params: Any, batch_stats: Any, policy_arch: Arch, step: int,
           evaluator: PathEvaluator, write: bool = True) -> dict[str, Any]:
  """The derivation record: {"arch": a*, "candidates": [{"ops", "holdout_top1"}], "scored_in",
  "step", ...}; read back from DERIVATION_FILE when it was made for this step and setting."""
  obj, n = setup.objective, setup.derive_candidates
  path = os.path.join(workdir, DERIVATION_FILE)
  check = obj.device_check
  key = {"step": step, "n_candidates": n, "band": obj.derive_band, "target": obj.target,
         "policy_arch": list(policy_arch.ops),
         "verify_top": check.top if check else 0, "verify_tolerance": check.tolerance if check else None,
         "scoring_warmups": [d for d, _ in setup.derive_warmups]}
  if os.path.exists(path):
    old = read_json(path)
    if all(old.get(k, _KEYS_ADDED_LATER.get(k)) == v for k, v in key.items()):
      return {**old, "arch": Arch(tuple(old["arch"]))}
  archs = candidates(obj, setup.space, policy_arch, n, setup.seed)
  weights, scored_in = _scoring_weights(workdir, params, batch_stats, setup.mesh)
  pool = PoolScores(_scorers(setup, evaluator, weights))
  pool.add(archs)
  merit = pool.merit()
  best = int(np.argmax(merit))  # the first of equal merits: the policy's arch wins ties
  record = {**key, "scored_in": scored_in, "policy_rank": 1 + int(np.sum(np.asarray(merit) > merit[0])),
            "candidates": _rows(obj, archs, pool, range(len(archs)))}
  if check is not None:
    best, record["on_device"] = _checked_on_device(check, obj, setup, archs, pool, record["candidates"],
                                                   workdir)
  record.update(arch=list(archs[best].ops), holdout_top1=pool.mean(best))
  if write:
    write_json(path, record)
  log.info("derivation by the supernet (%s weights%s): %d candidates, the policy's arch ranked %d, "
           "chose %s (%.2f%%)", scored_in, f" and {len(setup.derive_warmups)} more warm-up(s)"
           if setup.derive_warmups else "", len(archs), record["policy_rank"],
           " ".join(record["arch"]), record["holdout_top1"])
  return {**record, "arch": archs[best]}


class PoolScores:
  """The candidates' held-out top-1 in each scoring supernet, and the merit that orders them.

  With one supernet the merit is the score. With W (latency.derive_warmups) it is the mean over the
  supernets of the candidate's rank among all candidates scored so far (1 = lowest score; ties
  share the mean rank):

      merit(a) = (1 / W) sum_w rank_w(acc_holdout(a; W_w))

  Rank, not score: each warm-up scores on the held-out split of its own seed, and their levels
  differ (by ~1 point between two seeds of the six-op space) while their orders agree only in part
  (Kendall tau 0.56-0.68 over 24 in-band candidates): the mean rank averages the orders.
  """

  def __init__(self, scorers: Sequence[Any]):
    self.scorers = list(scorers)
    self.scores: list[list[float]] = [[] for _ in self.scorers]

  def add(self, archs: Sequence[Arch]) -> None:
    for scorer, scores in zip(self.scorers, self.scores, strict=True):
      scores.extend(scorer(archs))

  def merit(self) -> list[float]:
    if len(self.scores) == 1:
      return list(self.scores[0])
    return [float(m) for m in np.mean([rankdata(s) for s in self.scores], axis=0)]

  def mean(self, i: int) -> float:
    return float(np.mean([s[i] for s in self.scores]))

  def per_supernet(self, i: int) -> list[float]:
    return [float(s[i]) for s in self.scores]


def _scorers(setup: Any, evaluator: PathEvaluator, weights: dict[str, Any]) -> list[Any]:
  """One function archs -> held-out top-1 per scoring supernet: this search's warm-up on its own
  split, then each of latency.derive_scoring_warmups on the split of its seed."""
  ev = setup.eval

  def scorer(w: dict[str, Any], data: Any) -> Any:
    return lambda archs: supernet_accuracies(
        evaluator, w, archs, data=data, batch_size=setup.batches["eval_batch_size"],
        bn_batches=ev["bn_batches"], max_batches=ev["max_batches"])

  out = [scorer(weights, setup.data)]
  if setup.derive_warmups:
    like = create_search_state(setup.model, jax.random.key(setup.seed), setup.weight_tx,
                               setup.arch_tx, setup.step_options["alpha_init_std"])
    for workdir, data in setup.derive_warmups:
      step, state = final_state(workdir, like)
      if step != setup.schedule.warmup_steps:
        raise RunStateError(f"latency.derive_scoring_warmups: {workdir} ends at step {step}, but this "
                            f"search's warm-up is {setup.schedule.warmup_steps} steps; give warm-ups "
                            "run with this schedule")
      w = replicate({"params": state.params, "batch_stats": state.batch_stats}, setup.mesh)
      out.append(scorer(w, data))
  return out


def _rows(obj: Any, archs: Sequence[Arch], pool: PoolScores, idx: Sequence[int], **extra: Any
          ) -> list[dict[str, Any]]:
  """The record's row of each candidate archs[i], i in idx: its ops, modelled latency and scores."""
  lat = obj.predictor.of_archs([archs[i] for i in idx])
  merit = pool.merit()
  rows = []
  for i, t in zip(idx, lat, strict=True):
    row = {"ops": list(archs[i].ops), "holdout_top1": pool.mean(i), "latency": float(t), **extra}
    if len(pool.scores) > 1:
      row.update(holdout_top1_per_warmup=pool.per_supernet(i), merit=merit[i])
    rows.append(row)
  return rows


def first_hit(order: Sequence[int], over_target: Sequence[float], tolerance: float) -> tuple[int, bool]:
  """(index, hit): the first of `order` (best score first) whose measured latency / T_dev is within
  `tolerance` of 1; without one, the index closest to 1 and False. over_target[i] belongs to
  order[i]."""
  for i, r in zip(order, over_target, strict=True):
    if abs(r - 1.0) <= tolerance:
      return int(i), True
  j = int(np.argmin([abs(r - 1.0) for r in over_target]))
  return int(order[j]), False


def model_bias(measured_over_target: Sequence[float], predicted: Sequence[float], target: float) -> float:
  """The device's latency over the model's for the timed candidates, both relative to the baseline:
  the median of (LAT_measured(a) / T_dev) / (LAT_model(a) / T)."""
  return float(np.median([r / (p / target) for r, p in zip(measured_over_target, predicted, strict=True)]))


def _time_best(check: DeviceCheck, obj: Any, archs: Sequence[Arch], merit: Sequence[float],
               rows: list[dict[str, Any]], among: Sequence[int], timings: str) -> dict[str, Any]:
  """Times the `check.top` best (by merit) of the candidates `among` with the baseline into
  `timings`; adds each one's measured latency and latency / T_dev to its row; returns the round's
  record."""
  timed = sorted(among, key=lambda i: -merit[i])[:check.top]
  measured, ratios, baseline = check.measure([archs[i] for i in timed], timings)
  t_dev = device_target(obj.target, obj.baseline, baseline)
  for i, m, r in zip(timed, measured, ratios, strict=True):
    rows[i].update(measured_latency=float(m), measured_over_target=over_target(r, obj.target, obj.baseline))
  return {"timed": [int(i) for i in timed], "baseline_measured": float(baseline),
          "target_measured": float(t_dev), "timings": timings}


def _checked_on_device(check: DeviceCheck, obj: Any, setup: Any, archs: list[Arch], pool: PoolScores,
                       rows: list[dict[str, Any]], workdir: str) -> tuple[int, dict[str, Any]]:
  """The candidate chosen on the device (module docstring) and the record's "on_device" entry.

  Round 1 times the `check.top` best candidates (by merit, PoolScores). When none hits, the model
  is off for architectures like these: their median device / model latency ratio b (model_bias)
  re-centres a second round, N fresh draws in the band under T / b, scored and their best
  `check.top` timed (with the baseline again). The choice is the best hit of both rounds, else the
  candidate closest to its round's T_dev. `archs`, `pool` and `rows` are extended in place.
  """
  rounds = [_time_best(check, obj, archs, pool.merit(), rows, range(len(archs)),
                       os.path.join(workdir, ON_DEVICE_FILE))]
  best, hit = _best_hit(rounds, pool.merit(), rows, check.tolerance)
  if not hit:
    second = _second_round(check, obj, setup, archs, pool, rows, rounds[0], workdir)
    if second is not None:
      rounds.append(second)
      best, hit = _best_hit(rounds, pool.merit(), rows, check.tolerance)
  merit = pool.merit()
  over = rows[best]["measured_over_target"]
  info = {"tolerance": check.tolerance, "hit": hit, "rounds": rounds,
          "rank_by_score": 1 + sum(m > merit[best] for m in merit)}
  if hit:
    log.info("on the device: the candidate ranked %d by score is %.1f%% of the target", info["rank_by_score"],
             100 * over)
  else:
    log.warning("on the device: no timed candidate is within %.0f%% of the target; taking the closest "
                "(%.1f%% of it). Raise latency.verify_top or derive_candidates, or refit the latency "
                "model with more networks (latency.n_networks)", 100 * check.tolerance, 100 * over)
  return best, info


def _second_round(check: DeviceCheck, obj: Any, setup: Any, archs: list[Arch], pool: PoolScores,
                  rows: list[dict[str, Any]], first: dict[str, Any], workdir: str
                  ) -> dict[str, Any] | None:
  """Draws, scores and times candidates re-centred on T / model_bias (see _checked_on_device);
  None when that band holds no new architecture."""
  bias = model_bias([rows[i]["measured_over_target"] for i in first["timed"]],
                    [rows[i]["latency"] for i in first["timed"]], obj.target)
  target = obj.target / bias
  try:
    more = sample_in_band(setup.space, obj.predictor.of_archs, target, obj.derive_band, len(archs),
                          seed=setup.seed + CANDIDATE_SEED_OFFSET + 1, exclude=archs)
  except UserValueError as e:  # the re-centred band is (nearly) empty: keep round 1's closest
    log.warning("on the device: no second round under %.4g (%s)", target, e)
    return None
  log.info("on the device: no candidate within %.0f%% of the target; the model reads %.3f x the "
           "device for them, so %d more are drawn under %.4g and timed", 100 * check.tolerance,
           1 / bias, len(more), target)
  new = range(len(archs), len(archs) + len(more))
  archs.extend(more)
  pool.add(more)
  rows.extend(_rows(obj, archs, pool, new, round=2))
  if len(pool.scores) > 1:  # ranks over the larger pool
    for row, m in zip(rows, pool.merit(), strict=True):
      row["merit"] = m
  root, ext = os.path.splitext(ON_DEVICE_FILE)
  timings = os.path.join(workdir, f"{root}_round2{ext}")
  return {**_time_best(check, obj, archs, pool.merit(), rows, new, timings), "model_bias": bias,
          "target_model": target}


def _best_hit(rounds: Sequence[dict[str, Any]], merit: Sequence[float], rows: Sequence[dict[str, Any]],
              tolerance: float) -> tuple[int, bool]:
  """first_hit over every timed candidate of `rounds`, best merit first."""
  timed = sorted((i for r in rounds for i in r["timed"]), key=lambda i: -merit[i])
  return first_hit(timed, [rows[i]["measured_over_target"] for i in timed], tolerance)
