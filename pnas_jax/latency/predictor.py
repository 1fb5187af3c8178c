"""Differentiable latency predictors: the table sum and a model fitted on whole-network latencies.

A predictor is a pure JAX function of the per-block probability vectors p_l (one-hot for a fixed
architecture) returning milliseconds, with the interface of `expected.expected_cost`:
`predictor.predict(probs) -> ms`. Registered kinds:

  "table_sum": LAT(p) = F0 + sum_l <p_l, F_l>, the per-layer lookup-table model of Sec. 3.3 of
    Cai et al. 2019 (F from a measured table, F0 the fixed layers, Zero = 0 ms).
  "linear": LAT(p) = b + s * (F0 + sum_l <p_l, F_l>) + sum_l <p_l, d_l>. The table sum misses what
    happens between layers of a whole network: per-call dispatch overhead counted once per layer
    in the table but once per network in reality (s, b), and fusion/caching between neighbouring
    layers that depends on the op and position (d_l). Fitted on measured networks by weighted
    ridge regression minimising the relative error sum_i ((y_i - LAT(a_i)) / y_i)^2 + lambda |d|^2,
    lambda chosen by 5-fold cross-validation on the training set. The model is linear in p, so for
    non-one-hot p it is exactly E_{a ~ p}[LAT(a)], the quantity the paper's loss needs (Eq. 5);
    its gradient reaches alpha through p only.

Predictors are saved as JSON with the space they belong to and the table header;
`load_predictor` refuses another space, and `load_latency_model` turns a table (ours or the
reference YAML) or a saved predictor into a predictor for the search, checking
device/backend/batch and every key before anything is jitted.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pnas_jax.errors import UnknownNameError
from pnas_jax.file_io import read_json, write_json
from pnas_jax.latency.expected import CostTable, expected_cost, macs_table
from pnas_jax.latency.table import (
    TABLE_FORMAT,
    LatencyTableError,
    TableHeader,
    check_finite,
    check_header,
    check_latency,
    cost_table,
    load_table,
)
from pnas_jax.registry import Registry
from pnas_jax.search_space.space import Arch, SearchSpace

PREDICTOR_FORMAT = "pnas_jax.latency_predictor/1"
MAX_SHRINK_DECADES = 12  # fit_linear: at 1e12 x the penalty the fit is the table sum


def one_hot_matrix(space: SearchSpace, archs: Sequence[Arch]) -> np.ndarray:
  """(n_archs, sum_l n_candidates_l) concatenated one-hot encodings of the archs."""
  blocks = space.blocks
  offsets = np.cumsum([0] + [len(b.candidates) for b in blocks])
  x = np.zeros((len(archs), offsets[-1]), np.float64)
  for i, arch in enumerate(archs):
    space.check_arch(arch, strict=True)
    for b, op, off in zip(blocks, arch.ops, offsets, strict=False):
      x[i, off + b.candidates.index(op)] = 1.0
  return x


def _flat_costs(table: CostTable) -> np.ndarray:
  return np.concatenate([np.asarray(c, np.float64) for c in table.per_block])


def _split(flat: np.ndarray, like: CostTable) -> tuple[tuple[float, ...], ...]:
  out, i = [], 0
  for c in like.per_block:
    out.append(tuple(float(v) for v in flat[i : i + len(c)]))
    i += len(c)
  return tuple(out)


def _space_mismatch(a: SearchSpace, b: SearchSpace) -> str:
  da, db = a.to_dict(), b.to_dict()
  return ", ".join(f"{k}: {da[k]!r} vs {db[k]!r}" for k in da if da[k] != db[k])


@dataclasses.dataclass(frozen=True)
class TableSumPredictor:
  """LAT(p) = F0 + sum_l <p_l, F_l> (Sec. 3.3 of Cai et al. 2019)."""

  space: SearchSpace
  table: CostTable
  header: TableHeader | None = None
  kind = "table_sum"

  @property
  def unit(self) -> str:
    return self.table.unit

  def predict(self, probs: Sequence[jax.Array]) -> jax.Array:
    return expected_cost(self.table, probs)

  __call__ = predict

  def of_archs(self, archs: Sequence[Arch]) -> np.ndarray:
    """Predictions for fixed architectures (numpy, no tracing)."""
    return self.table.fixed + one_hot_matrix(self.space, archs) @ _flat_costs(self.table)

  def block_costs(self) -> tuple[float, tuple[tuple[float, ...], ...]]:
    """(c0, c_l[j]) with LAT(arch) = c0 + sum_l c_l[arch_l] exactly (for budgeted derivation)."""
    return float(self.table.fixed), tuple(tuple(map(float, r)) for r in self.table.per_block)

  def to_dict(self) -> dict[str, Any]:
    return {"kind": self.kind, "table": {"fixed": self.table.fixed,
                                        "per_block": self.table.per_block}}

  @classmethod
  def from_dict(cls, d: dict[str, Any], space: SearchSpace, header: TableHeader | None):
    return cls(space, _table_from(d, space), header)


@dataclasses.dataclass(frozen=True)
class LinearPredictor:
  """LAT(p) = b + s * (F0 + sum_l <p_l, F_l>) + sum_l <p_l, d_l> (see the module docstring)."""

  space: SearchSpace
  table: CostTable
  bias: float
  scale: float
  delta: tuple[tuple[float, ...], ...]
  header: TableHeader | None = None
  ridge: float = 0.0
  kind = "linear"

  @property
  def unit(self) -> str:
    return self.table.unit

  def predict(self, probs: Sequence[jax.Array]) -> jax.Array:
    if len(probs) != len(self.delta):
      raise ValueError(f"got {len(probs)} probability vectors for {len(self.delta)} blocks")
    total = self.bias + self.scale * expected_cost(self.table, probs)
    for p, d in zip(probs, self.delta, strict=True):
      total = total + jnp.dot(p, jnp.asarray(d, jnp.float32))
    return total

  __call__ = predict

  def of_archs(self, archs: Sequence[Arch]) -> np.ndarray:
    w = self.scale * _flat_costs(self.table) + np.concatenate([np.asarray(d) for d in self.delta])
    return self.bias + self.scale * self.table.fixed + one_hot_matrix(self.space, archs) @ w

  def block_costs(self) -> tuple[float, tuple[tuple[float, ...], ...]]:
    """(c0, c_l[j]) with LAT(arch) = c0 + sum_l c_l[arch_l] exactly (for budgeted derivation)."""
    rows = tuple(tuple(self.scale * float(t) + float(d) for t, d in zip(tr, dr, strict=True))
                 for tr, dr in zip(self.table.per_block, self.delta, strict=True))
    return float(self.bias + self.scale * self.table.fixed), rows

  def to_dict(self) -> dict[str, Any]:
    return {"kind": self.kind, "table": {"fixed": self.table.fixed,
                                        "per_block": self.table.per_block},
            "bias": self.bias, "scale": self.scale, "delta": self.delta, "ridge": self.ridge}

  @classmethod
  def from_dict(cls, d: dict[str, Any], space: SearchSpace, header: TableHeader | None):
    table = _table_from(d, space)
    delta = tuple(tuple(float(v) for v in row) for row in d["delta"])
    CostTable(0.0, delta, table.candidates)  # shape check against the space
    return cls(space, table, float(d["bias"]), float(d["scale"]), delta, header,
               float(d.get("ridge", 0.0)))


Predictor = TableSumPredictor | LinearPredictor


def _table_from(d: dict[str, Any], space: SearchSpace) -> CostTable:
  t = d["table"]
  return CostTable(float(t["fixed"]), tuple(tuple(float(v) for v in r) for r in t["per_block"]),
                   tuple(b.candidates for b in space.blocks))


# --- fitting ----------------------------------------------------------------------------------


def _ridge_solve(
    x: np.ndarray, y: np.ndarray, penalty: np.ndarray, prior: np.ndarray
) -> np.ndarray:
  """argmin_w |x w - y|^2 + sum_k penalty_k (w_k - prior_k)^2."""
  a = x.T @ x + np.diag(penalty)
  return np.linalg.lstsq(a, x.T @ y + penalty * prior, rcond=None)[0]


def _design(space: SearchSpace, table: CostTable, archs: Sequence[Arch]) -> np.ndarray:
  onehot = one_hot_matrix(space, archs)
  tsum = table.fixed + onehot @ _flat_costs(table)
  return np.concatenate([np.ones((len(archs), 1)), tsum[:, None], onehot], axis=1)


def fit_linear(
    space: SearchSpace,
    table: CostTable,
    archs: Sequence[Arch],
    latencies: Sequence[float],
    header: TableHeader | None = None,
    ridges: Sequence[float] = tuple(10.0 ** np.arange(-4, 5)),
    folds: int = 5,
    seed: int = 0,
) -> LinearPredictor:
  """Fits the "linear" predictor to measured whole-network latencies (ms) of `archs`.

  Weighted ridge regression on the relative error (rows scaled by 1 / y): the per-candidate
  corrections d are shrunk to 0 with lambda (relative to the number of networks) chosen by k-fold
  CV; scale and bias are shrunk very weakly (1e-3 per network) towards the table sum (s = 1,
  b = 0), which only matters when few networks were measured. Where the fit would predict <= 0
  ms for the cheapest architecture (an extrapolation from few networks), every penalty is raised
  10x at a time until it does not (`ridge` then records the d penalty used).
  """
  y = np.asarray(latencies, np.float64)
  if len(archs) != len(y):
    raise ValueError(f"{len(archs)} architectures but {len(y)} latencies")
  if len(y) < 4:
    raise ValueError(f"fitting needs at least 4 measured networks, got {len(y)}")
  if np.any(y <= 0):
    raise ValueError("latencies must be positive milliseconds")
  x = _design(space, table, archs) / y[:, None]
  target = np.ones_like(y)

  def penalty(lam: float) -> np.ndarray:
    p = np.full(x.shape[1], lam * len(y))
    p[:2] = 1e-3 * len(y)
    return p

  prior = np.zeros(x.shape[1])
  prior[1] = 1.0

  order = np.random.default_rng(seed).permutation(len(y))
  k = min(folds, len(y))
  best, best_err = ridges[0], np.inf
  for lam in ridges:
    errs = []
    for f in range(k):
      test = order[f::k]
      train = np.setdiff1d(order, test)
      w = _ridge_solve(x[train], target[train], penalty(lam), prior)
      errs.append(np.mean((x[test] @ w - 1.0) ** 2))
    if np.mean(errs) < best_err:
      best, best_err = lam, float(np.mean(errs))
  # Few networks can leave scale and bias free enough to extrapolate below zero for the cheapest
  # architecture, which no loader accepts: shrink every coefficient 10x harder towards the table
  # sum (positive wherever the table is) until that prediction is positive.
  for shrink in 10.0 ** np.arange(0, MAX_SHRINK_DECADES + 1):
    w = _ridge_solve(x, target, shrink * penalty(best), prior)
    pred = LinearPredictor(space, table, float(w[0]), float(w[1]), _split(w[2:], table), header,
                           float(best * shrink))
    if cheapest_prediction(pred)[0] > 0:
      return pred
  raise ValueError(f"the fitted predictor stays <= 0 ms for its cheapest architecture even shrunk "
                   f"to the table sum (table fixed {table.fixed} ms): check the latency table")


def cheapest_prediction(pred: Predictor) -> tuple[float, list[int]]:
  """(the lowest latency `pred` predicts for any architecture, that architecture's candidate
  indices): the model is a sum over blocks, so the cheapest candidate of each block."""
  c0, rows = pred.block_costs()
  cheapest = [int(np.argmin(r)) for r in rows]
  return c0 + sum(r[j] for r, j in zip(rows, cheapest, strict=True)), cheapest


def _fit_table_sum(space, table, archs, latencies, header=None, **_):
  del archs, latencies
  return TableSumPredictor(space, table, header)


# name -> (class, fitter(space, table, archs, latencies, header=..., seed=...) -> predictor)
PREDICTORS: Registry[tuple[type, Callable[..., Any]]] = Registry("latency predictor kind")
PREDICTORS.add("table_sum", (TableSumPredictor, _fit_table_sum))
PREDICTORS.add("linear", (LinearPredictor, fit_linear))


def get_predictor_kind(name: str) -> tuple[type, Callable[..., Any]]:
  """(class, fitter) of a predictor kind; UnknownNameError listing the kinds otherwise."""
  return PREDICTORS.get(name)


# --- evaluation -------------------------------------------------------------------------------


def errors(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
  """RMSE (ms) and relative RMSE sqrt(mean(((pred - y) / y)^2)) of predictions."""
  predicted, measured = np.asarray(predicted, np.float64), np.asarray(measured, np.float64)
  return {
      "rmse_ms": float(np.sqrt(np.mean((predicted - measured) ** 2))),
      "rel_rmse": float(np.sqrt(np.mean(((predicted - measured) / measured) ** 2))),
  }


def split_indices(
    n: int, train_fraction: float = 0.8, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """A seeded random (train, test) split of range(n)."""
  if not 0.0 < train_fraction < 1.0:
    raise ValueError(f"train_fraction = {train_fraction} must be in (0, 1)")
  order = np.random.default_rng(seed).permutation(n)
  n_train = int(round(train_fraction * n))
  return np.sort(order[:n_train]), np.sort(order[n_train:])


def fit_and_evaluate(
    space: SearchSpace,
    table: CostTable,
    archs: Sequence[Arch],
    latencies: Sequence[float],
    kind: str = "linear",
    header: TableHeader | None = None,
    train_fraction: float = 0.8,
    seed: int = 0,
) -> tuple[Predictor, dict[str, Any]]:
  """Fits `kind` on a seeded train split, reports held-out errors of it and of the table sum."""
  _, fitter = get_predictor_kind(kind)
  y = np.asarray(latencies, np.float64)
  train, test = split_indices(len(y), train_fraction, seed)
  pick = lambda idx: [archs[i] for i in idx]
  pred = fitter(space, table, pick(train), y[train], header=header, seed=seed)
  tsum = TableSumPredictor(space, table, header)
  report = {
      "kind": kind,
      "n_train": len(train),
      "n_test": len(test),
      "train": errors(pred.of_archs(pick(train)), y[train]),
      "test": errors(pred.of_archs(pick(test)), y[test]),
      "table_sum_test": errors(tsum.of_archs(pick(test)), y[test]),
      "test_indices": test.tolist(),
  }
  return pred, report


# --- files ------------------------------------------------------------------------------------


def save_predictor(path: str | os.PathLike, pred: Predictor, metrics: dict[str, Any] | None = None):
  d = {"format": PREDICTOR_FORMAT, **pred.to_dict(), "space": pred.space.to_dict(),
       "header": None if pred.header is None else pred.header.to_dict(), "unit": pred.unit}
  if metrics:
    d["metrics"] = metrics
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  write_json(path, d, indent=1)


def predictor_from_dict(d: Any, space: SearchSpace | None = None, source: str = "<predictor>"):
  if not isinstance(d, dict) or d.get("format") != PREDICTOR_FORMAT:
    raise LatencyTableError(f"{source}: 'format' is not {PREDICTOR_FORMAT!r}")
  stored = SearchSpace.from_dict(d["space"], source=source)
  if space is not None and space != stored:
    raise LatencyTableError(
        f"{source} was fitted for another search space ({_space_mismatch(stored, space)}); "
        "fit one for this space with `pnas latency fit`"
    )
  try:
    cls, _ = get_predictor_kind(d.get("kind"))
  except UnknownNameError:
    raise UnknownNameError(
        f"{source}: 'kind' is {d.get('kind')!r}, an unknown latency predictor kind; valid: "
        f"{', '.join(PREDICTORS.names())} (refit it with `pnas latency fit`)") from None
  header = None if d.get("header") is None else TableHeader.from_dict(d["header"], source)
  _check_predictor_values(d, source)
  try:
    pred = cls.from_dict(d, stored, header)
  except (KeyError, TypeError, ValueError) as e:
    raise LatencyTableError(f"{source}: malformed {d.get('kind')} predictor ({e})") from None
  low, cheapest = cheapest_prediction(pred)
  if not low > 0:
    ops = [b.candidates[j] for b, j in zip(stored.blocks, cheapest, strict=True)]
    raise LatencyTableError(
        f"{source}: predicts {low:.4g} {pred.unit} for its cheapest architecture ({' '.join(ops)}); "
        "every predicted latency must be > 0. Refit it on more networks with `pnas latency fit`."
    )
  return pred


def _check_predictor_values(d: dict[str, Any], source: str) -> None:
  """Every latency in a saved predictor finite and > 0 (Zero's 0 allowed), every weight finite."""
  t = d.get("table")
  if isinstance(t, dict):
    check_latency(t.get("fixed"), f"{source}: table.fixed")
    for i, row in enumerate(t.get("per_block") or ()):
      for j, v in enumerate(row if isinstance(row, (list, tuple)) else ()):
        check_latency(v, f"{source}: table.per_block[{i}][{j}]", allow_zero=True)
  for key in ("bias", "scale"):
    if key in d:
      check_finite(d[key], f"{source}: {key}")
  for i, row in enumerate(d.get("delta") or ()):
    for j, v in enumerate(row if isinstance(row, (list, tuple)) else ()):
      check_finite(v, f"{source}: delta[{i}][{j}]")


def load_predictor(path: str | os.PathLike, space: SearchSpace | None = None) -> Predictor:
  """Reads a saved predictor; with `space`, raises unless it was fitted for that space."""
  path = os.fspath(path)
  d = read_json(path, LatencyTableError, "no such predictor file", what="latency predictor")
  return predictor_from_dict(d, space, path)


def macs_predictor(space: SearchSpace) -> TableSumPredictor:
  """E[MACs] (millions) = fixed + sum_l <p_l, MACs_l>: the FLOPs-constrained variant of the loss."""
  return TableSumPredictor(space, macs_table(space))


def load_latency_model(
    path: str | os.PathLike,
    space: SearchSpace,
    *,
    device: str | None = None,
    backend: str | None = None,
    batch: int | None = None,
) -> Predictor:
  """A table (our JSON / reference YAML) or saved predictor -> a predictor for `space`.

  Everything is checked here, before the search jits a step: the header against device / backend
  / batch (None = not checked, device="local" = this machine), every key the space needs, and
  a saved predictor's space.
  """
  path = os.fspath(path)
  if not path.endswith((".yaml", ".yml")):
    d = read_json(path, LatencyTableError, "no such latency table or predictor",
                  what="latency table or predictor")
    if isinstance(d, dict) and d.get("format") == PREDICTOR_FORMAT:
      pred = predictor_from_dict(d, space, path)
      if pred.header is not None:
        check_header(pred.header, device=device, backend=backend, batch=batch, source=path)
      return pred
    if not isinstance(d, dict) or d.get("format") != TABLE_FORMAT:
      raise LatencyTableError(
          f"{path}: neither a latency table ({TABLE_FORMAT!r}) nor a predictor "
          f"({PREDICTOR_FORMAT!r})"
      )
  table = load_table(path)
  check_header(table.header, device=device, backend=backend, batch=batch, source=table.name)
  return TableSumPredictor(space, cost_table(table, space), table.header)
