"""Import of Cohen et al.'s / SmoothAdv's checkpoints: layout detection and logit parity."""

import jax
import numpy as np
import pytest
import torch
import torch_reference as tcm

from smoothjax import certify as certify_lib
from smoothjax import checkpoints
from smoothjax.checkpoints import _cohen as cohen


def _logits_torch(model, x_nhwc):
  with torch.no_grad():
    return model(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()


def _logits_jax(model, x_nhwc):
  return np.asarray(model(x_nhwc, noise=False))


def _images(n, size, seed=0):
  return np.random.RandomState(seed).rand(n, size, size, 3).astype(np.float32)


@pytest.fixture(scope="module")
def cifar20_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("cohen") / "checkpoint.pth.tar"
  tmodel = tcm.cohen_model("cifar_resnet20", "cohen", seed=1)
  tcm.save_cohen_checkpoint(path, tmodel, "cifar_resnet20")
  return path, tmodel


def test_cifar_resnet20_cohen_parity(cifar20_file):
  path, tmodel = cifar20_file
  assert cohen.is_cohen_checkpoint(path)
  model, info = cohen.model_from_cohen(path)
  assert info["arch"] == "resnet20" and info["torch_arch"] == "cifar_resnet20"
  assert info["dataset"] == "cifar10" and info["torch_meta"]["epoch"] == 90
  assert info["normalization"]["source"].startswith("cohen")
  np.testing.assert_allclose(info["normalization"]["std"], tcm.CIFAR10_STATS[1])
  x = _images(4, 32)
  diff = np.abs(_logits_jax(model, x) - _logits_torch(tmodel, x)).max()
  assert diff <= 1e-4, diff


def test_smoothadv_family_parity(tmp_path):
  tmodel = tcm.cohen_model("cifar_resnet20", "smoothadv", seed=2)
  path = tmp_path / "smoothadv.pth.tar"
  tcm.save_cohen_checkpoint(path, tmodel, "cifar_resnet20")
  model, info = cohen.model_from_cohen(path, normalization="smoothadv")
  assert info["normalization"]["std"] == [1.0, 1.0, 1.0]
  assert info["normalization"]["source"].startswith("smoothadv")
  x = _images(3, 32, seed=1)
  ref = _logits_torch(tmodel, x)
  assert np.abs(_logits_jax(model, x) - ref).max() <= 1e-4
  # The wrong family is a different model: the choice matters, hence it is stated.
  wrong, _ = cohen.model_from_cohen(path, normalization="cohen")
  assert np.abs(_logits_jax(wrong, x) - ref).max() > 1e-2


@pytest.mark.slow
def test_cifar_resnet110_parity(tmp_path):
  tmodel = tcm.cohen_model("cifar_resnet110", "cohen", seed=3)
  path = tmp_path / "r110.pth.tar"
  tcm.save_cohen_checkpoint(path, tmodel, "cifar_resnet110")
  model, info = cohen.model_from_cohen(path)
  assert info["arch"] == "resnet110"
  x = _images(2, 32, seed=2)
  assert np.abs(_logits_jax(model, x) - _logits_torch(tmodel, x)).max() <= 1e-4


def test_resnet50_parity(tmp_path):
  tmodel = tcm.cohen_model("resnet50", "cohen", num_classes=1000, seed=4)
  path = tmp_path / "r50.pth.tar"
  tcm.save_cohen_checkpoint(path, tmodel, "resnet50")
  sd_keys = list(tmodel.state_dict())
  assert sd_keys[0] == "1.module.conv1.weight"  # Sequential + DataParallel prefixes
  model, info = cohen.model_from_cohen(path)
  assert info["arch"] == "resnet50" and info["dataset"] == "imagenet"
  assert info["num_classes"] == 1000
  np.testing.assert_allclose(info["normalization"]["mean"], tcm.IMAGENET_STATS[0])
  x = _images(2, 64, seed=3)  # the pool is global: 64 px exercises every layer, quickly
  ref = _logits_torch(tmodel, x)
  rel = np.abs(_logits_jax(model, x) - ref).max() / np.abs(ref).max()
  assert rel <= 1e-4, rel


def test_layout_detection_and_errors(cifar20_file, tmp_path):
  path, tmodel = cifar20_file
  sd = tmodel.state_dict()
  assert cohen.detect_layout(sd)["prefix"] == "1."
  wrapped = {"module." + k: v for k, v in sd.items()}
  assert cohen.detect_layout(wrapped)["prefix"] == "module.1."
  inner = {k[2:]: v for k, v in sd.items()}  # a plain reference-layout state dict
  assert not cohen.is_cohen_checkpoint(inner)
  with pytest.raises(checkpoints.CheckpointError, match="arch"):
    cohen.detect_layout(sd, "resnet50")
  with pytest.raises(checkpoints.CheckpointError, match="resnet110"):
    cohen.model_from_cohen(path, arch="resnet110")
  with pytest.raises(checkpoints.CheckpointError, match="smoothadv"):
    cohen.model_from_cohen(path, normalization="bogus")
  mean, std, _ = cohen.cohen_normalization("0.5,0.5,0.5,0.25,0.25,0.25", "cifar10")
  assert mean == (0.5,) * 3 and std == (0.25,) * 3


def test_unsafe_file_refused(tmp_path):
  class Evil:
    def __reduce__(self):
      return (print, ("pwned",))
  path = tmp_path / "evil.pth.tar"
  torch.save({"arch": "cifar_resnet20", "state_dict": {}, "x": Evil()}, path)
  with pytest.raises(checkpoints.CheckpointError, match="refusing"):
    cohen.load_cohen_file(path)
  assert not cohen.is_cohen_checkpoint(path)


def test_certify_imported_model(cifar20_file):
  """The library path of ``python -m evaluate --certify`` on an imported Cohen checkpoint."""
  path, tmodel = cifar20_file
  model, _ = cohen.model_from_cohen(path)
  x = _images(2, 32, seed=5)
  res = certify_lib.certify(0, model, x, sigma=0.05, n0=8, num_samples=64, alpha=0.001,
                            batch_size=64)
  assert res.counts.sum(-1).tolist() == [64, 64] and res.counts0.sum(-1).tolist() == [8, 8]
  clean = _logits_torch(tmodel, x).argmax(-1)
  for i in range(2):  # certified classes are the smoothed classes: here the majority votes
    if res.predict[i] != certify_lib.ABSTAIN:
      assert res.predict[i] == np.argmax(res.counts0[i])
      assert res.radius[i] > 0
  assert res.counts.argmax(-1).shape == clean.shape


def test_load_model_reads_cohen_files(cifar20_file):
  path, _ = cifar20_file
  _, info = checkpoints.load_model(path, normalization="auto")
  assert info["arch"] == "resnet20" and info["family"] == "cohen-format"
  assert info["normalization"]["source"].startswith("cohen")
  _, info = checkpoints.load_model(path, normalization="smoothadv")
  assert info["normalization"]["std"] == [1.0, 1.0, 1.0]
  assert checkpoints.model_from_cohen is cohen.model_from_cohen


def test_evaluate_cli_certifies_a_cohen_file(cifar20_file, tmp_path, capsys):
  import json

  import evaluate.__main__ as cli
  path, _ = cifar20_file
  wd = tmp_path / "wd"
  rc = cli.main([f"--checkpoint={path}", "--dataset=synthetic:40", "--limit=4", "--sigma=0.25",
                 "--n=1", "--certify", "--n0=4", "--certify_n=16", f"--workdir={wd}",
                 "--progress=false"])
  out = capsys.readouterr().out
  assert rc == 0, out
  assert "cohen-format" in out and "normalization: cohen" in out
  rows = [r for r in json.loads((wd / "results.json").read_text()) if r["vote"] == "certify"]
  assert rows and all(r["sigma"] == 0.25 for r in rows)
  assert (wd / "certify.tsv").is_file()


@pytest.mark.slow
def test_resnet50_with_weight_noise_from_state_dict():
  """A noisy ResNet-50 from a bare state dict: file weights + initial PNI scales."""
  tmodel = tcm.cohen_model("resnet50", "cohen", num_classes=10, seed=5)
  model, info = cohen.model_from_cohen(tmodel.state_dict(), noise="pni_w")
  assert info["model_config"]["noise"]["weight"] == "pni"
  x = _images(2, 32, seed=6)
  clean = _logits_jax(model, x)
  ref = _logits_torch(tmodel, x)
  assert np.abs(clean - ref).max() / np.abs(ref).max() <= 1e-4
  noisy = np.asarray(model(x, key=jax.random.key(1)))
  assert np.abs(noisy - clean).max() > 1e-3
  np.testing.assert_array_equal(noisy, np.asarray(model(x, key=jax.random.key(1))))


def _certify_cli(checkpoint, dataset, wd, *extra):
  import json

  import evaluate.__main__ as cli
  rc = cli.main([f"--checkpoint={checkpoint}", f"--dataset={dataset}", "--sigma=0.25", "--n=1",
                 "--certify", "--n0=2", "--certify_n=4", f"--workdir={wd}", "--progress=false",
                 *extra])
  assert rc == 0
  tsv = (wd / "certify.tsv").read_text().splitlines()
  return [r for r in json.loads((wd / "results.json").read_text()) if r["vote"] == "certify"], tsv


@pytest.mark.slow
def test_evaluate_cli_certifies_cohen_resnet110(tmp_path):
  tmodel = tcm.cohen_model("cifar_resnet110", "cohen", seed=3)
  path = tmp_path / "r110.pth.tar"
  tcm.save_cohen_checkpoint(path, tmodel, "cifar_resnet110")
  rows, tsv = _certify_cli(path, "synthetic:40", tmp_path / "wd", "--limit=2")
  assert rows and len(tsv) == 1 + 2  # header + one line per image


@pytest.mark.slow
def test_evaluate_cli_certifies_cohen_resnet50_on_an_imagenet_folder(tmp_path):
  from PIL import Image
  rng = np.random.RandomState(0)
  for wnid, (w, h) in (("n01440764", (300, 260)), ("n01443537", (256, 320))):
    (tmp_path / "val" / wnid).mkdir(parents=True)
    Image.fromarray(rng.randint(0, 256, (h, w, 3), np.uint8)).save(
        tmp_path / "val" / wnid / "ILSVRC2012_val_00000001.JPEG", quality=95)
  tmodel = tcm.cohen_model("resnet50", "cohen", num_classes=1000, seed=4)
  path = tmp_path / "r50.pth.tar"
  tcm.save_cohen_checkpoint(path, tmodel, "resnet50")
  rows, tsv = _certify_cli(path, f"imagenet_folder:{tmp_path}", tmp_path / "wd",
                           "--batch_size=4")
  assert rows and len(tsv) == 1 + 2
  import evaluate.__main__ as cli
  assert cli.main([f"--checkpoint={path}", f"--dataset=imagenet_folder:{tmp_path}",
                   "--split=train", "--n=1", f"--workdir={tmp_path / 'wd2'}"]) == 2
