"""Training a found (or any) network: `pnas train` (Cai et al. 2019, Sec. 4.1 retrain recipe).

    result = train(load_config("configs/train/fashion_mnist.py",
                               ["--config.arch=results/search/arch.json"]), "results/train")

A ChildNet for config.arch (an arch.json, a net.config or a zoo name) is trained from scratch or
from the search's chosen-path weights (config.init = the search workdir), with SGD Nesterov, a
per-step cosine from optim.lr, weight decay on conv/dense kernels only, label smoothing and an
optional EMA of the weights. Data parallelism, device-side augmentation, checkpoint/resume (bit
identical), NaN stop and metrics are the search loop's (parallel.py, inputs.py, monitor.py,
checkpointing.py). At the end the test split is evaluated and a report (accuracy, params, MACs,
latency measured here at batch 1 and at report.latency_batch, predicted latency) is written as
report.json and report.md; the trained variables are saved for `pnas export` / `pnas eval`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from pnas_jax.checkpointing import Checkpointer, PreemptionGuard
from pnas_jax.collectives import device_dropout_key, maybe_pmean
from pnas_jax.config_loading import plain_dict
from pnas_jax.data.pipeline import EpochIterator, prefetch_to_device
from pnas_jax.data.sources import SubsetSource
from pnas_jax.data.split import class_balanced_split
from pnas_jax.json_files import write_json
from pnas_jax.models import zoo
from pnas_jax.models.child import ChildNet
from pnas_jax.models.init import init_variables
from pnas_jax.search_space.space import Arch, SearchSpace
from pnas_jax.train import inputs
from pnas_jax.train.evaluation import evaluate, make_evaluator
from pnas_jax.train.metrics_log import MetricsLogger
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
from pnas_jax.train.state import DROPOUT_STREAM, WEIGHT_FAMILY, TrainState, stream_key
from pnas_jax.train.steps import smoothed_cross_entropy

log = logging.getLogger(__name__)
WEIGHTS_FILE = "weights.msgpack"


@dataclasses.dataclass
class TrainResult:
  workdir: str
  status: str
  step: int
  total_steps: int
  test_top1: float | None
  test_top5: float | None
  wall_s: float
  images_per_s: float


def resolve_arch(config: Any) -> tuple[SearchSpace, Arch]:
  """config.arch (an arch.json, a net.config or a zoo name) at config.resolution (0: its own)."""
  if not config.arch:
    raise ValueError("config.arch is empty: give --config.arch=PATH (arch.json / net.config) or a "
                     f"zoo name ({', '.join(zoo.ZOO)})")
  return zoo.resolve_network(config.arch, resolution=config.resolution or None)


def decay_mask(params: Any) -> Any:
  """Weight decay on kernels only: BN scale/bias and the dense bias are 1-D (docs/design.md §2.10)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def train_optimizer(config: Any, total_steps: int) -> optax.GradientTransformation:
  """SGD Nesterov with torch-style weight decay (kernels only) and a per-step cosine."""
  return weight_optimizer(config.optim.lr, total_steps, config.optim.momentum,
                          config.optim.nesterov, config.optim.weight_decay, decay_mask=decay_mask)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, model: ChildNet,
               tx: optax.GradientTransformation, label_smoothing: float, ema_decay: float,
               axis_name: str | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step of the ChildNet (dropout key per device; gradients and BN stats pmean'd)."""
  k_drop = device_dropout_key(stream_key(state.key, WEIGHT_FAMILY, state.step, DROPOUT_STREAM),
                              axis_name)

  def loss_of(params):
    logits, upd = model.apply({"params": params, "batch_stats": state.batch_stats}, batch["image"],
                              train=True, mutable=["batch_stats"], rngs={"dropout": k_drop})
    return smoothed_cross_entropy(logits, batch["label"], label_smoothing), (logits, upd)

  (loss, (logits, upd)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
  grads, batch_stats = maybe_pmean(grads, axis_name), maybe_pmean(upd["batch_stats"], axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = state.ema_params
  if ema_decay > 0:
    ema = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, ema, params)
  metrics = maybe_pmean({"loss": loss, "acc": jnp.mean(jnp.argmax(logits, -1) == batch["label"])},
                        axis_name)
  return state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state, ema_params=ema,
                       step=state.step + 1), metrics


def save_weights(path: str, variables: Any) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "wb") as f:
    f.write(flax.serialization.to_bytes(variables))
  os.replace(tmp, path)


def load_weights(path: str, like: Any) -> Any:
  with open(path, "rb") as f:
    return flax.serialization.from_bytes(like, f.read())


def train(config: Any, workdir: str, *, progress: bool | None = None) -> TrainResult:
  """Trains (or resumes) config.arch in `workdir`; writes weights, metrics, report."""
  from pnas_jax.train.report import write_report
  from pnas_jax.train.search import load_chosen_path

  t_start = time.time()
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
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
  train_pre, eval_pre = inputs.preprocessors(dataset, space.resolution)

  model = ChildNet(space, arch, dropout_rate=config.model.dropout_rate, dw_impl=config.model.dw_impl)
  tx = train_optimizer(config, total_steps)
  x0 = jnp.zeros((1, space.resolution, space.resolution, space.in_channels), jnp.float32)
  k_init, k_state = jax.random.split(jax.random.key(config.seed))
  variables = init_variables(model, k_init, x0)
  if config.init:
    variables = load_chosen_path(config.init, variables)
    log.info("initialised from the chosen path of %s", config.init)
  params = variables["params"]
  state = TrainState(params=params, batch_stats=variables.get("batch_stats", {}),
                     opt_state=tx.init(params),
                     ema_params=jax.tree.map(jnp.copy, params) if config.optim.ema_decay > 0 else None,
                     step=jnp.zeros((), jnp.int32), key=k_state)

  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), config.checkpoint.every_steps,
                      config.checkpoint.keep)
  resume_step = None
  if ckpt.latest_step() is not None:
    resume_step, state, _ = ckpt.restore(state)
    log.info("resuming from checkpoint %d in %s", resume_step, ckpt.directory)
  elif is_main:
    write_json(os.path.join(workdir, "config.json"), plain_dict(config))
  state = replicate(state, mesh)
  logger = MetricsLogger(workdir, tensorboard=config.log.tensorboard, resume_step=resume_step,
                         enabled=is_main)
  step_fn = data_parallel(
      inputs.with_preprocess(train_step, train_pre, WEIGHT_FAMILY, "step"), mesh,
      sync_bn=config.model.sync_bn, model=model, tx=tx,
      label_smoothing=config.optim.label_smoothing, ema_decay=config.optim.ema_decay)
  evaluator = make_evaluator(lambda v, x: model.apply(v, x, train=False), eval_pre, mesh)
  eval_every, eval_max = config.eval.every_epochs, config.eval.max_batches or None
  log_every = config.log.every_steps

  def eval_vars(st):
    return {"params": st.params if st.ema_params is None else st.ema_params,
            "batch_stats": st.batch_stats}

  step0 = int(to_host(state.step))
  it = EpochIterator.after(step0, train_src, config.data.batch_size, config.seed,
                           process_index=jax.process_index(), process_count=jax.process_count())
  batches = prefetch_to_device(it, config.data.prefetch,
                               put=lambda b: global_batch(b, mesh))
  max_steps = config.schedule.max_steps
  stop_at = min(total_steps, step0 + max_steps) if max_steps else total_steps
  bar = Progress(total_steps, step0, f"train {os.path.basename(workdir)}", enabled=is_main and (
      config.log.progress if progress is None else progress))
  monitor = LoopMonitor(logger, bar, ckpt, resume_step, "Lower optim.lr or check the data.")
  status, images, t_loop = "done", 0, time.time()
  with PreemptionGuard() as guard:
    try:
      for step in range(step0, stop_at):
        state, m = step_fn(state, next(batches))
        images += config.data.batch_size
        done = step + 1
        monitor.add("train", done, m)
        bar.advance(images / max(time.time() - t_loop, 1e-9))
        if done % log_every == 0:
          monitor.flush()
        if eval_every and done % (spe * eval_every) == 0 and done < total_steps:
          monitor.flush()
          ev = evaluate(evaluator, eval_vars(state), dataset.test, config.data.eval_batch_size, mesh,
                        eval_max)
          logger.write(done, {f"test_{k}": v for k, v in ev.items()}, "eval")
          bar.update_metrics(test=ev["top1"])
        if ckpt.should_save(done) and done < total_steps:
          monitor.save(done, state, state.params)
        if guard.requested:
          monitor.save(done, state, state.params)
          status = f"preempted ({guard.signal_name})"
          break
      else:
        if stop_at < total_steps:
          monitor.save(stop_at, state, state.params)
          status = f"stopped at max_steps (step {stop_at} of {total_steps}); rerun to continue"
      if status == "done":
        monitor.save(total_steps, state, state.params)
    finally:
      bar.close()
      ckpt.close()
  elapsed = time.time() - t_loop
  test = None
  if status == "done":
    test = evaluate(evaluator, eval_vars(state), dataset.test, config.data.eval_batch_size, mesh)
    logger.write(total_steps, {f"test_{k}": v for k, v in test.items()}, "eval")
  result = TrainResult(workdir, status, int(to_host(state.step)), total_steps,
                       test["top1"] if test else None, test["top5"] if test else None,
                       time.time() - t_start, images / max(elapsed, 1e-9))
  if is_main:
    final = to_host(eval_vars(state))
    save_weights(os.path.join(workdir, WEIGHTS_FILE), final)
    if test is not None:
      write_report(workdir, space, arch, test, config, dataset, result)
  logger.close()
  return result


def trained_network(workdir: str) -> tuple[SearchSpace, Arch, Any]:
  """(space, arch, variables) of a finished `pnas train` workdir (for eval and export)."""
  from pnas_jax.search_space.io import load_arch

  path = os.path.join(workdir, "arch.json")
  if not os.path.exists(path) or not os.path.exists(os.path.join(workdir, WEIGHTS_FILE)):
    raise FileNotFoundError(f"{workdir} is not a finished `pnas train` workdir (no arch.json / "
                            f"{WEIGHTS_FILE}); train first or pass a zoo name")
  space, arch = load_arch(path)
  model = ChildNet(space, arch, dw_impl="lax")
  x0 = np.zeros((1, space.resolution, space.resolution, space.in_channels), np.float32)
  like = init_variables(model, jax.random.key(0), x0)
  return space, arch, load_weights(os.path.join(workdir, WEIGHTS_FILE), like)
