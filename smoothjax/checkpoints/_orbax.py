"""orbax checkpoints of smoothjax models: the train checkpointer, ``save_model``, ``load_model``.

A train workdir holds ``checkpoints/<step>/`` (the last ``keep``) and ``best/<step>/``; every step
directory holds the items ``model``, ``train`` and ``meta`` (see :mod:`smoothjax.checkpoints`).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import shutil
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from smoothjax import models as models_lib
from smoothjax import noise as noise_lib
from smoothjax.checkpoints._common import (CheckpointError, _abstract_model, _is_auto,
                                           parse_normalization)
from smoothjax.checkpoints import _cohen
from smoothjax.checkpoints._torch import model_from_torch

_ITEMS = ("model", "train", "meta")
_STEP_RE = re.compile(r"^\d+$")
_TMP_MARK = ".orbax-checkpoint-tmp"


def _handlers() -> dict:
  return {"model": ocp.StandardCheckpointHandler(), "train": ocp.StandardCheckpointHandler(),
          "meta": ocp.JsonCheckpointHandler()}


def model_state_dict(model_or_state: Any) -> dict:
  """The pure dict of arrays saved as the ``model`` item (from a module, State or pure dict)."""
  if isinstance(model_or_state, nnx.Module):
    model_or_state = nnx.state(model_or_state)
  if isinstance(model_or_state, nnx.State):
    return nnx.to_pure_dict(model_or_state)
  if isinstance(model_or_state, Mapping):
    return dict(model_or_state)
  raise TypeError(f"expected an nnx.Module, nnx.State or dict, got {type(model_or_state)}")


def _json_default(o):
  if isinstance(o, (np.generic, jax.Array)) and np.ndim(o) == 0:
    return np.asarray(o).item()
  if isinstance(o, (np.ndarray, jax.Array)):
    return np.asarray(o).tolist()
  if isinstance(o, (pathlib.Path, tuple, set)):
    return str(o) if isinstance(o, pathlib.Path) else list(o)
  raise TypeError(f"meta value of type {type(o).__name__} is not JSON-serialisable")


def _json_safe(meta: Mapping) -> dict:
  try:
    return json.loads(json.dumps(dict(meta), default=_json_default))
  except TypeError as e:
    raise CheckpointError(f"bad meta: {e}") from e


def _path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def _check_model_fits(saved_meta, target: dict, where: str) -> None:
  """Compares the saved model item's tree metadata to ``target``: names the first mismatch."""
  if saved_meta is None:
    return
  saved = {_path_str(p): tuple(getattr(l, "shape", ()) or ())
           for p, l in jax.tree_util.tree_flatten_with_path(saved_meta)[0]}
  want = {_path_str(p): tuple(l.shape if hasattr(l, "shape") else np.shape(l))
          for p, l in jax.tree_util.tree_flatten_with_path(target)[0]}
  for name, shape in want.items():
    if name not in saved:
      raise CheckpointError(
          f"checkpoint {where} does not fit the model: parameter '{name}' (shape {shape}) is "
          "missing from the checkpoint (different architecture or noise?)")
    if saved[name] != shape:
      raise CheckpointError(
          f"checkpoint {where} does not fit the model: parameter '{name}' has shape "
          f"{saved[name]} in the checkpoint but the model expects {shape}")
  extra = [k for k in saved if k not in want]
  if extra:
    raise CheckpointError(
        f"checkpoint {where} does not fit the model: unexpected parameter '{extra[0]}' "
        f"({len(extra)} in all; different architecture or noise?)")


def _fill_target(target: Any, restored: dict) -> Any:
  """Puts the restored pure dict back in the form of ``target`` (Module, State or dict)."""
  if isinstance(target, nnx.Module):
    state = nnx.state(target)
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(target, state)
    return state
  if isinstance(target, nnx.State):
    state = jax.tree.map(lambda x: x, target)  # a copy; the target is left untouched
    nnx.replace_by_pure_dict(state, restored)
    return state
  return restored


def _np_scalars_to_arrays(tree: Any) -> Any:
  """NumPy scalars (``np.int64(3)``), which orbax does not take, as 0-d arrays."""
  return jax.tree.map(lambda x: np.asarray(x) if isinstance(x, np.generic) else x, tree)


def _summary(e: BaseException) -> str:
  text = (str(e).strip().splitlines() or [""])[0]
  if len(text) > 300:
    text = text[:300] + "..."
  return f"{type(e).__name__}: {text}"


def _restore_items(step_dir: pathlib.Path, *, model_target=None, train_target=None,
                   want_model=True, want_train=False) -> dict:
  """Restores the items of one step directory, turning orbax failures into CheckpointError."""
  if _TMP_MARK in step_dir.name:
    raise CheckpointError(
        f"{step_dir} is an unfinished (half-written) checkpoint: orbax renames a checkpoint's "
        "temporary directory only once it is complete")
  for item in ("meta",) + (("model",) if want_model else ()) + (("train",) if want_train else ()):
    if not (step_dir / item).is_dir():
      raise CheckpointError(f"checkpoint {step_dir} is incomplete or corrupt: item '{item}' is "
                            "missing")
  ckptr = ocp.Checkpointer(ocp.CompositeCheckpointHandler(**_handlers()))
  try:
    return _restore_with(ckptr, step_dir, model_target, train_target, want_model, want_train)
  finally:
    ckptr.close()


def _restore_with(ckptr, step_dir, model_target, train_target, want_model, want_train) -> dict:
  try:
    meta = ckptr.restore(step_dir, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(
        f"checkpoint {step_dir} is corrupt: cannot read its meta ({_summary(e)})") from e
  if not isinstance(meta, dict):
    raise CheckpointError(f"checkpoint {step_dir} is corrupt: meta is not a JSON object")
  out = {"meta": meta}
  if want_model:
    saved = _saved_model_metadata(ckptr, step_dir)
    _check_model_fits(saved, model_target, str(step_dir))
  restore = {}
  if want_model:
    restore["model"] = ocp.args.StandardRestore(model_target)
  if want_train:
    restore["train"] = (ocp.args.StandardRestore(_np_scalars_to_arrays(train_target))
                        if train_target is not None
                        else ocp.args.StandardRestore())
  if restore:
    try:
      out.update(ckptr.restore(step_dir, args=ocp.args.Composite(**restore)))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f"checkpoint {step_dir} is corrupt or does not fit the given target "
          f"({_summary(e)})") from e
  return out


def _steps_in(root: pathlib.Path) -> list[int]:
  """Finished step directories under ``root`` (temporary ``*.orbax-checkpoint-tmp*`` ignored)."""
  if not root.is_dir():
    return []
  return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and _STEP_RE.match(p.name))


class TrainCheckpointer:
  """Keeps the last ``keep`` training checkpoints and the best one of a train workdir.

  ``workdir/checkpoints/<step>/`` and ``workdir/best/<step>/`` each hold the items ``model``,
  ``train`` and ``meta`` (see the module docstring). Saving is asynchronous: call
  :meth:`wait_until_finished` (or :meth:`close`, or use the object as a context manager) before
  the process exits. Temporary directories of a killed run are ignored and removed.

  Args:
    workdir: the run's directory (created if absent).
    keep: number of most recent checkpoints kept under ``checkpoints/``.
    save_best: whether :meth:`save` with a ``val_metric`` also keeps the best checkpoint (higher
      is better) under ``best/``.

  Example:
    >>> ckpt = TrainCheckpointer(workdir, keep=3)                     # doctest: +SKIP
    >>> ckpt.save(step, model_state=nnx.state(model), train_state={"opt": opt_state},
    ...           meta={"model_config": model.config.to_dict()}, val_metric=acc)  # doctest: +SKIP
    >>> state, train, meta = ckpt.restore(model_state_target=nnx.state(model),
    ...                                   train_state_target={"opt": opt_state})  # doctest: +SKIP
  """

  def __init__(self, workdir: str | os.PathLike, *, keep: int = 3, save_best: bool = True):
    if keep < 1:
      raise ValueError(f"keep must be >= 1, got {keep}")
    self.workdir = pathlib.Path(workdir).absolute()
    self.save_best = save_best
    self._mgr = self._manager(self.workdir / "checkpoints", keep, create=True)
    best_dir = self.workdir / "best"
    self._best_mgr = (self._manager(best_dir, 1, create=True)
                      if save_best or best_dir.is_dir() else None)
    self._best_value = None
    best = self.best_step()
    if best is not None:
      try:
        meta = _restore_items(best_dir / str(best), want_model=False)["meta"]
        self._best_value = meta.get("val_metric")
      except CheckpointError:
        self._best_value = None  # an unreadable best checkpoint is replaced by the next best

  @staticmethod
  def _manager(directory: pathlib.Path, keep: int, *, create: bool) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create,
                                           cleanup_tmp_directories=True)
    return ocp.CheckpointManager(directory, item_handlers=_handlers(), options=options)

  def save(self, step: int, *, model_state: Any, train_state: Any, meta: Mapping,
           val_metric: float | None = None, force: bool = False) -> None:
    """Saves checkpoint ``step`` (asynchronously); also to ``best/`` when ``val_metric`` improves.

    Args:
      step: the training step. Saving a step that exists replaces it; a step older than the
        latest kept one is an error unless ``force``.
      model_state: the model (``nnx.Module``), its ``nnx.State``, or a pure dict of arrays.
      train_state: any pytree of arrays and Python / NumPy scalars (typed PRNG keys included;
        NumPy scalars come back as 0-d arrays).
      meta: JSON-serialisable dict; ``step`` and ``val_metric`` are added. Record
        ``model_config`` (``model.config.to_dict()``) so that :func:`load_model` can rebuild the
        model (added automatically when ``model_state`` is a smoothjax model).
      val_metric: validation metric, higher is better (``None``: not a candidate for best).
      force: save even a step older than the latest kept checkpoint.
    """
    step = int(step)
    meta = dict(meta)
    if isinstance(model_state, nnx.Module) and hasattr(model_state, "config"):
      meta.setdefault("model_config", model_state.config.to_dict())
    meta["step"] = step
    if val_metric is not None:
      meta["val_metric"] = float(val_metric)
    meta = _json_safe(meta)
    items = {"model": ocp.args.StandardSave(model_state_dict(model_state)),
             "meta": ocp.args.JsonSave(meta)}
    if jax.tree.leaves(train_state):  # orbax refuses empty trees: an empty one is not saved
      items["train"] = ocp.args.StandardSave(_np_scalars_to_arrays(train_state))
    args = ocp.args.Composite(**items)
    latest = self._mgr.latest_step()
    if latest is not None and step < latest and not force:
      raise CheckpointError(
          f"step {step} is older than the latest checkpoint ({latest}) in "
          f"{self.workdir / 'checkpoints'}; pass force=True to save it anyway")
    self._save(self._mgr, step, args)
    if (self.save_best and val_metric is not None and math.isfinite(float(val_metric))
        and (self._best_value is None or float(val_metric) > self._best_value)):
      self._save(self._best_mgr, step, args)
      self._best_value = float(val_metric)

  @staticmethod
  def _save(mgr: ocp.CheckpointManager, step: int, args) -> None:
    if step in mgr.all_steps():
      mgr.wait_until_finished()
      mgr.delete(step)
    # force: orbax would otherwise skip, silently, a step not newer than its latest one.
    if not mgr.save(step, args=args, force=True):
      raise CheckpointError(f"orbax declined to save step {step} in {mgr.directory}")

  def all_steps(self) -> list[int]:
    """Steps kept under ``checkpoints/``."""
    return sorted(self._mgr.all_steps())

  def latest_step(self) -> int | None:
    """The most recent step under ``checkpoints/`` (``None`` if none)."""
    return self._mgr.latest_step()

  def best_step(self) -> int | None:
    """The step of the best checkpoint under ``best/`` (``None`` if none)."""
    return None if self._best_mgr is None else self._best_mgr.latest_step()

  @property
  def best_value(self) -> float | None:
    """The ``val_metric`` of the best checkpoint."""
    return self._best_value

  def restore(self, step: int | None = None, *, model_state_target: Any,
              train_state_target: Any, best: bool = False) -> tuple[Any, Any, dict]:
    """Restores a checkpoint.

    Args:
      step: the step; default: the latest (or the best one with ``best=True``).
      model_state_target: a model (filled in place), its ``nnx.State`` (a filled copy is
        returned) or a pure dict, of the saved structure.
      train_state_target: a pytree of the saved structure (abstract arrays allowed), or ``None``
        to skip the ``train`` item (an empty tree is returned as is).
      best: read from ``best/`` instead of ``checkpoints/``.

    Returns:
      ``(model_state, train_state, meta)``; ``model_state`` has the type of the target
      (``nnx.State`` for a module).

    Raises:
      CheckpointError: no such checkpoint, a corrupt one, or a model that does not fit.
    """
    self.wait_until_finished()
    mgr = self._best_mgr if best else self._mgr
    where = "best/" if best else "checkpoints/"
    steps = [] if mgr is None else sorted(mgr.all_steps())
    if step is None:
      if not steps:
        raise CheckpointError(f"no checkpoint in {self.workdir / where}")
      step = steps[-1]
    elif int(step) not in steps:
      raise CheckpointError(f"no checkpoint of step {step} in {self.workdir / where} "
                            f"(available: {steps})")
    want_train = train_state_target is not None and bool(jax.tree.leaves(train_state_target))
    out = _restore_items(pathlib.Path(mgr.directory) / str(int(step)),
                         model_target=model_state_dict(model_state_target),
                         train_target=train_state_target, want_model=True,
                         want_train=want_train)
    train = out["train"] if want_train else train_state_target
    return (_fill_target(model_state_target, out["model"]), train, out["meta"])

  def set_aside(self, step: int) -> pathlib.Path:
    """Moves checkpoint ``step`` (a damaged one) out of ``checkpoints/`` into ``damaged/``.

    Returns:
      Its new directory, ``workdir/damaged/<step>`` (``<step>-1``, ... if that exists).
    """
    self.wait_until_finished()
    src = pathlib.Path(self._mgr.directory) / str(int(step))
    dst = self.workdir / "damaged" / str(int(step))
    i = 0
    while dst.exists():
      i += 1
      dst = self.workdir / "damaged" / f"{int(step)}-{i}"
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(src), str(dst))
    self._mgr.reload()
    return dst

  def wait_until_finished(self) -> None:
    """Blocks until every pending asynchronous save is on disk."""
    self._mgr.wait_until_finished()
    if self._best_mgr is not None:
      self._best_mgr.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the managers."""
    self._mgr.close()
    if self._best_mgr is not None:
      self._best_mgr.close()

  def __enter__(self) -> "TrainCheckpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def save_model(directory: str | os.PathLike, model: nnx.Module, *, meta: Mapping | None = None,
               overwrite: bool = False) -> None:
  """Saves a model as one orbax step directory (items ``model`` and ``meta``).

  Args:
    directory: the step directory to create (its parent must exist or is created).
    model: a smoothjax model (its :class:`~smoothjax.models.ModelConfig` goes into ``meta``).
    meta: extra JSON-serialisable information.
    overwrite: replace an existing directory.

  Raises:
    CheckpointError: ``directory`` exists and ``overwrite`` is false, or bad meta.
  """
  directory = pathlib.Path(directory).absolute()
  if directory.exists() and not overwrite:
    raise CheckpointError(f"{directory} already exists (pass overwrite=True to replace it)")
  full = dict(meta or {})
  if hasattr(model, "config"):
    full["model_config"] = model.config.to_dict()
  full = _json_safe(full)
  ckptr = ocp.Checkpointer(ocp.CompositeCheckpointHandler(**_handlers()))
  ckptr.save(directory, args=ocp.args.Composite(
      model=ocp.args.StandardSave(model_state_dict(model)), meta=ocp.args.JsonSave(full)),
      force=overwrite)


def _is_step_dir(p: pathlib.Path) -> bool:
  return (p / "meta").is_dir() or (p / "model").is_dir() or (p / "_CHECKPOINT_METADATA").exists()


def _resolve_step_dir(path: pathlib.Path, step: int | None) -> tuple[pathlib.Path, int | None]:
  """The step directory a workdir / manager directory / step directory path designates."""
  if _is_step_dir(path):
    if _TMP_MARK in path.name:
      raise CheckpointError(f"{path} is an unfinished (half-written) checkpoint")
    s = int(path.name) if _STEP_RE.match(path.name) else None
    if step is not None and s is not None and s != int(step):
      raise CheckpointError(f"{path} is the checkpoint of step {s}, not of step {step}")
    return path, s
  roots = [path / "best", path / "checkpoints"] if (
      (path / "checkpoints").is_dir() or (path / "best").is_dir()) else [path]
  if step is not None:
    for root in roots:
      if int(step) in _steps_in(root):
        return root / str(int(step)), int(step)
    avail = sorted({s for r in roots for s in _steps_in(r)})
    raise CheckpointError(f"no checkpoint of step {step} in {path} (available: {avail})")
  for root in roots:  # the best checkpoint if one is kept, else the latest
    steps = _steps_in(root)
    if steps:
      return root / str(steps[-1]), steps[-1]
  if len(roots) == 2:
    raise CheckpointError(f"train workdir {path} holds no finished checkpoint")
  raise CheckpointError(
      f"{path} is neither a PyTorch file, a train workdir (with checkpoints/ or best/), nor an "
      "orbax checkpoint directory")




def train_step_dir(path: str | os.PathLike) -> pathlib.Path:
  """The full train checkpoint (with its ``train`` item) that ``path`` designates.

  Args:
    path: a train workdir (its latest checkpoint under ``checkpoints/``), a ``checkpoints/``
      directory, or one step directory (e.g. copied from another run).

  Raises:
    CheckpointError: no finished checkpoint there, or one without a ``train`` item (a model
      saved by :func:`save_model` only).
  """
  p = pathlib.Path(path).expanduser().absolute()
  if not p.exists():
    raise CheckpointError(f"checkpoint {p} does not exist")
  if _is_step_dir(p):
    step_dir = p
  else:
    root = p / "checkpoints" if (p / "checkpoints").is_dir() else p
    steps = _steps_in(root)
    if not steps:
      raise CheckpointError(f"{p} holds no finished train checkpoint (expected a train workdir "
                            "or a step directory checkpoints/<step>/)")
    step_dir = root / str(steps[-1])
  if _TMP_MARK in step_dir.name:
    raise CheckpointError(f"{step_dir} is an unfinished (half-written) checkpoint")
  if not (step_dir / "train").is_dir():
    raise CheckpointError(f"{step_dir} has no 'train' item (optimiser state, step, keys): "
                          "only full train checkpoints can be resumed")
  return step_dir


def restore_train_checkpoint(path: str | os.PathLike, *, model_state_target: Any,
                             train_state_target: Any) -> tuple[Any, Any, dict]:
  """Restores a full train checkpoint from any directory (see :func:`train_step_dir`).

  Returns:
    ``(model_state, train_state, meta)`` as :meth:`TrainCheckpointer.restore` returns them;
    ``meta["restored_from"]`` is the step directory read.
  """
  step_dir = train_step_dir(path)
  out = _restore_items(step_dir, model_target=model_state_dict(model_state_target),
                       train_target=train_state_target, want_model=True, want_train=True)
  meta = dict(out["meta"], restored_from=str(step_dir))
  return _fill_target(model_state_target, out["model"]), out["train"], meta


def _saved_model_metadata(ckptr, step_dir):
  """The array metadata of a step dir's ``model`` item, or a CheckpointError if unreadable."""
  try:
    return ckptr.metadata(step_dir).item_metadata["model"]
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(
        f"checkpoint {step_dir} is corrupt: cannot read its model metadata ({_summary(e)})"
    ) from e


def _config_from_flags(step_dir: pathlib.Path, arch, noise, num_classes
                       ) -> models_lib.ModelConfig:
  """The ModelConfig of a checkpoint that does not record one: from ``arch`` and the arrays."""
  if arch is None:
    raise CheckpointError(
        f"checkpoint {step_dir} does not record its model_config in meta: pass arch=...")
  ckptr = ocp.Checkpointer(ocp.CompositeCheckpointHandler(**_handlers()))
  try:
    saved = _saved_model_metadata(ckptr, step_dir)
  finally:
    ckptr.close()
  shapes = {_path_str(p): getattr(l, "shape", None)
            for p, l in jax.tree_util.tree_flatten_with_path(saved)[0]}
  if num_classes is None:
    head = shapes.get("fc/bias")
    if not head:
      raise CheckpointError(f"checkpoint {step_dir}: no 'fc/bias' to infer num_classes from")
    num_classes = int(head[0])
  shortcut = "B" if any("/down_conv/" in k for k in shapes) else "A"
  try:
    return models_lib.ModelConfig(arch=arch, num_classes=int(num_classes), shortcut=shortcut,
                                  noise="none" if noise is None else noise)
  except ValueError as e:
    raise CheckpointError(str(e)) from e


def _resolve_pretrained(path: str | os.PathLike) -> str | os.PathLike:
  """``pretrained:NAME`` -> that model's checkpoint directory; any other path unchanged."""
  from smoothjax import pretrained  # pylint: disable=import-outside-toplevel
  if not pretrained.is_pretrained(path):
    return path
  try:
    return pretrained.path(str(path))
  except pretrained.PretrainedError as e:
    raise CheckpointError(str(e)) from e


def load_model(path: str | os.PathLike, *, arch: str | None = None, noise: Any = None,
               normalization: Any = "auto", step: int | None = None,
               num_classes: int | None = None) -> tuple[nnx.Module, dict]:
  """Loads a model from any checkpoint smoothjax knows (the ``--checkpoint`` rules).

  Args:
    path: ``pretrained:NAME`` (a model of :mod:`smoothjax.pretrained`), a PyTorch file (``.pth``,
      ``.pth.tar``, ``.th``: reference, akamaster or Cohen et al. / SmoothAdv layout,
      detected), a train workdir (its best checkpoint if one is kept, else its latest; ``step``
      picks one), or one orbax step directory.
    arch: required only when the checkpoint does not say (an orbax checkpoint without
      ``model_config``: then ``num_classes`` and the shortcut come from its arrays and the
      normalisation, unless given, is the reference's); must agree with a smoothjax checkpoint's
      recorded architecture, and with the depth of a PyTorch file.
    noise: the model's noise spec. Checkpoints without ``model_config`` and Cohen-format files:
      default ``"none"``; the other PyTorch files: default their weight-noise parameters (the
      reference's PNI ``alpha``, CNI ``alphad_w`` / ``alphaf_w``; ``"none"`` without any), with
      which a given spec must agree. smoothjax checkpoints record their noise; a given spec must
      agree.
    normalization: ``"auto"`` (recorded in smoothjax checkpoints; from the family for PyTorch
      files; ``cohen`` for Cohen-format files) or an override (see :func:`parse_normalization`;
      Cohen-format files also take ``"cohen"`` / ``"smoothadv"``).
    step: the step of a train workdir.
    num_classes: must agree with the checkpoint if given.

  Returns:
    ``(model, info)``; ``info`` has ``checkpoint`` (the file or step directory read),
    ``model_config`` (dict), ``family`` (``reference``, ``akamaster``, ``cohen-format`` or
    ``smoothjax``),
    ``step`` (``None`` for PyTorch files), ``normalization`` and, for smoothjax checkpoints,
    ``meta``.

  Raises:
    CheckpointError: an unknown ``pretrained:NAME`` (the message lists the known names), a
      missing, unsafe, corrupt or half-written checkpoint, or one that
      contradicts ``arch`` / ``noise`` / ``num_classes``.
  """
  p = pathlib.Path(_resolve_pretrained(path))
  if not p.exists():
    raise CheckpointError(f"checkpoint {p} does not exist")
  if p.is_file():
    if step is not None:
      raise CheckpointError(f"step={step} applies to train workdirs, not to the file {p}")
    if _cohen.is_cohen_checkpoint(p):
      return _cohen.model_from_cohen(
          p, arch=arch, noise="none" if noise is None else noise,
          normalization="cohen" if _is_auto(normalization) else normalization,
          num_classes=num_classes)
    return model_from_torch(p, arch=arch, noise=noise,
                            normalization=normalization, num_classes=num_classes)
  step_dir, s = _resolve_step_dir(p.absolute(), step)
  meta = _restore_items(step_dir, want_model=False)["meta"]
  recorded = "model_config" in meta
  if recorded:
    try:
      config = models_lib.ModelConfig.from_dict(meta["model_config"])
    except (TypeError, ValueError) as e:
      raise CheckpointError(f"checkpoint {step_dir} has a bad model_config: {e}") from e
  else:
    config = _config_from_flags(step_dir, arch, noise, num_classes)
  if arch is not None and arch != config.arch:
    raise CheckpointError(
        f"checkpoint {step_dir} is a {config.arch}, but arch={arch!r} was requested")
  if noise is not None:
    try:
      want = noise if isinstance(noise, noise_lib.NoiseConfig) else noise_lib.parse_noise(noise)
    except ValueError as e:
      raise CheckpointError(str(e)) from e
    if want.spec != config.noise.spec:
      raise CheckpointError(
          f"checkpoint {step_dir} records noise {config.noise.spec!r}, but noise="
          f"{want.spec!r} was requested")
  if num_classes is not None and int(num_classes) != config.num_classes:
    raise CheckpointError(f"checkpoint {step_dir} has {config.num_classes} classes, but "
                          f"num_classes={num_classes} was requested")
  source = "auto" if recorded else "default (not recorded: the reference's)"
  if not _is_auto(normalization):
    mean, std = parse_normalization(normalization)
    config = config.replace(mean=mean, std=std)
    source = "override"
  model = _abstract_model(config)
  target = model_state_dict(model)
  out = _restore_items(step_dir, model_target=target, want_model=True)
  _fill_target(model, out["model"])
  info = {
      "checkpoint": str(step_dir),
      "family": "smoothjax",
      "arch": config.arch,
      "num_classes": config.num_classes,
      "model_config": config.to_dict(),
      "step": meta.get("step", s),
      "normalization": {"mean": list(config.mean), "std": list(config.std), "source": source},
      "meta": meta,
  }
  return model, info
