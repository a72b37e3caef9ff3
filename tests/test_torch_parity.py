"""PyTorch checkpoints imported into smoothjax: accuracy on real images and logits parity.

The PyTorch side is tests/torch_reference.py (an independent PyTorch CIFAR ResNet with the parameter
names of each family), loaded with ``strict=True`` from the same state dict.
"""

import functools

import jax
import numpy as np
import pytest
from flax import nnx

from smoothjax import checkpoints
from smoothjax import models
from smoothjax import noise as noise_lib

torch = pytest.importorskip("torch")
import torch_reference  # noqa: E402  (needs torch)

AKAMASTER = {
    "resnet20": "resnet20-12fca82f.th",
    "resnet32": "resnet32-d509ac18.th",
    "resnet44": "resnet44-014dd654.th",
    "resnet56": "resnet56-4bfd9763.th",
}
PARITY_IMAGES = 200  # logits compared on the first images; accuracy uses all 1000
ATOL = 1e-4


@functools.lru_cache(maxsize=None)
def _jax_forward(graphdef):
  return jax.jit(functools.partial(models.apply, graphdef))


def _logits(model, x, batch_size=500):
  graphdef, state = nnx.split(model)
  fwd = _jax_forward(graphdef)
  return np.concatenate([np.asarray(fwd(state, x[i:i + batch_size]))
                         for i in range(0, len(x), batch_size)])


def _torch_logits(state_dict, info, x):
  torch.set_num_threads(2)
  tm = torch_reference.load_torch_model(
      state_dict, depth=int(info["arch"][len("resnet"):]), num_classes=info["num_classes"],
      family=info["family"], shortcut=info["shortcut"], mean=info["normalization"]["mean"],
      std=info["normalization"]["std"])
  return torch_reference.logits_nhwc(tm, x)


def _check_checkpoint(path, npz, *, family, arch):
  data = np.load(npz)
  x = data["x_test"].astype(np.float32) / 255.0
  y = data["y_test"]
  assert x.shape == (1000, 32, 32, 3)
  model, info = checkpoints.load_model(path)
  assert (info["family"], info["arch"]) == (family, arch)
  assert info["model_config"]["noise"]["weight"] is None
  want_norm = checkpoints.FAMILIES[family]
  assert (tuple(model.config.mean), tuple(model.config.std)) == want_norm
  logits = _logits(model, x)
  acc = float((logits.argmax(1) == y).mean())
  print(f"{path.name}: {family} {arch} top-1 on the 1000 lossless test images = {acc:.3f}")
  assert acc >= 0.90, acc

  ref = _torch_logits(checkpoints.load_torch_state_dict(path), info, x[:PARITY_IMAGES])
  np.testing.assert_allclose(logits[:PARITY_IMAGES], ref, rtol=0, atol=ATOL)
  np.testing.assert_array_equal(logits[:PARITY_IMAGES].argmax(1), ref.argmax(1))
  return acc


def test_siam_reference_resnet20(siam_resnet20, lossless_npz):
  _check_checkpoint(siam_resnet20, lossless_npz, family="reference", arch="resnet20")


@pytest.mark.parametrize("arch", [
    "resnet20",
    pytest.param("resnet32", marks=pytest.mark.slow),
    pytest.param("resnet44", marks=pytest.mark.slow),
    pytest.param("resnet56", marks=pytest.mark.slow),
])
def test_akamaster(arch, akamaster_dir, lossless_npz):
  _check_checkpoint(akamaster_dir / AKAMASTER[arch], lossless_npz, family="akamaster", arch=arch)


def _randomised_torch_model(depth, num_classes, family, shortcut, seed):
  """A PyTorch model with random weights *and* random BatchNorm statistics / affine params."""
  g = torch.Generator().manual_seed(seed)
  tm = torch_reference.CifarResNetTorch(depth, num_classes, family=family, shortcut=shortcut)
  with torch.no_grad():
    for name, t in tm.state_dict().items():
      if name in ("mean", "std") or name.endswith("num_batches_tracked"):
        continue
      if name.endswith("running_var"):
        t.copy_(0.5 + torch.rand(t.shape, generator=g))
      elif name.endswith(("running_mean", "bias")) or (
          name.endswith("weight") and t.ndim == 1):
        t.copy_(0.3 * torch.randn(t.shape, generator=g) + (1.0 if name.endswith("weight") else 0))
  return tm


@pytest.mark.parametrize("family,shortcut", [("reference", "B"), ("akamaster", "A"),
                                             ("akamaster", "B")])
def test_random_weights_parity(family, shortcut):
  """Layout conversion against PyTorch on random weights (no shared files needed)."""
  num_classes = 7
  tm = _randomised_torch_model(20, num_classes, family, shortcut, seed=3)
  sd = {k: v for k, v in tm.state_dict().items() if k not in ("mean", "std")}
  if family == "akamaster":
    sd = {"module." + k: v for k, v in sd.items()}
  model, info = checkpoints.model_from_torch(sd)
  assert (info["family"], info["shortcut"], info["arch"], info["num_classes"]) == (
      family, shortcut, "resnet20", num_classes)
  mean, std = checkpoints.FAMILIES[family]
  tm_norm = torch_reference.load_torch_model(sd, depth=20, num_classes=num_classes, family=family,
                                          shortcut=shortcut, mean=mean, std=std)
  x = np.random.default_rng(0).uniform(size=(8, 32, 32, 3)).astype(np.float32)
  ref = torch_reference.logits_nhwc(tm_norm, x)
  got = np.asarray(model(x))
  assert np.abs(ref).max() > 0.1  # a non-degenerate network
  np.testing.assert_allclose(got, ref, rtol=0, atol=ATOL)


def test_noisy_import_keeps_noise_init_and_clean_parity():
  """Importing into a PNI-W model: weights from the file, noise scales at their init value."""
  tm = _randomised_torch_model(20, 10, "reference", "B", seed=5)
  sd = {k: v for k, v in tm.state_dict().items() if k not in ("mean", "std")}
  model, info = checkpoints.model_from_torch(sd, noise="pni_w",
                                             normalization="0.5,0.5,0.5,0.25,0.25,0.25")
  assert info["normalization"] == {"mean": [0.5] * 3, "std": [0.25] * 3, "source": "override"}
  alphas = jax.tree.leaves(nnx.state(model, noise_lib.NoiseScale))
  assert alphas and all(np.all(np.asarray(a) == 0.25) for a in alphas)
  ref_model = torch_reference.load_torch_model(sd, depth=20, family="reference",
                                            mean=(0.5,) * 3, std=(0.25,) * 3)
  x = np.random.default_rng(1).uniform(size=(4, 32, 32, 3)).astype(np.float32)
  ref = torch_reference.logits_nhwc(ref_model, x)
  np.testing.assert_allclose(np.asarray(model(x, noise=False)), ref, rtol=0, atol=ATOL)
