"""Budgeted derivation (arch/derive.py) against exhaustive search over a 7-block space."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

from pnas_jax.arch import derive, derive_within_budget, probabilities
from pnas_jax.latency.expected import CostTable, macs_table
from pnas_jax.latency.predictor import LinearPredictor, TableSumPredictor
from pnas_jax.search_space import SearchSpace
from pnas_jax.search_space.space import Arch

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "search",
                    "tiny.py")
# The demo's layout (7 blocks, 4 of them skippable) with 4 candidates: 5^4 * 4^3 = 40000 archs.
SPACE = SearchSpace(
    stage_widths=(16, 24, 32, 48), stage_depths=(2, 2, 2, 1), stage_strides=(1, 2, 1, 2),
    candidates=("3x3_MBConv3", "3x3_MBConv6", "5x5_MBConv3", "7x7_MBConv6"), stem_width=16,
    first_block_width=16, tail_width=64, n_classes=10, resolution=28, in_channels=1,
)
ALL = np.array(list(itertools.product(*[range(len(b.candidates)) for b in SPACE.blocks])))


def brute_force(alpha, base, costs, lo, hi):
  """The best log p over every arch of SPACE with lo <= cost <= hi (-inf if there is none)."""
  logp = [np.log(p.astype(np.float64)) for p in probabilities(alpha)]
  score = sum(lp[ALL[:, i]] for i, lp in enumerate(logp))
  cost = base + sum(np.asarray(c)[ALL[:, i]] for i, c in enumerate(costs))
  ok = (cost >= lo) & (cost <= hi)
  return score[ok].max() if ok.any() else -np.inf


def arch_score_cost(arch, alpha, base, costs):
  logp = [np.log(p.astype(np.float64)) for p in probabilities(alpha)]
  idx = [b.candidates.index(op) for b, op in zip(SPACE.blocks, arch.ops, strict=True)]
  return (sum(lp[j] for lp, j in zip(logp, idx, strict=True)),
          base + sum(c[j] for c, j in zip(costs, idx, strict=True)))


@pytest.mark.parametrize("band", [0.0, 0.1])
@pytest.mark.parametrize("negative_tail", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_budgeted_derivation_against_exhaustive_search(seed, negative_tail, band):
  rng = np.random.default_rng(seed)
  alpha = [rng.normal(0, 1.5, len(b.candidates)) for b in SPACE.blocks]
  # Positive table-like costs plus signed corrections (the linear predictor's deltas).
  costs = [rng.uniform(0.05, 0.3, len(b.candidates)) + rng.normal(0, 0.03, len(b.candidates))
           for b in SPACE.blocks]
  for b, c in zip(SPACE.blocks, costs, strict=True):
    if "Zero" in b.candidates:  # Zero costs nothing in the table; its correction may be negative
      c[b.candidates.index("Zero")] = rng.normal(-0.05, 0.05)
  if negative_tail:  # partial paths over the budget can still end under it
    costs[-1] -= 0.6
  base = 0.2
  all_costs = base + sum(np.asarray(c)[ALL[:, i]] for i, c in enumerate(costs))
  res = 1e-3  # coarse bins, so that the tolerance below is exercised
  for q in (0.02, 0.2, 0.5, 0.8, 1.0):
    budget = float(np.quantile(all_costs, q))
    lo = (1 - band) * budget if band else -np.inf
    arch = derive_within_budget(alpha, SPACE, base, costs, budget, band=band, resolution=res)
    score, cost = arch_score_cost(arch, alpha, base, costs)
    assert lo <= cost <= budget
    # At least as probable as any arch inside the band by the resolution; none in it is better.
    slack = res * budget
    assert score >= brute_force(alpha, base, costs, lo + slack, budget - slack) - 1e-9
    assert score <= brute_force(alpha, base, costs, lo, budget) + 1e-9
    if band == 0:  # fine bins: the exact optimum
      exact = derive_within_budget(alpha, SPACE, base, costs, budget, resolution=1e-9)
      np.testing.assert_allclose(arch_score_cost(exact, alpha, base, costs)[0],
                                 brute_force(alpha, base, costs, -np.inf, budget), atol=1e-9)


def test_argmax_is_kept_when_it_fits_and_impossible_targets_name_the_range():
  rng = np.random.default_rng(7)
  alpha = [rng.normal(0, 1, len(b.candidates)) for b in SPACE.blocks]
  costs = [rng.uniform(0.1, 0.2, len(b.candidates)) for b in SPACE.blocks]
  argmax = derive(alpha, SPACE)
  _, cost = arch_score_cost(argmax, alpha, 0.0, costs)
  assert derive_within_budget(alpha, SPACE, 0.0, costs, cost) == argmax
  tighter = derive_within_budget(alpha, SPACE, 0.0, costs, cost - 1e-3)
  assert tighter != argmax
  cheapest, dearest = sum(min(c) for c in costs), sum(max(c) for c in costs)
  # A band that excludes the argmax from below: a slower arch is chosen.
  budget = (cost + dearest) / 2
  band = (budget - cost) / 2 / budget
  slower = derive_within_budget(alpha, SPACE, 0.0, costs, budget, band=band)
  assert (1 - band) * budget <= arch_score_cost(slower, alpha, 0.0, costs)[1] <= budget
  with pytest.raises(ValueError, match=f"range from {cheapest:.4g} to {dearest:.4g}"):
    derive_within_budget(alpha, SPACE, 0.0, costs, 0.99 * cheapest)
  with pytest.raises(ValueError, match="widen latency.derive_band"):
    derive_within_budget(alpha, SPACE, 0.0, costs, 2 * dearest, band=0.1)
  with pytest.raises(ValueError, match="band = 1.5"):
    derive_within_budget(alpha, SPACE, 0.0, costs, cost, band=1.5)


def test_block_costs_reproduce_the_predictors():
  table = macs_table(SPACE)
  rng = np.random.default_rng(0)
  delta = tuple(tuple(rng.normal(0, 0.1, len(b.candidates))) for b in SPACE.blocks)
  archs = [Arch(tuple(b.candidates[j] for b, j in zip(SPACE.blocks, row, strict=True)))
           for row in ALL[rng.choice(len(ALL), 50, replace=False)]]
  for pred in (TableSumPredictor(SPACE, table),
               LinearPredictor(SPACE, CostTable(table.fixed, table.per_block, table.candidates),
                               bias=-0.3, scale=0.7, delta=delta)):
    base, costs = pred.block_costs()
    direct = [base + sum(c[b.candidates.index(op)] for c, b, op in
                         zip(costs, SPACE.blocks, a.ops, strict=True)) for a in archs]
    np.testing.assert_allclose(direct, pred.of_archs(archs), rtol=1e-12)


def test_search_objective_derives_within_its_target(tmp_path):
  """config.latency.derive wiring: 'budget' returns the brute-force best arch under T."""
  from pnas_jax.config_loading import load_config
  from pnas_jax.latency.objective import latency_objective

  tiny = load_config(TINY, ["--config.latency.derive=budget"])
  space = SearchSpace(**tiny.space.to_dict())
  objective = latency_objective(tiny, space, str(tmp_path))
  # alpha prefers the most expensive op everywhere: the argmax misses T = 0.8 x baseline.
  base, costs = objective.predictor.block_costs()
  alpha = [np.asarray(c, np.float64) * 50 for c in costs]
  argmax = derive(alpha, space)
  assert objective.of_arch(argmax) > objective.target
  got = objective.derive(alpha, space)
  assert objective.of_arch(got) <= objective.target
  archs = [Arch(ops) for ops in itertools.product(*[b.candidates for b in space.blocks])]
  lat = objective.predictor.of_archs(archs)
  logp = [np.log(p.astype(np.float64)) for p in probabilities(alpha)]
  score = [sum(lp[b.candidates.index(op)] for lp, b, op in zip(logp, space.blocks, a.ops,
                                                                strict=True)) for a in archs]
  best = max(s for s, x in zip(score, lat, strict=True) if x <= objective.target)
  assert score[archs.index(got)] == pytest.approx(best, abs=1e-9)


@pytest.mark.parametrize("override, match", [
    (["--config.latency.derive=best"], "derive = 'best': use one of argmax, budget"),
    (["--config.latency.derive=budget", "--config.latency.model=none"], "needs a latency model"),
])
def test_bad_derive_settings_fail_with_the_fix(tmp_path, override, match):
  from pnas_jax.config_loading import load_config
  from pnas_jax.latency.objective import latency_objective

  tiny = load_config(TINY, override)
  with pytest.raises(ValueError, match=match):
    latency_objective(tiny, SearchSpace(**tiny.space.to_dict()), str(tmp_path))
