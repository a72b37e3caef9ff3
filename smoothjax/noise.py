"""Noise injection pieces: Gaussian input noise, PNI (weights, activations), CNI.

Every piece is a pure function of an explicit ``key``; the learnable noise scales are
:class:`NoiseScale` variables (a subclass of ``nnx.Param``, so they train with the rest of the
model but can be filtered out of weight decay, as PNI does).

Semantics follow He et al. (PNI, 2019) and Zheltonozhskii et al. (CNI, 2020):

* **Input noise**: ``x + sigma * N(0, I)``. ``sigma`` is in [0, 1] pixel units by default
  (``sigma_space="pixel"``, Cohen et al.), or in normalised units (``"normalized"``: added after
  per-channel normalisation, as the reference implementation does). Noise in normalised units is
  implemented as pixel-space noise of per-channel std ``sigma * std_c``, which is the same
  distribution after normalisation. No clipping.
* **PNI-W** (He et al. 2019): ``W + alpha * std(W) * N(0, 1)``, ``std(W)`` the scalar (unbiased)
  standard deviation of the layer's weights, treated as a constant (``stop_gradient``). ``alpha``
  is learnable, initialised to 0.25, and is ``"layer"`` (scalar), ``"channel"`` (per output
  channel) or ``"element"`` (the reference's choice) wise.
* **PNI-A**: the same on a layer's output activations; ``alpha`` over (H, W, C).
* **CNI-W** (Zheltonozhskii et al. 2020): ``W + sqrt(|std(W) * alpha_d|) * n_d + F @ n_f``,
  ``n_d ~ N(0, I_|W|)``, ``n_f ~ N(0, I_r)``, ``F`` of shape (|W|, r). Gradients flow to ``W``
  through ``std(W)`` (as in the reference). Covariance ``diag(|std(W) alpha_d|) + F F^T``.
  ``F`` starts with independent ``N(0, f_init^2)`` entries by default (``cni_f_dist="normal"``).
  The reference's constant ``F = f_init`` (``cni_f_dist="constant"``) makes ``F n_f`` one
  offset ``f_init * sum(n_f)`` shared by every weight of the layer: each draw then shifts a
  conv's outputs by ``f_init * sum(n_f)`` times the sum of its (non-negative, post-ReLU)
  input patch, a shift many times the activations' own spread that BatchNorm's batch
  statistics remove in training but its running statistics cannot at evaluation. Random rows
  keep each weight's noise variance (``r f_init^2``) without the coherent shift.

By default one weight- or activation-noise draw is shared by the whole batch of a forward pass
(the reference's granularity); input noise is drawn per image.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = [
    "NoiseScale",
    "NoiseConfig",
    "parse_noise",
    "PNIWeightNoise",
    "CNIWeightNoise",
    "PNIActivationNoise",
    "channels_last",
    "input_noise_scale",
    "add_input_noise",
]

SigmaSpace = Literal["pixel", "normalized"]
_SIGMA_SPACES = ("pixel", "normalized")
_F_DISTS = ("normal", "constant")


class NoiseScale(nnx.Param):
  """A learnable noise parameter (PNI alpha, CNI alpha_d and F)."""


@dataclasses.dataclass(frozen=True)
class NoiseConfig:
  """The noise a model carries. Hashable and JSON-serialisable (see :meth:`to_dict`).

  Attributes:
    weight: ``None``, ``"pni"`` or ``"cni"``: noise on every conv and linear kernel.
    activation: PNI-A noise on every conv output.
    pni_granularity: ``"layer"``, ``"channel"`` or ``"element"`` (PNI alpha shape).
    pni_alpha_init: initial PNI alpha (0.25 in PNI and the reference).
    cni_rank: rank r of CNI's low-rank factor F (5 in the reference).
    cni_alpha_init: initial CNI alpha_d (0.0625 in the reference; later code 0.01).
    cni_f_init: scale of F's initial entries (0.01 in the reference; later code 1e-4).
    cni_f_dist: how F starts: ``"normal"`` (default): independent ``N(0, cni_f_init^2)``
      entries, the same per-weight noise variance without a coherent offset; ``"constant"``:
      every entry ``cni_f_init``, as the reference (``torch.ones(...) * f_init``), whose
      draws shift all weights of a layer alike (see the module docstring).
    cni_head_pni: in CNI models the final linear layer uses element-wise PNI noise, as the
      reference does.
    input_sigma: Gaussian input-noise std applied by the model's own forward (0 = none).
    sigma_space: unit of ``input_sigma``: ``"pixel"`` ([0, 1] pixels) or ``"normalized"``.
  """

  weight: str | None = None
  activation: bool = False
  pni_granularity: str = "element"
  pni_alpha_init: float = 0.25
  cni_rank: int = 5
  cni_alpha_init: float = 0.0625
  cni_f_init: float = 0.01
  cni_f_dist: str = "normal"
  cni_head_pni: bool = True
  input_sigma: float = 0.0
  sigma_space: str = "pixel"

  def __post_init__(self):
    if self.weight not in (None, "pni", "cni"):
      raise ValueError(f"weight noise must be None, 'pni' or 'cni', got {self.weight!r}")
    if self.pni_granularity not in ("layer", "channel", "element"):
      raise ValueError(
          "pni_granularity must be 'layer', 'channel' or 'element', got "
          f"{self.pni_granularity!r}")
    if self.sigma_space not in _SIGMA_SPACES:
      raise ValueError(f"sigma_space must be one of {_SIGMA_SPACES}, got {self.sigma_space!r}")
    if not self.input_sigma >= 0:
      raise ValueError(f"input_sigma must be >= 0, got {self.input_sigma}")
    if self.cni_f_dist not in _F_DISTS:
      raise ValueError(f"cni_f_dist must be one of {_F_DISTS}, got {self.cni_f_dist!r}")
    if self.cni_rank < 1:
      raise ValueError(f"cni_rank must be >= 1, got {self.cni_rank}")

  @property
  def any_model_noise(self) -> bool:
    """Whether the network itself (weights or activations) is noisy."""
    return self.weight is not None or self.activation

  @property
  def spec(self) -> str:
    """The ``--noise`` spec string (``none``, ``pni_w``, ``cni_w+pni_a``, ...)."""
    parts = []
    if self.weight:
      parts.append(f"{self.weight}_w")
    if self.activation:
      parts.append("pni_a")
    return "+".join(parts) or "none"

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "NoiseConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
      raise ValueError(f"unknown NoiseConfig fields: {sorted(unknown)}")
    return cls(**d)


def parse_noise(spec: str | None, **overrides) -> NoiseConfig:
  """Parses a ``--noise`` spec: ``none``, ``pni_w``, ``pni_a``, ``cni_w`` joined with ``+``.

  ``pni_w`` may carry a granularity: ``pni_w:layer``, ``pni_w:channel``, ``pni_w:element``.

  Raises:
    ValueError: on an unknown part, or two kinds of weight noise.
  """
  kw: dict = {}
  spec = (spec or "none").strip().lower()
  if spec not in ("", "none"):
    for part in spec.split("+"):
      name, _, arg = part.strip().partition(":")
      if name in ("pni_w", "cni_w"):
        if "weight" in kw:
          raise ValueError(f"noise spec {spec!r} names two kinds of weight noise")
        kw["weight"] = name[:3]
        if arg:
          if name != "pni_w":
            raise ValueError(f"only pni_w takes a granularity, got {part!r}")
          kw["pni_granularity"] = arg
      elif name == "pni_a" and not arg:
        kw["activation"] = True
      else:
        raise ValueError(
            f"unknown noise {part!r} in {spec!r}; expected none, pni_w[:layer|channel|element], "
            "pni_a, cni_w, joined with '+'")
  kw.update(overrides)
  return NoiseConfig(**kw)


def _std(w: jax.Array) -> jax.Array:
  # torch.Tensor.std() is unbiased; the reference and PNI use it.
  return jnp.std(w, ddof=1)


class PNIWeightNoise(nnx.Module):
  """PNI weight noise ``alpha * std(W) * N(0, 1)`` (std(W) a constant for the gradient)."""

  def __init__(self, shape: tuple[int, ...], *, granularity: str = "element",
               alpha_init: float = 0.25):
    if granularity == "layer":
      ashape = (1,) * len(shape)
    elif granularity == "channel":  # output channel = last axis (HWIO / (in, out))
      ashape = (1,) * (len(shape) - 1) + (shape[-1],)
    elif granularity == "element":
      ashape = tuple(shape)
    else:
      raise ValueError(f"unknown PNI granularity {granularity!r}")
    self.alpha = NoiseScale(jnp.full(ashape, alpha_init, jnp.float32))

  def sample(self, w: jax.Array, key: jax.Array) -> jax.Array:
    """One noise draw of ``w``'s shape."""
    std = jax.lax.stop_gradient(_std(w))
    return self.alpha[...] * std * jax.random.normal(key, w.shape, w.dtype)

  def __call__(self, w: jax.Array, key: jax.Array) -> jax.Array:
    return w + self.sample(w, key)


class CNIWeightNoise(nnx.Module):
  """CNI colored weight noise: ``sqrt(|std(W) alpha_d|) n_d + F n_f`` (rank-r F).

  Args:
    shape: the weight's shape.
    rank: rank r of F.
    alpha_init: initial alpha_d.
    f_init: scale of F's initial entries.
    f_dist: ``"normal"``: F's entries ``N(0, f_init^2)`` drawn from ``key``; ``"constant"``:
      every entry ``f_init`` (the reference; see :class:`NoiseConfig`).
    key: PRNG key of F's initial entries (needed by ``"normal"``).
  """

  def __init__(self, shape: tuple[int, ...], *, rank: int = 5, alpha_init: float = 0.0625,
               f_init: float = 0.01, f_dist: str = "normal", key: jax.Array | None = None):
    size = 1
    for s in shape:
      size *= s
    self.alpha_d = NoiseScale(jnp.full(tuple(shape), alpha_init, jnp.float32))
    if f_dist == "constant":
      factor = jnp.full((size, rank), f_init, jnp.float32)
    elif f_dist == "normal":
      if key is None:
        raise ValueError("CNIWeightNoise(f_dist='normal') needs a key")
      factor = f_init * jax.random.normal(key, (size, rank), jnp.float32)
    else:
      raise ValueError(f"f_dist must be one of {_F_DISTS}, got {f_dist!r}")
    self.factor = NoiseScale(factor)

  def sample(self, w: jax.Array, key: jax.Array) -> jax.Array:
    kd, kf = jax.random.split(key)
    diag = jnp.sqrt(jnp.abs(_std(w) * self.alpha_d[...]))
    n_d = jax.random.normal(kd, w.shape, w.dtype)
    n_f = jax.random.normal(kf, (self.factor.shape[1],), w.dtype)
    return diag * n_d + (self.factor[...] @ n_f).reshape(w.shape)

  def __call__(self, w: jax.Array, key: jax.Array) -> jax.Array:
    return w + self.sample(w, key)


class PNIActivationNoise(nnx.Module):
  """PNI-A: ``a + alpha * std(a) * N(0, 1)`` on an activation of shape (B, H, W, C).

  ``std(a)`` is each example's scalar activation std (a constant for the gradient), so that an
  image's output never depends on the other images of its batch; the N(0, 1) draw of shape
  (H, W, C) is shared by the batch (one draw per forward pass, as for weight noise).
  """

  def __init__(self, act_shape: tuple[int, int, int], *, alpha_init: float = 0.25):
    self.alpha = NoiseScale(jnp.full(tuple(act_shape), alpha_init, jnp.float32))

  def __call__(self, a: jax.Array, key: jax.Array) -> jax.Array:
    std = jax.lax.stop_gradient(jnp.std(a, axis=(1, 2, 3), keepdims=True, ddof=1))
    return a + self.alpha[...][None] * std * jax.random.normal(key, a.shape[1:], a.dtype)[None]


def channels_last(v: jax.Array, ndim: int) -> jax.Array:
  """A per-channel vector ``(C,)`` shaped ``(1, ..., 1, C)`` for arrays of rank ``ndim`` (NHWC)."""
  return jnp.reshape(v, (1,) * (ndim - 1) + (-1,))


def input_noise_scale(sigma, sigma_space: str, std: tuple[float, ...]) -> jax.Array:
  """Per-channel pixel-space std of input noise ``sigma`` given in ``sigma_space`` units."""
  if sigma_space == "pixel":
    return jnp.asarray(sigma, jnp.float32) * jnp.ones((len(std),), jnp.float32)
  if sigma_space == "normalized":
    return jnp.asarray(sigma, jnp.float32) * jnp.asarray(std, jnp.float32)
  raise ValueError(f"sigma_space must be one of {_SIGMA_SPACES}, got {sigma_space!r}")


def add_input_noise(key: jax.Array, x: jax.Array, sigma, *, sigma_space: str = "pixel",
                    std: tuple[float, ...] = (1.0, 1.0, 1.0)) -> jax.Array:
  """Returns ``x + sigma * N(0, I)`` for NHWC pixel images ``x`` (no clipping).

  Args:
    key: PRNG key; one draw of ``x``'s shape.
    x: images in [0, 1] pixel units, channels last.
    sigma: noise std in ``sigma_space`` units.
    sigma_space: ``"pixel"`` or ``"normalized"`` (then ``std`` is the model's per-channel
      normalisation std, so that the noise equals ``sigma * N(0, I)`` after normalisation).
    std: per-channel normalisation std.
  """
  scale = channels_last(input_noise_scale(sigma, sigma_space, std), x.ndim)
  return x + scale * jax.random.normal(key, x.shape, x.dtype)
