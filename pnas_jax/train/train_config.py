"""The retrain config's schema and defaults (the paper's recipe, docs/design.md §2.10); configs/train/*.py
start from it. Every key is read by pnas_jax/train/retrain.py; RANGES below are the valid values,
enforced by config_loading.load_config."""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from pnas_jax.config_loading import (
    FRACTION,
    INT_GE1,
    NON_NEGATIVE,
    POSITIVE,
    SEED,
    Range,
)


def train_config() -> ml_collections.ConfigDict:
  """Paper defaults: 300 epochs, SGD Nesterov 0.9, cosine from 0.05 (batch 256), weight decay 4e-5
  not on BN/bias, label smoothing 0.1, dropout 0.1 (mobile)."""
  c = ml_collections.ConfigDict()
  c.name = "train"
  c.seed = 0
  c.num_devices = config_dict.placeholder(int)
  # The network: an arch.json (from `pnas search`), a net.config, or a zoo name.
  c.arch = ""
  c.allow_partial_arch = False  # train an arch.json from a search that did not finish
  c.init = ""  # "": from scratch; a search workdir: inherit its chosen path's supernet weights
  c.resolution = 0  # 0: the arch file's resolution
  c.n_classes = 0  # 0: the data set's
  c.data = ml_collections.ConfigDict()
  c.data.name = "tfds:imagenet2012"
  c.data.data_dir = ""
  c.data.image_size = 0  # host-side size for variable-size sets (0: resolution / 0.875)
  c.data.batch_size = 256
  c.data.eval_batch_size = 500
  c.data.prefetch = 2
  c.data.train_subset = 0  # > 0: train on the first N (seeded, class-balanced) examples only
  c.model = ml_collections.ConfigDict()
  c.model.dropout_rate = 0.1
  c.model.dw_impl = "auto"
  c.model.sync_bn = True
  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 0.05
  c.optim.momentum = 0.9
  c.optim.nesterov = True
  c.optim.weight_decay = 4e-5  # not on BN scale/bias nor dense bias (1-D parameters)
  c.optim.label_smoothing = 0.1
  c.optim.ema_decay = 0.0  # > 0: also keep an EMA of the weights and evaluate it
  c.schedule = ml_collections.ConfigDict()
  c.schedule.epochs = 300.0
  c.schedule.steps_per_epoch = 0
  c.schedule.max_steps = 0
  c.eval = ml_collections.ConfigDict()
  c.eval.every_epochs = 1
  c.eval.max_batches = 0
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 2000
  c.checkpoint.keep = 3
  c.log = ml_collections.ConfigDict()
  c.log.every_steps = 100
  c.log.tensorboard = True
  c.log.progress = True
  # Final report: latency measured here at batch 1 and at `latency_batch`, and predicted by
  # `latency_model` (a table / predictor file; "" for none).
  c.report = ml_collections.ConfigDict()
  c.report.latency_batch = 32
  c.report.latency_repeats = 30  # 0: do not measure (e.g. when measured elsewhere, as the demo does)
  c.report.latency_clock = "process"
  c.report.latency_model = ""
  return c


# Valid values of every numeric key (config_loading.load_config checks them).
RANGES: dict[str, Range] = {
    "seed": SEED,
    "num_devices": Range(1, integer=True, optional=True, note="None: every visible device"),
    "resolution": Range(0, integer=True, note="0: the arch file's"),
    "n_classes": Range(0, integer=True, note="0: the data set's"),
    "data.image_size": Range(0, integer=True, note="0: resolution / 0.875"),
    "data.batch_size": INT_GE1,
    "data.eval_batch_size": INT_GE1,
    "data.prefetch": INT_GE1,
    "data.train_subset": Range(0, integer=True, note="0: the whole training set"),
    "model.dropout_rate": FRACTION,
    "optim.lr": Range(0, note="0: weights frozen, BN statistics still update"),
    "optim.momentum": FRACTION,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.label_smoothing": FRACTION,
    "optim.ema_decay": Range(0, 1, high_open=True, note="0: no EMA"),
    "schedule.epochs": POSITIVE,
    "schedule.steps_per_epoch": Range(0, integer=True, note="0: len(train) // batch_size"),
    "schedule.max_steps": Range(0, integer=True, note="0: run to the end"),
    "eval.every_epochs": Range(0, note="0: only at the end"),
    "eval.max_batches": Range(0, integer=True, note="0: the whole split"),
    "checkpoint.every_steps": Range(0, integer=True, note="0: only at the end and on a signal"),
    "checkpoint.keep": INT_GE1,
    "log.every_steps": INT_GE1,
    "report.latency_batch": INT_GE1,
    "report.latency_repeats": Range(0, integer=True, note="0: do not measure"),
}
