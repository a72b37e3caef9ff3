"""Pretrained smoothjax models by name, and the CIFAR-10 test sample shipped with the package.

Models ship inside the package (``smoothjax/assets/pretrained/NAME/``), so a source checkout, an
editable install and a built wheel all find them at the same place, next to this file. Each
model folder holds::

  NAME/checkpoint/     an orbax step directory (items ``model`` and ``meta``, no optimizer state),
                       readable by :func:`smoothjax.checkpoints.load_model`
  NAME/card.json       the machine-readable model card (``description``, ``arch``, ``noise``,
                       ``input_sigma``, ``sigma_space``, measured accuracies, recipe, ...)
  NAME/MODEL_CARD.md   the model card for people

The registry is discovered from those folders (every folder with a ``card.json``), plus the
folders listed in the environment variable ``SMOOTHJAX_PRETRAINED_PATH`` (``os.pathsep``
separated; each one holds ``NAME/`` folders of the same layout), which is how a lab shares its
own models by name without rebuilding the package.

The sample (``smoothjax/assets/samples/cifar10_test500.npz``) is the first 500 images of the
CIFAR-10 test batch (Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009),
exact pixels, with their labels: ``x_test`` (500, 32, 32, 3) uint8, ``y_test`` (500,) int64 and
``class_names``. It is what the quick start evaluates on, offline.

Example:
  >>> from smoothjax import pretrained
  >>> pretrained.list()                                    # doctest: +SKIP
  ['smoke_pni_w']
  >>> model, info = pretrained.load("smoke_pni_w")          # doctest: +SKIP
  >>> info["card"]["description"]                           # doctest: +SKIP
  >>> x, y = pretrained.sample()                            # (500, 32, 32, 3) uint8, (500,)

On the command line, ``--checkpoint=pretrained:NAME`` names the same models (:func:`resolve`).
"""

from __future__ import annotations

import builtins
import difflib
import json
import os
import pathlib
import shutil
from typing import Any, Mapping

import numpy as np

__all__ = [
    "PretrainedError",
    "PREFIX",
    "DEFAULT",
    "MODELS_DIR",
    "SAMPLE_PATH",
    "list",
    "card",
    "model_card",
    "path",
    "load",
    "resolve",
    "is_pretrained",
    "export",
    "sample_path",
    "sample_spec",
    "sample",
]

PREFIX = "pretrained:"
DEFAULT = "smoke_pni_w"
"""The model the quick start evaluates when no checkpoint is given."""

ASSETS = pathlib.Path(__file__).resolve().parent / "assets"
MODELS_DIR = ASSETS / "pretrained"
SAMPLE_PATH = ASSETS / "samples" / "cifar10_test500.npz"
ENV_PATH = "SMOOTHJAX_PRETRAINED_PATH"

_CHECKPOINT = "checkpoint"
_CARD = "card.json"
_MODEL_CARD = "MODEL_CARD.md"


class PretrainedError(ValueError):
  """An unknown or broken pretrained model name; the message lists the known names."""


# --------------------------------------------------------------------------------- registry


def _roots() -> builtins.list[pathlib.Path]:
  extra = [pathlib.Path(p).expanduser() for p in os.environ.get(ENV_PATH, "").split(os.pathsep)
           if p.strip()]
  return [MODELS_DIR, *extra]


def _folders() -> dict[str, pathlib.Path]:
  """``{name: folder}`` of every model folder (the package's first, then ``$ENV_PATH``'s)."""
  found: dict[str, pathlib.Path] = {}
  for root in _roots():
    if not root.is_dir():
      continue
    for d in sorted(root.iterdir()):
      if d.is_dir() and (d / _CARD).is_file() and d.name not in found:
        found[d.name] = d
  return found


def list() -> builtins.list[str]:  # pylint: disable=redefined-builtin
  """The names of the known pretrained models, sorted."""
  return sorted(_folders())


def _describe(folders: Mapping[str, pathlib.Path]) -> str:
  if not folders:
    return "none (no model folders found)"
  lines = []
  for name, d in sorted(folders.items()):
    try:
      desc = json.loads((d / _CARD).read_text(encoding="utf-8")).get("description", "")
    except (OSError, ValueError):
      desc = "(unreadable card.json)"
    lines.append(f"{name}: {desc}" if desc else name)
  return "; ".join(lines)


def _folder(name: str) -> pathlib.Path:
  if name.startswith(PREFIX):
    name = name[len(PREFIX):]
  folders = _folders()
  if name in folders:
    return folders[name]
  close = difflib.get_close_matches(name, builtins.list(folders), n=1)
  hint = f" Did you mean {close[0]!r}?" if close else ""
  raise PretrainedError(
      f"unknown pretrained model {name!r}.{hint} Known models: {_describe(folders)}. "
      f"(Searched {', '.join(str(r) for r in _roots())}; add folders with ${ENV_PATH}.)")


def card(name: str) -> dict:
  """The machine-readable model card (``card.json``) of a pretrained model.

  Raises:
    PretrainedError: unknown name, or an unreadable card.
  """
  d = _folder(name)
  try:
    out = json.loads((d / _CARD).read_text(encoding="utf-8"))
  except (OSError, ValueError) as e:
    raise PretrainedError(f"pretrained model {d.name!r}: cannot read {d / _CARD} ({e})") from e
  out.setdefault("name", d.name)
  return out


def model_card(name: str) -> str:
  """The model card for people (``MODEL_CARD.md``, Markdown) of a pretrained model."""
  d = _folder(name)
  p = d / _MODEL_CARD
  return p.read_text(encoding="utf-8") if p.is_file() else json.dumps(card(name), indent=1)


def path(name: str) -> pathlib.Path:
  """The checkpoint directory of a pretrained model (what ``--checkpoint`` accepts).

  Args:
    name: ``NAME`` or ``pretrained:NAME``.

  Returns:
    An orbax step directory, readable by :func:`smoothjax.checkpoints.load_model`.

  Raises:
    PretrainedError: unknown name (the message lists the known ones), or a folder without its
      checkpoint.
  """
  d = _folder(name)
  ck = d / _CHECKPOINT
  if not ck.is_dir():
    raise PretrainedError(f"pretrained model {d.name!r} has no checkpoint directory {ck}")
  return ck


def is_pretrained(spec: Any) -> bool:
  """Whether a ``--checkpoint`` value names a pretrained model (``pretrained:NAME``)."""
  return isinstance(spec, str) and spec.startswith(PREFIX)


def resolve(spec: str | os.PathLike) -> str:
  """A ``--checkpoint`` value with ``pretrained:NAME`` replaced by that model's directory.

  Any other value comes back unchanged (as a string), so checkpoint loaders can call this on
  every path they are given.

  Raises:
    PretrainedError: ``pretrained:NAME`` with an unknown ``NAME``.
  """
  if is_pretrained(spec):
    return str(path(str(spec)))
  return os.fspath(spec)


def load(name: str = DEFAULT, **kwargs) -> tuple[Any, dict]:
  """Loads a pretrained model.

  Args:
    name: ``NAME`` or ``pretrained:NAME`` (default: :data:`DEFAULT`).
    **kwargs: passed to :func:`smoothjax.checkpoints.load_model` (``normalization``, ...).

  Returns:
    ``(model, info)`` as :func:`smoothjax.checkpoints.load_model` returns them, with
    ``info["pretrained"]`` (the name), ``info["card"]`` (:func:`card`) and
    ``info["model_card"]`` (the path of ``MODEL_CARD.md``) added.

  Raises:
    PretrainedError: unknown name.
    smoothjax.checkpoints.CheckpointError: a broken checkpoint, or ``kwargs`` that contradict it.
  """
  from smoothjax import checkpoints  # pylint: disable=import-outside-toplevel
  ck = path(name)
  model, info = checkpoints.load_model(ck, **kwargs)
  info = dict(info, pretrained=ck.parent.name, card=card(ck.parent.name),
              model_card=str(ck.parent / _MODEL_CARD))
  return model, info


def export(checkpoint: str | os.PathLike, name: str, *, card: Mapping[str, Any],
           model_card: str | None = None, root: str | os.PathLike | None = None,
           overwrite: bool = False) -> pathlib.Path:
  """Writes a model folder for the registry from any checkpoint (parameters only).

  The model is read with :func:`smoothjax.checkpoints.load_model` and written again with
  :func:`smoothjax.checkpoints.save_model`: the optimizer state and the other checkpoints of a
  train workdir stay behind. The checkpoint's ``meta`` (step, validation metrics) is kept.

  Args:
    checkpoint: a train workdir (its best checkpoint), a step directory or a PyTorch file.
    name: the model's name (a folder name: letters, digits, ``_``, ``-``, ``.``).
    card: the card's fields; ``name``, ``arch``, ``noise``, ``input_sigma``, ``sigma_space``,
      ``num_classes`` and ``step`` are filled in from the checkpoint.
    model_card: the text of ``MODEL_CARD.md`` (default: none written).
    root: where to create ``name/`` (default: the package's :data:`MODELS_DIR`).
    overwrite: replace an existing folder.

  Returns:
    The new model folder.

  Raises:
    PretrainedError: a bad name, or an existing folder without ``overwrite``.
  """
  from smoothjax import checkpoints  # pylint: disable=import-outside-toplevel
  if not name or not all(c.isalnum() or c in "_-." for c in name) or name.startswith("."):
    raise PretrainedError(f"bad pretrained model name {name!r}: use letters, digits, _ - .")
  folder = pathlib.Path(root if root is not None else MODELS_DIR) / name
  if folder.exists():
    if not overwrite:
      raise PretrainedError(f"{folder} exists (pass overwrite=True to replace it)")
    shutil.rmtree(folder)
  model, info = checkpoints.load_model(checkpoint)
  cfg = model.config
  meta = dict(info.get("meta") or {})
  meta.pop("model_config", None)  # save_model records the model's own
  meta["pretrained"] = name
  folder.mkdir(parents=True)
  checkpoints.save_model(folder / _CHECKPOINT, model, meta=meta)
  full = {"name": name, **dict(card), "arch": cfg.arch, "noise": cfg.noise.spec,
          "input_sigma": cfg.noise.input_sigma, "sigma_space": cfg.noise.sigma_space,
          "num_classes": cfg.num_classes, "step": info.get("step")}
  (folder / _CARD).write_text(json.dumps(full, indent=1) + "\n", encoding="utf-8")
  if model_card is not None:
    (folder / _MODEL_CARD).write_text(model_card, encoding="utf-8")
  return folder


# ----------------------------------------------------------------------------------- sample


def sample_path() -> pathlib.Path:
  """The shipped sample: the first 500 CIFAR-10 test images (``.npz``, exact pixels).

  Raises:
    PretrainedError: the file is missing (a broken installation).
  """
  if not SAMPLE_PATH.is_file():
    raise PretrainedError(f"the CIFAR-10 sample {SAMPLE_PATH} is missing: reinstall smoothjax")
  return SAMPLE_PATH


def sample_spec() -> str:
  """The ``--dataset`` spec of the shipped sample (``npz:PATH``; its ``test`` split)."""
  return f"npz:{sample_path()}"


def sample(limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The shipped CIFAR-10 test sample as arrays.

  Args:
    limit: only the first ``limit`` images (default: all 500).

  Returns:
    ``(x, y)``: ``(N, 32, 32, 3)`` uint8 images (0..255, NHWC) and ``(N,)`` int64 labels.
  """
  with np.load(sample_path(), allow_pickle=False) as z:
    x, y = z["x_test"], z["y_test"]
  if limit is not None:
    x, y = x[:limit], y[:limit]
  return x, y
