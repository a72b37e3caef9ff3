"""ImageNet ResNet-50 (torchvision's layout, v1.5 bottlenecks) with smoothjax's noise options.

The model of Cohen et al.'s and Salman et al.'s (SmoothAdv) ImageNet experiments: He et al.'s
ResNet-50 as torchvision builds it (7x7/2 stem, 3x3/2 max pool, bottleneck stages of 3, 4, 6, 3
blocks with widths 64..512 and expansion 4, the stride on the 3x3 convolution, 1x1 conv + BN
projection shortcuts, global average pool, ``fc`` head). Like the CIFAR models of
:mod:`smoothjax.models` it takes NHWC images in [0, 1] with the per-channel normalisation part of
the model, every forward pass takes an explicit ``key`` and the noise options are the same (input
noise, PNI-W / CNI-W weight noise, PNI-A activation noise). The key layout is that of
:mod:`smoothjax.models`: ``fold_in(key, 0)`` draws the input noise and ``fold_in(key, i)`` the
noise of the i-th noisy layer in creation order.

The network accepts any input size of at least 32 pixels (the pool is global); PNI-A activation
noise has one learnable scale per activation and is therefore built for
:data:`IMAGE_SIZE` (224) inputs.

Example:
  >>> from smoothjax import models
  >>> model = models.build_model("resnet50", num_classes=1000,
  ...                            mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))

References:
  He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
from flax import nnx

from smoothjax import models as models_lib
from smoothjax.models import NoisyConv, _Base, _bn, _KeyCounter, _noisy_head

__all__ = ["IMAGE_SIZE", "STAGES", "ResNet50", "torch_layout"]

IMAGE_SIZE = 224
# (blocks, bottleneck width) of the four stages.
STAGES = ((3, 64), (4, 128), (6, 256), (3, 512))
EXPANSION = 4


class _Bottleneck(nnx.Module):
  """1x1 - 3x3 (stride) - 1x1 bottleneck, BN after each conv, projection shortcut if needed."""

  def __init__(self, cin, width, stride, spatial_in, cfg, counter, rngs):
    cout = width * EXPANSION
    spatial = spatial_in // stride
    self.conv1 = NoisyConv(cin, width, 1, padding=0, cfg=cfg, counter=counter,
                           out_spatial=spatial_in, rngs=rngs)
    self.bn1 = _bn(width, rngs)
    self.conv2 = NoisyConv(width, width, 3, stride=stride, cfg=cfg, counter=counter,
                           out_spatial=spatial, rngs=rngs)
    self.bn2 = _bn(width, rngs)
    self.conv3 = NoisyConv(width, cout, 1, padding=0, cfg=cfg, counter=counter,
                           out_spatial=spatial, rngs=rngs)
    # torchvision's zero_init_residual defaults to False: bn3 starts at scale 1 like the others.
    self.bn3 = _bn(cout, rngs)
    self.project = stride != 1 or cin != cout
    if self.project:
      self.down_conv = NoisyConv(cin, cout, 1, stride=stride, padding=0, cfg=cfg,
                                 counter=counter, out_spatial=spatial, rngs=rngs)
      self.down_bn = _bn(cout, rngs)

  def __call__(self, x, key, train):
    ura = not train
    out = nnx.relu(self.bn1(self.conv1(x, key), use_running_average=ura))
    out = nnx.relu(self.bn2(self.conv2(out, key), use_running_average=ura))
    out = self.bn3(self.conv3(out, key), use_running_average=ura)
    sc = self.down_bn(self.down_conv(x, key), use_running_average=ura) if self.project else x
    return nnx.relu(out + sc)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  # PyTorch MaxPool2d(3, stride=2, padding=1): padded positions never win (-inf).
  return jax.lax.reduce_window(x, jnp.array(-jnp.inf, x.dtype), jax.lax.max, (1, 3, 3, 1),
                               (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))


class ResNet50(_Base):
  """torchvision's ResNet-50 as a smoothjax model (``ModelConfig(arch="resnet50")``)."""

  def __init__(self, config: models_lib.ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    cfg = config.noise
    counter = _KeyCounter()
    spatial = IMAGE_SIZE // 2
    self.conv1 = NoisyConv(3, 64, 7, stride=2, padding=3, cfg=cfg, counter=counter,
                           out_spatial=spatial, rngs=rngs)
    self.bn1 = _bn(64, rngs)
    spatial //= 2  # max pool
    blocks = []
    cin = 64
    for stage, (n, width) in enumerate(STAGES):
      for i in range(n):
        stride = 2 if (stage > 0 and i == 0) else 1
        blocks.append(_Bottleneck(cin, width, stride, spatial, cfg, counter, rngs))
        spatial //= stride
        cin = width * EXPANSION
    self.blocks = nnx.List(blocks)
    self.fc = _noisy_head(cin, config.num_classes, cfg, counter, rngs)

  def __call__(self, x, *, key=None, train: bool = False, sigma=None, noise: bool = True):
    x, key = self._prepare(x, key, sigma, noise)
    out = nnx.relu(self.bn1(self.conv1(x, key), use_running_average=not train))
    out = _max_pool_3x3_s2(out)
    for block in self.blocks:
      out = block(out, key, train)
    return self.fc(out.mean(axis=(1, 2)), key)


_BN_FIELDS = (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"),
              ("running_var", "var"))


def torch_layout() -> list[tuple[str, tuple, str]]:
  """``[(torchvision name, smoothjax path, kind)]`` of every ResNet-50 tensor (no counters).

  ``kind`` is ``"conv"`` (OIHW <-> HWIO), ``"linear"`` ((out, in) <-> (in, out)) or ``"copy"``.
  """
  out = [("conv1.weight", ("conv1", "kernel"), "conv")]
  out += [(f"bn1.{t}", ("bn1", f), "copy") for t, f in _BN_FIELDS]
  idx = 0
  for stage, (n, _) in enumerate(STAGES):
    for b in range(n):
      pre = f"layer{stage + 1}.{b}"
      for c in ("1", "2", "3"):
        out.append((f"{pre}.conv{c}.weight", ("blocks", idx, f"conv{c}", "kernel"), "conv"))
        out += [(f"{pre}.bn{c}.{t}", ("blocks", idx, f"bn{c}", f), "copy")
                for t, f in _BN_FIELDS]
      if b == 0:
        out.append((f"{pre}.downsample.0.weight", ("blocks", idx, "down_conv", "kernel"),
                    "conv"))
        out += [(f"{pre}.downsample.1.{t}", ("blocks", idx, "down_bn", f), "copy")
                for t, f in _BN_FIELDS]
      idx += 1
  out.append(("fc.weight", ("fc", "kernel"), "linear"))
  out.append(("fc.bias", ("fc", "bias"), "copy"))
  return out
