"""What both checkpoint kinds share: the error type, normalisation specs, abstract models."""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from flax import traverse_util

from smoothjax import models as models_lib

FAMILIES = {
    "reference": models_lib.REFERENCE_NORMALIZATION,
    "akamaster": models_lib.AKAMASTER_NORMALIZATION,
}
TORCH_SUFFIXES = (".pth", ".pt", ".th", ".tar")


def numpy_state_dict(sd) -> dict:
  """``{name: NumPy array}`` of a state dict of PyTorch tensors or arrays."""
  return {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
          for k, v in sd.items()}


class CheckpointError(ValueError):
  """A checkpoint cannot be read, is unsafe, or does not fit the requested model."""



def parse_normalization(spec: Any = "auto", family: str | None = None
                        ) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Resolves a normalisation spec to ``(mean, std)`` (per channel, [0, 1] pixel units).

  Args:
    spec: ``"auto"`` (the family's normalisation), a family name (``"reference"``,
      ``"akamaster"``), a string ``"MEAN_R,MEAN_G,MEAN_B,STD_R,STD_G,STD_B"``, six numbers, or a
      pair ``(mean, std)`` of three numbers each.
    family: the checkpoint family, for ``"auto"``.

  Raises:
    CheckpointError: on an unknown name or malformed numbers.
  """
  if isinstance(spec, str):
    s = spec.strip().lower()
    if s == "auto":
      if family not in FAMILIES:
        raise CheckpointError(
            "normalization='auto' needs a known checkpoint family; give MEAN_R,MEAN_G,MEAN_B,"
            "STD_R,STD_G,STD_B")
      return FAMILIES[family]
    if s in FAMILIES:
      return FAMILIES[s]
    try:
      values = [float(v) for v in s.split(",")]
    except ValueError:
      values = []
  else:
    try:
      if len(spec) == 2 and all(len(p) == 3 for p in spec):
        values = [float(v) for part in spec for v in part]
      else:
        values = [float(v) for v in spec]
    except TypeError:
      values = []
  if len(values) != 6 or not all(math.isfinite(v) for v in values) or min(values[3:]) <= 0:
    raise CheckpointError(
        f"bad normalization {spec!r}: expected 'auto', 'reference', 'akamaster' or six numbers "
        "MEAN_R,MEAN_G,MEAN_B,STD_R,STD_G,STD_B with positive stds")
  return tuple(values[:3]), tuple(values[3:])



def _abstract_model(config: models_lib.ModelConfig) -> nnx.Module:
  """The model with ``jax.ShapeDtypeStruct`` leaves (no initialiser runs), to be filled in."""
  model = nnx.eval_shape(lambda: models_lib.build_model(config, key=0))
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  state = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding),
                       nnx.state(model))
  nnx.update(model, state)
  return model


def _initial_values(config: models_lib.ModelConfig, key, paths: Sequence[tuple]) -> list:
  """Initial values of some variables of a new model, computing nothing else.

  Under ``jax.jit`` the unused initialisers are dead code: this compiles in well under a second
  where an eager :func:`smoothjax.models.build_model` takes many seconds on a CPU.
  """
  def init():
    model = models_lib.build_model(config, key=key)
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model)))
    return [flat[p] for p in paths]
  return jax.jit(init)()



def _is_auto(normalization: Any) -> bool:
  return isinstance(normalization, str) and normalization.strip().lower() == "auto"

