"""smoothjax.pretrained: models by name, the shipped sample, and their presence in a wheel."""

import json
import os
import pathlib
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from smoothjax import pretrained

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_the_default_model_is_listed_and_documented():
  names = pretrained.list()
  assert pretrained.DEFAULT in names
  for name in names:
    card = pretrained.card(name)
    for key in ("description", "arch", "noise", "input_sigma", "sigma_space", "num_classes",
                "clean_accuracy", "command", "data"):
      assert key in card, (name, key)
    text = pretrained.model_card(name)
    assert text.startswith("# ") and card["arch"] in text.lower().replace("-", "")
    assert (pretrained.path(name) / "meta").is_dir()
    assert not (pretrained.path(name) / "train").exists()  # parameters only, no optimizer state


def test_unknown_name_lists_the_known_ones():
  with pytest.raises(pretrained.PretrainedError, match=r"unknown pretrained model 'smoke_pni'.*"
                     r"Did you mean 'smoke_pni_w'\?.*Known models: .*smoke_pni_w: "):
    pretrained.path("pretrained:smoke_pni")
  with pytest.raises(ValueError, match="Known models"):  # a ValueError, as CLIs expect
    pretrained.load("nope")


def test_resolve_maps_only_pretrained_names():
  assert pretrained.resolve("pretrained:smoke_pni_w") == str(pretrained.path("smoke_pni_w"))
  assert pretrained.resolve("runs/mine") == "runs/mine"
  assert pretrained.resolve(pathlib.Path("a/b.pth")) == "a/b.pth"
  assert pretrained.is_pretrained("pretrained:x") and not pretrained.is_pretrained("x")


def test_load_returns_the_model_with_its_card():
  import jax
  from smoothjax import checkpoints
  model, info = pretrained.load("pretrained:smoke_pni_w")
  assert info["pretrained"] == "smoke_pni_w" and info["family"] == "smoothjax"
  assert info["card"]["noise"] == model.config.noise.spec == "pni_w"
  assert info["card"]["arch"] == model.config.arch == "resnet20"
  assert info["checkpoint"] == str(pretrained.path("smoke_pni_w"))
  assert info["step"] == info["card"]["step"]
  assert pathlib.Path(info["model_card"]).is_file()
  leaves = jax.tree.leaves(checkpoints.model_state_dict(model))
  assert len(leaves) > 100 and all(np.isfinite(np.asarray(a)).all() for a in leaves)
  # (inference on the sample: tests/test_quickstart.py)


def test_sample_is_the_first_500_cifar10_test_images():
  x, y = pretrained.sample()
  assert x.shape == (500, 32, 32, 3) and x.dtype == np.uint8
  assert y.shape == (500,) and y.dtype == np.int64 and set(np.unique(y)) == set(range(10))
  assert pretrained.sample(7)[0].shape == (7, 32, 32, 3)
  from smoothjax import data
  ds = data.load_dataset(pretrained.sample_spec())
  xt, yt = ds.split("test")
  np.testing.assert_array_equal(xt, x)
  assert ds.class_names[0] == "airplane" and ds.num_classes == 10


def test_sample_matches_the_lossless_cifar10_images(lossless_npz):
  with np.load(lossless_npz) as z:
    np.testing.assert_array_equal(pretrained.sample()[0], z["x_test"][:500])
    np.testing.assert_array_equal(pretrained.sample()[1], z["y_test"][:500])


def test_export_and_extra_model_folders(tmp_path, monkeypatch):
  import smoothjax
  from smoothjax import checkpoints
  src = tmp_path / "src_step"
  checkpoints.save_model(src, smoothjax.build_model("resnet20", noise="pni_w", key=0),
                         meta={"step": 3, "val_metric": 0.5})
  zoo = tmp_path / "zoo"
  folder = pretrained.export(src, "tiny", card={"description": "a fresh model"}, root=zoo,
                             model_card="# tiny\n")
  assert folder == zoo / "tiny"
  card = json.loads((folder / "card.json").read_text())
  assert card["arch"] == "resnet20" and card["noise"] == "pni_w" and card["step"] == 3
  with pytest.raises(pretrained.PretrainedError, match="exists"):
    pretrained.export(src, "tiny", card={}, root=zoo)
  with pytest.raises(pretrained.PretrainedError, match="bad pretrained model name"):
    pretrained.export(src, "../up", card={}, root=zoo)
  assert "tiny" not in pretrained.list()
  monkeypatch.setenv(pretrained.ENV_PATH, str(zoo))
  assert pretrained.list() == sorted([*os.listdir(pretrained.MODELS_DIR), "tiny"])
  model, info = pretrained.load("tiny")
  assert info["meta"]["val_metric"] == 0.5 and info["card"]["description"] == "a fresh model"
  assert pretrained.model_card("tiny") == "# tiny\n"


def test_source_checkout_finds_the_models_from_another_directory(tmp_path):
  """A source checkout / editable install: the package's own folder holds the models."""
  assert pretrained.MODELS_DIR == REPO / "smoothjax" / "assets" / "pretrained"
  code = ("from smoothjax import pretrained; import smoothjax; "
          "print(smoothjax.__file__); print(pretrained.path('smoke_pni_w')); "
          "print(pretrained.sample_path())")
  env = dict(os.environ, PYTHONPATH=str(REPO))
  out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True,
                       capture_output=True, text=True).stdout.split()
  assert out[0] == str(REPO / "smoothjax" / "__init__.py")
  assert out[1] == str(pretrained.MODELS_DIR / "smoke_pni_w" / "checkpoint")


@pytest.mark.slow
def test_a_built_wheel_ships_the_models_and_the_sample(tmp_path):
  """``pip wheel .``, then the installed wheel loads the model and the sample elsewhere."""
  pip = [sys.executable, "-m", "pip"]
  subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                  str(tmp_path / "dist"), str(REPO)], check=True, cwd=tmp_path,
                 capture_output=True)
  (wheel,) = (tmp_path / "dist").glob("smoothjax-*.whl")
  with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
    meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
  for extra in ("cuda12", "cuda13", "tpu"):  # accelerator extras, as JAX's own
    assert f"Provides-Extra: {extra}" in meta
    assert f'Requires-Dist: jax[{extra}]>=0.10; extra == "{extra}"' in meta
  ours = sorted(str(p.relative_to(REPO)) for p in (REPO / "smoothjax" / "assets").rglob("*")
                if p.is_file())
  assert ours and set(ours) <= names, sorted(set(ours) - names)[:5]
  assert "smoothjax/pretrained.py" in names and "smoothjax/quickstart.py" in names
  assert any(n.endswith("licenses/LICENSE") for n in names)
  site = tmp_path / "site"
  subprocess.run([*pip, "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                 check=True, capture_output=True)
  code = ("import smoothjax, jax; from smoothjax import pretrained; "
          "m, info = pretrained.load(); x, y = pretrained.sample(); "
          "print(smoothjax.__file__); print(info['checkpoint']); print(x.shape[0])")
  run_dir = tmp_path / "elsewhere"
  run_dir.mkdir()
  env = dict(os.environ, PYTHONPATH=str(site), JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", code], cwd=run_dir, env=env, check=True,
                       capture_output=True, text=True).stdout.split()
  assert out[0].startswith(str(site)) and out[1].startswith(str(site)), out
  assert out[2] == "500"


def test_load_model_resolves_pretrained_names():
  from smoothjax import checkpoints
  model, info = checkpoints.load_model("pretrained:smoke_pni_w")
  assert info["checkpoint"] == str(pretrained.path("smoke_pni_w"))
  assert model.config.noise.spec == "pni_w"
  with pytest.raises(checkpoints.CheckpointError, match=r"unknown pretrained model 'nope'.*"
                     r"Known models:.*smoke_pni_w"):
    checkpoints.load_model("pretrained:nope")


def test_evaluate_cli_unknown_pretrained_name_is_one_line_exit_2(tmp_path, capsys):
  import evaluate.__main__ as cli
  wd = tmp_path / "wd"
  rc = cli.main(["--checkpoint=pretrained:nope", f"--workdir={wd}", "--n=1", "--limit=2",
                 "--progress=false"])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1 and "smoke_pni_w" in err[0], err
  assert not wd.exists()


def test_train_init_from_resolves_pretrained_names():
  import smoothjax
  from smoothjax.training import _loop
  model = smoothjax.build_model("resnet20", noise="pni_w", key=3)
  copied, kept = _loop._init_from(model, "pretrained:smoke_pni_w")
  assert copied > 100 and not kept
