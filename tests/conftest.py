"""Shared test fixtures: the ../shared material (skipped cleanly when absent), strict JAX."""

import os
import pathlib

import pytest

# Tests run on the CPU with 8 virtual devices, so multi-device sharding is exercised everywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402,F401  (imported after XLA_FLAGS is set)


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
def akamaster_dir():
  return shared_path("weights/akamaster")
