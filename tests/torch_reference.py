"""The PyTorch reference models of the tests and the benchmarks (one copy of each; needs torch).

Independent of smoothjax: they mirror the PyTorch code bases whose checkpoints smoothjax imports,
with their parameter names, so their state dicts load with ``strict=True``.

* :class:`CifarResNetTorch`: He et al.'s CIFAR ResNet-(6n+2) of a checkpoint family:
  ``family="reference"`` (the paper's reference implementation): option-B shortcut
  ``layerL.B.downsample.0`` (1x1 conv, stride) / ``.1`` (BN), head ``fc``;
  ``family="akamaster"``: option-A shortcut (``x[:, :, ::2, ::2]`` zero-padded with
  ``planes // 4`` channels on each side, no parameters), head ``linear``. akamaster's files carry
  a ``module.`` prefix (DataParallel): :func:`strip_module_prefix` removes it. The normalisation
  (``mean``, ``std``, pixel units) is applied inside ``forward``, which takes NCHW images in
  [0, 1], so both libraries see the same input; :func:`logits_nhwc` feeds the NHWC arrays of the
  JAX side.
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
* :class:`CifarResNet` (bearpaw's CIFAR ResNet: ``AvgPool2d(8)``, ``fc``) and :class:`ResNet50`
  (torchvision's key names; torchvision itself is not installable here): Cohen et al.'s /
  SmoothAdv's networks, with :class:`NormalizeLayer` (Cohen: ``(x - mean) / std``) and
  :class:`InputCenterLayer` (SmoothAdv: ``x - mean``) as first layers, :func:`cohen_model` and
  :func:`save_cohen_checkpoint` (``{'arch', 'state_dict', 'epoch', 'optimizer'}`` of
  ``Sequential(first_layer, model)``, with DataParallel's ``module.`` for ImageNet models).
* :func:`cni_resnet20`: a CNI-W ResNet-20 written like the reference implementation (fresh
  weight noise on every forward pass, one draw shared by the batch; element-wise PNI on the
  head), for the throughput benchmarks.

Used by the tests (``import torch_reference``) and the benchmarks
(``from tests import torch_reference``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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


# --------------------------------------------------------------------------------------------
# Cohen et al.'s and SmoothAdv's networks
# --------------------------------------------------------------------------------------------

CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class NormalizeLayer(nn.Module):
  """Cohen et al.'s first layer: standardise each channel (no parameters, no buffers)."""

  def __init__(self, means, sds):
    super().__init__()
    self.means = torch.tensor(means).view(1, 3, 1, 1)
    self.sds = torch.tensor(sds).view(1, 3, 1, 1)

  def forward(self, x):
    return (x - self.means) / self.sds


class InputCenterLayer(nn.Module):
  """SmoothAdv's first layer: subtract the channel means only."""

  def __init__(self, means):
    super().__init__()
    self.means = torch.tensor(means).view(1, 3, 1, 1)

  def forward(self, x):
    return x - self.means


class BasicBlock(nn.Module):
  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    res = x if self.downsample is None else self.downsample(x)
    return F.relu(out + res)


class CifarResNet(nn.Module):
  """bearpaw's CIFAR ResNet with BasicBlocks (depth 6n+2)."""

  def __init__(self, depth=110, num_classes=10):
    super().__init__()
    assert (depth - 2) % 6 == 0
    n = (depth - 2) // 6
    self.inplanes = 16
    self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(16)
    self.layer1 = self._make_layer(16, n)
    self.layer2 = self._make_layer(32, n, 2)
    self.layer3 = self._make_layer(64, n, 2)
    self.avgpool = nn.AvgPool2d(8)
    self.fc = nn.Linear(64, num_classes)

  def _make_layer(self, planes, blocks, stride=1):
    down = None
    if stride != 1 or self.inplanes != planes:
      down = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                           nn.BatchNorm2d(planes))
    layers = [BasicBlock(self.inplanes, planes, stride, down)]
    self.inplanes = planes
    layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = self.layer3(self.layer2(self.layer1(x)))
    return self.fc(self.avgpool(x).flatten(1))


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    res = x if self.downsample is None else self.downsample(x)
    return self.relu(out + res)


class ResNet50(nn.Module):
  """torchvision's ``resnet50()`` (same module names, so the same state-dict keys)."""

  def __init__(self, num_classes=1000):
    super().__init__()
    self.inplanes = 64
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    self.layer1 = self._make_layer(64, 3)
    self.layer2 = self._make_layer(128, 4, 2)
    self.layer3 = self._make_layer(256, 6, 2)
    self.layer4 = self._make_layer(512, 3, 2)
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(2048, num_classes)

  def _make_layer(self, planes, blocks, stride=1):
    down = None
    if stride != 1 or self.inplanes != planes * 4:
      down = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
                           nn.BatchNorm2d(planes * 4))
    layers = [Bottleneck(self.inplanes, planes, stride, down)]
    self.inplanes = planes * 4
    layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(torch.flatten(self.avgpool(x), 1))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
  """Gives every BatchNorm non-trivial affine parameters and running statistics."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):
        c = m.num_features
        m.weight.copy_(0.5 + torch.rand(c, generator=g))
        m.bias.copy_(0.2 * torch.randn(c, generator=g))
        m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
        m.running_var.copy_(0.5 + torch.rand(c, generator=g))
  return model


def cohen_model(arch: str, family: str = "cohen", *, depth: int | None = None,
                num_classes: int | None = None, seed: int = 0) -> nn.Sequential:
  """``Sequential(first_layer, model)`` as either code base builds it (eval mode)."""
  torch.manual_seed(seed)
  if arch == "resnet50":
    net = nn.DataParallel(ResNet50(num_classes or 1000))  # no GPU: a plain wrapper
    stats = IMAGENET_STATS
  else:
    net = CifarResNet(depth or int(arch.rsplit("resnet", 1)[1]), num_classes or 10)
    stats = CIFAR10_STATS
  randomize_bn(net, seed)
  first = NormalizeLayer(*stats) if family == "cohen" else InputCenterLayer(stats[0])
  return nn.Sequential(first, net).eval()


def save_cohen_checkpoint(path, model: nn.Sequential, arch: str, epoch: int = 90) -> None:
  """Writes ``model`` as both code bases' ``train.py`` does."""
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
  torch.save({"epoch": epoch, "arch": arch, "state_dict": model.state_dict(),
              "optimizer": opt.state_dict()}, path)


# --------------------------------------------------------------------------------------------
# CNI-W ResNet-20 (the benchmarks' PyTorch side)
# --------------------------------------------------------------------------------------------


class CNIConv(nn.Conv2d):
  """Conv2d with CNI-W noise drawn on the weights on every forward (the reference's layer)."""

  def __init__(self, cin, cout, k, stride=1, padding=0, rank=5, alpha=0.0625, f=0.01):
    super().__init__(cin, cout, k, stride=stride, padding=padding, bias=False)
    self.alpha_d = nn.Parameter(torch.full_like(self.weight, alpha))
    self.factor = nn.Parameter(torch.full((self.weight.numel(), rank), f))
    self.rank = rank

  def forward(self, x):
    w = self.weight
    noise = (torch.sqrt(torch.abs(w.std() * self.alpha_d)) * torch.randn_like(w)
             + (self.factor @ torch.randn(self.rank, device=w.device)).view_as(w))
    return F.conv2d(x, w + noise, None, self.stride, self.padding)


class PNILinear(nn.Linear):
  """Linear layer with element-wise PNI-W weight noise of scale ``alpha * std(w)``."""

  def __init__(self, cin, cout, alpha=0.25):
    super().__init__(cin, cout)
    self.alpha = nn.Parameter(torch.full_like(self.weight, alpha))

  def forward(self, x):
    w = self.weight
    return F.linear(x, w + self.alpha * w.std().detach() * torch.randn_like(w), self.bias)


class _CNIBlock(nn.Module):

  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv1 = CNIConv(cin, cout, 3, stride, 1)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = CNIConv(cout, cout, 3, 1, 1)
    self.bn2 = nn.BatchNorm2d(cout)
    self.down = None
    if stride != 1 or cin != cout:
      self.down = nn.Sequential(CNIConv(cin, cout, 1, stride, 0), nn.BatchNorm2d(cout))

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return F.relu(out + (x if self.down is None else self.down(x)))


class CNIResNet20(nn.Module):
  """CNI-W ResNet-20 (option-B shortcuts, PNI-W head), normalising [0, 1] NCHW inputs."""

  def __init__(self, mean, std, num_classes=10):
    super().__init__()
    self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
    self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
    self.conv1 = CNIConv(3, 16, 3, 1, 1)
    self.bn1 = nn.BatchNorm2d(16)
    blocks, cin = [], 16
    for stage, cout in enumerate((16, 32, 64)):
      for i in range(3):
        blocks.append(_CNIBlock(cin, cout, 2 if stage and not i else 1))
        cin = cout
    self.blocks = nn.Sequential(*blocks)
    self.fc = PNILinear(64, num_classes)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1((x - self.mean) / self.std)))
    return self.fc(self.blocks(out).mean((2, 3)))


def cni_resnet20(mean, std, device="cpu") -> CNIResNet20:
  """A :class:`CNIResNet20` in eval mode on ``device``, without gradients on its parameters."""
  model = CNIResNet20(mean, std).to(device).eval()
  for p in model.parameters():
    p.requires_grad_(False)
  return model
