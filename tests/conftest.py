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


@pytest.fixture
def lossless_npz():
  return shared_path("data/cifar10_lossless_3k.npz")


@pytest.fixture
def siam_resnet20():
  return shared_path("weights/siam/resnet20_regular_model_best.pth.tar")


@pytest.fixture
def akamaster_dir():
  return shared_path("weights/akamaster")
