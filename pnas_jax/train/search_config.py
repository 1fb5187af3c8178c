"""The search config's schema and defaults (docs/design.md §2.8); configs/search/*.py start from it.

Every field is read by pnas_jax/train/search.py (tests/test_search_configs.py checks each config
file with config_loading.ReadTracker), so a key set here or in a config always does something.
RANGES and check() below are the valid values, enforced by config_loading.load_config.
"""

from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections import config_dict

from pnas_jax.config_loading import (
    FRACTION,
    INT_GE0,
    INT_GE1,
    NON_NEGATIVE,
    POSITIVE,
    SEED,
    Range,
)
from pnas_jax.latency.sessions import DEFAULT_SESSIONS
from pnas_jax.search_space.space import DEFAULT_CANDIDATES


def search_config() -> ml_collections.ConfigDict:
  """Defaults of the paper's ImageNet search; a config file changes what its task needs."""
  c = ml_collections.ConfigDict()
  c.name = "search"
  c.seed = 0
  c.num_devices = config_dict.placeholder(int)  # None: every visible device (all hosts).

  # SearchSpace fields (pnas_jax.search_space.SearchSpace); the default is the paper's space.
  c.space = ml_collections.ConfigDict(dict(
      stage_widths=(24, 40, 80, 96, 192, 320),
      stage_depths=(4, 4, 4, 4, 4, 1),
      stage_strides=(2, 2, 2, 1, 2, 1),
      candidates=DEFAULT_CANDIDATES,  # + "Zero" where a block has a shortcut (zero_allowed)
      zero_allowed=True,
      width_mult=1.0,
      n_classes=1000,
      resolution=224,
      in_channels=3,
  ))

  c.data = ml_collections.ConfigDict()
  c.data.name = "tfds:imagenet2012"  # see pnas_jax/data/datasets.py for the names
  c.data.data_dir = ""  # "": the data set's default location
  c.data.image_size = 0  # host-side square size for variable-size sets (0: resolution / 0.875)
  c.data.holdout = 50_000  # class-balanced held-out images for the arch steps (Sec. 4.1)
  c.data.batch_size = 256  # global weight-step batch
  c.data.arch_batch_size = 256  # global arch-step batch (held-out split)
  c.data.eval_batch_size = 500
  c.data.prefetch = 2  # batches in flight to the devices

  c.model = ml_collections.ConfigDict()
  c.model.dropout_rate = 0.0  # the reference searches without dropout
  c.model.dw_impl = "auto"
  c.model.impl = "remat"  # weight-mode mixed-op backward (arch/mixed_op.py)
  c.model.sync_bn = True  # BN statistics over the global batch (N devices == 1 device)
  # "none": each candidate its own weights (the paper); "mbconv": a block's MBConv candidates are
  # slices of one largest MBConv (kernel centre, first channels; arch/weight_sharing.py).
  c.model.weight_sharing = "none"

  # 40 warm-up epochs (uniform paths, weights only), then 120 with arch steps (docs/design.md §2.8).
  c.schedule = ml_collections.ConfigDict()
  c.schedule.warmup_epochs = 40.0
  c.schedule.epochs = 120.0
  c.schedule.steps_per_epoch = 0  # 0: len(train part) // batch_size
  c.schedule.arch_every = 5  # one arch step after every 5 weight steps ...
  c.schedule.arch_start_epoch = 1  # ... from the second search epoch on
  c.schedule.max_steps = 0  # stop after this many weight steps in this invocation (0: run to end)

  c.optim = ml_collections.ConfigDict()
  c.optim.warmup_lr = 0.05
  c.optim.lr = 0.025
  c.optim.momentum = 0.9
  c.optim.nesterov = True
  c.optim.weight_decay = 4e-5
  c.optim.label_smoothing = 0.1
  c.optim.weight_sample = "single"  # weight steps' path: one sample from p
  c.optim.arch_lr = 1e-3
  c.optim.arch_b1 = 0.0
  c.optim.arch_b2 = 0.999
  c.optim.arch_eps = 1e-8
  c.optim.alpha_init_std = 1e-3

  c.arch = ml_collections.ConfigDict()
  c.arch.estimator = "two"  # "two" | "full" | "reinforce" (arch/estimators.py: ESTIMATORS)
  # Each estimator's options: the section named after it (keywords of its registered factory).
  # "reinforce": the reference's defaults (K = 10 nets per update, each scored on one reward batch
  # of 1000 held-out images; updates every schedule.arch_every weight steps).
  c.arch.reinforce = ml_collections.ConfigDict(dict(
      k=10,  # architectures sampled per update
      # "moving_average" (the reference's, decay baseline_decay) or "leave_one_out": the mean
      # reward of the other k - 1 nets on the same batch (arch/estimators.py).
      baseline="moving_average",
      # Draw the k nets only from those whose modelled latency lies where the derived one must,
      # [(1 - latency.derive_band) T, T], and reward accuracy alone (needs "leave_one_out"; our
      # extension, arch/estimators.py). False: sample from p, as the paper does.
      within_target=False,
      baseline_decay=0.99,  # moving-average reward baseline
      tradeoff=0.1,  # reward acc * (T / lat)^tradeoff
      batch_size=1000,  # held-out images per update (0: data.arch_batch_size)
      # "reference": acc * (T / lat)^tradeoff for every lat (the paper's); "constraint": only for
      # lat > T, acc alone below (MnasNet's hard constraint; arch/estimators.py REWARDS). With
      # "constraint" raise tradeoff too (e.g. 2: 10% over T costs 17% of the reward; at 0.1, 1%).
      reward="reference",
      # "constraint" only: times (lat / T)^tradeoff_below below T, so the search also uses the
      # latency it is given (0.5: 10% under T costs 5%); 0: accuracy alone below T. On
      # Fashion-MNIST 0.5 kept E[LAT] at 0.87-0.95 T but its retrained nets were not better
      # (docs/design.md §2.14).
      tradeoff_below=0.0,
  ))

  # Latency term. model: "measure" (a table measured here before the search, cached in the
  # workdir), a table / predictor file (our JSON or the reference YAML), "macs" (FLOPs-constrained),
  # or "none" (accuracy only).
  c.latency = ml_collections.ConfigDict()
  c.latency.model = "macs"
  # The target T: exactly one of `target` (in the model's unit: ms; millions of MACs for "macs")
  # and `target_ratio` (T = ratio x the baseline arch's latency under the model) is > 0; the other
  # stays 0 (both are checked at load time, so neither silently replaces the other).
  c.latency.target = 0.0
  c.latency.target_ratio = 0.0
  # `pnas sweep`: one warm-up, then one search per target, given as ratios of the baseline's
  # latency or as absolute values (exactly one of the two non-empty; `pnas search` needs both empty,
  # and a sweep replaces target / target_ratio by each of its values).
  c.latency.target_ratios = ()
  c.latency.targets = ()
  c.latency.baseline_op = "3x3_MBConv6"  # the hand-designed baseline (MobileNetV2-like)
  c.latency.loss = "mul#log"
  c.latency.loss_params = ml_collections.ConfigDict(dict(a=0.2, b=0.3))
  c.latency.check_device = False  # a table/predictor measured elsewhere must match this device
  c.latency.batch = 1  # measurement batch ("measure") and the batch the table must have
  c.latency.repeats = 30
  c.latency.clock = "process"
  # "measure" on a CPU: 1 = the target is one core (timed in a child process pinned to one CPU with
  # single-threaded XLA, as `pnas latency measure` does); None = this process's XLA threading.
  c.latency.cpu_threads = 1
  # "measure" on a CPU: timing processes; each entry keeps the median over them (a process's
  # timings vary by up to +-10% per network on a VM; pnas_jax/latency/sessions.py).
  c.latency.sessions = DEFAULT_SESSIONS
  c.latency.n_networks = 0  # "measure": whole networks measured to fit the linear predictor
  # The final arch: "argmax" per block (the paper) or "budget": the most probable arch whose
  # latency under the model is in [(1 - derive_band) T, T] (short searches, whose argmax can miss
  # T either way; pnas_jax/arch/derive.py), or "supernet": the in-band candidate (the budgeted
  # arch and derive_candidates - 1 uniform draws in the band) with the best held-out accuracy in
  # the supernet as the warm-up left it (pnas_jax/train/derive_by_supernet.py).
  c.latency.derive = "argmax"
  c.latency.derive_band = 0.0
  c.latency.derive_candidates = 24
  # "supernet": time the verify_top best-scored candidates and the baseline together on this machine
  # (the target device) and take the best-scored one whose measured latency is within
  # verify_tolerance of the target re-based on the measured baseline (pnas_jax/latency/on_device.py);
  # 0: trust the latency model. Needs a single-process search on the device it targets.
  c.latency.verify_top = 0
  c.latency.verify_tolerance = 0.03
  # "supernet": score the candidates in this many warmed-up supernets (seeds config.seed, +1, ...)
  # and rank them by their mean rank over those (pnas_jax/train/derive_by_supernet.py). `pnas sweep`
  # runs the extra warm-ups (WORKDIR/warmup_2, ...) and lists them in derive_scoring_warmups; a
  # single search lists finished warm-up workdirs there itself.
  c.latency.derive_warmups = 1
  c.latency.derive_scoring_warmups = ()

  c.eval = ml_collections.ConfigDict()
  c.eval.every_epochs = 1  # evaluate the current argmax arch on the held-out split
  c.eval.max_batches = 0  # 0: the whole held-out split
  # BN statistics of the argmax path re-estimated on this many training batches before evaluating
  # it (the supernet's running statistics mix all sampled paths); 0: use them as they are.
  c.eval.bn_batches = 10

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 1000
  c.checkpoint.keep = 3

  c.log = ml_collections.ConfigDict()
  c.log.every_steps = 50
  c.log.tensorboard = True
  c.log.progress = True
  c.log.plots = True
  # Also record the architecture probabilities and E[LAT] every this many arch steps (0: only at
  # the end of each search epoch), so plots/alpha.png draws a curve even for a one-epoch search.
  c.log.alpha_every = 0
  return c


# Valid values of every numeric key (config_loading.load_config checks them; check() the rules
# across keys).
RANGES: dict[str, Range] = {
    "seed": SEED,
    "num_devices": Range(1, integer=True, optional=True, note="None: every visible device"),
    "space.width_mult": POSITIVE,
    "space.n_classes": INT_GE1,
    "space.resolution": INT_GE1,
    "space.in_channels": INT_GE1,
    "data.image_size": Range(0, integer=True, note="0: resolution / 0.875"),
    "data.holdout": Range(1, integer=True, note="held-out images for the arch steps"),
    "data.batch_size": INT_GE1,
    "data.arch_batch_size": INT_GE1,
    "data.eval_batch_size": INT_GE1,
    "data.prefetch": INT_GE1,
    "model.dropout_rate": FRACTION,
    "schedule.warmup_epochs": NON_NEGATIVE,
    "schedule.epochs": NON_NEGATIVE,
    "schedule.steps_per_epoch": Range(0, integer=True, note="0: len(train part) // batch_size"),
    "schedule.arch_every": INT_GE1,
    "schedule.arch_start_epoch": NON_NEGATIVE,
    "schedule.max_steps": Range(0, integer=True, note="0: run to the end"),
    "optim.warmup_lr": POSITIVE,
    "optim.lr": Range(0, note="0: weights frozen, BN statistics still update"),
    "optim.momentum": FRACTION,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.label_smoothing": FRACTION,
    "optim.arch_lr": POSITIVE,
    "optim.arch_b1": FRACTION,
    "optim.arch_b2": FRACTION,
    "optim.arch_eps": POSITIVE,
    "optim.alpha_init_std": NON_NEGATIVE,
    "arch.reinforce.k": INT_GE1,
    "arch.reinforce.baseline_decay": Range(0, 1),
    "arch.reinforce.tradeoff": NON_NEGATIVE,
    "arch.reinforce.tradeoff_below": NON_NEGATIVE,
    "latency.target": Range(0, note="0: use target_ratio"),
    "latency.target_ratio": Range(0, note="0: use target"),
    "latency.batch": INT_GE1,
    "latency.repeats": INT_GE1,
    "latency.cpu_threads": Range(1, 1, integer=True, optional=True,
                                 note="None: this process's XLA threading"),
    "latency.sessions": INT_GE1,
    "latency.n_networks": Range(0, integer=True, note="0: the table alone; a fit needs >= 3"),
    "latency.derive_band": FRACTION,
    "latency.derive_candidates": INT_GE1,
    "latency.verify_top": Range(0, integer=True, note="0: no timing on the device"),
    "latency.derive_warmups": INT_GE1,
    "latency.verify_tolerance": Range(0, 1, low_open=True),
    "eval.every_epochs": Range(0, note="0: never"),
    "eval.max_batches": Range(0, integer=True, note="0: the whole held-out split"),
    "eval.bn_batches": INT_GE0,
    "checkpoint.every_steps": Range(0, integer=True, note="0: only at the end and on a signal"),
    "checkpoint.keep": INT_GE1,
    "log.every_steps": INT_GE1,
}


def check(config: Any) -> list[str]:
  """The rules across keys of a search config (after every key is in its RANGES)."""
  problems = []
  s = config.schedule
  if not s.warmup_epochs + s.epochs > 0:
    problems.append(f"schedule.warmup_epochs + schedule.epochs = {s.warmup_epochs} + {s.epochs}: "
                    "the search needs at least some epochs (> 0 in all)")
  lat = config.latency
  sweep = tuple(lat.target_ratios) + tuple(lat.targets)
  for key in ("target_ratios", "targets"):
    values = tuple(lat[key])
    if (any(not Range(0, low_open=True).allows(v) for v in values)
        or len(set(values)) != len(values)):
      problems.append(f"latency.{key} = {values}: give distinct positive values (numbers > 0)")
  if lat.model != "none" and not sweep:  # a sweep sets target / target_ratio per value
    if lat.target > 0 and lat.target_ratio > 0:
      problems.append(f"latency.target = {lat.target} and latency.target_ratio = {lat.target_ratio}"
                      " are both set: set exactly one of them (the other to 0)")
    elif not lat.target > 0 and not lat.target_ratio > 0:
      problems.append(f"latency.target and latency.target_ratio are both 0 with latency.model = "
                      f"{lat.model!r}: set exactly one of them > 0 (target in the model's unit, "
                      "or target_ratio x the baseline's latency), or latency.model='none'")
  if 0 < lat.n_networks < 3:
    problems.append(f"latency.n_networks = {lat.n_networks}: fitting the predictor needs >= 3 "
                    "networks besides the baseline (or 0 for the table alone)")
  return problems
