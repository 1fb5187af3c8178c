"""Top-1 / top-5 accuracy and loss over a whole split, data-parallel, exact (no dropped examples).

The split is read in order in global batches; the last batch is padded and its padding masked out,
so every example counts once. Each device sums its counts and the sums are psum'd over 'data'.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh

from pnas_jax.arch.sampling import Sample
from pnas_jax.arch.supernet import Supernet, arch_indices, candidate_mask
from pnas_jax.data.sources import Source
from pnas_jax.layers.core import BN_MOMENTUM, batch_norm_axis
from pnas_jax.losses import correct, cross_entropy
from pnas_jax.search_space.space import Arch
from pnas_jax.train.parallel import check_batch, data_parallel_eval, global_batch, replicate, to_host

# apply_fn(variables, images) -> logits (inference mode).
ApplyFn = Callable[[Any, jax.Array], jax.Array]
Preprocess = Callable[[jax.Array, jax.Array], jax.Array]


def _counts(variables: Any, batch: dict[str, jax.Array], *, apply_fn: ApplyFn, preprocess: Preprocess,
            axis_name: str | None = None) -> dict[str, jax.Array]:
  images = preprocess(jax.random.key(0), batch["image"])
  logits = apply_fn(variables, images).astype(jnp.float32)
  labels, mask = batch["label"], batch["mask"]
  top5 = lax.top_k(logits, min(5, logits.shape[-1]))[1]
  out = {
      "correct1": jnp.sum(correct(logits, labels) * mask),
      "correct5": jnp.sum(jnp.any(top5 == labels[:, None], -1) * mask),
      "loss": jnp.sum(cross_entropy(logits, labels, mean=False) * mask),
      "count": jnp.sum(mask),
  }
  return out if axis_name is None else lax.psum(out, axis_name)


def _process_share(source: Source, idx: np.ndarray) -> tuple[dict[str, np.ndarray], slice]:
  """This process's rows of the global batch `idx` (contiguous, in process order) and their slice;
  labels as int32."""
  local = len(idx) // jax.process_count()
  rows = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
  data = source.take(idx[rows])
  data["label"] = np.asarray(data["label"], np.int32)
  return data, rows


def make_evaluator(apply_fn: ApplyFn, preprocess: Preprocess, mesh: Mesh) -> Callable[..., Any]:
  """A jitted data-parallel (variables, batch) -> summed counts; reuse it across evaluations."""
  return data_parallel_eval(_counts, mesh, apply_fn=apply_fn, preprocess=preprocess)


def evaluate(
    evaluator: Callable[..., Any],
    variables: Any,
    source: Source,
    batch_size: int,
    mesh: Mesh,
    max_batches: int | None = None,
) -> dict[str, float]:
  """{"top1", "top5", "loss", "count"} (accuracies in %) over `source` (or its first batches)."""
  check_batch(batch_size, mesh, "eval batch size")
  n = len(source)
  n_batches = -(-n // batch_size)
  if max_batches:
    n_batches = min(n_batches, max_batches)
  totals = None
  for i in range(n_batches):
    idx = np.arange(i * batch_size, min(n, (i + 1) * batch_size))
    mask = np.zeros(batch_size, np.float32)
    mask[: len(idx)] = 1.0
    idx = np.concatenate([idx, np.full(batch_size - len(idx), idx[-1] if len(idx) else 0)])
    data, rows = _process_share(source, idx)
    data["mask"] = mask[rows]
    counts = evaluator(variables, global_batch(data, mesh))
    totals = counts if totals is None else jax.tree.map(jnp.add, totals, counts)
  t = {k: float(v) for k, v in to_host(totals).items()}
  count = max(t["count"], 1.0)
  return {"top1": 100.0 * t["correct1"] / count, "top5": 100.0 * t["correct5"] / count,
          "loss": t["loss"] / count, "count": int(t["count"])}


def _batch_statistics(variables: Any, batch: dict[str, jax.Array], *, apply_train: Callable[..., Any],
                      preprocess: Preprocess, axis_name: str | None = None) -> Any:
  """The BN statistics of one (global) batch: a train-mode forward from zeroed running stats,
  whose update is momentum * 0 + (1 - momentum) * batch, divided back by (1 - momentum)."""
  zeroed = jax.tree.map(jnp.zeros_like, variables["batch_stats"])
  images = preprocess(jax.random.key(0), batch["image"])
  with batch_norm_axis(axis_name):
    new = apply_train({**variables, "batch_stats": zeroed}, images)
  return jax.tree.map(lambda s: s / (1.0 - BN_MOMENTUM), new)


def make_bn_calibrator(apply_train: Callable[[Any, jax.Array], Any], preprocess: Preprocess,
                       mesh: Mesh) -> Callable[..., Any]:
  """Jitted data-parallel (variables, batch) -> that batch's BN statistics (see recalibrate_bn).

  apply_train(variables, images) -> the new "batch_stats" collection of a train-mode forward.
  """
  return data_parallel_eval(_batch_statistics, mesh, apply_train=apply_train, preprocess=preprocess)


def recalibrate_bn(calibrator: Callable[..., Any], variables: Any, source: Source, batch_size: int,
                   mesh: Mesh, n_batches: int) -> Any:
  """BN running statistics re-estimated for the network `variables` describes: the mean over the
  first `n_batches` batches of `source` of each batch's statistics.

  A supernet's running statistics mix every path that was sampled (the fixed layers see all of
  them), so the derived architecture is evaluated with statistics of its own path, as one-shot
  NAS evaluations do. Statistics of layers the path does not run come back as zeros; the caller
  keeps their old values.
  """
  check_batch(batch_size, mesh, "batch size")
  n_batches = max(1, min(n_batches, len(source) // batch_size))
  total = None
  for i in range(n_batches):
    data, _ = _process_share(source, np.arange(i * batch_size, (i + 1) * batch_size))
    stats = calibrator(variables, global_batch(data, mesh))
    total = stats if total is None else jax.tree.map(jnp.add, total, stats)
  return jax.tree.map(lambda s: s / n_batches, total)


class PathEvaluator:
  """Accuracy of one architecture inside the supernet, with the weights it inherits.

  The path's BN statistics are re-estimated on `bn_batches` training batches first (the running
  statistics of a supernet mix every sampled path); layers off the path keep theirs. Used for the
  search's argmax-path evaluation and for ranking architectures by their supernet accuracy.
  """

  def __init__(self, model: Supernet, preprocess: Preprocess, mesh: Mesh):
    self.model, self.mesh = model, mesh

    def variables(v):
      return {"params": v["params"], "batch_stats": v["batch_stats"]}

    self._evaluator = make_evaluator(
        lambda v, x: model.apply(variables(v), x, Sample(active=v["active"]), train=False),
        preprocess, mesh)
    self._calibrator = make_bn_calibrator(
        lambda v, x: model.apply(variables(v), x, Sample(active=v["active"]), train=True,
                                 mutable=["batch_stats"])[1]["batch_stats"],
        preprocess, mesh)

  def __call__(self, params: Any, batch_stats: Any, arch: Arch, *, holdout: Source, train: Source,
               batch_size: int, bn_batches: int, max_batches: int | None = None) -> dict[str, float]:
    """{"top1", "top5", "loss", "count"} of `arch` on `holdout` (params/batch_stats replicated)."""
    space = self.model.space
    active = jnp.asarray(arch_indices(space, arch), jnp.int32)
    v = {"params": params, "batch_stats": batch_stats, "active": replicate(active, self.mesh)}
    if bn_batches:
      stats = recalibrate_bn(self._calibrator, v, train, batch_size, self.mesh, bn_batches)
      mask = replicate(candidate_mask(batch_stats, space, active), self.mesh)
      v["batch_stats"] = jax.tree.map(jnp.where, mask, stats, batch_stats)
    return evaluate(self._evaluator, v, holdout, batch_size, self.mesh, max_batches)
