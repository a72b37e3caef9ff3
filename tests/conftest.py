"""Shared test fixtures: the ../shared material (skipped cleanly when absent), strict JAX."""

import os
import pathlib

import pytest

# Tests run on the CPU with 8 virtual devices, so multi-device sharding is exercised everywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (imported after XLA_FLAGS is set)

# Strict NumPy semantics, as equinox tests: implicit rank promotion (``(B, H, W, C) + (C,)``)
# raises, so every broadcast in the library is written out.
jax.config.update("jax_numpy_rank_promotion", "raise")


REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("SMOOTHJAX_SHARED", REPO.parent / "shared"))


def shared_path(rel: str) -> pathlib.Path:
  """Path of a file under ../shared, or skip the test with the reason."""
  p = SHARED / rel
  if not p.exists():
    pytest.skip(f"needs {p} (the project's shared/ material beside the checkout); absent here")
  return p


def _closed_local_url(filename: str) -> str:
  import socket  # pylint: disable=import-outside-toplevel
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  return f"http://127.0.0.1:{port}/{filename}"  # nothing listens there: refused at once


@pytest.fixture(autouse=True)
def _no_cifar_download(request, monkeypatch):
  """Safety net: no test downloads CIFAR (the official URLs point at a closed local port).

  Tests that only read the official URLs are marked ``official_cifar_urls``.
  """
  if request.node.get_closest_marker("official_cifar_urls") is not None:
    return
  import dataclasses  # pylint: disable=import-outside-toplevel
  from smoothjax.data import _cifar_download  # pylint: disable=import-outside-toplevel
  for name, arc in list(_cifar_download.ARCHIVES.items()):
    monkeypatch.setitem(_cifar_download.ARCHIVES, name,
                        dataclasses.replace(arc, url=_closed_local_url(arc.filename)))


@pytest.fixture
def lossless_npz():
  return shared_path("data/cifar10_lossless_3k.npz")


@pytest.fixture
def siam_resnet20():
  return shared_path("weights/siam/resnet20_regular_model_best.pth.tar")


@pytest.fixture
def siam_twins(siam_resnet20, lossless_npz):
  """The SIAM reference ResNet-20 in smoothjax and in PyTorch, and 500 lossless test images.

  ``model``, ``info`` (``checkpoints.model_from_torch``), ``torch_model`` (the same state dict in
  tests/torch_reference.py's PyTorch ResNet, eval mode, no gradients on its parameters), ``x``
  (float32 NHWC in [0, 1]) and ``y``: the first 500 images of the lossless CIFAR-10 test set.
  """
  import types  # pylint: disable=import-outside-toplevel

  import numpy as np  # pylint: disable=import-outside-toplevel
  torch = pytest.importorskip("torch")
  import torch_reference  # pylint: disable=import-outside-toplevel

  from smoothjax import checkpoints  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(2)
  data = np.load(lossless_npz)
  model, info = checkpoints.model_from_torch(siam_resnet20)
  tm = torch_reference.load_torch_model(
      checkpoints.load_torch_state_dict(siam_resnet20), depth=20, family=info["family"],
      mean=info["normalization"]["mean"], std=info["normalization"]["std"])
  for p in tm.parameters():
    p.requires_grad_(False)
  return types.SimpleNamespace(model=model, info=info, torch_model=tm,
                               x=data["x_test"][:500].astype(np.float32) / 255,
                               y=data["y_test"][:500].astype(np.int64))


@pytest.fixture
def akamaster_dir():
  return shared_path("weights/akamaster")
