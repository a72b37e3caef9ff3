"""The resumable training loop: :func:`train_and_evaluate` and the named steps it runs.

``train_and_evaluate`` reads as a sequence: load the data, create (or restore) the train state,
write the config, then train, validating, logging and saving as the config says. Everything
the run opens (checkpointers, the metric writer, the progress bar) is closed by one
``contextlib.ExitStack``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import sys
import time
from typing import Any, Callable

import jax
import numpy as np
import optax
from flax import nnx
from flax import traverse_util
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from smoothjax import checkpoints as ckpt_lib
from smoothjax import data as data_lib
from smoothjax import metrics as metrics_lib
from smoothjax import models as models_lib
from smoothjax import smoothing
from smoothjax._utils import atomic_write_text, first_line
from smoothjax._utils import config_value as _cfg_get
from smoothjax.training._config import _check_config, load_training_data, model_config_from
from smoothjax.training._objectives import Objective
from smoothjax.training._optim import (init_train_state, make_optimizer, make_schedule,
                                       param_labels)
from smoothjax.training._steps import (BATCH_AXIS, _run_eval, make_mesh, make_pgd_eval_step,
                                       make_train_step, replicate)


class NonFiniteLossError(RuntimeError):
  """The training loss (or gradient norm) became NaN or infinite; the run stopped."""


def _log(msg: str) -> None:
  print(f"[train] {msg}", file=sys.stderr, flush=True)


def _config_json(config: Any) -> dict:
  if hasattr(config, "to_json_best_effort"):
    return json.loads(config.to_json_best_effort())
  return json.loads(json.dumps(config, default=str))


# ----------------------------------------------------------------------------------------------
# Data and state.


@dataclasses.dataclass
class _Data:
  """The images of one run: training split (``train_limit``) and validation (``val_limit``)."""

  name: str
  num_classes: int
  x_train: np.ndarray
  y_train: np.ndarray
  x_val: np.ndarray | None
  y_val: np.ndarray | None

  @property
  def has_val(self) -> bool:
    return self.x_val is not None


def _load_data(config: Any) -> _Data:
  ds = load_training_data(config.data)
  x_train, y_train = ds.split("train")
  limit = int(config.data.train_limit)
  if limit > 0:
    x_train, y_train = x_train[:limit], y_train[:limit]
  x_val, y_val = (ds.x_val, ds.y_val) if len(ds.x_val) > 0 else (None, None)
  if x_val is not None and int(config.train.val_limit) > 0:
    x_val, y_val = x_val[:int(config.train.val_limit)], y_val[:int(config.train.val_limit)]
  if config.train.best_metric == "pgd_accuracy" and x_val is None:
    raise ValueError("train.best_metric='pgd_accuracy' needs a validation split")
  return _Data(ds.name, ds.num_classes, x_train, y_train, x_val, y_val)


@dataclasses.dataclass
class TrainState:
  """Everything a step changes (``params``, ``rest``, ``opt``) and what it is built from.

  ``params`` / ``rest`` are the pure dicts of ``nnx.split(model, nnx.Param, ...)``; ``opt`` is
  :func:`init_train_state`'s ``{"step", "opt_state"[, "slow"]}``.
  """

  graphdef: nnx.GraphDef
  params: Any
  rest: Any
  opt: dict
  model_config: models_lib.ModelConfig
  objective: Objective
  tx: optax.GradientTransformation
  schedule: Callable
  lookahead: bool
  steps_per_epoch: int
  total_steps: int

  @property
  def step(self) -> int:
    return int(np.asarray(self.opt["step"]))

  def model(self) -> nnx.Module:
    return nnx.merge(self.graphdef, self.params, self.rest)


def _init_from(model: nnx.Module, path: str) -> tuple[int, list[str]]:
  """Copies the parameters of a checkpoint into ``model`` where path and shape agree.

  Returns:
    ``(copied, kept)``: how many arrays were copied, and the paths left at their initial
    values (e.g. noise scales when fine-tuning a noisy model from a plain one).
  """
  src, info = ckpt_lib.load_model(path)  # PyTorch files load without noise parameters
  norm = info.get("normalization") or {}
  if norm and (tuple(norm.get("mean", ())) != tuple(model.config.mean)
               or tuple(norm.get("std", ())) != tuple(model.config.std)):
    _log(f"warning: init_from={path} was trained with normalisation mean {norm.get('mean')} "
         f"std {norm.get('std')}, but config.model.normalization gives mean "
         f"{list(model.config.mean)} std {list(model.config.std)}")
  src_flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(src)))
  state = nnx.state(model)
  flat = traverse_util.flatten_dict(nnx.to_pure_dict(state))
  kept, copied = [], 0
  for path_, leaf in flat.items():
    other = src_flat.get(path_)
    if other is not None and np.shape(other) == np.shape(leaf):
      flat[path_] = other
      copied += 1
    else:
      kept.append("/".join(map(str, path_)))
  if copied == 0:
    raise ckpt_lib.CheckpointError(f"init_from={path}: no parameter fits the model")
  nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(flat))
  nnx.update(model, state)
  return copied, kept


def create_train_state(config: Any, data: _Data, *, key: jax.Array,
                       model: nnx.Module | None = None, init_from: str = "") -> TrainState:
  """The model (built from ``config.model`` unless given, then ``init_from``), optimiser, step 0."""
  if model is None:
    model = models_lib.build_model(model_config_from(config.model,
                                                     num_classes=data.num_classes), key=key)
  if init_from:
    copied, kept = _init_from(model, init_from)
    _log(f"initialised {copied} arrays from {init_from}"
         + (f"; {len(kept)} kept at their initial values ({', '.join(kept[:4])}"
            f"{', ...' if len(kept) > 4 else ''})" if kept else ""))
  labels = param_labels(model)
  graphdef, params_s, rest_s = nnx.split(model, nnx.Param, ...)
  params, rest = nnx.to_pure_dict(params_s), nnx.to_pure_dict(rest_s)
  batch_size = int(config.data.batch_size)
  spe = data_lib.steps_per_epoch(len(data.x_train), batch_size)
  if spe < 1:
    raise data_lib.DatasetError(
        f"batch_size={batch_size} exceeds the {len(data.x_train)} training images")
  t_cfg, o_cfg = config.train, config.optim
  total_steps = int(t_cfg.num_steps) if int(t_cfg.num_steps) > 0 else int(t_cfg.epochs) * spe
  schedule = make_schedule(kind=str(o_cfg.schedule), lr=float(o_cfg.lr), steps_per_epoch=spe,
                           total_steps=total_steps, milestones=tuple(o_cfg.milestones),
                           gamma=float(o_cfg.gamma), warmup_epochs=float(o_cfg.warmup_epochs),
                           peak_fraction=float(o_cfg.peak_fraction))
  tx = make_optimizer(o_cfg, labels=labels, schedule=schedule)
  lookahead = int(o_cfg.lookahead_steps) > 0
  return TrainState(graphdef=graphdef, params=params, rest=rest,
                    opt=init_train_state(tx, params, lookahead=lookahead),
                    model_config=model.config, objective=Objective.from_config(config.objective),
                    tx=tx, schedule=schedule, lookahead=lookahead, steps_per_epoch=spe,
                    total_steps=total_steps)


def restore_checkpoint(checkpointer: ckpt_lib.TrainCheckpointer | str | os.PathLike,
                       state: TrainState, step: int | None = None) -> dict:
  """Replaces ``state``'s model and optimiser state by a checkpoint's; returns its meta.

  Args:
    checkpointer: the run's own checkpointer (its checkpoint ``step``, default the latest), or
      the path of another run's workdir or step directory (``config.resume_from``).
    state: the freshly created train state (the structure to restore into); left as it is when
      the checkpoint cannot be read.
    step: the step of the run's own checkpointer.
  """
  model = state.model()
  if isinstance(checkpointer, ckpt_lib.TrainCheckpointer):
    restored_model, state.opt, meta = checkpointer.restore(
        step, model_state_target=ckpt_lib.model_state_dict(model), train_state_target=state.opt)
  else:
    restored_model, state.opt, meta = ckpt_lib.restore_train_checkpoint(
        checkpointer, model_state_target=ckpt_lib.model_state_dict(model),
        train_state_target=state.opt)
  nnx_state = nnx.state(model)
  nnx.replace_by_pure_dict(nnx_state, restored_model)
  nnx.update(model, nnx_state)
  _, params_s, rest_s = nnx.split(model, nnx.Param, ...)
  state.params, state.rest = nnx.to_pure_dict(params_s), nnx.to_pure_dict(rest_s)
  return meta


def restore_newest_intact(checkpointer: ckpt_lib.TrainCheckpointer,
                          state: TrainState) -> tuple[dict, int]:
  """Restores the newest readable checkpoint of the run; damaged newer ones are set aside.

  Each damaged checkpoint (a failed restore) is moved to ``workdir/damaged/`` (so that the run
  saves its steps again) with a one-line warning.

  Returns:
    ``(meta, step)`` of the checkpoint restored.

  Raises:
    CheckpointError: no checkpoint of the run can be read (all are left in place).
  """
  failures = []
  for step in sorted(checkpointer.all_steps(), reverse=True):
    try:
      meta = restore_checkpoint(checkpointer, state, step)
    except ckpt_lib.CheckpointError as e:
      failures.append((step, e))
      continue
    for bad, e in failures:
      moved = checkpointer.set_aside(bad)
      _log(f"warning: checkpoint {bad} is damaged ({first_line(e)}); moved it to {moved}, "
           f"resuming from the newest intact one, step {step}")
    return meta, step
  raise ckpt_lib.CheckpointError(
      f"no intact checkpoint in {checkpointer.workdir / 'checkpoints'}: "
      + "; ".join(f"step {s}: {first_line(e)}" for s, e in failures))


def write_config(workdir: pathlib.Path, config: Any, *, resumed: bool) -> None:
  """Writes ``config.json`` (atomically), warning when a resumed run's config changed."""
  config_path = workdir / "config.json"
  cfg_json = _config_json(config)
  if config_path.exists() and resumed:
    try:
      old = json.loads(config_path.read_text())
    except json.JSONDecodeError:
      old = None
    if old is not None and old != cfg_json:
      _log("warning: the config differs from the one this workdir was started with; "
           "continuing with the new one")
  atomic_write_text(config_path, json.dumps(cfg_json, indent=2, sort_keys=True))
  write_provenance(workdir)


def write_provenance(workdir: pathlib.Path) -> None:
  """Appends this start's :func:`smoothjax.provenance.provenance` to ``provenance.json``.

  The file is a JSON list, one entry per start of the run (a resume adds one), so that a
  checkpoint can be traced to every code version and command that trained it.
  """
  from smoothjax import provenance as provenance_lib  # pylint: disable=import-outside-toplevel
  path = workdir / "provenance.json"
  runs = []
  if path.exists():
    try:
      runs = json.loads(path.read_text())
    except json.JSONDecodeError:
      runs = []
    if not isinstance(runs, list):
      runs = [runs]
  runs.append(provenance_lib.provenance())
  atomic_write_text(path, json.dumps(runs, indent=1) + "\n")


# ----------------------------------------------------------------------------------------------
# Validation, checkpoints, logging.


def make_validate(config: Any, state: TrainState, data: _Data, mesh: jax.sharding.Mesh, *,
                  key: jax.Array) -> Callable[[TrainState, int], dict]:
  """``validate(state, step) -> {"step", "epoch", "accuracy", "smoothed_accuracy", ...}``."""
  t_cfg, spe = config.train, state.steps_per_epoch
  noise = state.model_config.noise
  val_n = max(1, int(t_cfg.val_n)) if noise.any_model_noise or noise.input_sigma > 0 else 1
  val_mesh = smoothing.sample_mesh(list(mesh.devices.flat))  # the training devices
  pgd_fn = None
  if int(t_cfg.val_pgd_examples) > 0 and data.has_val:
    pgd_fn = make_pgd_eval_step(graphdef=state.graphdef, mesh=mesh, eps=state.objective.eps,
                                steps=int(t_cfg.val_pgd_steps),
                                step_size=float(t_cfg.val_pgd_step_size))

  def validate(s: TrainState, step: int) -> dict:
    out = {"step": step, "epoch": step / spe}
    if not data.has_val:
      return out
    k = jax.random.fold_in(key, step)
    # The smoothed classifier exactly as `python -m evaluate` samples it (same noise layout):
    # prefix 1 = one noisy pass, prefix val_n = soft vote (mean softmax) of val_n draws.
    votes = smoothing.sample_votes(jax.random.fold_in(k, 0), s.model(), data.x_val,
                                   prefixes=sorted({1, val_n}), votes=("soft",),
                                   batch_size=int(t_cfg.eval_batch_size), mesh=val_mesh)
    pred = smoothing.vote_predictions(votes["soft"])
    out["accuracy"] = float(np.mean(pred[0] == data.y_val))
    out["smoothed_accuracy"] = float(np.mean(pred[-1] == data.y_val))
    out["val_n"] = val_n
    if pgd_fn is not None:
      n = int(t_cfg.val_pgd_examples)
      tot = _run_eval(pgd_fn, s.params, s.rest, jax.random.fold_in(k, 1), data.x_val[:n],
                      data.y_val[:n], batch_size=min(n, int(t_cfg.eval_batch_size)), mesh=mesh)
      out["pgd_accuracy"] = tot["pgd_correct"] / tot["count"]
    return out

  return validate


@dataclasses.dataclass
class _Checkpoints:
  """The run's checkpointer and, with ``train.keep_worst``, the worst-accuracy one."""

  main: ckpt_lib.TrainCheckpointer
  worst: ckpt_lib.TrainCheckpointer | None
  meta: dict  # what every checkpoint's meta records
  best_metric: str


def save_checkpoint(ckpts: _Checkpoints, state: TrainState, step: int,
                    val: dict | None) -> None:
  """Saves ``step`` (and the best / worst snapshots when ``val`` improves on them)."""
  meta = dict(ckpts.meta, step=step, epoch=step / state.steps_per_epoch)
  metric = None
  if val is not None:
    meta["validation"] = {k: v for k, v in val.items() if k not in ("step",)}
    metric = val.get(ckpts.best_metric)
  model_state = nnx.to_pure_dict(nnx.state(state.model()))
  ckpts.main.save(step, model_state=model_state, train_state=state.opt, meta=meta,
                  val_metric=metric, force=True)
  if ckpts.worst is not None and val is not None and "accuracy" in val:
    ckpts.worst.save(step, model_state=model_state, train_state=state.opt,
                     meta=dict(meta, snapshot="worst clean validation accuracy"),
                     val_metric=-val["accuracy"], force=True)


class _TrainLog:
  """Means of the train metrics over ``log_every`` steps, to the writer and the progress bar."""

  def __init__(self, writer: metrics_lib.MetricWriter, pbar, *, log_every: int,
               batch_size: int, total_steps: int):
    self.writer, self.pbar = writer, pbar
    self.log_every, self.batch_size, self.total_steps = log_every, batch_size, total_steps
    self.window: list[dict] = []
    self.t_window = time.perf_counter()

  def record(self, step: int, m: dict) -> None:
    self.window.append(m)
    if (step + 1) % self.log_every and step + 1 != self.total_steps:
      return
    now = time.perf_counter()
    mean = {k: float(np.mean([w[k] for w in self.window])) for k in self.window[0]}
    mean["images_per_s"] = len(self.window) * self.batch_size / max(now - self.t_window, 1e-9)
    self.writer.write(step + 1, mean, split="train")
    if self.pbar is not None:
      post = {"loss": f"{mean['loss']:.3f}",
              "acc": f"{mean.get('accuracy', mean.get('adv_accuracy', 0.0)):.3f}",
              "img/s": f"{mean['images_per_s']:.0f}"}
      if "adv_accuracy" in mean and "accuracy" in mean:
        post["adv"] = f"{mean['adv_accuracy']:.3f}"
      self.pbar.set_postfix(post, refresh=False)
    self.window.clear()
    self.t_window = now


def _finite_metrics(step: int, metrics: Any, *, spe: int, last_saved: int | None,
                    workdir: pathlib.Path) -> dict:
  """The step's metrics as floats; raises :class:`NonFiniteLossError` on a NaN / inf loss."""
  m = {k: float(v) for k, v in jax.device_get(metrics).items()}
  if not (math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])):
    raise NonFiniteLossError(
        f"non-finite loss at step {step} (epoch {step // spe}): loss={m['loss']}, "
        f"grad_norm={m['grad_norm']}; stopped. The last good checkpoint is step "
        f"{last_saved} in {workdir / 'checkpoints'}"
        + ("" if last_saved is not None else " (none was saved)")
        + ". Lower optim.lr or set optim.clip_norm.")
  return m


def _progress_bar(config: Any, stack: contextlib.ExitStack, *, start: int, total: int):
  if not bool(config.train.progress):
    return None
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  return stack.enter_context(tqdm(total=total, initial=start, file=sys.stderr,
                                  dynamic_ncols=True, mininterval=1.0, desc="train",
                                  unit="step"))


# ----------------------------------------------------------------------------------------------
# The loop.


def _train(config: Any, state: TrainState, data: _Data, *, key: jax.Array, mesh, step_fn,
           validate, ckpts: _Checkpoints, writer, log: _TrainLog, pbar, last_saved,
           workdir: pathlib.Path) -> dict:
  """Steps from ``state.step`` to ``state.total_steps``; returns the last validation."""
  t_cfg, spe, total = config.train, state.steps_per_epoch, state.total_steps
  bat = NamedSharding(mesh, P(BATCH_AXIS))
  ckpt_every = int(t_cfg.checkpoint_every_steps)
  eval_every = int(t_cfg.eval_every_epochs)  # <= 0: no validation
  sleep = float(config.debug.sleep_per_step)
  pending = None  # (step, metrics) not yet checked: checked after the next step is dispatched
  last_val: dict = {}

  def check(step, metrics):
    return _finite_metrics(step, metrics, spe=spe, last_saved=last_saved, workdir=workdir)

  batches = data_lib.train_batches(data.x_train, data.y_train,
                                   batch_size=int(config.data.batch_size), key=key,
                                   start_step=state.step)
  for step, xb, yb in batches:
    if step >= total:
      break
    xb, yb = jax.device_put(xb, bat), jax.device_put(yb, bat)
    state.params, state.rest, state.opt, metrics = step_fn(state.params, state.rest,
                                                           state.opt, xb, yb)
    if pending is not None:
      log.record(pending[0], check(*pending))
    pending = (step, metrics)
    if sleep > 0:
      time.sleep(sleep)
    done = step + 1
    epoch_end = done % spe == 0 or done == total
    if pbar is not None:
      pbar.update(1)
    if not (epoch_end or (ckpt_every > 0 and done % ckpt_every == 0)):
      continue
    log.record(pending[0], check(*pending))  # never save a step whose loss is not finite
    pending = None
    val = None
    if epoch_end and eval_every > 0 and ((done // spe) % eval_every == 0 or done == total):
      val = last_val = validate(state, done)
      writer.write(done, {k: v for k, v in val.items() if k != "step"}, split="val")
      writer.flush()
      _log(f"step {done} epoch {done / spe:.2f}: "
           + ", ".join(f"{k} {v:.4f}" for k, v in val.items()
                       if k not in ("step", "epoch", "val_n")))
    save_checkpoint(ckpts, state, done, val)
    last_saved = done
  if pending is not None:
    log.record(pending[0], check(*pending))
  return last_val


def train_and_evaluate(config: Any, workdir: str | os.PathLike, *,
                       model: nnx.Module | None = None) -> dict:
  """Trains a model as ``config`` says, resuming from ``workdir``'s latest checkpoint.

  The workdir receives ``config.json``, ``metrics.jsonl`` (JSON lines; TensorBoard events too
  when a writer is installed), ``checkpoints/<step>/`` (the last ``train.keep``, saved every
  ``train.checkpoint_every_steps`` steps and at the end of every epoch), ``best/<step>/`` (best
  by ``train.best_metric`` on the validation split) and, with ``train.keep_worst``,
  ``worst/best/<step>/`` (the *lowest* clean validation accuracy: the EPGD-"diverged"
  snapshot). Every checkpoint's meta records ``model_config``, so that
  ``python -m evaluate --checkpoint=WORKDIR`` rebuilds the model. Rerunning with the same
  config resumes from the latest checkpoint and ends with the parameters an uninterrupted run
  would have (bit for bit).

  Args:
    config: an ``ml_collections.ConfigDict`` with ``seed``, ``init_from``, ``model``, ``data``,
      ``optim``, ``objective``, ``train`` and ``debug`` (see ``train/configs/base.py``).
    workdir: the run's directory (created if absent).
    model: train this (freshly built) model instead of building one from ``config.model``;
      its ``config`` (a :class:`~smoothjax.models.ModelConfig`) is what checkpoints record.

  Returns:
    The last validation metrics (``{"step", "epoch", "accuracy", "smoothed_accuracy", ...}``).

  Raises:
    ValueError: a bad config value (``smoothjax.data.DatasetError`` for the dataset,
      ``smoothjax.checkpoints.CheckpointError`` for checkpoints).
    NonFiniteLossError: the loss or the gradient norm became NaN or infinite. The checkpoints
      on disk all predate it.
  """
  t0 = time.perf_counter()
  _check_config(config)
  data = _load_data(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  root = jax.random.key(int(config.seed))
  k_init, k_train, k_data, k_eval = (jax.random.fold_in(root, i) for i in range(4))
  t_cfg = config.train
  with contextlib.ExitStack() as stack:
    worst = (stack.enter_context(ckpt_lib.TrainCheckpointer(workdir / "worst", keep=1))
             if bool(t_cfg.keep_worst) else None)
    checkpointer = stack.enter_context(ckpt_lib.TrainCheckpointer(workdir, keep=int(t_cfg.keep)))
    latest = checkpointer.latest_step()
    fresh = latest is None and not str(_cfg_get(config, "resume_from", "") or "")
    state = create_train_state(config, data, key=k_init, model=model,
                               init_from=str(config.init_from) if fresh else "")
    mcfg, objective = state.model_config, state.objective
    mesh = make_mesh(int(t_cfg.num_devices), batch_size=int(config.data.batch_size))
    ckpts = _Checkpoints(checkpointer, worst, best_metric=str(t_cfg.best_metric), meta={
        "model_config": mcfg.to_dict(), "config": _config_json(config), "dataset": data.name,
        "objective": dataclasses.asdict(objective)})
    resume_from = str(_cfg_get(config, "resume_from", "") or "")
    if latest is not None:
      restored_meta, latest = restore_newest_intact(checkpointer, state)
    elif resume_from:
      restored_meta = restore_checkpoint(resume_from, state)
    else:
      restored_meta = {}
    start = state.step
    if latest is not None:
      _log(f"resuming from {workdir / 'checkpoints' / str(latest)} (step {start})")
    elif resume_from:
      _log(f"resuming from {restored_meta['restored_from']} (step {start}) in a fresh workdir")
    write_config(workdir, config, resumed=start > 0)
    writer = stack.enter_context(metrics_lib.MetricWriter(
        workdir, resume_step=start if latest is not None else None,
        tensorboard=bool(t_cfg.tensorboard)))
    state.params, state.rest, state.opt, k_train_d = replicate(
        (state.params, state.rest, state.opt, k_train), mesh)
    step_fn = make_train_step(graphdef=state.graphdef, objective=objective, tx=state.tx,
                              schedule=state.schedule, mesh=mesh, augment=bool(config.data.augment),
                              lookahead=state.lookahead, nan_at_step=int(config.debug.nan_at_step))
    validate = make_validate(config, state, data, mesh, key=k_eval)
    if start >= state.total_steps:
      _log(f"already trained: step {start} of {state.total_steps}; nothing to do")
      if latest is None:  # resumed from another run's final checkpoint: keep it here too
        save_checkpoint(ckpts, state, start, restored_meta.get("validation"))
      return dict(restored_meta.get("validation") or {}, step=start)
    _log(f"{mcfg.arch} noise={mcfg.noise.spec} input_sigma={mcfg.noise.input_sigma} "
         f"objective={objective.name} on {data.name}: {len(data.x_train)} train / "
         f"{0 if data.x_val is None else len(data.x_val)} val images, batch "
         f"{config.data.batch_size}, {state.steps_per_epoch} steps/epoch, {state.total_steps} "
         f"steps, {mesh.size} device(s) ({jax.devices()[0].platform})")
    pbar = _progress_bar(config, stack, start=start, total=state.total_steps)
    log = _TrainLog(writer, pbar, log_every=max(1, int(t_cfg.log_every_steps)),
                    batch_size=int(config.data.batch_size), total_steps=state.total_steps)
    out = _train(config, state, data, key=k_data, mesh=mesh,
                 step_fn=lambda p, r, o, xb, yb: step_fn(p, r, o, k_train_d, xb, yb),
                 validate=validate, ckpts=ckpts, writer=writer, log=log, pbar=pbar,
                 last_saved=latest, workdir=workdir)
  if jax.process_index() == 0:  # every checkpoint is on disk once the checkpointers closed
    print(summary(workdir, wall_time_s=time.perf_counter() - t0), flush=True)
  return out


def summary(workdir: str | os.PathLike, *, wall_time_s: float | None = None) -> str:
  """The end-of-run summary: best checkpoint (path, step, validation), wall time, the files.

  Args:
    workdir: a train workdir.
    wall_time_s: the run's wall time (omitted from the text if ``None``).

  Returns:
    A few lines of text, each starting with ``[train]``.
  """
  wd = pathlib.Path(workdir).absolute()

  def steps(d: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit()) if (
        d.is_dir()) else []

  best, latest = steps(wd / "best"), steps(wd / "checkpoints")
  val = {}
  if best:
    rows = [r for r in metrics_lib.read_metrics(wd)
            if r.get("split") == "val" and r.get("step") == best[-1]]
    val = rows[-1] if rows else {}
  lines = ["training done" + ("" if wall_time_s is None else
                              f" in {wall_time_s:.0f} s ({wall_time_s / 60:.1f} min)")]
  if best:
    accs = ", ".join(f"{k} {v:.4f}" for k, v in val.items()
                     if k.endswith("accuracy") and isinstance(v, (int, float)))
    lines.append(f"best checkpoint: {wd / 'best' / str(best[-1])} (step {best[-1]})"
                 + (f"; validation {accs}" if accs else ""))
  else:
    lines.append("best checkpoint: none (no validation ran)")
  if latest:
    lines.append(f"latest checkpoint: {wd / 'checkpoints' / str(latest[-1])} "
                 f"(step {latest[-1]})")
  lines.append(f"files: workdir {wd}; config {wd / 'config.json'}; metrics "
               f"{wd / 'metrics.jsonl'}")
  lines.append(f"evaluate it: python -m evaluate --checkpoint={wd} --workdir={wd}/eval")
  return "\n".join(f"[train] {line}" for line in lines)
