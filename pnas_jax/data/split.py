"""The held-out architecture split, carved from the training set (Sec. 4.1 of Cai et al. 2019).

ProxylessNAS updates weights on the training set and architecture parameters on a held-out part of
it (50,000 ImageNet training images), leaving the test/validation split untouched for the final
evaluation. The held-out indices are class-balanced (each class contributes n // n_classes, the
remainder spread over the first classes) and depend only on the seed.
"""

from __future__ import annotations

import numpy as np


def class_balanced_split(
    labels: np.ndarray, n_holdout: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """(train_indices, holdout_indices), disjoint, covering all examples, both sorted."""
  labels = np.asarray(labels)
  classes = np.unique(labels)
  if not 0 < n_holdout < len(labels):
    raise ValueError(f"n_holdout = {n_holdout} must be in (0, {len(labels)})")
  per_class = np.full(len(classes), n_holdout // len(classes))
  per_class[: n_holdout % len(classes)] += 1
  rng = np.random.default_rng(seed)
  holdout = []
  for c, k in zip(classes, per_class, strict=True):
    idx = np.flatnonzero(labels == c)
    if k >= len(idx):
      raise ValueError(
          f"class {c} has {len(idx)} examples but the held-out split wants {k} of it; "
          f"lower n_holdout (now {n_holdout})"
      )
    holdout.append(rng.choice(idx, size=k, replace=False))
  holdout_idx = np.sort(np.concatenate(holdout))
  mask = np.ones(len(labels), bool)
  mask[holdout_idx] = False
  return np.flatnonzero(mask), holdout_idx
