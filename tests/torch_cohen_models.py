"""PyTorch models with the parameter names of Cohen et al.'s / SmoothAdv's checkpoints.

* :class:`CifarResNet`: bearpaw's CIFAR ResNet (BasicBlocks, depth 6n+2, ``downsample.0/1``
  projection shortcuts, ``AvgPool2d(8)``, ``fc``) as used by both code bases;
* :class:`ResNet50`: torchvision's ResNet-50 key names and structure (torchvision itself is not
  installable here);
* :class:`NormalizeLayer` (Cohen: ``(x - mean) / std``) and :class:`InputCenterLayer`
  (SmoothAdv: ``x - mean``), which hold no parameters;
* :func:`save_cohen_checkpoint`: ``{'arch', 'state_dict', 'epoch', 'optimizer'}`` of
  ``Sequential(first_layer, model)`` (with DataParallel's ``module.`` for ImageNet models).

Used by the tests and by ``benchmarks/bench_certify.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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
