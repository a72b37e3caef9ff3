"""A PyTorch CIFAR ResNet (shortcut options A and B), for parity tests only.

Independent of smoothjax: it mirrors the two PyTorch code bases whose checkpoints smoothjax
imports, with their parameter names, so their state dicts load with ``strict=True``:

* ``family="reference"`` (the paper's reference implementation): option-B shortcut
  ``layerL.B.downsample.0`` (1x1 conv, stride) / ``.1`` (BN), head ``fc``;
* ``family="akamaster"``: option-A shortcut (``x[:, :, ::2, ::2]`` zero-padded with
  ``planes // 4`` channels on each side, no parameters), head ``linear``. akamaster's files carry
  a ``module.`` prefix (DataParallel): :func:`strip_module_prefix` removes it.

The normalisation (``mean``, ``std``, pixel units) is applied inside :meth:`forward`, which takes
NCHW images in [0, 1], so both libraries see the same input. Use :func:`logits_nhwc` to feed the
NHWC arrays of the JAX side.

``noise="pni"`` / ``"cni"`` gives the reference's noisy models (its layers ``NoisedConv2D`` /
``NoisedConv2DColored`` / ``NoisedLinear``, after He et al. 2019 and Zheltonozhskii et al. 2020),
with their parameter names and formulas: PNI ``W + alpha * std(W) * n`` with ``alpha`` named
``alpha`` (element-wise as the reference; also layer- and channel-wise); CNI
``W + view_as(W, sqrt(|std(W) * alphad_w| + 1e-8) * n_d + alphaf_w @ n_f)``, ``alphad_w`` of
shape ``(numel(W),)`` and ``alphaf_w`` ``(1, numel(W), r)`` over the flattened OIHW weight; the
head of a CNI model has element-wise PNI. ``std`` is unbiased (``torch.std``). The standard
normal draws come from :meth:`CifarResNetTorch.set_draws` (default ``torch.randn``), in forward
order (per block: conv1, conv2, shortcut; CNI: ``n_d`` then ``n_f``), so that a test can feed
the draws of the JAX side.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CifarResNetTorch", "strip_module_prefix", "logits_nhwc", "load_torch_model"]


def _alpha_shape(weight_shape, granularity):
  if granularity == "element":
    return tuple(weight_shape)
  if granularity == "channel":
    return (weight_shape[0],) + (1,) * (len(weight_shape) - 1)
  return (1,)


class _WeightNoise:
  """The reference's weight noise on ``self.weight`` (``noise``: None, "pni" or "cni")."""

  def _init_noise(self, noise, granularity, rank):
    self.noise = noise
    self.draw = torch.randn
    if noise == "pni":
      self.alpha = nn.Parameter(torch.full(_alpha_shape(self.weight.shape, granularity), 0.25))
    elif noise == "cni":
      size = self.weight.numel()
      self.alphad_w = nn.Parameter(torch.full((size,), 0.0625))
      self.alphaf_w = nn.Parameter(torch.full((1, size, rank), 0.01))

  def noisy_weight(self):
    w = self.weight
    if self.noise == "pni":
      return w + self.alpha * (torch.std(w) * self.draw(tuple(w.shape)))
    if self.noise == "cni":
      n_d = self.draw((w.numel(),))
      n_f = self.draw((self.alphaf_w.shape[2],))
      m = (torch.sqrt(torch.abs(torch.std(w) * self.alphad_w) + 1e-8) * n_d
           + torch.matmul(self.alphaf_w, n_f))
      return w + m.view_as(w)
    return w


class _Conv(_WeightNoise, nn.Conv2d):

  def __init__(self, *args, noise=None, granularity="element", rank=5, **kw):
    super().__init__(*args, **kw)
    self._init_noise(noise, granularity, rank)

  def forward(self, x):
    return F.conv2d(x, self.noisy_weight(), self.bias, self.stride, self.padding)


class _Linear(_WeightNoise, nn.Linear):

  def __init__(self, *args, noise=None, granularity="element", **kw):
    super().__init__(*args, **kw)
    self._init_noise(noise, granularity, 0)

  def forward(self, x):
    return F.linear(x, self.noisy_weight(), self.bias)


class _Block(nn.Module):
  """BasicBlock: conv-BN-ReLU-conv-BN + shortcut, ReLU."""

  def __init__(self, cin: int, cout: int, stride: int, shortcut: str, shortcut_name: str,
               nkw: dict):
    super().__init__()
    self.conv1 = _Conv(cin, cout, 3, stride=stride, padding=1, bias=False, **nkw)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = _Conv(cout, cout, 3, stride=1, padding=1, bias=False, **nkw)
    self.bn2 = nn.BatchNorm2d(cout)
    self.project = stride != 1 or cin != cout
    self.shortcut_kind = shortcut
    self.pad = cout // 4
    self.shortcut_name = shortcut_name
    if self.project and shortcut == "B":
      setattr(self, shortcut_name, nn.Sequential(
          _Conv(cin, cout, 1, stride=stride, bias=False, **nkw), nn.BatchNorm2d(cout)))

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    if not self.project:
      sc = x
    elif self.shortcut_kind == "A":
      sc = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0.0)
    else:
      sc = getattr(self, self.shortcut_name)(x)
    return F.relu(out + sc)


class CifarResNetTorch(nn.Module):
  """He et al.'s CIFAR ResNet-(6n+2) with the parameter names of a checkpoint family.

  Args:
    depth: 20, 32, 44, 56, 110, ...
    num_classes: head size.
    family: ``"reference"`` (head ``fc``, shortcut ``downsample``) or ``"akamaster"`` (head
      ``linear``, shortcut ``shortcut``).
    shortcut: ``"A"`` (zero padding) or ``"B"`` (1x1 conv + BN); default: B for the reference,
      A for akamaster.
    mean, std: per-channel normalisation applied to [0, 1] inputs.
    noise: ``None``, ``"pni"`` or ``"cni"``: the reference's weight noise (module docstring).
    pni_granularity: ``"element"`` (the reference), ``"layer"`` or ``"channel"``.
    rank: CNI's rank r.
  """

  def __init__(self, depth: int = 20, num_classes: int = 10, *, family: str = "reference",
               shortcut: str | None = None, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
               noise: str | None = None, pni_granularity: str = "element", rank: int = 5):
    super().__init__()
    if (depth - 2) % 6:
      raise ValueError(f"depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6
    if shortcut is None:
      shortcut = "B" if family == "reference" else "A"
    sc_name = "downsample" if family == "reference" else "shortcut"
    self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
    self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
    nkw = {"noise": noise, "granularity": pni_granularity, "rank": rank}
    self.conv1 = _Conv(3, 16, 3, stride=1, padding=1, bias=False, **nkw)
    self.bn1 = nn.BatchNorm2d(16)
    cin = 16
    for stage, cout in enumerate((16, 32, 64), start=1):
      blocks = []
      for i in range(n):
        stride = 2 if (stage > 1 and i == 0) else 1
        blocks.append(_Block(cin, cout, stride, shortcut, sc_name, nkw))
        cin = cout
      setattr(self, f"layer{stage}", nn.Sequential(*blocks))
    self.head_name = "fc" if family == "reference" else "linear"
    head = ({"noise": "pni", "granularity": "element"} if noise == "cni" else
            {"noise": noise, "granularity": pni_granularity})
    setattr(self, self.head_name, _Linear(64, num_classes, **head))

  def set_draws(self, draw):
    """``draw(shape)`` gives every standard-normal draw of the weight noise (forward order)."""
    for m in self.modules():
      if isinstance(m, _WeightNoise):
        m.draw = draw

  def forward(self, x):
    x = (x - self.mean) / self.std
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.layer3(self.layer2(self.layer1(out)))
    out = out.mean(dim=(2, 3))
    return getattr(self, self.head_name)(out)

  def load_weights(self, state_dict):
    """``load_state_dict(strict=True)`` ignoring the (non-checkpoint) normalisation buffers."""
    sd = dict(self.state_dict())
    sd.update({k: torch.as_tensor(np.asarray(v)) for k, v in state_dict.items()})
    self.load_state_dict(sd, strict=True)
    return self


def strip_module_prefix(state_dict):
  """Removes DataParallel's ``module.`` prefix from every key."""
  return {k[len("module."):] if k.startswith("module.") else k: v
          for k, v in state_dict.items()}


def load_torch_model(state_dict, *, depth, num_classes=10, family, shortcut=None, mean, std,
                     **noise):
  """A :class:`CifarResNetTorch` in eval mode holding ``state_dict``'s weights.

  ``noise``: the ``noise``, ``pni_granularity`` and ``rank`` of :class:`CifarResNetTorch`.
  """
  model = CifarResNetTorch(depth, num_classes, family=family, shortcut=shortcut, mean=mean,
                           std=std, **noise)
  # Unknown or missing keys fail here (strict=True): the parity test also checks names.
  model.load_weights(strip_module_prefix(state_dict))
  return model.eval()


@torch.no_grad()
def logits_nhwc(model: nn.Module, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
  """Logits of NHWC float images in [0, 1] (a NumPy array), as a NumPy array."""
  out = []
  for i in range(0, len(x), batch_size):
    xb = torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size].transpose(0, 3, 1, 2)))
    out.append(model(xb.float()).numpy())
  return np.concatenate(out)
