"""Import of Cohen et al.'s and Salman et al.'s (SmoothAdv) randomized-smoothing checkpoints.

Both code bases save ``{'arch', 'state_dict', 'epoch', 'optimizer'}`` where ``arch`` is
``'cifar_resnet20'``, ``'cifar_resnet110'`` or ``'resnet50'`` and the state dict is that of
``torch.nn.Sequential(first_layer, model)``: every key starts with ``1.`` (the ImageNet models
add DataParallel's ``module.``: ``1.module.conv1.weight``). The CIFAR nets are the CIFAR ResNets
of bearpaw's pytorch-classification (BasicBlocks, depth 6n+2, 1x1 conv + BN projection
shortcuts ``downsample.0/1``, average pool 8, head ``fc``): after the prefix the same layout as
the paper's reference implementation, so :func:`smoothjax.checkpoints.model_from_torch` builds
them. ResNet-50 is torchvision's (:mod:`smoothjax.resnet50`).

The first layer holds no parameters, so a file does not say how its inputs are normalised; the
family does, and is a choice (``normalization=``), never guessed:

* ``"cohen"`` (default): Cohen et al.'s ``NormalizeLayer`` standardises, ``(x - mean) / std``;
* ``"smoothadv"``: Salman et al.'s ``InputCenterLayer`` only subtracts the mean (std 1);
* six numbers ``MEAN_R,MEAN_G,MEAN_B,STD_R,STD_G,STD_B`` (or ``(mean, std)``).

The dataset's means and stds (CIFAR-10 or ImageNet) follow from ``arch``. Both code bases add the
Gaussian noise to [0, 1] pixels before the first layer: use ``sigma_space="pixel"`` (smoothjax's
default) with their sigma.

``smoothjax.checkpoints.load_model`` (hence ``--checkpoint``) reads these files too: it detects
the layout (:func:`is_cohen_checkpoint`) and calls :func:`model_from_cohen`, with the ``cohen``
normalisation unless ``normalization=`` says otherwise.

Example:
  >>> model, info = model_from_cohen("models/cifar10/resnet110/noise_0.25/checkpoint.pth.tar")
  ...                                                                      # doctest: +SKIP
  >>> res = smoothjax.certify.certify(0, model, x, sigma=0.25)           # doctest: +SKIP

References:
  Cohen, Rosenfeld, Kolter, "Certified Adversarial Robustness via Randomized Smoothing",
  ICML 2019. Salman, Yang, Li, Zhang, Zhang, Razenshteyn, Bubeck, "Provably Robust Deep
  Learning via Adversarially Trained Smoothed Classifiers", NeurIPS 2019.
"""

from __future__ import annotations

import os
import pathlib
import pickle
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx, traverse_util

from smoothjax import models as models_lib
from smoothjax import resnet50 as resnet50_lib
from smoothjax.checkpoints._common import CheckpointError, numpy_state_dict, parse_normalization
from smoothjax.checkpoints._torch import model_from_torch

__all__ = [
  "ARCHS",
  "DATASET_STATS",
  "FAMILIES",
  "cohen_normalization",
  "detect_layout",
  "is_cohen_checkpoint",
  "load_cohen_file",
  "model_from_cohen",
]

# Their `arch` names -> (smoothjax arch, dataset).
ARCHS = {
    "cifar_resnet20": ("resnet20", "cifar10"),
    "cifar_resnet110": ("resnet110", "cifar10"),
    "resnet50": ("resnet50", "imagenet"),
}
# Per-channel (mean, std) of each dataset in both code bases (their datasets.py).
DATASET_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
FAMILIES = ("cohen", "smoothadv")


def _strip(key: str, prefix: str) -> str:
  return key.removeprefix(prefix)


def _inner_keys(keys) -> tuple[dict[str, str], str] | None:
  """Maps each key to its name inside the model after the Sequential / DataParallel prefixes."""
  keys = list(keys)
  if not keys:
    return None
  for outer in ("", "module."):
    if not all(k.startswith(outer + "1.") for k in keys):
      continue
    for inner in ("module.", ""):
      pre = f"{outer}1.{inner}"
      if all(k.startswith(pre) for k in keys):
        return {k: k[len(pre):] for k in keys}, pre
  return None


def is_cohen_checkpoint(obj: Any) -> bool:
  """Whether ``obj`` (a path, a loaded file dict or a state dict) has Cohen et al.'s layout.

  True when every state-dict key carries the ``Sequential(first_layer, model)`` prefix ``1.``
  (optionally with ``module.``) and the model inside is a CIFAR ResNet or a ResNet-50. A path is
  read safely (``torch.load(weights_only=True)``); an unreadable file gives False.
  """
  if isinstance(obj, (str, os.PathLike)):
    try:
      obj = load_cohen_file(obj)[0]
    except CheckpointError:
      return False
  if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping):
    return False
  try:
    detect_layout(obj)
  except CheckpointError:
    return False
  return True


def detect_layout(state_dict: Mapping[str, Any], arch: str | None = None) -> dict:
  """The layout of a Cohen / SmoothAdv state dict.

  Args:
    state_dict: the file's ``state_dict``.
    arch: the file's ``arch`` entry (``cifar_resnet110`` ...), checked against the keys.

  Returns:
    ``{"prefix": "1." | "1.module." | ..., "model": "cifar_resnet" | "resnet50", "arch": the
    smoothjax arch or None (CIFAR: the depth is read by the converter), "dataset"}``.

  Raises:
    CheckpointError: not this layout, or ``arch`` contradicts the keys.
  """
  inner = _inner_keys(state_dict)
  if inner is None:
    sample = ", ".join(list(state_dict)[:4])
    raise CheckpointError(
        "not a Cohen et al. / SmoothAdv state dict (expected every key to start with '1.', the "
        f"model inside Sequential(normalize_layer, model)); keys start with: {sample}")
  names, prefix = inner
  inner_names = set(names.values())
  if "layer4.0.conv3.weight" in inner_names and "fc.weight" in inner_names:
    model, sj_arch, dataset = "resnet50", "resnet50", "imagenet"
  elif "layer3.0.downsample.0.weight" in inner_names and "fc.weight" in inner_names and (
      "layer4.0.conv1.weight" not in inner_names):
    model, sj_arch, dataset = "cifar_resnet", None, "cifar10"
  else:
    raise CheckpointError(
        "a Sequential(first_layer, model) state dict, but the model is neither a CIFAR ResNet "
        "(layer1..3, downsample shortcuts, fc) nor a ResNet-50 (layer1..4 bottlenecks, fc)")
  if arch is not None:
    if arch not in ARCHS:
      raise CheckpointError(f"unknown arch {arch!r} in the checkpoint; expected one of "
                            f"{', '.join(ARCHS)}")
    want_model = "resnet50" if arch == "resnet50" else "cifar_resnet"
    if want_model != model:
      raise CheckpointError(f"the checkpoint says arch={arch!r}, but its keys are those of a "
                            f"{model.replace('_', ' ')}")
    sj_arch, dataset = ARCHS[arch]
  return {"prefix": prefix, "model": model, "arch": sj_arch, "dataset": dataset}


def cohen_normalization(normalization: Any = "cohen", dataset: str = "cifar10"
                        ) -> tuple[tuple[float, ...], tuple[float, ...], str]:
  """``(mean, std, description)`` of a family choice or explicit numbers.

  Args:
    normalization: ``"cohen"`` (also ``"auto"``), ``"smoothadv"``, or explicit numbers (see
      :func:`smoothjax.checkpoints.parse_normalization`).
    dataset: ``"cifar10"`` or ``"imagenet"``.
  """
  if dataset not in DATASET_STATS:
    raise CheckpointError(f"unknown dataset {dataset!r}; expected one of "
                          f"{', '.join(DATASET_STATS)}")
  mean, std = DATASET_STATS[dataset]
  if isinstance(normalization, str) and normalization.strip().lower() in ("cohen", "auto"):
    return mean, std, f"cohen (NormalizeLayer: (x - mean) / std, {dataset} statistics)"
  if isinstance(normalization, str) and normalization.strip().lower() == "smoothadv":
    return mean, (1.0, 1.0, 1.0), f"smoothadv (InputCenterLayer: x - mean, {dataset} means)"
  try:
    mean, std = parse_normalization(normalization)
  except CheckpointError as e:
    raise CheckpointError(f"{e} (or 'cohen' / 'smoothadv' for Cohen-format files)") from None
  return mean, std, "override"


def load_cohen_file(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
  """Reads a checkpoint file without running code: ``(file dict, state dict as NumPy)``.

  Uses ``torch.load(path, map_location="cpu", weights_only=True)``; the optimizer state is
  read (plain tensors and containers) but not used.

  Raises:
    CheckpointError: missing or unsafe file, or no ``state_dict``.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise CheckpointError(f"PyTorch checkpoint {path} does not exist or is not a file")
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise CheckpointError("reading PyTorch checkpoints needs PyTorch: pip install torch") from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    last = (str(e).strip().splitlines() or ["?"])[-1]
    raise CheckpointError(f"refusing to load {path}: loading it would execute code from the "
                          f"file ({last}); only weights_only=True files are accepted") from None
  except Exception as e:  # pylint: disable=broad-except
    first = (str(e).strip().splitlines() or [""])[0]
    raise CheckpointError(f"cannot read {path}: {type(e).__name__}: {first}") from e
  sd = obj.get("state_dict") if isinstance(obj, Mapping) else None
  if sd is None and isinstance(obj, Mapping) and all(
      hasattr(v, "detach") for v in obj.values()):
    sd, obj = obj, {"state_dict": obj}
  if not isinstance(sd, Mapping):
    raise CheckpointError(f"{path}: no 'state_dict' entry")
  arrays = {k: v.detach().cpu().numpy() for k, v in sd.items() if hasattr(v, "detach")}
  return obj, arrays


def _scalars(obj: Mapping) -> dict:
  return {k: (v.item() if hasattr(v, "item") else v) for k, v in obj.items()
          if k not in ("state_dict", "optimizer") and (
              isinstance(v, (int, float, str, bool)) or (hasattr(v, "numel") and v.numel() == 1))}


def _to_flax(kind: str, w: np.ndarray) -> np.ndarray:
  if kind == "conv":
    return np.transpose(w, (2, 3, 1, 0))  # OIHW -> HWIO
  if kind == "linear":
    return w.T
  return w


def _resnet50_from_state_dict(sd: Mapping[str, np.ndarray], config: models_lib.ModelConfig,
                              key) -> nnx.Module:
  """A :class:`smoothjax.resnet50.ResNet50` holding torchvision-named weights ``sd``."""
  sd = {k: v for k, v in sd.items() if not k.endswith(".num_batches_tracked")}
  layout = resnet50_lib.torch_layout()
  unexpected = sorted(set(sd) - {name for name, _, _ in layout})
  if unexpected:
    raise CheckpointError(f"unexpected parameters for a ResNet-50: {', '.join(unexpected[:5])}")
  abstract = nnx.eval_shape(lambda: models_lib.build_model(config, key=0))
  graphdef, abstract_state = nnx.split(abstract)
  flat = traverse_util.flatten_dict(nnx.to_pure_dict(abstract_state))
  covered = {fpath for _, fpath, _ in layout}
  uncovered = [p for p in flat if p not in covered]
  values = {}
  for name, fpath, kind in layout:
    if name not in sd:
      raise CheckpointError(f"parameter '{name}' is missing from the ResNet-50 checkpoint")
    v = _to_flax(kind, np.asarray(sd[name], np.float32))
    if v.shape != tuple(flat[fpath].shape):
      raise CheckpointError(f"parameter '{name}' has shape {sd[name].shape}, which does not fit "
                            f"a ResNet-50 with {config.num_classes} classes")
    values[fpath] = v
  if uncovered:  # noise scales: their initial values (jitted: the unused initialisers are dead)
    init = jax.jit(lambda: [traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(
        models_lib.build_model(config, key=key))))[p] for p in uncovered])()
    values.update(zip(uncovered, init))
  values = {k: jax.numpy.asarray(v) for k, v in values.items()}
  nnx.replace_by_pure_dict(abstract_state, traverse_util.unflatten_dict(values))
  return nnx.merge(graphdef, abstract_state)


def model_from_cohen(path_or_state_dict: str | os.PathLike | Mapping[str, Any], *,
                     normalization: Any = "cohen", arch: str | None = None,
                     noise: Any = "none", num_classes: int | None = None,
                     key: jax.Array | int = 0) -> tuple[nnx.Module, dict]:
  """Builds the smoothjax model of a Cohen et al. / SmoothAdv checkpoint.

  Args:
    path_or_state_dict: a ``checkpoint.pth.tar`` of either code base, its loaded dict, or its
      state dict (then the architecture comes from the keys alone).
    normalization: ``"cohen"`` (default; also ``"auto"``), ``"smoothadv"`` or explicit numbers
      (see :func:`cohen_normalization`). Stated in ``info["normalization"]``.
    arch: optional smoothjax arch (``resnet20``, ``resnet110``, ``resnet50``); must agree.
    noise: the model's own noise (default none: both code bases smooth with input noise only).
    num_classes: default: the head's size; must agree if given.
    key: PRNG key (or seed) of parameters not in the file (noise scales of a noisy ``noise``).

  Returns:
    ``(model, info)``; ``info`` has ``family`` (``"cohen-format"``), ``torch_arch`` (the file's),
    ``arch``, ``dataset``, ``num_classes``, ``normalization`` (``{"mean", "std", "source"}``),
    ``model_config``, ``checkpoint``, ``step`` (None) and ``torch_meta`` (``epoch`` ...).

  Raises:
    CheckpointError: unsafe or unreadable file, unknown layout, or a mismatch.
  """
  checkpoint, meta, torch_arch = None, {}, None
  if isinstance(path_or_state_dict, (str, os.PathLike)):
    checkpoint = str(path_or_state_dict)
    obj, raw = load_cohen_file(path_or_state_dict)
    meta = _scalars(obj)
    torch_arch = obj.get("arch")
  elif isinstance(path_or_state_dict, Mapping) and isinstance(
      path_or_state_dict.get("state_dict"), Mapping):
    obj = path_or_state_dict
    raw = numpy_state_dict(obj["state_dict"])
    meta, torch_arch = _scalars(obj), obj.get("arch")
  elif isinstance(path_or_state_dict, Mapping):
    raw = numpy_state_dict(path_or_state_dict)
  else:
    raise CheckpointError(
        f"expected a path or a state dict, got {type(path_or_state_dict).__name__}")
  layout = detect_layout(raw, torch_arch)
  sd = {_strip(k, layout["prefix"]): v for k, v in raw.items()}
  mean, std, source = cohen_normalization(normalization, layout["dataset"])
  if arch is not None and layout["arch"] is not None and arch != layout["arch"]:
    raise CheckpointError(f"checkpoint is a {layout['arch']} (arch={torch_arch!r}), but "
                          f"arch={arch!r} was requested")
  if layout["model"] == "cifar_resnet":
    model, info = model_from_torch(
        sd, arch=arch or layout["arch"], noise=noise, normalization=(mean, std),
        num_classes=num_classes, key=key)
    config = model.config
  else:
    file_classes = int(sd["fc.weight"].shape[0])
    if num_classes is not None and int(num_classes) != file_classes:
      raise CheckpointError(f"checkpoint has {file_classes} classes, but num_classes="
                            f"{num_classes} was requested")
    try:
      config = models_lib.ModelConfig(arch="resnet50", num_classes=file_classes, noise=noise,
                                      mean=mean, std=std)
    except ValueError as e:
      raise CheckpointError(str(e)) from e
    model = _resnet50_from_state_dict(sd, config, key)
  info = {
      "checkpoint": checkpoint,
      "family": "cohen-format",
      "torch_arch": torch_arch,
      "arch": config.arch,
      "dataset": layout["dataset"],
      "num_classes": config.num_classes,
      "normalization": {"mean": list(mean), "std": list(std), "source": source},
      "model_config": config.to_dict(),
      "step": None,
      "torch_meta": meta,
  }
  return model, info
