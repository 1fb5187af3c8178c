"""The architecture search: warm-up, then weight steps with one arch step every N (Cai et al. 2019).

    result = search(load_config("configs/search/fashion_mnist.py"), "results/search")

Schedule (docs/design.md §2.8, Sec. 3.2 / 4.1): `warmup_epochs` of weight steps on uniformly sampled
paths (alpha stays at its init), then `epochs` where each weight step trains one path sampled from
p = softmax(alpha) and, from search epoch `arch_start_epoch` on, one arch step on a held-out batch
follows every `arch_every` weight steps. Weights: SGD Nesterov with one cosine from `warmup_lr`
over the warm-up, then another from `lr` over the search (one optimizer state throughout). Alpha:
Adam per block. The latency term is E[LAT] under a measured table or fitted predictor.

The run is resumable and reproducible: all randomness is folded from the state's key and step
counters, and the data position is a function of the counters (batches consumed = weight steps;
held-out batches consumed = arch steps), so a run resumed from a checkpoint replays exactly the
batches and samples of an uninterrupted run and ends bit-identical on CPU. SIGTERM / SIGINT save a
checkpoint before exit; a non-finite loss stops the run, and no non-finite state is ever saved.
Outputs (workdir): arch.json, net.config, chosen_path.msgpack (inherited weights), metrics.jsonl,
tensorboard/, plots/*.png, summary.json, checkpoints/, config.json.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import optax

from pnas_jax.arch.derive import probabilities
from pnas_jax.arch.estimators import get_estimator, reference_reward
from pnas_jax.arch.sampling import Sample
from pnas_jax.checkpointing import Checkpointer, PreemptionGuard
from pnas_jax.config_loading import plain_dict
from pnas_jax.data.pipeline import EpochIterator, prefetch_to_device
from pnas_jax.json_files import write_json
from pnas_jax.models.supernet import Supernet, arch_indices, candidate_mask, child_variables
from pnas_jax.search_space.io import save_arch, save_net_config
from pnas_jax.search_space.space import Arch
from pnas_jax.train import inputs
from pnas_jax.train.evaluation import evaluate, make_bn_calibrator, make_evaluator, recalibrate_bn
from pnas_jax.train.latency_objective import LatencyObjective, latency_objective
from pnas_jax.train.metrics_log import MetricsLogger
from pnas_jax.train.monitor import LoopMonitor, Progress
from pnas_jax.train.optim import arch_optimizer, weight_optimizer
from pnas_jax.train.parallel import data_mesh, data_parallel, global_batch, replicate, to_host
from pnas_jax.train.state import ARCH_FAMILY, WEIGHT_FAMILY, SearchState, create_search_state
from pnas_jax.train.steps import arch_step, weight_step

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SearchResult:
  """What a search produced (also written to workdir/summary.json)."""

  workdir: str
  arch: Arch
  status: str  # "done" | "preempted (SIGTERM)" | "stopped at max_steps" | ...
  step: int
  total_steps: int
  expected_latency: float | None  # E[LAT] under the final p
  arch_latency: float | None  # the derived arch's latency under the model
  target: float | None
  latency_unit: str | None
  holdout_top1: float | None
  wall_s: float
  images_per_s: float
  probabilities: list[list[float]]

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["arch"] = list(self.arch.ops)
    return d


def search_schedule(n_train: int, config: Any) -> tuple[int, int, int]:
  """(steps_per_epoch, warmup_steps, total_steps) of a config over `n_train` training examples."""
  spe = config.schedule.steps_per_epoch or n_train // config.data.batch_size
  if spe < 1:
    raise ValueError(
        f"data.batch_size = {config.data.batch_size} is larger than the training part "
        f"({n_train} examples after the held-out split); lower it or data.holdout"
    )
  warmup = round(config.schedule.warmup_epochs * spe)
  total = warmup + round(config.schedule.epochs * spe)
  return spe, warmup, total


def weight_schedule(config: Any, warmup_steps: int, total_steps: int) -> optax.Schedule:
  """Cosine from warmup_lr over the warm-up, then cosine from lr over the search steps."""
  lr, warmup_lr = config.optim.lr, config.optim.warmup_lr
  search_steps = max(1, total_steps - warmup_steps)
  main = optax.cosine_decay_schedule(lr, search_steps)
  if warmup_steps == 0:
    return main
  warm = optax.cosine_decay_schedule(warmup_lr, warmup_steps)
  return optax.join_schedules([warm, main], [warmup_steps])


def _estimator(config: Any, objective: LatencyObjective):
  a = config.arch
  name, k, decay, tradeoff = a.estimator, a.reinforce_k, a.reinforce_decay, a.reinforce_tradeoff
  if name == "reinforce":
    return get_estimator("reinforce", k=k, baseline_decay=decay,
                         reward_fn=reference_reward(objective.target, tradeoff))
  return get_estimator(name)


def _is_arch_step(step: int, warmup: int, spe: int, arch_every: int, arch_start_epoch: int) -> bool:
  """After weight step `step` (0-based): search phase, past arch_start_epoch, every arch_every."""
  j = step - warmup
  return j >= 0 and j // spe >= arch_start_epoch and (j + 1) % arch_every == 0


def _check_config_change(workdir: str, config_dict: dict[str, Any]) -> None:
  """A resumed run must use the config that started it (the trajectory depends on every key)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    old = json.load(f)
  flat_old, flat_new = _flatten(old), _flatten(json.loads(json.dumps(config_dict)))
  # max_steps only says where this invocation stops; the rest changes the trajectory.
  diff = sorted(k for k in set(flat_old) | set(flat_new)
                if flat_old.get(k) != flat_new.get(k) and k != "schedule.max_steps")
  if diff:
    detail = ", ".join(f"{k}: {flat_old.get(k)!r} -> {flat_new.get(k)!r}" for k in diff[:8])
    raise ValueError(
        f"{workdir} holds a search started with another config ({detail}); resume with the "
        "same config or use a fresh --workdir"
    )


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def search(config: Any, workdir: str, *, progress: bool | None = None,
           dry_run: bool = False) -> SearchResult | dict[str, Any]:
  """Runs (or resumes) the search described by `config` in `workdir`; see the module docstring.

  dry_run: check the config, the data and the latency model and return the plan (space, schedule,
  target) without compiling or training anything.
  """
  t_start = time.time()
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  config_dict = plain_dict(config)

  # Every config value is read in this block, before anything is compiled: a bad value fails in
  # seconds, and tests/test_search_configs.py checks that no key of any config goes unread.
  run_name = config.name
  mesh = data_mesh(config.num_devices)
  data = inputs.search_inputs(config, mesh)
  space = data.space
  spe, warmup_steps, total_steps = search_schedule(len(data.train), config)
  arch_every, arch_start = config.schedule.arch_every, config.schedule.arch_start_epoch
  if arch_every < 1 or arch_start < 0:
    raise ValueError(f"schedule.arch_every = {arch_every} must be >= 1 and "
                     f"schedule.arch_start_epoch = {arch_start} >= 0")
  objective = latency_objective(config, space, workdir)
  estimator = _estimator(config, objective)
  model = Supernet(space, dropout_rate=config.model.dropout_rate, dw_impl=config.model.dw_impl,
                   impl=config.model.impl)
  sync_bn = config.model.sync_bn
  weight_tx = weight_optimizer(weight_schedule(config, warmup_steps, total_steps),
                               momentum=config.optim.momentum, nesterov=config.optim.nesterov,
                               weight_decay=config.optim.weight_decay)
  arch_tx = arch_optimizer(config.optim.arch_lr, config.optim.arch_b1, config.optim.arch_b2,
                           config.optim.arch_eps)
  weight_sample, smoothing = config.optim.weight_sample, config.optim.label_smoothing
  alpha_std, seed = config.optim.alpha_init_std, config.seed
  ckpt_every, ckpt_keep = config.checkpoint.every_steps, config.checkpoint.keep
  max_steps = config.schedule.max_steps
  eval_max_batches, eval_every = config.eval.max_batches or None, config.eval.every_epochs
  bn_batches = config.eval.bn_batches
  log_every, plots_on, tensorboard = config.log.every_steps, config.log.plots, config.log.tensorboard
  log_progress = config.log.progress
  show_progress = log_progress if progress is None else progress
  batch_size, arch_batch_size = config.data.batch_size, config.data.arch_batch_size
  eval_batch_size, prefetch = config.data.eval_batch_size, config.data.prefetch
  plan = {"name": run_name, "space": space.to_dict(), "blocks": space.n_blocks,
          "train_examples": len(data.train), "holdout_examples": len(data.holdout),
          "steps_per_epoch": spe, "warmup_steps": warmup_steps, "total_steps": total_steps,
          "devices": int(mesh.devices.size), "estimator": config.arch.estimator,
          "latency_unit": objective.unit, "target": objective.target,
          "baseline_latency": objective.baseline}
  if dry_run:
    return plan
  log.info("search %s: %d blocks, %d steps (%d warm-up), %d device(s)", run_name, space.n_blocks,
           total_steps, warmup_steps, mesh.devices.size)

  key = jax.random.key(seed)
  state = create_search_state(model, key, weight_tx, arch_tx, alpha_std)

  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), ckpt_every, ckpt_keep)
  resume_step = None
  if ckpt.latest_step() is not None:
    _check_config_change(workdir, config_dict)
    resume_step, state, _ = ckpt.restore(state)
    log.info("resuming from checkpoint %d in %s", resume_step, ckpt.directory)
  elif is_main:
    write_json(os.path.join(workdir, "config.json"), config_dict)
  state = replicate(state, mesh)
  logger = MetricsLogger(workdir, tensorboard=tensorboard, resume_step=resume_step, enabled=is_main)

  train_pre, eval_pre = data.train_preprocess, data.eval_preprocess
  # One compilation for warm-up and search weight steps: the step samples uniformly while
  # state.step < warmup_steps.
  weight_fn = data_parallel(
      inputs.with_preprocess(weight_step, train_pre, WEIGHT_FAMILY, "step"), mesh, sync_bn=sync_bn,
      model=model, tx=weight_tx, sample_mode=weight_sample, label_smoothing=smoothing,
      uniform_steps=warmup_steps)
  arch_fn = data_parallel(
      inputs.with_preprocess(arch_step, eval_pre, ARCH_FAMILY, "arch_step"), mesh, sync_bn=sync_bn,
      model=model, tx=arch_tx, estimator=estimator, cost_fn=objective.cost_fn,
      loss_fn=objective.loss_fn)
  evaluator = make_evaluator(
      lambda v, x: model.apply({"params": v["params"], "batch_stats": v["batch_stats"]}, x,
                               Sample(active=v["active"]), train=False),
      eval_pre, mesh)
  calibrator = make_bn_calibrator(
      lambda v, x: model.apply({"params": v["params"], "batch_stats": v["batch_stats"]}, x,
                               Sample(active=v["active"]), train=True, mutable=["batch_stats"])[1][
                                   "batch_stats"],
      eval_pre, mesh)

  step0, arch0 = int(to_host(state.step)), int(to_host(state.arch_step))
  pc, pi = jax.process_count(), jax.process_index()
  # The data position is a function of the step counters (batches consumed), so a resumed run
  # replays the uninterrupted run's batches.
  train_it = EpochIterator.after(step0, data.train, batch_size, seed, process_index=pi,
                                 process_count=pc)
  holdout_it = EpochIterator.after(arch0, data.holdout, arch_batch_size, seed + 1,
                                   process_index=pi, process_count=pc)
  put = functools.partial(global_batch, mesh=mesh)
  train_batches = prefetch_to_device(train_it, prefetch, put=put)
  holdout_batches = prefetch_to_device(holdout_it, prefetch, put=put)

  def evaluate_argmax(st: SearchState) -> dict[str, Any]:
    alpha = list(to_host(st.alpha))
    arch = objective.derive(alpha, space)
    active = jnp.asarray(arch_indices(space, arch), jnp.int32)
    variables = {"params": st.params, "batch_stats": st.batch_stats,
                 "active": replicate(active, mesh)}
    if bn_batches:
      stats = recalibrate_bn(calibrator, variables, data.train, eval_batch_size, mesh, bn_batches)
      mask = replicate(candidate_mask(st.batch_stats, space, active), mesh)
      variables["batch_stats"] = jax.tree.map(jnp.where, mask, stats, st.batch_stats)
    res = evaluate(evaluator, variables, data.holdout, eval_batch_size, mesh, eval_max_batches)
    out = {"holdout_top1": res["top1"], "holdout_top5": res["top5"], "holdout_loss": res["loss"],
           "arch": list(arch.ops)}
    if objective.predictor is not None:
      out["arch_latency"] = objective.of_arch(arch)
    return out

  stop_at = min(total_steps, step0 + max_steps) if max_steps else total_steps
  bar = Progress(total_steps, step0, f"search {run_name}", enabled=is_main and show_progress)
  monitor = LoopMonitor(
      logger, bar, ckpt, resume_step, "Lower optim.lr / optim.arch_lr or check the data.",
      {"train": {"loss": "loss", "acc": "acc"}, "arch": {"expected_cost": "E[LAT]"}})
  status = "done"
  images = 0
  t_loop = time.time()

  def save(st: SearchState, step: int) -> None:
    # The data position is (weight steps, arch steps) = batches consumed from each split.
    monitor.save(step, st, (st.params, st.alpha),
                 {"weight_steps": step, "arch_steps": int(to_host(st.arch_step))})

  with PreemptionGuard() as guard:
    try:
      for step in range(step0, stop_at):
        state, m = weight_fn(state, next(train_batches))
        images += batch_size
        monitor.add("train", step + 1, m)
        if _is_arch_step(step, warmup_steps, spe, arch_every, arch_start):
          state, am = arch_fn(state, next(holdout_batches))
          images += arch_batch_size
          monitor.add("arch", step + 1, am)
        bar.advance(images / max(time.time() - t_loop, 1e-9))
        done = step + 1
        if done % log_every == 0:
          monitor.flush()
        epoch_end = done >= warmup_steps and (done - warmup_steps) % spe == 0 and done > warmup_steps
        if epoch_end or done == total_steps:
          search_epoch = (done - warmup_steps) / spe
          # The per-epoch record of the architecture distribution (plots/alpha.png).
          probs = probabilities(list(to_host(state.alpha)))
          record = {"search_epoch": search_epoch, "probs": [p.tolist() for p in probs]}
          if objective.predictor is not None:
            record["expected_latency"] = objective.expected(probs)
          logger.write(done, record, "alpha")
          if done == total_steps or eval_every and round(search_epoch) % eval_every == 0:
            monitor.flush()
            ev = evaluate_argmax(state)
            ev["search_epoch"] = search_epoch
            logger.write(done, ev, "eval")
            bar.update_metrics(holdout=ev["holdout_top1"])
        if ckpt.should_save(done) and done < total_steps:
          save(state, done)
        if guard.requested:
          save(state, done)
          status = f"preempted ({guard.signal_name})"
          break
      else:
        if stop_at < total_steps:
          save(state, stop_at)
          status = f"stopped at max_steps (step {stop_at} of {total_steps}); rerun to continue"
      if status == "done":
        save(state, total_steps)
    finally:
      bar.close()
      ckpt.close()

  final_step = int(to_host(state.step))
  elapsed = time.time() - t_loop
  alpha = list(to_host(state.alpha))
  arch = objective.derive(alpha, space)
  probs = probabilities(alpha)
  records = logger.records()
  evals = [r for r in records if r["kind"] == "eval"]
  result = SearchResult(
      workdir=workdir, arch=arch, status=status, step=final_step, total_steps=total_steps,
      expected_latency=objective.expected(probs) if objective.predictor else None,
      arch_latency=objective.of_arch(arch) if objective.predictor else None,
      target=objective.target, latency_unit=objective.unit,
      holdout_top1=evals[-1]["holdout_top1"] if evals else None,
      wall_s=time.time() - t_start, images_per_s=images / max(elapsed, 1e-9),
      probabilities=[p.tolist() for p in probs],
  )
  if is_main:
    _write_outputs(workdir, run_name, space, arch, state, result, records, plots_on)
  logger.close()
  return result


def _write_outputs(workdir, run_name, space, arch, state, result: SearchResult, records,
                   plots_on) -> None:
  meta = {"expected_latency": result.expected_latency, "arch_latency": result.arch_latency,
          "target": result.target, "latency_unit": result.latency_unit,
          "holdout_top1": result.holdout_top1, "step": result.step, "status": result.status,
          "probabilities": result.probabilities}
  save_arch(os.path.join(workdir, "arch.json"), space, arch, name=run_name, meta=meta)
  save_net_config(os.path.join(workdir, "net.config"), space, arch)
  host = to_host({"params": state.params, "batch_stats": state.batch_stats})
  chosen = child_variables(host, space, arch)
  with open(os.path.join(workdir, "chosen_path.msgpack"), "wb") as f:
    f.write(flax.serialization.to_bytes(chosen))
  write_json(os.path.join(workdir, "summary.json"), result.to_dict())
  if plots_on:
    from pnas_jax.train.search_plots import write_search_plots

    write_search_plots(workdir, space, arch, records, result)


def load_chosen_path(workdir: str, target: Any) -> Any:
  """The chosen path's supernet variables saved by a search, shaped like `target` (ChildNet vars)."""
  with open(os.path.join(workdir, "chosen_path.msgpack"), "rb") as f:
    return flax.serialization.from_bytes(target, f.read())


