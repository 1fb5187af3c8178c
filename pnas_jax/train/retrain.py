"""Training a found (or any) network: `pnas train` (Cai et al. 2019, Sec. 4.1 retrain recipe).

    result = train(load_config("configs/train/fashion_mnist.py",
                               ["--config.arch=results/search/arch.json"]), "results/train")

A ChildNet for config.arch (an arch.json, a net.config or a zoo name) is trained from scratch or
from the search's chosen-path weights (config.init = the search workdir), with SGD Nesterov, a
per-step cosine from optim.lr, weight decay on conv/dense kernels only, label smoothing and an
optional EMA of the weights (docs/design.md §2.10). The loop, data parallelism, device-side
augmentation, checkpoint/resume (bit identical), NaN stop and metrics are the search's (loop.py,
parallel.py, inputs.py, monitor.py). At the end the test split is evaluated and a report
(accuracy, params, MACs, latency measured here at batch 1 and at report.latency_batch, predicted
latency) is written as report.json and report.md; the trained variables are saved for
`pnas export` / `pnas eval`. An architecture from an unfinished search is refused unless
config.allow_partial_arch is set.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pnas_jax.config_loading import plain_dict
from pnas_jax.data.datasets import ImageDataset
from pnas_jax.data.pipeline import EpochIterator, prefetch_to_device
from pnas_jax.data.sources import Source, SubsetSource
from pnas_jax.data.split import class_balanced_split
from pnas_jax.errors import UserFileError, UserValueError
from pnas_jax.file_io import load_msgpack, save_msgpack
from pnas_jax.models import zoo
from pnas_jax.models.child import ChildNet
from pnas_jax.models.init import init_variables
from pnas_jax.search_space.io import load_arch, read_arch_meta
from pnas_jax.search_space.space import Arch, SearchSpace
from pnas_jax.train import inputs
from pnas_jax.train.evaluation import evaluate, make_evaluator
from pnas_jax.train.loop import RunDir, Status, run_loop
from pnas_jax.train.monitor import LoopMonitor, Progress
from pnas_jax.train.optim import weight_optimizer
from pnas_jax.train.parallel import (
  check_batch,
  data_mesh,
  data_parallel,
  global_batch,
  replicate,
  to_host,
)
from pnas_jax.train.report import write_report
from pnas_jax.train.search import CHOSEN_PATH_FILE
from pnas_jax.train.state import WEIGHT_FAMILY, TrainState
from pnas_jax.train.steps import train_step
from pnas_jax.train.train_config import train_config

log = logging.getLogger(__name__)
WEIGHTS_FILE = "weights.msgpack"
TRAIN_OUTPUTS = (WEIGHTS_FILE, "arch.json", "report.json", "report.md")


@dataclasses.dataclass
class TrainResult:
  workdir: str
  status: Status
  detail: str  # Outcome.describe()
  step: int
  total_steps: int
  test_top1: float | None
  test_top5: float | None
  wall_s: float
  images_per_s: float
  exit_code: int = 0

  def to_dict(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), "status": self.status.value}


def resolve_arch(config: Any) -> tuple[SearchSpace, Arch]:
  """config.arch (an arch.json, a net.config or a zoo name) at config.resolution (0: its own).

  An arch.json written by a search that did not finish is refused unless
  config.allow_partial_arch: training it would silently continue on a half-searched network.
  """
  if not config.arch:
    raise UserValueError("config.arch is empty: give --config.arch=PATH (arch.json / net.config) or "
                         f"a zoo name ({', '.join(zoo.ZOO)})")
  allow_partial = config.allow_partial_arch
  meta = read_arch_meta(config.arch) if os.path.isfile(config.arch) else {}
  if meta.get("partial") and not allow_partial:
    raise UserValueError(
        f"{config.arch} comes from a search that did not finish (status {meta.get('status')!r} at "
        f"step {meta.get('step')} of {meta.get('total_steps')}); rerun the search in its workdir to "
        "finish it, or pass --config.allow_partial_arch=True to train it anyway")
  return zoo.resolve_network(config.arch, resolution=config.resolution or None)


def decay_mask(params: Any) -> Any:
  """Weight decay on kernels only: BN scale/bias and the dense bias are 1-D (docs/design.md §2.10)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def train_optimizer(config: Any, total_steps: int) -> optax.GradientTransformation:
  """SGD Nesterov with torch-style weight decay (kernels only) and a per-step cosine."""
  return weight_optimizer(config.optim.lr, total_steps, config.optim.momentum,
                          config.optim.nesterov, config.optim.weight_decay, decay_mask=decay_mask)


@dataclasses.dataclass
class TrainSetup:
  """Everything a retrain reads from its config, resolved and checked."""

  config: Any
  mesh: Any
  space: SearchSpace
  arch: Arch
  dataset: ImageDataset
  train_source: Source
  steps_per_epoch: int
  total_steps: int
  model: ChildNet
  tx: optax.GradientTransformation


def setup_train(config: Any) -> TrainSetup:
  """The network (with this data set's classes and channels), the data, the schedule, the model."""
  mesh = data_mesh(config.num_devices)
  space, arch = resolve_arch(config)
  dataset = inputs.load_config_dataset(config, space.resolution)
  # A network found on another data set (or a zoo net) gets this one's classes and channels.
  space = space.replace(n_classes=config.n_classes or dataset.n_classes,
                        in_channels=dataset.image_shape[-1])
  space = inputs.space_for_data(space.to_dict(), dataset)
  train_src = dataset.train
  if config.data.train_subset:
    _, keep = class_balanced_split(train_src.labels(), config.data.train_subset, config.seed)
    train_src = SubsetSource(train_src, keep)
  for what, b in (("data.batch_size", config.data.batch_size),
                  ("data.eval_batch_size", config.data.eval_batch_size)):
    check_batch(b, mesh, what)
  spe = config.schedule.steps_per_epoch or len(train_src) // config.data.batch_size
  total_steps = max(1, round(config.schedule.epochs * spe))
  model = ChildNet(space, arch, dropout_rate=config.model.dropout_rate, dw_impl=config.model.dw_impl)
  return TrainSetup(config, mesh, space, arch, dataset, train_src, spe, total_steps, model,
                    train_optimizer(config, total_steps))


def initial_state(setup: TrainSetup) -> TrainState:
  """Fresh variables (or the search's chosen-path weights with config.init), SGD state, EMA."""
  config, space = setup.config, setup.space
  x0 = jnp.zeros((1, space.resolution, space.resolution, space.in_channels), jnp.float32)
  k_init, k_state = jax.random.split(jax.random.key(config.seed))
  variables = init_variables(setup.model, k_init, x0)
  if config.init:
    variables = load_msgpack(os.path.join(config.init, CHOSEN_PATH_FILE), variables)
    log.info("initialised from the chosen path of %s", config.init)
  params = variables["params"]
  ema = jax.tree.map(jnp.copy, params) if config.optim.ema_decay > 0 else None
  return TrainState(params=params, batch_stats=variables.get("batch_stats", {}),
                    opt_state=setup.tx.init(params), ema_params=ema,
                    step=jnp.zeros((), jnp.int32), key=k_state)


def _eval_vars(state: TrainState) -> dict[str, Any]:
  return {"params": state.params if state.ema_params is None else state.ema_params,
          "batch_stats": state.batch_stats}


def train(config: Any, workdir: str, *, progress: bool | None = None,
          overwrite: bool = False) -> TrainResult:
  """Trains (or resumes) config.arch in `workdir`; writes weights, metrics, report.

  overwrite: delete an earlier run's results in `workdir` and start over.
  """
  t_start = time.time()
  with RunDir(workdir, kind="training") as run:
    setup = setup_train(config)
    run.open(plain_dict(config), checkpoint_every=config.checkpoint.every_steps,
             keep=config.checkpoint.keep, tensorboard=config.log.tensorboard, overwrite=overwrite,
             outputs=TRAIN_OUTPUTS, defaults=plain_dict(train_config()))
    state = replicate(run.restore_or(initial_state(setup)), setup.mesh)
    state, outcome, evaluator = _run(setup, run, state, progress)
    test = None
    if not outcome.partial:
      test = evaluate(evaluator, _eval_vars(state), setup.dataset.test, config.data.eval_batch_size,
                      setup.mesh)
      run.logger.write(setup.total_steps, {f"test_{k}": v for k, v in test.items()}, "eval")
    result = TrainResult(run.workdir, outcome.status, outcome.describe(), int(to_host(state.step)),
                         setup.total_steps, test["top1"] if test else None,
                         test["top5"] if test else None, time.time() - t_start,
                         outcome.images_per_s, outcome.exit_code())
    if run.is_main:
      save_msgpack(os.path.join(run.workdir, WEIGHTS_FILE), to_host(_eval_vars(state)))
      if test is not None:
        write_report(run.workdir, setup.space, setup.arch, test, config, setup.dataset, result)
  return result


def _run(setup: TrainSetup, run: RunDir, state: TrainState, progress: bool | None):
  """The retrain loop: one SGD step per batch, the test split evaluated every eval.every_epochs."""
  config = setup.config
  train_pre, eval_pre = inputs.preprocessors(setup.dataset, setup.space.resolution)
  step_fn = data_parallel(
      inputs.with_preprocess(train_step, train_pre, WEIGHT_FAMILY, "step"),
      setup.mesh, sync_bn=config.model.sync_bn, model=setup.model, tx=setup.tx,
      label_smoothing=config.optim.label_smoothing, ema_decay=config.optim.ema_decay)
  evaluator = make_evaluator(lambda v, x: setup.model.apply(v, x, train=False), eval_pre, setup.mesh)
  start = int(to_host(state.step))
  it = EpochIterator.after(start, setup.train_source, config.data.batch_size,
                           config.seed, process_index=jax.process_index(),
                           process_count=jax.process_count())
  batches = prefetch_to_device(it, config.data.prefetch, put=lambda b: global_batch(b, setup.mesh))
  show = config.log.progress if progress is None else progress
  bar = Progress(setup.total_steps, start, f"train {os.path.basename(run.workdir)}",
                 enabled=run.is_main and show)
  monitor = LoopMonitor(run.logger, bar, run.checkpointer, run.resume_step,
                        "Lower optim.lr or check the data.",
                        pending=run.resume_meta.get("pending_metrics", ()))
  eval_every, eval_max = config.eval.every_epochs, config.eval.max_batches or None

  def one_step(st: TrainState, step: int) -> tuple[TrainState, int]:
    st, m = step_fn(st, next(batches))
    monitor.add("train", step + 1, m)
    return st, config.data.batch_size

  def evaluate_now(st: TrainState, done: int) -> None:
    if eval_every and done % (setup.steps_per_epoch * eval_every) == 0 and done < setup.total_steps:
      monitor.flush()
      ev = evaluate(evaluator, _eval_vars(st), setup.dataset.test, config.data.eval_batch_size,
                    setup.mesh, eval_max)
      run.logger.write(done, {f"test_{k}": v for k, v in ev.items()}, "eval")
      bar.update_metrics(test=ev["top1"])

  state, outcome = run_loop(
      state, one_step, run=run, start=start, total_steps=setup.total_steps,
      max_steps=config.schedule.max_steps,
      monitor=monitor, save=lambda st, s, final: monitor.save(s, st, st.params, final=final),
      hooks=(evaluate_now,),
      log_every=config.log.every_steps)
  return state, outcome, evaluator


def trained_network(workdir: str) -> tuple[SearchSpace, Arch, Any]:
  """(space, arch, variables) of a finished `pnas train` workdir (for eval and export)."""
  path = os.path.join(workdir, "arch.json")
  if not os.path.exists(path) or not os.path.exists(os.path.join(workdir, WEIGHTS_FILE)):
    raise UserFileError(f"{workdir} is not a finished `pnas train` workdir (no arch.json / "
                            f"{WEIGHTS_FILE}); train first or pass a zoo name")
  space, arch = load_arch(path)
  model = ChildNet(space, arch, dw_impl="lax")
  x0 = np.zeros((1, space.resolution, space.resolution, space.in_channels), np.float32)
  like = init_variables(model, jax.random.key(0), x0)
  return space, arch, load_msgpack(os.path.join(workdir, WEIGHTS_FILE), like)
