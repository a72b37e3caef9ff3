"""CIFAR ResNets (20/32/44/56/110, shortcut options A and B) and Wide-ResNets with noise.

Models are Flax NNX modules taking NHWC images in [0, 1] pixel units; the per-channel input
normalisation is part of the model (``mean``/``std`` are static model constants). Every forward
pass takes an explicit ``key``: ``model(x, key=key)``. ``key=None`` (or ``noise=False``) runs the
model without any noise, bit-identical to the same model built with ``noise="none"``.

Use them through the pure boundary of :func:`split` / :func:`apply`::

  model = smoothjax.models.build_model(ModelConfig("resnet20", noise="cni_w"), key=key)
  graphdef, state = nnx.split(model)
  logits = smoothjax.models.apply(graphdef, state, x, key=jax.random.key(1))

Key layout inside a forward pass: ``fold_in(key, 0)`` draws the input noise, ``fold_in(key, i)``
(i >= 1) the noise of the i-th noisy layer (creation order), so results never depend on batch
size or device count.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from smoothjax import noise as noise_lib

__all__ = [
    "ARCHS",
    "REFERENCE_NORMALIZATION",
    "AKAMASTER_NORMALIZATION",
    "ModelConfig",
    "NoisyConv",
    "NoisyLinear",
    "CifarResNet",
    "WideResNet",
    "build_model",
    "apply",
    "apply_train",
]

# (mean, std) of the per-channel input normalisation of each checkpoint family.
REFERENCE_NORMALIZATION = ((0.491, 0.482, 0.447), (0.247, 0.243, 0.262))
AKAMASTER_NORMALIZATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

_RESNET_DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet44": 44, "resnet56": 56,
                  "resnet110": 110}
_WRN = {"wrn34_10": (34, 10), "wrn28_4": (28, 4)}
ARCHS = tuple(_RESNET_DEPTHS) + tuple(_WRN) + ("resnet50",)  # resnet50: smoothjax.resnet50


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything needed to rebuild a model; recorded in smoothjax checkpoints.

  Attributes:
    arch: one of :data:`ARCHS`.
    num_classes: number of output classes (10, 100, ...).
    shortcut: CIFAR ResNet shortcut: ``"A"`` (zero-pad, akamaster) or ``"B"`` (1x1 conv + BN,
      the reference). Ignored by Wide-ResNets (always a 1x1 conv).
    noise: a :class:`smoothjax.noise.NoiseConfig` or a ``--noise`` spec string.
    mean, std: per-channel input normalisation (pixel units).
  """

  arch: str = "resnet20"
  num_classes: int = 10
  shortcut: str = "B"
  noise: Any = noise_lib.NoiseConfig()
  mean: tuple[float, ...] = REFERENCE_NORMALIZATION[0]
  std: tuple[float, ...] = REFERENCE_NORMALIZATION[1]

  def __post_init__(self):
    if isinstance(self.noise, str):
      object.__setattr__(self, "noise", noise_lib.parse_noise(self.noise))
    elif isinstance(self.noise, dict):
      object.__setattr__(self, "noise", noise_lib.NoiseConfig.from_dict(self.noise))
    object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
    object.__setattr__(self, "std", tuple(float(s) for s in self.std))
    if self.arch not in ARCHS:
      raise ValueError(f"unknown architecture {self.arch!r}; expected one of {', '.join(ARCHS)}")
    if self.shortcut not in ("A", "B"):
      raise ValueError(f"shortcut must be 'A' or 'B', got {self.shortcut!r}")
    if self.num_classes < 2:
      raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
    if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
      raise ValueError(f"normalisation needs 3 means and 3 positive stds, got {self.mean}, "
                       f"{self.std}")

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d["noise"] = self.noise.to_dict()
    d["mean"], d["std"] = list(self.mean), list(self.std)
    return d

  @classmethod
  def from_dict(cls, d: dict) -> "ModelConfig":
    d = dict(d)
    return cls(**d)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), sort_keys=True)

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)


class _KeyCounter:
  """Hands out the fold-in index of each noisy layer at construction."""

  def __init__(self):
    self.next = 1

  def __call__(self) -> int:
    i = self.next
    self.next += 1
    return i


def _weight_noise(shape, cfg: noise_lib.NoiseConfig, kind: str | None, key: jax.Array):
  # ``key``: the layer's kernel-initialisation key; CNI's random F uses fold_in(key, 1), so that
  # the model's other parameters are the same whichever way F starts.
  if kind == "pni":
    return noise_lib.PNIWeightNoise(shape, granularity=cfg.pni_granularity,
                                    alpha_init=cfg.pni_alpha_init)
  if kind == "cni":
    return noise_lib.CNIWeightNoise(shape, rank=cfg.cni_rank, alpha_init=cfg.cni_alpha_init,
                                    f_init=cfg.cni_f_init, f_dist=cfg.cni_f_dist,
                                    key=jax.random.fold_in(key, 1))
  return None


def _conv2d_plain(x, w, stride, padding):
  return jax.lax.conv_general_dilated(x, w, (stride, stride), ((padding, padding),) * 2,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, w: jax.Array, stride: int, padding: int) -> jax.Array:
  """NHWC x HWIO 2-D convolution whose input gradient stays fast inside loop bodies.

  The result and both gradients equal those of ``lax.conv_general_dilated``. Why a custom VJP:
  JAX's transpose rule computes the input gradient as a convolution with the flipped kernel in
  ``01oi`` layout; XLA:CPU fixes that layout (one kernel transpose) in a program's entry
  computation, but not inside ``while`` / ``scan`` bodies, where it falls back to a generic
  convolution emitter about 5-10x slower (jax-ml/jax issue 12868). Materialising the flipped,
  transposed kernel (behind an optimisation barrier, so it is not folded back into the
  convolution's dimension labels) keeps every convolution on the fast path, so attacks and
  samplers written with ``lax.scan`` (``unroll=1``) run as fast as unrolled code and compile
  in constant time. Forward-mode differentiation (``jax.jvp``) is not available through it.
  """
  return _conv2d_plain(x, w, stride, padding)


def _conv2d_fwd(x, w, stride, padding):
  return _conv2d_plain(x, w, stride, padding), (x, w)


def _conv2d_bwd(stride, padding, res, g):
  x, w = res
  k = w.shape[0]
  w_t = jax.lax.optimization_barrier(jnp.flip(w, (0, 1)).swapaxes(2, 3))
  pads = []
  for d in (1, 2):
    lo = k - 1 - padding
    pads.append((lo, x.shape[d] - (g.shape[d] - 1) * stride - 1 - lo + k - 1))
  dx = jax.lax.conv_general_dilated(g, w_t, (1, 1), pads, lhs_dilation=(stride, stride),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
  _, vjp_w = jax.vjp(lambda w_: _conv2d_plain(x, w_, stride, padding), w)
  return dx.astype(x.dtype), vjp_w(g)[0]


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


class NoisyConv(nnx.Module):
  """A bias-free 2-D convolution (NHWC, HWIO kernel, PyTorch padding) with optional noise."""

  def __init__(self, in_features: int, out_features: int, kernel_size: int, *, stride: int = 1,
               padding: int | None = None, cfg: noise_lib.NoiseConfig, counter: _KeyCounter,
               out_spatial: int | None = None, rngs: nnx.Rngs):
    shape = (kernel_size, kernel_size, in_features, out_features)
    # Kaiming-normal (fan_out, as torchvision and the reference's ResNets).
    init = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    kkey = rngs.params()
    self.kernel = nnx.Param(init(kkey, shape, jnp.float32))
    self.stride = stride
    self.padding = kernel_size // 2 if padding is None else padding
    self.weight_noise = _weight_noise(shape, cfg, cfg.weight, kkey)
    if cfg.activation and out_spatial is None:
      raise ValueError("PNI-A needs the layer's output spatial size")
    self.act_noise = noise_lib.PNIActivationNoise(
        (out_spatial, out_spatial, out_features), alpha_init=cfg.pni_alpha_init
    ) if cfg.activation else None
    self.key_id = counter() if (self.weight_noise or self.act_noise) else 0

  def __call__(self, x: jax.Array, key: jax.Array | None) -> jax.Array:
    w = self.kernel[...]
    if key is not None and self.key_id:
      k = jax.random.fold_in(key, self.key_id)
      kw, ka = jax.random.split(k)
      if self.weight_noise is not None:
        w = self.weight_noise(w, kw)
    y = conv2d(x, w, self.stride, self.padding)
    if key is not None and self.act_noise is not None:
      y = self.act_noise(y, ka)
    return y


class NoisyLinear(nnx.Module):
  """A dense layer (kernel (in, out) + bias) with optional weight noise."""

  def __init__(self, in_features: int, out_features: int, *, weight_noise: str | None,
               cfg: noise_lib.NoiseConfig, counter: _KeyCounter, rngs: nnx.Rngs):
    init = jax.nn.initializers.variance_scaling(1.0 / 3, "fan_in", "uniform")  # torch default
    kkey = rngs.params()
    self.kernel = nnx.Param(init(kkey, (in_features, out_features), jnp.float32))
    bound = 1.0 / in_features ** 0.5
    self.bias = nnx.Param(jax.random.uniform(rngs.params(), (out_features,), jnp.float32,
                                             -bound, bound))
    self.weight_noise = _weight_noise((in_features, out_features), cfg, weight_noise, kkey)
    self.key_id = counter() if self.weight_noise is not None else 0

  def __call__(self, x: jax.Array, key: jax.Array | None) -> jax.Array:
    w = self.kernel[...]
    if key is not None and self.weight_noise is not None:
      w = self.weight_noise(w, jax.random.fold_in(key, self.key_id))
    return x @ w + self.bias[...][None]


def _noisy_head(cin: int, num_classes: int, cfg: noise_lib.NoiseConfig, counter: "_KeyCounter",
                rngs: nnx.Rngs) -> "NoisyLinear":
  """The linear head: CNI models keep element-wise PNI on it (as the CNI reference models do)."""
  head_noise = "pni" if (cfg.weight == "cni" and cfg.cni_head_pni) else cfg.weight
  head_cfg = dataclasses.replace(cfg, pni_granularity="element") if cfg.weight == "cni" else cfg
  return NoisyLinear(cin, num_classes, weight_noise=head_noise, cfg=head_cfg, counter=counter,
                     rngs=rngs)


def _bn(n: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
  # PyTorch BatchNorm2d defaults: eps 1e-5, momentum 0.1 (= decay 0.9).
  return nnx.BatchNorm(n, momentum=0.9, epsilon=1e-5, use_fast_variance=False, rngs=rngs)


class _Base(nnx.Module):
  """Shared forward logic: input noise, normalisation, key handling."""

  config: ModelConfig

  def _prepare(self, x, key, sigma, noise):
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"expected NHWC images with 3 channels, got shape {x.shape}")
    cfg = self.config
    if not noise:
      key = None
    elif key is None and (cfg.noise.any_model_noise or cfg.noise.input_sigma):
      raise ValueError("this model is noisy: pass key=... (or noise=False for a clean pass)")
    s = cfg.noise.input_sigma if sigma is None else sigma
    if key is not None and not (isinstance(s, (int, float)) and s == 0):
      x = noise_lib.add_input_noise(jax.random.fold_in(key, 0), x, s,
                                    sigma_space=cfg.noise.sigma_space, std=cfg.std)
    mean = noise_lib.channels_last(jnp.asarray(cfg.mean, x.dtype), x.ndim)
    std = noise_lib.channels_last(jnp.asarray(cfg.std, x.dtype), x.ndim)
    return (x - mean) / std, key


class _ResNetBlock(nnx.Module):
  """CIFAR BasicBlock: conv-BN-ReLU-conv-BN + shortcut, ReLU."""

  def __init__(self, cin, cout, stride, spatial, shortcut, cfg, counter, rngs):
    self.conv1 = NoisyConv(cin, cout, 3, stride=stride, cfg=cfg, counter=counter,
                           out_spatial=spatial, rngs=rngs)
    self.bn1 = _bn(cout, rngs)
    self.conv2 = NoisyConv(cout, cout, 3, cfg=cfg, counter=counter, out_spatial=spatial,
                           rngs=rngs)
    self.bn2 = _bn(cout, rngs)
    self.shortcut = shortcut if (stride != 1 or cin != cout) else None
    self.pad = (cout - cin) // 2
    if self.shortcut == "B":
      self.down_conv = NoisyConv(cin, cout, 1, stride=stride, padding=0, cfg=cfg,
                                 counter=counter, out_spatial=spatial, rngs=rngs)
      self.down_bn = _bn(cout, rngs)
    self.stride = stride

  def __call__(self, x, key, train):
    ura = not train
    out = nnx.relu(self.bn1(self.conv1(x, key), use_running_average=ura))
    out = self.bn2(self.conv2(out, key), use_running_average=ura)
    if self.shortcut is None:
      sc = x
    elif self.shortcut == "A":
      s = self.stride
      sc = jnp.pad(x[:, ::s, ::s, :], ((0, 0), (0, 0), (0, 0), (self.pad, self.pad)))
    else:
      sc = self.down_bn(self.down_conv(x, key), use_running_average=ura)
    return nnx.relu(out + sc)


class CifarResNet(_Base):
  """He et al.'s CIFAR ResNet (3 stages of BasicBlocks, 16/32/64 channels)."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    depth = _RESNET_DEPTHS[config.arch]
    if (depth - 2) % 6:
      raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6
    self.config = config
    cfg = config.noise
    counter = _KeyCounter()
    self.conv1 = NoisyConv(3, 16, 3, cfg=cfg, counter=counter, out_spatial=32, rngs=rngs)
    self.bn1 = _bn(16, rngs)
    blocks = []
    cin, spatial = 16, 32
    for stage, cout in enumerate((16, 32, 64)):
      for i in range(n):
        stride = 2 if (stage > 0 and i == 0) else 1
        spatial //= stride
        blocks.append(_ResNetBlock(cin, cout, stride, spatial, config.shortcut, cfg, counter,
                                   rngs))
        cin = cout
    self.blocks = nnx.List(blocks)
    self.fc = _noisy_head(64, config.num_classes, cfg, counter, rngs)

  def __call__(self, x, *, key=None, train: bool = False, sigma=None, noise: bool = True):
    x, key = self._prepare(x, key, sigma, noise)
    out = nnx.relu(self.bn1(self.conv1(x, key), use_running_average=not train))
    for block in self.blocks:
      out = block(out, key, train)
    return self.fc(out.mean(axis=(1, 2)), key)


class _WideBlock(nnx.Module):
  """Pre-activation wide block of Zagoruyko & Komodakis (as in the Madry/TRADES code)."""

  def __init__(self, cin, cout, stride, spatial, cfg, counter, rngs):
    self.bn1 = _bn(cin, rngs)
    self.conv1 = NoisyConv(cin, cout, 3, stride=stride, cfg=cfg, counter=counter,
                           out_spatial=spatial, rngs=rngs)
    self.bn2 = _bn(cout, rngs)
    self.conv2 = NoisyConv(cout, cout, 3, cfg=cfg, counter=counter, out_spatial=spatial,
                           rngs=rngs)
    self.equal = cin == cout and stride == 1
    self.short = None if self.equal else NoisyConv(
        cin, cout, 1, stride=stride, padding=0, cfg=cfg, counter=counter, out_spatial=spatial,
        rngs=rngs)

  def __call__(self, x, key, train):
    ura = not train
    a = nnx.relu(self.bn1(x, use_running_average=ura))
    out = nnx.relu(self.bn2(self.conv1(a, key), use_running_average=ura))
    out = self.conv2(out, key)
    return out + (x if self.equal else self.short(a, key))


class WideResNet(_Base):
  """Wide-ResNet-depth-k (34-10 of Madry/TRADES, 28-4 of the authors' released CNI-W model)."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    depth, k = _WRN[config.arch]
    n = (depth - 4) // 6
    self.config = config
    cfg = config.noise
    counter = _KeyCounter()
    widths = (16 * k, 32 * k, 64 * k)
    self.conv1 = NoisyConv(3, 16, 3, cfg=cfg, counter=counter, out_spatial=32, rngs=rngs)
    blocks = []
    cin, spatial = 16, 32
    for stage, cout in enumerate(widths):
      for i in range(n):
        stride = 2 if (stage > 0 and i == 0) else 1
        spatial //= stride
        blocks.append(_WideBlock(cin, cout, stride, spatial, cfg, counter, rngs))
        cin = cout
    self.blocks = nnx.List(blocks)
    self.bn = _bn(cin, rngs)
    self.fc = _noisy_head(cin, config.num_classes, cfg, counter, rngs)

  def __call__(self, x, *, key=None, train: bool = False, sigma=None, noise: bool = True):
    x, key = self._prepare(x, key, sigma, noise)
    out = self.conv1(x, key)
    for block in self.blocks:
      out = block(out, key, train)
    out = nnx.relu(self.bn(out, use_running_average=not train))
    return self.fc(out.mean(axis=(1, 2)), key)


def build_model(config: ModelConfig | str = "resnet20", *, key: jax.Array | int = 0,
                **kw) -> CifarResNet | WideResNet:
  """Builds a model.

  Args:
    config: a :class:`ModelConfig`, or an architecture name (then ``kw`` are the other
      :class:`ModelConfig` fields, e.g. ``noise="cni_w"``, ``num_classes=100``).
    key: PRNG key (or int seed) for the initial parameters.

  Example:
    >>> import jax, smoothjax
    >>> model = smoothjax.models.build_model("resnet20", noise="pni_w", key=0)
    >>> x = jax.numpy.zeros((2, 32, 32, 3))
    >>> model(x, key=jax.random.key(1)).shape
    (2, 10)
  """
  if isinstance(config, str):
    config = ModelConfig(arch=config, **kw)
  elif kw:
    config = config.replace(**kw)
  if isinstance(key, int):
    key = jax.random.key(key)
  cls = WideResNet if config.arch in _WRN else CifarResNet
  if config.arch == "resnet50":
    from smoothjax import resnet50  # pylint: disable=g-import-not-at-top (imports this module)
    cls = resnet50.ResNet50
  # Initialising eagerly compiles every initialiser once per shape (~15 s for a ResNet-20 on a
  # busy 2-core CPU); one jitted initialisation compiles once.
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(params=key))))
  return nnx.merge(graphdef, _init_state(cls, config, key))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init_state(cls, config: ModelConfig, key: jax.Array) -> nnx.State:
  return nnx.state(cls(config, rngs=nnx.Rngs(params=key)))


def _merge(graphdef: nnx.GraphDef, state) -> nnx.Module:
  """A copy of the model (the caller's state is never mutated); ``state`` may be a tuple of the
  states of ``nnx.split(model, *filters)`` (e.g. training's ``(params, rest)``)."""
  return nnx.merge(graphdef, *(state if isinstance(state, tuple) else (state,)), copy=True)


def apply(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array, *,
          key: jax.Array | None = None, sigma=None, noise: bool = True) -> jax.Array:
  """Pure evaluation-mode forward pass (BatchNorm uses running statistics). Returns logits.

  ``state``: ``nnx.split(model)``'s state, or a tuple of the states of
  ``nnx.split(model, *filters)``.
  """
  return _merge(graphdef, state)(x, key=key, sigma=sigma, noise=noise, train=False)


def apply_train(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array, *,
                key: jax.Array | None = None, sigma=None,
                noise: bool = True) -> tuple[jax.Array, nnx.State]:
  """Pure training-mode forward pass. Returns ``(logits, new_state)`` (BatchNorm stats updated)."""
  model = _merge(graphdef, state)
  logits = model(x, key=key, sigma=sigma, noise=noise, train=True)
  return logits, nnx.state(model)


def param_count(state: nnx.State, filt: Sequence[Any] | Any = nnx.Param) -> int:
  """Number of scalars in the variables of ``state`` matching ``filt``."""
  leaves = jax.tree.leaves(state.filter(filt) if hasattr(state, "filter") else state)
  return sum(int(l.size) for l in leaves)
