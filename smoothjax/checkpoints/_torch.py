"""Safe import of PyTorch CIFAR ResNets (the reference and akamaster layouts) as smoothjax models.

Files are read with ``torch.load(..., weights_only=True)`` only: a file whose pickle would run
code is refused (:class:`CheckpointError`), never loaded with ``weights_only=False``.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import re
from typing import Any, Mapping

import jax
import numpy as np
from flax import nnx
from flax import traverse_util

from smoothjax import models as models_lib
from smoothjax import noise as noise_lib
from smoothjax.checkpoints._common import (CheckpointError, _abstract_model, numpy_state_dict,
                                           _initial_values, _is_auto, parse_normalization)

def _import_torch():
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise CheckpointError(
        "reading PyTorch checkpoints needs PyTorch: pip install 'smoothjax[torch]'") from e
  return torch


def _unsafe_reason(message: str) -> str:
  """The line of a weights_only failure that names what the pickle wanted to run."""
  for line in message.splitlines():
    line = line.strip()
    if "GLOBAL" in line or "Unsupported" in line:
      return line
  return message.strip().splitlines()[-1] if message.strip() else "unknown reason"


def _find_state_dict(obj: Any, path: pathlib.Path) -> Mapping[str, Any]:
  torch = _import_torch()

  def is_state_dict(d):
    return isinstance(d, Mapping) and d and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())

  if is_state_dict(obj):
    return obj
  if isinstance(obj, Mapping):
    for name in ("state_dict", "model_state_dict", "model", "net"):
      if is_state_dict(obj.get(name)):
        return obj[name]
  keys = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
  raise CheckpointError(
      f"{path}: no state dict found (expected a mapping of parameter names to tensors, or a dict "
      f"with one under 'state_dict'); found {keys}")


def _torch_load(path: pathlib.Path) -> Any:
  """``torch.load(path, map_location="cpu", weights_only=True)`` with CheckpointErrors."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise CheckpointError(f"PyTorch checkpoint {path} does not exist or is not a file")
  torch = _import_torch()
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    raise CheckpointError(
        f"refusing to load {path}: it is not a plain weights file, loading it would need to "
        f"execute code from the file ({_unsafe_reason(str(e))}). Only files that load with "
        "torch.load(weights_only=True) are accepted.") from None
  except Exception as e:  # pylint: disable=broad-except
    first = (str(e).strip().splitlines() or [""])[0]
    raise CheckpointError(
        f"cannot read PyTorch checkpoint {path}: {type(e).__name__}: {first}") from e
  return obj


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a PyTorch checkpoint's state dict as NumPy arrays, without running any code.

  The file is read with ``torch.load(path, map_location="cpu", weights_only=True)``: PyTorch's
  restricted unpickler only rebuilds tensors and plain containers. A pickle that asks for anything
  else (e.g. a ``__reduce__`` payload calling a function) is refused.

  Args:
    path: a ``.pth``/``.pth.tar``/``.th`` file holding a state dict, or a dict with one under
      ``state_dict`` (also ``model_state_dict``, ``model``, ``net``).

  Returns:
    ``{name: array}`` in the file's order (``num_batches_tracked`` entries included).

  Raises:
    CheckpointError: the file is missing or unreadable, holds no state dict, or would need to
      execute code to load.
  """
  path = pathlib.Path(path)
  obj = _torch_load(path)
  sd = _find_state_dict(obj, path)
  return {k: v.detach().cpu().numpy() for k, v in sd.items()}


def _strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  if state_dict and all(k.startswith("module.") for k in state_dict):
    return {k[len("module."):]: v for k, v in state_dict.items()}
  return dict(state_dict)


def _head_name(keys) -> str | None:
  has_fc = any(k.startswith("fc.") for k in keys)
  has_linear = any(k.startswith("linear.") for k in keys)
  if has_fc == has_linear:
    return None
  return "fc" if has_fc else "linear"


def detect_family(state_dict: Mapping[str, Any]) -> str:
  """The checkpoint family of a CIFAR ResNet state dict: ``'reference'`` or ``'akamaster'``.

  akamaster's files name the head ``linear`` (and carry DataParallel's ``module.`` prefix); the
  reference implementation names it ``fc`` and has ``downsample`` projection shortcuts.

  Raises:
    CheckpointError: the state dict is not one of a CIFAR ResNet of either family.
  """
  sd = _strip_prefix(state_dict)
  head = _head_name(sd)
  if head is None or "conv1.weight" not in sd or not any(k.startswith("layer1.") for k in sd):
    sample = ", ".join(list(sd)[:6])
    raise CheckpointError(
        "not a CIFAR ResNet state dict of a known family (expected conv1, bn1, layer1..3 and a "
        f"head named 'fc' (reference) or 'linear' (akamaster)); keys start with: {sample}")
  return "reference" if head == "fc" else "akamaster"



_BN_FIELDS = (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"),
              ("running_var", "var"))


def _torch_layout(n: int, shortcut: str, head: str, sc_name: str):
  """[(torch name, flax path, kind)] of a CIFAR ResNet-(6n+2), in PyTorch's order."""
  out = [("conv1.weight", ("conv1", "kernel"), "conv")]
  out += [(f"bn1.{t}", ("bn1", f), "bn") for t, f in _BN_FIELDS]
  idx = 0
  for stage in (1, 2, 3):
    for b in range(n):
      pre = f"layer{stage}.{b}"
      for c in ("1", "2"):
        out.append((f"{pre}.conv{c}.weight", ("blocks", idx, f"conv{c}", "kernel"), "conv"))
        out += [(f"{pre}.bn{c}.{t}", ("blocks", idx, f"bn{c}", f), "bn") for t, f in _BN_FIELDS]
      if shortcut == "B" and stage > 1 and b == 0:
        out.append((f"{pre}.{sc_name}.0.weight", ("blocks", idx, "down_conv", "kernel"), "conv"))
        out += [(f"{pre}.{sc_name}.1.{t}", ("blocks", idx, "down_bn", f), "bn")
                for t, f in _BN_FIELDS]
      idx += 1
  out.append((f"{head}.weight", ("fc", "kernel"), "linear"))
  out.append((f"{head}.bias", ("fc", "bias"), "bn"))
  return out


# The reference's noise parameters of a layer (PyTorch name suffix, smoothjax variable, kind).
_PNI_PARAMS = (("alpha", "alpha", "pni"),)
_CNI_PARAMS = (("alphad_w", "alpha_d", "cni_diag"), ("alphaf_w", "factor", "cni_factor"))
_NOISE_SUFFIXES = tuple(f".{t}" for t, _, _ in _PNI_PARAMS + _CNI_PARAMS)


def _noise_layout(layout, noise: noise_lib.NoiseConfig, head: str):
  """The entries of the weight-noise parameters of ``layout``'s convs and head.

  The reference's noisy layers hold their noise beside the weight: PNI ``<layer>.alpha`` (the
  weight's shape), CNI ``<layer>.alphad_w`` (the flattened weight) and ``<layer>.alphaf_w``
  (``(1, numel(W), r)``); its CNI models keep PNI ``alpha`` on the head.
  """
  out = []
  for name, fpath, kind in layout:
    if kind not in ("conv", "linear"):
      continue
    is_head = name == f"{head}.weight"
    weight = noise.weight
    if is_head and weight == "cni":
      weight = "pni" if noise.cni_head_pni else None
    params = {"pni": _PNI_PARAMS, "cni": _CNI_PARAMS}.get(weight, ())
    for suffix, var, nkind in params:
      out.append((name[:-len("weight")] + suffix, fpath[:-1] + ("weight_noise", var),
                  f"{nkind}_{kind}" if nkind == "pni" else nkind))
  return out


def _file_noise(sd: Mapping[str, np.ndarray], head: str) -> noise_lib.NoiseConfig | None:
  """The weight noise a reference state dict carries (``None``: no noise parameters).

  PNI: ``alpha`` of a layer's weight shape is element-wise (the reference), of one value
  layer-wise, of shape ``(out, 1, ...)`` channel-wise (He et al.'s variants). CNI: the rank is
  ``alphaf_w.shape[-1]``, and the head keeps PNI when it has an ``alpha``.

  Raises:
    CheckpointError: PNI and CNI parameters mixed, or PNI granularities mixed.
  """
  pni = [k[:-len(".alpha")] for k in sd if k.endswith(".alpha")]
  cni = [k[:-len(".alphaf_w")] for k in sd if k.endswith(".alphaf_w")]
  if not pni and not cni and not any(k.endswith(".alphad_w") for k in sd):
    return None
  if cni or any(k.endswith(".alphad_w") for k in sd):
    if any(p != head for p in pni):
      raise CheckpointError(
          "checkpoint mixes PNI ('alpha') and CNI ('alphad_w', 'alphaf_w') weight noise on its "
          f"convolutions (e.g. {next(p for p in pni if p != head)}.alpha)")
    factors = sd.get(f"{cni[0]}.alphaf_w") if cni else None
    rank = int(factors.shape[-1]) if factors is not None and factors.ndim == 3 else 5
    head_pni = head in pni
    if head_pni:
      _pni_granularity(sd, head, want="element")
    return noise_lib.NoiseConfig(weight="cni", cni_rank=rank, cni_head_pni=head_pni)
  granularities = {p: _pni_granularity(sd, p) for p in pni}
  kinds = sorted(set(granularities.values()))
  if len(kinds) > 1:
    example = ", ".join(f"{p}: {granularities[p]}" for p in sorted(granularities)[:4])
    raise CheckpointError(f"checkpoint mixes PNI granularities {kinds} ({example}); smoothjax "
                          "models use one granularity for every layer")
  return noise_lib.NoiseConfig(weight="pni", pni_granularity=kinds[0])


def _pni_granularity(sd, layer: str, want: str | None = None) -> str:
  """``element`` / ``layer`` / ``channel`` from the shape of ``layer.alpha`` vs its weight."""
  alpha, weight = sd[f"{layer}.alpha"], sd.get(f"{layer}.weight")
  ashape, wshape = tuple(alpha.shape), tuple(getattr(weight, "shape", ()))
  if ashape == wshape and alpha.size > 1:
    found = "element"
  elif alpha.size == 1:
    found = "layer"
  elif wshape and ashape in ((wshape[0],), (wshape[0],) + (1,) * (len(wshape) - 1)):
    found = "channel"
  else:
    raise CheckpointError(f"'{layer}.alpha' has shape {ashape}, which fits no PNI granularity "
                          f"of its weight of shape {wshape}")
  if want is not None and found != want:
    raise CheckpointError(f"'{layer}.alpha' is {found}-wise, expected {want}-wise PNI")
  return found


def _merge_noise(requested: Any, found: noise_lib.NoiseConfig | None):
  """The model's noise: the file's when ``requested`` is ``None``, else ``requested`` if it fits."""
  if requested is None:
    return found or "none"
  if found is None:
    return requested
  try:
    want = (requested if isinstance(requested, noise_lib.NoiseConfig)
            else noise_lib.parse_noise(requested))
  except ValueError as e:
    raise CheckpointError(str(e)) from e
  fields = ("weight", "pni_granularity") if found.weight == "pni" else (
      "weight", "cni_rank", "cni_head_pni")
  if any(getattr(want, f) != getattr(found, f) for f in fields):
    def describe(c):
      return ", ".join(f"{f}={getattr(c, f)!r}" for f in fields)
    raise CheckpointError(
        f"checkpoint holds {found.spec} noise parameters ({describe(found)}), but noise="
        f"{want.spec!r} ({describe(want)}) was requested")
  return want


def _oihw_rows_to_hwio(rows: np.ndarray, kernel_shape: tuple[int, ...]) -> np.ndarray:
  """Reorders the rows of ``rows`` (one per weight, PyTorch's flattened OIHW order) to the
  flattened order of smoothjax's HWIO kernel of shape ``kernel_shape``."""
  h, w, i, o = kernel_shape
  order = np.arange(h * w * i * o).reshape(o, i, h, w).transpose(2, 3, 1, 0).reshape(-1)
  return rows[order]


def _to_flax(kind: str, w: np.ndarray, flax_shape: tuple[int, ...]) -> np.ndarray:
  """A PyTorch array of the layout ``kind`` as the smoothjax variable of shape ``flax_shape``."""
  if kind in ("conv", "pni_conv"):
    return np.transpose(w, (2, 3, 1, 0))  # OIHW -> HWIO (PNI alpha: element or channel-wise)
  if kind in ("linear", "pni_linear"):
    return w.T  # (out, in) -> (in, out)
  if kind == "cni_diag":  # alpha_d over the flattened OIHW weight -> the HWIO kernel's shape
    h, kw, i, o = flax_shape
    return np.transpose(w.reshape(o, i, h, kw), (2, 3, 1, 0))
  return w


def _torch_shape(kind: str, flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  if kind in ("conv", "pni_conv"):
    h, w, i, o = flax_shape
    return (o, i, h, w)
  if kind in ("linear", "pni_linear"):
    return tuple(reversed(flax_shape))
  if kind == "cni_diag":
    return (int(np.prod(flax_shape)),)
  if kind == "cni_factor":
    return (1,) + tuple(flax_shape)
  return tuple(flax_shape)


def _blocks_per_stage(sd: Mapping[str, Any]) -> int:
  counts = []
  for stage in (1, 2, 3):
    idx = {int(m.group(1)) for k in sd if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
    if not idx or idx != set(range(len(idx))):
      raise CheckpointError(
          f"not a CIFAR ResNet state dict: layer{stage} blocks are {sorted(idx)}, expected 0..n-1")
    counts.append(len(idx))
  if len(set(counts)) != 1:
    raise CheckpointError(
        f"not a CIFAR ResNet state dict: stages have {counts} blocks, expected equal counts")
  return counts[0]


def model_from_torch(path_or_state_dict: str | os.PathLike | Mapping[str, Any], *,
                     arch: str | None = None, noise: Any = None,
                     normalization: Any = "auto", num_classes: int | None = None,
                     key: jax.Array | int = 0) -> tuple[nnx.Module, dict]:
  """Builds a smoothjax CIFAR ResNet holding the weights of a PyTorch checkpoint.

  The family (reference / akamaster), shortcut (B if the file has projection shortcuts, else A),
  depth (from the number of blocks per stage) and number of classes (from the head) come from the
  state dict, and so does the weight noise of the reference implementation's noisy models:

  * PNI-W (He et al. 2019): ``<layer>.alpha`` of the weight's shape (element-wise, the
    reference's choice; also one value: layer-wise, ``(out, 1, 1, 1)``: channel-wise), on every
    conv and the head; transposed to smoothjax's kernel layout as the weights are.
  * CNI-W (Zheltonozhskii et al. 2020): ``<layer>.alphad_w`` (``numel(W)``) and
    ``<layer>.alphaf_w`` (``(1, numel(W), r)``) over PyTorch's flattened OIHW weight, on every
    conv; their entries are permuted to the flattened order of the HWIO kernel (``alpha_d``
    takes the kernel's shape), so that the same standard-normal draws, permuted alike, give the
    same weight sample. The head keeps element-wise PNI ``alpha``, as in the reference.

  Noise parameters that the file does not hold (e.g. PNI-A, or all of them for a plain file
  loaded into a noisy model) keep their initial values.

  Args:
    path_or_state_dict: a PyTorch file (read with :func:`load_torch_state_dict`) or a state dict
      (``{name: array or tensor}``, with or without the ``module.`` prefix).
    arch: ``resnet20`` ... ``resnet110``; default: inferred. If given, it must match the file.
    noise: the model's noise (:class:`smoothjax.noise.NoiseConfig` or a ``--noise`` spec);
      default: the file's weight noise (``"none"`` for a file without noise parameters). It must
      agree with the noise parameters of the file, if any.
    normalization: ``"auto"`` (the family's), or an override (see :func:`parse_normalization`).
    num_classes: default: the head's size. If given, it must match the file.
    key: PRNG key (or seed) of the initial values of the parameters not in the file (noise).

  Returns:
    ``(model, info)``; ``info`` has ``family``, ``arch``, ``shortcut``, ``num_classes``,
    ``normalization`` (``{"mean", "std", "source"}``), ``model_config``, ``checkpoint`` (the
    path, or ``None``), ``step`` (``None``), ``torch_meta`` (other scalar entries of the file's
    dict, e.g. ``epoch``, ``best_prec1``).

  Raises:
    CheckpointError: unsafe or unreadable file, unknown layout, unexpected or missing parameters,
      or a parameter whose shape does not fit the requested model (the message names the first),
      noise parameters the model cannot hold (mixed kinds or PNI granularities) or that
      contradict ``noise``.
  """
  checkpoint = None
  torch_meta: dict = {}
  if isinstance(path_or_state_dict, (str, os.PathLike)):
    checkpoint = str(path_or_state_dict)
    obj = _torch_load(pathlib.Path(path_or_state_dict))
    sd = _find_state_dict(obj, pathlib.Path(path_or_state_dict))
    raw = {k: v.detach().cpu().numpy() for k, v in sd.items()}
    torch_meta = _torch_scalars(obj)
  elif isinstance(path_or_state_dict, Mapping):
    raw = numpy_state_dict(path_or_state_dict)
  else:
    raise CheckpointError(
        f"expected a path or a state dict, got {type(path_or_state_dict).__name__}")

  family = detect_family(raw)
  sd = {k: v for k, v in _strip_prefix(raw).items() if not k.endswith(".num_batches_tracked")}
  head = _head_name(sd)
  sc_name = next((s for s in ("downsample", "shortcut")
                  if any(f".{s}.0.weight" in k for k in sd)), None)
  shortcut = "B" if sc_name else "A"
  n = _blocks_per_stage(sd)
  inferred = f"resnet{6 * n + 2}"
  if inferred not in models_lib.ARCHS:
    raise CheckpointError(f"checkpoint is a ResNet-{6 * n + 2}, which smoothjax does not build "
                          f"(supported: {', '.join(models_lib.ARCHS)})")
  if arch is not None and arch != inferred:
    if arch not in models_lib.ARCHS:
      raise CheckpointError(f"unknown arch {arch!r}; expected one of {', '.join(models_lib.ARCHS)}")
    raise CheckpointError(
        f"checkpoint is a {inferred} ({n} blocks per stage), but arch={arch!r} was requested")
  head_w = sd.get(f"{head}.weight")
  file_classes = int(head_w.shape[0]) if head_w is not None and head_w.ndim == 2 else None
  if num_classes is None:
    if file_classes is None:
      raise CheckpointError(f"cannot infer num_classes: no 2-D '{head}.weight' in the checkpoint")
    num_classes = file_classes
  mean, std = parse_normalization(normalization, family)
  found = _file_noise(sd, head)
  noise = _merge_noise(noise, found)
  try:
    config = models_lib.ModelConfig(arch=inferred, num_classes=int(num_classes),
                                    shortcut=shortcut, noise=noise, mean=mean, std=std)
  except ValueError as e:
    raise CheckpointError(str(e)) from e
  layout = _torch_layout(n, shortcut, head, sc_name or "downsample")
  if found is not None:
    layout += _noise_layout(layout, config.noise, head)
  # Build without running the initialisers (an eager initialiser compiles for every shape: slow
  # on CPU); the variables that the file does not hold (noise scales) get their initial values.
  model = _abstract_model(config)
  covered = {fpath for _, fpath, _ in layout}
  uncovered = [p for p in traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model)))
               if p not in covered]
  expected = {name for name, _, _ in layout}
  unexpected = [k for k in sd if k not in expected]
  if unexpected:
    more = f" (and {len(unexpected) - 5} more)" if len(unexpected) > 5 else ""
    raise CheckpointError(
        f"unexpected parameters for a {family} {inferred} (shortcut {shortcut}): "
        f"{', '.join(unexpected[:5])}{more}")
  _fill_model(model, sd, layout, uncovered, config=config, key=key,
              what=f"{inferred} with {num_classes} classes")
  info = {
      "checkpoint": checkpoint,
      "family": family,
      "arch": inferred,
      "shortcut": shortcut,
      "num_classes": int(num_classes),
      "normalization": {"mean": list(mean), "std": list(std),
                        "source": "auto" if _is_auto(normalization) else "override"},
      "model_config": config.to_dict(),
      "step": None,
      "torch_meta": torch_meta,
  }
  return model, info



def _fill_model(model, sd: Mapping[str, np.ndarray], layout, uncovered, *, config, key,
                what: str) -> None:
  """Copies the state dict ``sd`` into ``model`` along ``layout`` (in place).

  Parameters the file does not hold (``uncovered``: e.g. noise scales of a noise-free file)
  get their initial values; a missing or misshapen parameter raises :class:`CheckpointError`
  naming the first (``what``: the model, for the message).
  """
  state = nnx.state(model)
  flat = traverse_util.flatten_dict(nnx.to_pure_dict(state))
  problems = []
  for name, fpath, kind in layout:
    target = tuple(flat[fpath].shape)
    want = _torch_shape(kind, target)
    value = sd.get(name)
    if value is not None and kind.startswith("pni") and value.size == 1 == np.prod(want):
      value = value.reshape(want)  # a layer-wise alpha, of shape (1,) in PyTorch
    if value is None:
      problems.append(f"parameter '{name}' is missing from the checkpoint (expected shape {want})")
    elif tuple(value.shape) != want:
      problems.append(f"parameter '{name}' has shape {tuple(value.shape)} in the checkpoint, "
                      f"but {what} expects {want}")
    elif kind == "cni_factor":
      kernel = tuple(flat[fpath[:-2] + ("kernel",)].shape)
      flat[fpath] = np.asarray(_oihw_rows_to_hwio(value[0], kernel), np.float32)
    else:
      flat[fpath] = np.asarray(_to_flax(kind, value, target), np.float32)
  if problems:
    more = f" ({len(problems) - 1} more mismatches)" if len(problems) > 1 else ""
    raise CheckpointError(f"checkpoint does not fit the model: {problems[0]}{more}")
  if uncovered:
    flat.update(zip(uncovered, _initial_values(config, key, uncovered)))
  flat = {k: jax.numpy.asarray(v) for k, v in flat.items()}
  nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(flat))
  nnx.update(model, state)


def _torch_scalars(obj: Any) -> dict:
  """Scalar entries (epoch, best_prec1, ...) of a loaded PyTorch checkpoint dict."""
  torch = _import_torch()
  out = {}
  if isinstance(obj, Mapping):
    for k, v in obj.items():
      if isinstance(v, torch.Tensor) and v.ndim == 0:
        v = v.item()
      if isinstance(k, str) and isinstance(v, (int, float, str, bool)):
        out[k] = v
  return out

