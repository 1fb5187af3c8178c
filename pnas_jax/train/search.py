"""The architecture search: warm-up, then weight steps with one arch step every N (Cai et al. 2019).

    result = search(load_config("configs/search/fashion_mnist.py"), "results/search")
    plan = plan_search(config, workdir)   # what `pnas search --dry-run` prints; compiles nothing

Schedule (docs/design.md §2.8, the paper's Sec. 3.2 / 4.1): `warmup_epochs` of weight steps on
uniformly sampled paths (alpha stays at its init), then `epochs` where each weight step trains one
path sampled from p = softmax(alpha) and, from search epoch `arch_start_epoch` on, one arch step on
a held-out batch follows every `arch_every` weight steps. Weights: SGD Nesterov with one cosine
from `warmup_lr` over the warm-up, then another from `lr` over the search (one optimizer state
throughout). Alpha: Adam per block. The latency term is E[LAT] under a measured table or fitted
predictor.

`setup_search` resolves everything the config says (mesh, data, schedule, model, both optimizers,
latency objective, estimator) before anything is compiled; the loop itself is train/loop.py's. The
run is resumable and reproducible: all randomness is folded from the state's key and step
counters, and the data position is a function of the counters (batches consumed = weight steps;
held-out batches consumed = arch steps), so a resumed run ends bit-identical on CPU. Outputs
(workdir): arch.json, net.config, chosen_path.msgpack (inherited weights), metrics.jsonl,
tensorboard/, plots/*.png, summary.json, checkpoints/, config.json. A search that did not reach the
end of its schedule marks summary.json and arch.json as partial.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import optax
from jax.sharding import Mesh

from pnas_jax.arch import weight_sharing
from pnas_jax.arch.derive import probabilities
from pnas_jax.arch.estimators import Estimator, estimator_from_config
from pnas_jax.arch.supernet import Supernet, child_variables
from pnas_jax.config_loading import plain_dict
from pnas_jax.data.pipeline import EpochIterator, prefetch_to_device
from pnas_jax.errors import MissingFileError, UserValueError
from pnas_jax.file_io import read_json, save_msgpack, write_json
from pnas_jax.latency.objective import LatencyObjective, latency_objective
from pnas_jax.layers import batchnorm, native
from pnas_jax.layers.depthwise import resolve_impl
from pnas_jax.search_space.io import save_arch, save_net_config
from pnas_jax.search_space.space import Arch
from pnas_jax.trace_cache import cached_trace
from pnas_jax.train import derive_by_supernet, inputs
from pnas_jax.train.evaluation import PathEvaluator
from pnas_jax.train.loop import CONFIG_FILE, Outcome, RunDir, RunStateError, Status, final_state, run_loop
from pnas_jax.train.monitor import LoopMonitor, Progress
from pnas_jax.train.optim import arch_optimizer, weight_optimizer
from pnas_jax.train.parallel import data_mesh, data_parallel, global_batch, replicate, to_host
from pnas_jax.train.search_config import search_config
from pnas_jax.train.search_plots import write_search_plots
from pnas_jax.train.state import ARCH_FAMILY, WEIGHT_FAMILY, SearchState, create_search_state
from pnas_jax.train.steps import arch_step, weight_step

log = logging.getLogger(__name__)
CHOSEN_PATH_FILE = "chosen_path.msgpack"
SUMMARY_FILE = "summary.json"
SEARCH_OUTPUTS = ("arch.json", "net.config", CHOSEN_PATH_FILE, SUMMARY_FILE, "plots",
                  derive_by_supernet.DERIVATION_FILE, derive_by_supernet.WARMUP_WEIGHTS_FILE)


@dataclasses.dataclass(frozen=True)
class SearchSchedule:
  """Weight steps per epoch, warm-up and total weight steps, and when arch steps run."""

  steps_per_epoch: int
  warmup_steps: int
  total_steps: int
  arch_every: int
  arch_start_epoch: int

  @classmethod
  def from_config(cls, schedule: Any, batch_size: int, n_train: int) -> SearchSchedule:
    spe = schedule.steps_per_epoch or n_train // batch_size
    if spe < 1:
      raise UserValueError(
          f"data.batch_size = {batch_size} is larger than the training part ({n_train} examples "
          "after the held-out split); lower it or data.holdout")
    if schedule.arch_every < 1 or schedule.arch_start_epoch < 0:
      raise UserValueError(f"schedule.arch_every = {schedule.arch_every} must be >= 1 and "
                           f"schedule.arch_start_epoch = {schedule.arch_start_epoch} >= 0")
    warmup = round(schedule.warmup_epochs * spe)
    return cls(spe, warmup, warmup + round(schedule.epochs * spe), schedule.arch_every,
               schedule.arch_start_epoch)

  def is_arch_step(self, step: int) -> bool:
    """After weight step `step` (0-based): search phase, past arch_start_epoch, every arch_every."""
    j = step - self.warmup_steps
    return j >= 0 and j // self.steps_per_epoch >= self.arch_start_epoch and (
        j + 1) % self.arch_every == 0

  def is_epoch_end(self, done: int) -> bool:
    """`done` weight steps end a search epoch (or the schedule)."""
    j = done - self.warmup_steps
    return (j > 0 and j % self.steps_per_epoch == 0) or done == self.total_steps

  def search_epoch(self, done: int) -> float:
    return (done - self.warmup_steps) / self.steps_per_epoch

  def learning_rate(self, lr: float, warmup_lr: float) -> optax.Schedule:
    """Cosine from warmup_lr over the warm-up, then cosine from lr over the search steps."""
    main = optax.cosine_decay_schedule(lr, max(1, self.total_steps - self.warmup_steps))
    if self.warmup_steps == 0:
      return main
    warm = optax.cosine_decay_schedule(warmup_lr, self.warmup_steps)
    return optax.join_schedules([warm, main], [self.warmup_steps])


@dataclasses.dataclass
class SearchSetup:
  """Everything a search reads from its config, resolved and checked (see setup_search)."""

  config_dict: dict[str, Any]
  name: str
  seed: int
  mesh: Mesh
  data: inputs.SearchInputs
  schedule: SearchSchedule
  objective: LatencyObjective
  estimator: Estimator
  model: Supernet
  weight_tx: optax.GradientTransformation
  arch_tx: optax.GradientTransformation
  step_options: dict[str, Any]  # weight_sample, label_smoothing, alpha_init_std, sync_bn
  batches: dict[str, int]  # batch_size, arch_batch_size, eval_batch_size, prefetch
  eval: dict[str, int]  # every_epochs, max_batches, bn_batches
  run: dict[str, Any]  # checkpoint_every, keep, max_steps, log_every, tensorboard, progress, plots
  derive_candidates: int = 1  # latency.derive = "supernet": candidates scored (derive_by_supernet)
  # latency.derive_scoring_warmups: (workdir, its data split) of each further warm-up the supernet
  # derivation scores the candidates in (the split of its own seed: it trained on the rest)
  derive_warmups: tuple[tuple[str, inputs.SearchInputs], ...] = ()

  @property
  def space(self):
    return self.data.space

  def plan(self) -> dict[str, Any]:
    """What `pnas search --dry-run` prints."""
    s = self.schedule
    return {"name": self.name, "space": self.space.to_dict(), "blocks": self.space.n_blocks,
            "train_examples": len(self.data.train), "holdout_examples": len(self.data.holdout),
            "steps_per_epoch": s.steps_per_epoch, "warmup_steps": s.warmup_steps,
            "total_steps": s.total_steps, "devices": int(self.mesh.devices.size),
            "estimator": self.estimator.name, "latency_unit": self.objective.unit,
            "target": self.objective.target, "baseline_latency": self.objective.baseline}


def setup_search(config: Any, workdir: str) -> SearchSetup:
  """Reads every config value (tests/test_search_configs.py checks that none goes unread) and
  builds the search's parts, before anything is compiled: a bad value fails in seconds."""
  mesh = data_mesh(config.num_devices)
  data = inputs.search_inputs(config, mesh)
  d, o, e, r = config.data, config.optim, config.eval, config.log
  schedule = SearchSchedule.from_config(config.schedule, d.batch_size, len(data.train))
  objective = latency_objective(config, data.space, os.path.abspath(workdir))
  estimator = estimator_from_config(config.arch.to_dict(), objective.target, objective.band())
  arch_batch = getattr(estimator, "batch_size", 0) or d.arch_batch_size
  if arch_batch != d.arch_batch_size:
    inputs.check_split_batch(f"arch.{estimator.name}.batch_size", arch_batch, len(data.holdout), mesh)
  model = Supernet(data.space, dropout_rate=config.model.dropout_rate, dw_impl=config.model.dw_impl,
                   impl=config.model.impl,
                   weight_sharing=weight_sharing.check_mode(config.model.weight_sharing))
  weight_tx = weight_optimizer(schedule.learning_rate(o.lr, o.warmup_lr), momentum=o.momentum,
                               nesterov=o.nesterov, weight_decay=o.weight_decay)
  arch_tx = arch_optimizer(o.arch_lr, o.arch_b1, o.arch_b2, o.arch_eps)
  return SearchSetup(
      config_dict=plain_dict(config), name=config.name, seed=config.seed, mesh=mesh, data=data,
      schedule=schedule, objective=objective, estimator=estimator, model=model,
      weight_tx=weight_tx, arch_tx=arch_tx,
      step_options={"weight_sample": o.weight_sample, "label_smoothing": o.label_smoothing,
                    "alpha_init_std": o.alpha_init_std, "sync_bn": config.model.sync_bn},
      batches={"batch_size": d.batch_size, "arch_batch_size": arch_batch,
               "eval_batch_size": d.eval_batch_size, "prefetch": d.prefetch},
      eval={"every_epochs": e.every_epochs, "max_batches": e.max_batches or None,
            "bn_batches": e.bn_batches},
      run={"checkpoint_every": config.checkpoint.every_steps, "keep": config.checkpoint.keep,
           "max_steps": config.schedule.max_steps, "log_every": r.every_steps,
           "tensorboard": r.tensorboard, "progress": r.progress, "plots": r.plots,
           "alpha_every": r.alpha_every},
      derive_candidates=config.latency.derive_candidates,
      derive_warmups=_scoring_warmup_inputs(config, mesh, data.dataset))


def _scoring_warmup_inputs(config: Any, mesh: Mesh, dataset: Any
                           ) -> tuple[tuple[str, inputs.SearchInputs], ...]:
  """latency.derive_scoring_warmups (checked against derive_warmups and derive), each with the
  held-out split of the seed in its config.json, carved from this search's `dataset`."""
  lat = config.latency
  dirs = tuple(os.path.abspath(d) for d in lat.derive_scoring_warmups)
  if lat.derive_warmups != 1 + len(dirs):
    raise UserValueError(
        f"config.latency.derive_warmups = {lat.derive_warmups} with {len(dirs)} workdir(s) in "
        "latency.derive_scoring_warmups: `pnas sweep` warms up that many supernets and lists the "
        "others there; a single search lists derive_warmups - 1 finished warm-up workdirs itself")
  if dirs and lat.derive != "supernet":
    raise UserValueError(f"config.latency.derive_scoring_warmups is set, but derive = {lat.derive!r} "
                         "scores no candidates; set latency.derive = 'supernet'")
  out = []
  for d in dirs:
    path = os.path.join(d, CONFIG_FILE)
    if not os.path.exists(path):
      raise MissingFileError(f"config.latency.derive_scoring_warmups: {d!r} holds no search "
                             f"({CONFIG_FILE} missing); give finished warm-up workdirs")
    own = config.copy_and_resolve_references()
    own.seed = int(read_json(path)["seed"])
    out.append((d, inputs.search_inputs(own, mesh, dataset)))
  return tuple(out)


def plan_search(config: Any, workdir: str) -> dict[str, Any]:
  """The search's plan (space, schedule, target) after every check; compiles and trains nothing."""
  return setup_search(config, workdir).plan()


@dataclasses.dataclass
class SearchResult:
  """What a search produced (also written to workdir/summary.json)."""

  workdir: str
  arch: Arch
  status: Status
  detail: str  # Outcome.describe(): how the loop ended, what to do next
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
  exit_code: int = 0
  # latency.derive = "supernet": how the arch was chosen (derive_by_supernet.choose's record)
  derivation: dict[str, Any] | None = None

  @property
  def partial(self) -> bool:
    return self.status is not Status.DONE

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d.update(arch=list(self.arch.ops), status=self.status.value, partial=self.partial)
    return d


# What a warm-up alone (no search epochs) does not read: the architecture step, the target and
# the search phase's learning rate. A sweep's warm-up is reused when only these change (targets
# added or reordered: its own target is the first); they still decide the warm-up's arch.json.
WARMUP_UNUSED = ("arch.", "latency.target", "latency.target_ratio", "latency.targets",
                 "latency.target_ratios", "latency.loss", "latency.loss_params.", "latency.derive",
                 "latency.derive_", "optim.lr", "optim.arch_", "schedule.arch_every",
                 "schedule.arch_start_epoch", "log.alpha_every")


def search(config: Any, workdir: str, *, progress: bool | None = None, overwrite: bool = False,
           init_from: str | None = None) -> SearchResult:
  """Runs (or resumes) the search described by `config` in `workdir`; see the module docstring.

  overwrite: delete an earlier run's results in `workdir` and start over.
  init_from: a finished warm-up (a search workdir whose schedule was the warm-up alone, see
    train/sweep.py); a fresh run starts from its final state instead of initialising one.
  """
  t_start = time.time()
  with RunDir(workdir, kind="search") as run:
    setup = setup_search(config, workdir)
    s = setup.schedule
    log.info("search %s: %d blocks, %d steps (%d warm-up), %d device(s)", setup.name,
             setup.space.n_blocks, s.total_steps, s.warmup_steps, setup.mesh.devices.size)
    run.open(setup.config_dict, checkpoint_every=setup.run["checkpoint_every"],
             keep=setup.run["keep"], tensorboard=setup.run["tensorboard"], overwrite=overwrite,
             outputs=SEARCH_OUTPUTS, unused=WARMUP_UNUSED if s.total_steps == s.warmup_steps else (),
             defaults=plain_dict(search_config()))
    initial = create_search_state(setup.model, jax.random.key(setup.seed), setup.weight_tx,
                                  setup.arch_tx, setup.step_options["alpha_init_std"])
    if init_from is not None and run.resume_step is None:
      initial = _warmed_up(init_from, initial, s.warmup_steps)
    state = replicate(run.restore_or(initial), setup.mesh)
    evaluator = PathEvaluator(setup.model, setup.data.eval_preprocess, setup.mesh)
    _keep_warmup_weights(setup, run, state, int(to_host(state.step)))
    state, outcome = _run(setup, run, state, progress, evaluator)
    result = _result(setup, run, state, outcome, _wall_s(run, outcome, time.time() - t_start),
                     evaluator)
    if run.is_main:
      _write_outputs(setup, run, state, result)
  return result


def _warmed_up(warmup_dir: str, like: SearchState, warmup_steps: int) -> SearchState:
  """The final state of a warm-up run in `warmup_dir`; it must end where this schedule's warm-up
  ends."""
  step, state = final_state(warmup_dir, like)
  if step != warmup_steps:
    raise RunStateError(
        f"{warmup_dir} ends at step {step}, but this search's warm-up is {warmup_steps} steps; "
        "the warm-up was run with another schedule: use --overwrite to run it again")
  log.info("starting from the warm-up of %s (step %d)", warmup_dir, step)
  return state


def _keep_warmup_weights(setup: SearchSetup, run: RunDir, state: SearchState, done: int) -> None:
  """With latency.derive = "supernet", the supernet as it is at the end of the warm-up (`done` ==
  its steps; a sweep's target search starts there), which its candidates are scored in."""
  s = setup.schedule
  if (setup.objective.derive_mode != "supernet" or not s.warmup_steps or done != s.warmup_steps
      or s.total_steps == s.warmup_steps  # a warm-up alone: its final checkpoint is the snapshot
      or os.path.exists(os.path.join(run.workdir, derive_by_supernet.WARMUP_WEIGHTS_FILE))):
    return
  derive_by_supernet.save_warmup_weights(run.workdir, state.params, state.batch_stats, run.is_main)


def step_fingerprint(setup: SearchSetup) -> dict[str, Any]:
  """Everything the search's steps close over that can change their trace (trace_cache.py): the
  resolved config (space, model, schedule, optimisers, estimator, latency loss and target), the
  data (sizes, normalisation, augmentation), the latency model's numbers and the depthwise and
  BatchNorm kernels that will run (native or not: PNAS_NATIVE or a missing compiler change it)."""
  d, obj = setup.data, setup.objective
  return {"config": setup.config_dict, "train": len(d.train), "holdout": len(d.holdout),
          "dataset": [d.dataset.mean, d.dataset.std, d.dataset.augment, d.dataset.image_shape],
          "predictor": None if obj.predictor is None else obj.predictor.to_dict(),
          "target": obj.target, "dw_impl": resolve_impl(setup.config_dict["model"]["dw_impl"]),
          "bn_impl": batchnorm.resolve_impl("auto"),
          "schedule": dataclasses.asdict(setup.schedule)}


def compiled_steps(setup: SearchSetup) -> tuple[Callable[..., Any], Callable[..., Any]]:
  """The data-parallel weight step (warm-up and search share one compilation: the step samples
  uniformly while state.step < warmup_steps) and arch step, each through the trace cache."""
  data, opts, obj = setup.data, setup.step_options, setup.objective
  weight_fn = data_parallel(
      inputs.with_preprocess(weight_step, data.train_preprocess, WEIGHT_FAMILY, "step"),
      setup.mesh, sync_bn=opts["sync_bn"], model=setup.model, tx=setup.weight_tx,
      sample_mode=opts["weight_sample"], label_smoothing=opts["label_smoothing"],
      uniform_steps=setup.schedule.warmup_steps)
  arch_fn = data_parallel(
      inputs.with_preprocess(arch_step, data.eval_preprocess, ARCH_FAMILY, "arch_step"),
      setup.mesh, sync_bn=opts["sync_bn"], model=setup.model, tx=setup.arch_tx,
      estimator=setup.estimator, cost_fn=obj.cost_fn, loss_fn=obj.loss_fn)
  fingerprint, checks = step_fingerprint(setup), native.export_checks()
  return (cached_trace(weight_fn, "search_weight_step", fingerprint, disabled_checks=checks),
          cached_trace(arch_fn, "search_arch_step", fingerprint, disabled_checks=checks))


def _batches(setup: SearchSetup, state: SearchState) -> tuple[Any, Any]:
  """Device batch iterators positioned after the batches the state has consumed (weight steps from
  the training part, arch steps from the held-out part), so a resumed run replays the same data."""
  b, pc, pi = setup.batches, jax.process_count(), jax.process_index()
  step0, arch0 = int(to_host(state.step)), int(to_host(state.arch_step))
  put = functools.partial(global_batch, mesh=setup.mesh)
  train = EpochIterator.after(step0, setup.data.train, b["batch_size"], setup.seed,
                              process_index=pi, process_count=pc)
  holdout = EpochIterator.after(arch0, setup.data.holdout, b["arch_batch_size"], setup.seed + 1,
                                process_index=pi, process_count=pc)
  return prefetch_to_device(train, b["prefetch"], put=put), prefetch_to_device(
      holdout, b["prefetch"], put=put)


def _run(setup: SearchSetup, run: RunDir, state: SearchState, progress: bool | None,
         evaluator: PathEvaluator) -> tuple[SearchState, Outcome]:
  """The search loop: a weight step, then an arch step where the schedule says, per step."""
  weight_fn, arch_fn = compiled_steps(setup)
  train_batches, holdout_batches = _batches(setup, state)
  s, b = setup.schedule, setup.batches
  start = int(to_host(state.step))
  show = setup.run["progress"] if progress is None else progress
  bar = Progress(s.total_steps, start, f"search {setup.name}", enabled=run.is_main and show)
  monitor = LoopMonitor(
      run.logger, bar, run.checkpointer, run.resume_step,
      "Lower optim.lr / optim.arch_lr or check the data.",
      {"train": {"loss": "loss", "acc": "acc"}, "arch": {"expected_cost": "E[LAT]"}},
      run.resume_meta.get("pending_metrics", ()))

  arch_steps = int(to_host(state.arch_step))
  alpha_every = setup.run["alpha_every"]

  def one_step(st: SearchState, step: int) -> tuple[SearchState, int]:
    nonlocal arch_steps
    st, m = weight_fn(st, next(train_batches))
    monitor.add("train", step + 1, m)
    if not s.is_arch_step(step):
      return st, b["batch_size"]
    st, am = arch_fn(st, next(holdout_batches))
    monitor.add("arch", step + 1, am)
    arch_steps += 1
    if alpha_every and arch_steps % alpha_every == 0 and not s.is_epoch_end(step + 1):
      _record_alpha(setup, run, st, step + 1)
    return st, b["batch_size"] + b["arch_batch_size"]

  def save(st: SearchState, step: int, final: bool) -> None:
    # The data position is (weight steps, arch steps) = batches consumed from each split.
    monitor.save(step, st, (st.params, st.alpha),
                 {"weight_steps": step, "arch_steps": int(to_host(st.arch_step))}, final)

  epoch_hook = _epoch_records(setup, run, monitor, evaluator)
  hooks = (functools.partial(_keep_warmup_weights, setup, run), epoch_hook)
  return run_loop(state, one_step, run=run, start=start, total_steps=s.total_steps,
                  max_steps=setup.run["max_steps"], monitor=monitor, save=save, hooks=hooks,
                  log_every=setup.run["log_every"])


def _record_alpha(setup: SearchSetup, run: RunDir, state: SearchState, done: int) -> list[Any]:
  """Logs the architecture distribution after `done` weight steps (kind "alpha": the per-block
  probabilities, E[LAT] under them, the search epoch); returns alpha on the host."""
  alpha = list(to_host(state.alpha))
  probs = probabilities(alpha)
  record = {"search_epoch": setup.schedule.search_epoch(done), "probs": [p.tolist() for p in probs]}
  if setup.objective.predictor is not None:
    record["expected_latency"] = setup.objective.expected(probs)
  run.logger.write(done, record, "alpha")
  return alpha


def _epoch_records(setup: SearchSetup, run: RunDir, monitor: LoopMonitor, evaluator: PathEvaluator
                   ) -> Callable[[SearchState, int], None]:
  """The per-epoch hook: the architecture distribution (plots/alpha.png; also every
  log.alpha_every arch steps, see _run) and, every
  eval.every_epochs and at the end, the held-out accuracy of the derived architecture."""
  s, obj, ev = setup.schedule, setup.objective, setup.eval

  def hook(state: SearchState, done: int) -> None:
    if not s.is_epoch_end(done):
      return
    epoch = s.search_epoch(done)
    alpha = _record_alpha(setup, run, state, done)
    if done == s.total_steps or ev["every_epochs"] and round(epoch) % ev["every_epochs"] == 0:
      monitor.flush()
      arch = obj.derive(alpha, setup.space)
      res = evaluator(state.params, state.batch_stats, arch, holdout=setup.data.holdout,
                      train=setup.data.train, batch_size=setup.batches["eval_batch_size"],
                      bn_batches=ev["bn_batches"], max_batches=ev["max_batches"])
      out = {"holdout_top1": res["top1"], "holdout_top5": res["top5"], "holdout_loss": res["loss"],
             "arch": list(arch.ops), "search_epoch": epoch}
      if obj.predictor is not None:
        out["arch_latency"] = obj.of_arch(arch)
      run.logger.write(done, out, "eval")
      monitor.bar.update_metrics(holdout=res["top1"])

  return hook


def _wall_s(run: RunDir, outcome: Outcome, elapsed: float) -> float:
  """This invocation's time, or, for a search it found finished (no image consumed), the time its
  summary.json recorded (a rerun does not replace the search's time by its own second)."""
  path = os.path.join(run.workdir, SUMMARY_FILE)
  if outcome.images == 0 and os.path.exists(path):
    return float(read_json(path, RunStateError).get("wall_s", elapsed))
  return elapsed


def _result(setup: SearchSetup, run: RunDir, state: SearchState, outcome: Outcome,
            wall_s: float, evaluator: PathEvaluator) -> SearchResult:
  obj = setup.objective
  alpha = list(to_host(state.alpha))
  arch, probs = obj.derive(alpha, setup.space), probabilities(alpha)
  evals = [r for r in run.logger.records() if r["kind"] == "eval"]
  holdout = evals[-1]["holdout_top1"] if evals else None
  derivation = None
  if obj.derive_mode == "supernet" and outcome.status is Status.DONE:
    derivation = derive_by_supernet.choose(setup, run.workdir, state.params, state.batch_stats,
                                           arch, int(to_host(state.step)), evaluator, run.is_main)
    arch, holdout = derivation["arch"], derivation["holdout_top1"]
    derivation = {**derivation, "arch": list(arch.ops)}
  return SearchResult(
      workdir=run.workdir, arch=arch, status=outcome.status, detail=outcome.describe(),
      step=int(to_host(state.step)), total_steps=outcome.total_steps,
      expected_latency=obj.expected(probs) if obj.predictor else None,
      arch_latency=obj.of_arch(arch) if obj.predictor else None,
      target=obj.target, latency_unit=obj.unit,
      holdout_top1=holdout, wall_s=wall_s, images_per_s=outcome.images_per_s,
      probabilities=[p.tolist() for p in probs], exit_code=outcome.exit_code(),
      derivation=derivation)


def _write_outputs(setup: SearchSetup, run: RunDir, state: SearchState, result: SearchResult) -> None:
  """arch.json, net.config, the chosen path's weights, summary.json and the plots."""
  space, arch, workdir = setup.space, result.arch, run.workdir
  meta = {k: result.to_dict()[k] for k in (
      "expected_latency", "arch_latency", "target", "latency_unit", "holdout_top1", "step",
      "total_steps", "status", "partial", "probabilities", "derivation")}
  save_arch(os.path.join(workdir, "arch.json"), space, arch, name=setup.name, meta=meta)
  save_net_config(os.path.join(workdir, "net.config"), space, arch)
  host = to_host({"params": state.params, "batch_stats": state.batch_stats})
  chosen = child_variables(host, space, arch, setup.model.weight_sharing)
  save_msgpack(os.path.join(workdir, CHOSEN_PATH_FILE), chosen)
  write_json(os.path.join(workdir, SUMMARY_FILE), result.to_dict())
  if setup.run["plots"]:
    write_search_plots(workdir, space, arch, run.logger.records(), result)
