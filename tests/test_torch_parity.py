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


def _recording_normal(monkeypatch):
  """Patches ``jax.random.normal`` to record every draw (forward order of an eager pass)."""
  draws, normal = [], jax.random.normal

  def record(key, shape=(), dtype=float):
    out = normal(key, shape, dtype)
    draws.append(np.asarray(out))
    return out

  monkeypatch.setattr(jax.random, "normal", record)
  return draws


def _as_torch_draw(d):
  """A JAX draw in PyTorch's layout: HWIO -> OIHW, (in, out) -> (out, in); 1-D as it is."""
  if d.ndim == 4:
    d = d.transpose(3, 2, 0, 1)
  elif d.ndim == 2:
    d = d.T
  return torch.from_numpy(np.array(d))  # a writable copy


@pytest.mark.parametrize("noise,granularity", [("pni", "element"), ("pni", "layer"),
                                               ("pni", "channel"), ("cni", "element")])
def test_noisy_reference_import_same_logits_for_the_same_draws(noise, granularity, monkeypatch):
  """The reference's PNI ``alpha`` / CNI ``alphad_w``, ``alphaf_w`` (random values: a wrong
  transposition or row permutation changes the logits) give PyTorch's logits when both sides
  use the same standard-normal draws, permuted to each side's layout."""
  tm = _randomised_torch_model(20, 10, "reference", "B", seed=7)
  noisy = torch_reference.CifarResNetTorch(20, 10, family="reference", noise=noise,
                                        pni_granularity=granularity, rank=3)
  g = torch.Generator().manual_seed(8)
  sd = {k: v for k, v in tm.state_dict().items() if k not in ("mean", "std")}
  for name, t in noisy.state_dict().items():
    if name.endswith(".alpha"):
      sd[name] = 0.1 + 0.4 * torch.rand(t.shape, generator=g)
    elif name.endswith(".alphad_w"):
      # |.| is taken: signs allowed. Away from 0, where the reference's sqrt(|.| + 1e-8)
      # differs from sqrt(|.|) by up to 1e-4 per weight.
      sign = torch.where(torch.rand(t.shape, generator=g) < 0.5, -1.0, 1.0)
      sd[name] = sign * (0.02 + 0.05 * torch.rand(t.shape, generator=g))
    elif name.endswith(".alphaf_w"):
      sd[name] = 0.003 * torch.randn(t.shape, generator=g)
  model, info = checkpoints.model_from_torch(sd)
  cfg = model.config.noise
  assert cfg.weight == noise and info["model_config"]["noise"]["weight"] == noise
  if noise == "pni":
    assert cfg.pni_granularity == granularity
  else:
    assert (cfg.cni_rank, cfg.cni_head_pni) == (3, True)
  ref_model = torch_reference.load_torch_model(
      sd, depth=20, family="reference", mean=model.config.mean, std=model.config.std,
      noise=noise, pni_granularity=granularity, rank=3)
  x = np.random.default_rng(2).uniform(size=(2, 32, 32, 3)).astype(np.float32)
  draws = _recording_normal(monkeypatch)
  got = np.asarray(model(x, key=jax.random.key(3)))
  monkeypatch.undo()
  # conv1, 9 blocks x 2 convs, 2 shortcuts, head; CNI convs draw n_d and n_f.
  assert len(draws) == (2 * 21 + 1 if noise == "cni" else 22)
  queue = [_as_torch_draw(d) for d in draws]
  ref_model.set_draws(lambda shape: queue.pop(0).reshape(shape))
  ref = torch_reference.logits_nhwc(ref_model, x)
  assert not queue
  clean = np.asarray(model(x, noise=False))
  assert np.abs(got - clean).max() > 0.05  # the noise matters at this tolerance
  np.testing.assert_allclose(got, ref, rtol=0, atol=ATOL)


def test_noisy_reference_import_errors_stay_clear():
  tm = torch_reference.CifarResNetTorch(20, 10, family="reference", noise="cni")
  sd = {k: v for k, v in tm.state_dict().items() if k not in ("mean", "std")}
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"holds cni_w noise parameters .*noise='pni_w'"):
    checkpoints.model_from_torch(sd, noise="pni_w")
  model, _ = checkpoints.model_from_torch(sd, noise="cni_w")  # agrees with the file
  assert model.config.noise.weight == "cni"
  # The reference's activation noise (alphad_i, alphaf_i) is not a smoothjax layer.
  extra = dict(sd, **{"layer1.0.conv1.alphad_i": torch.ones(16 * 32 * 32)})
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"unexpected parameters.*layer1.0.conv1.alphad_i"):
    checkpoints.model_from_torch(extra)
  missing = {k: v for k, v in sd.items() if k != "layer2.0.downsample.0.alphaf_w"}
  with pytest.raises(checkpoints.CheckpointError,
                     match=r"'layer2.0.downsample.0.alphaf_w' is missing"):
    checkpoints.model_from_torch(missing)
  pni = torch_reference.CifarResNetTorch(20, 10, family="reference", noise="pni").state_dict()
  mixed = dict(sd, **{"layer1.0.conv1.alpha": pni["layer1.0.conv1.alpha"]})
  with pytest.raises(checkpoints.CheckpointError, match="mixes PNI .* and CNI"):
    checkpoints.model_from_torch(mixed)
