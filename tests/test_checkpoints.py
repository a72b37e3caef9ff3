"""Checkpoints: orbax round trips, TrainCheckpointer bookkeeping, load_model, bad files."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from smoothjax import checkpoints
from smoothjax import models
from smoothjax import noise as noise_lib
from smoothjax.checkpoints import CheckpointError


def _leaves_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) and la
  for x, y in zip(la, lb):
    if jax.dtypes.issubdtype(jnp.asarray(x).dtype, jax.dtypes.prng_key):
      assert jax.dtypes.issubdtype(y.dtype, jax.dtypes.prng_key)
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert np.asarray(x).dtype == np.asarray(y).dtype


def _random_model(arch="resnet20", noise="none", seed=0, **kw):
  """A model whose every variable (BN stats and noise scales included) is random.

  Built with ``nnx.eval_shape`` and filled from NumPy: running the initialisers is slow on CPU.
  """
  config = models.ModelConfig(arch, noise=noise, **kw)
  model = nnx.eval_shape(lambda: models.build_model(config, key=0))
  rng = np.random.default_rng(seed)
  nnx.update(model, jax.tree.map(
      lambda v: jnp.asarray(rng.standard_normal(v.shape).astype(v.dtype)), nnx.state(model)))
  return model


# ------------------------------------------------------------------------------ orbax round trips


@pytest.fixture(scope="module")
def noisy_model():
  return _random_model("resnet20", "pni_w+pni_a", seed=1, shortcut="A")


def test_train_roundtrip_exact_with_noise_params_and_optax_state(tmp_path, noisy_model):
  model = noisy_model
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
  grads = jax.tree.map(lambda p: np.full(p.shape, 0.5, np.float32), params)
  # jit: one compilation instead of hundreds of eager ops.
  opt_state = jax.jit(lambda g, p: opt.update(g, opt.init(p), p)[1])(grads, params)
  train = {"opt": opt_state, "step": 17, "epoch_pos": np.int64(3),
           "key": jax.random.key(42), "hist": np.arange(5, dtype=np.float32)}
  with checkpoints.TrainCheckpointer(tmp_path, keep=2) as ckpt:
    ckpt.save(17, model_state=model, train_state=train, meta={"lr": 0.1}, val_metric=0.5)

  # Restore into zero targets of the same structure.
  zeros = lambda t: jax.tree.map(np.zeros_like, t)  # noqa: E731
  state_target = zeros(nnx.state(model))
  train_target = {"opt": zeros(opt_state), "step": 0, "epoch_pos": np.int64(0),
                  "key": jax.random.key(0), "hist": np.zeros(5, np.float32)}
  ckpt = checkpoints.TrainCheckpointer(tmp_path, keep=2)
  assert (ckpt.latest_step(), ckpt.best_step()) == (17, 17)
  state, train_back, meta = ckpt.restore(model_state_target=state_target,
                                         train_state_target=train_target)
  ckpt.close()
  assert isinstance(state, nnx.State)
  _leaves_equal(state, nnx.state(model))
  assert not np.any(jax.tree.leaves(state_target)[0])  # the target itself is left untouched
  assert jax.tree.structure(train_back) == jax.tree.structure(train)
  assert train_back["step"] == 17 and train_back["epoch_pos"] == 3
  _leaves_equal(train_back, train)
  assert meta["lr"] == 0.1 and meta["step"] == 17 and meta["val_metric"] == 0.5
  assert meta["model_config"] == model.config.to_dict()
  # The noise scales were saved too (they are not at their initial value).
  ns = jax.tree.leaves(nnx.state(model, noise_lib.NoiseScale))
  assert ns and not np.allclose(np.asarray(ns[0]), 0.25)
  ns_back = jax.tree.leaves(nnx.filter_state(state, noise_lib.NoiseScale))
  _leaves_equal(ns_back, ns)


def test_save_model_load_model_roundtrip(tmp_path, noisy_model):
  d = tmp_path / "export"
  checkpoints.save_model(d, noisy_model, meta={"note": "hi", "acc": np.float32(0.5)})
  loaded, info = checkpoints.load_model(d)
  assert info["family"] == "smoothjax" and info["checkpoint"] == str(d)
  assert info["meta"]["note"] == "hi" and info["meta"]["acc"] == 0.5
  assert loaded.config == noisy_model.config
  _leaves_equal(nnx.state(loaded), nnx.state(noisy_model))
  with pytest.raises(CheckpointError, match="already exists"):
    checkpoints.save_model(d, noisy_model)
  # Recorded arch / noise win; contradicting them is an error, agreeing is fine.
  checkpoints.load_model(d, arch="resnet20", noise="pni_w+pni_a", num_classes=10)
  with pytest.raises(CheckpointError, match="resnet20.*arch='resnet32'"):
    checkpoints.load_model(d, arch="resnet32")
  with pytest.raises(CheckpointError, match="records noise 'pni_w\\+pni_a'.*'cni_w'"):
    checkpoints.load_model(d, noise="cni_w")
  with pytest.raises(CheckpointError, match="10 classes"):
    checkpoints.load_model(d, num_classes=100)
  # Normalisation override.
  m2, info2 = checkpoints.load_model(d, normalization="0.5,0.4,0.3,0.2,0.2,0.2")
  assert m2.config.mean == (0.5, 0.4, 0.3) and m2.config.std == (0.2, 0.2, 0.2)
  assert info2["normalization"]["source"] == "override"


# ------------------------------------------------------------------ TrainCheckpointer bookkeeping


def _tiny(v):
  return {"w": jnp.full((3,), v, jnp.float32), "b": {"0": jnp.asarray(v)}}


def test_keep_last_k_and_best(tmp_path):
  metrics = {1: 0.1, 2: 0.5, 3: 0.3, 4: 0.4, 5: 0.2}
  with checkpoints.TrainCheckpointer(tmp_path, keep=2) as ckpt:
    for step, m in metrics.items():
      ckpt.save(step, model_state=_tiny(step), train_state={"step": step}, meta={},
                val_metric=m)
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [4, 5] and ckpt.latest_step() == 5
    assert ckpt.best_step() == 2 and ckpt.best_value == 0.5
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "5"]
  assert os.listdir(tmp_path / "best") == ["2"]

  # A new process (resume) sees the same state and keeps improving the best.
  ckpt = checkpoints.TrainCheckpointer(tmp_path, keep=2)
  assert (ckpt.latest_step(), ckpt.best_step(), ckpt.best_value) == (5, 2, 0.5)
  model, train, meta = ckpt.restore(model_state_target=_tiny(0), train_state_target={"step": 0},
                                    best=True)
  assert train == {"step": 2} and meta["val_metric"] == 0.5
  np.testing.assert_array_equal(model["w"], np.full(3, 2.0))
  model, train, _ = ckpt.restore(4, model_state_target=_tiny(0), train_state_target={"step": 0})
  assert train == {"step": 4} and float(model["b"]["0"]) == 4.0
  with pytest.raises(CheckpointError, match=r"step 1 .*available: \[4, 5\]"):
    ckpt.restore(1, model_state_target=_tiny(0), train_state_target=None)
  ckpt.save(6, model_state=_tiny(6), train_state={"step": 6}, meta={}, val_metric=0.45)
  ckpt.save(7, model_state=_tiny(7), train_state={"step": 7}, meta={}, val_metric=0.6)
  ckpt.save(8, model_state=_tiny(8), train_state={"step": 8}, meta={})  # no metric: not a best
  ckpt.close()
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["7", "8"]
  assert os.listdir(tmp_path / "best") == ["7"]


def test_older_step_needs_force_and_resave_replaces(tmp_path):
  with checkpoints.TrainCheckpointer(tmp_path, keep=3, save_best=False) as ckpt:
    ckpt.save(5, model_state=_tiny(5), train_state={"s": 5}, meta={})
    with pytest.raises(CheckpointError, match="older than the latest checkpoint"):
      ckpt.save(3, model_state=_tiny(3), train_state={"s": 3}, meta={})
    ckpt.save(3, model_state=_tiny(3), train_state={"s": 3}, meta={}, force=True)
    ckpt.save(5, model_state=_tiny(50), train_state={"s": 50}, meta={})  # replaces step 5
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [3, 5]
    model, train, _ = ckpt.restore(5, model_state_target=_tiny(0), train_state_target={"s": 0})
  assert train == {"s": 50} and float(model["b"]["0"]) == 50.0


def test_load_model_without_recorded_config_needs_arch(tmp_path):
  m = _random_model(num_classes=7, shortcut="A")
  with checkpoints.TrainCheckpointer(tmp_path, save_best=False) as ckpt:
    ckpt.save(1, model_state=nnx.to_pure_dict(nnx.state(m)), train_state={}, meta={})
  with pytest.raises(CheckpointError, match="does not record its model_config.*arch"):
    checkpoints.load_model(tmp_path)
  loaded, info = checkpoints.load_model(tmp_path, arch="resnet20")
  assert (loaded.config.num_classes, loaded.config.shortcut) == (7, "A")
  assert info["normalization"]["source"].startswith("default")
  _leaves_equal(nnx.state(loaded), nnx.state(m))
  with pytest.raises(CheckpointError, match="alpha.*missing"):
    checkpoints.load_model(tmp_path, arch="resnet20", noise="pni_w")


def test_save_best_false_and_empty_workdir(tmp_path):
  with checkpoints.TrainCheckpointer(tmp_path, keep=1, save_best=False) as ckpt:
    assert ckpt.latest_step() is None and ckpt.best_step() is None
    with pytest.raises(CheckpointError, match="no checkpoint"):
      ckpt.restore(model_state_target=_tiny(0), train_state_target=None)
    ckpt.save(3, model_state=_tiny(3), train_state={}, meta={}, val_metric=1.0)
  assert not (tmp_path / "best").exists()
  with pytest.raises(CheckpointError, match="no finished checkpoint"):
    checkpoints.load_model(_empty_workdir(tmp_path))
  with pytest.raises(ValueError, match="keep"):
    checkpoints.TrainCheckpointer(tmp_path / "x", keep=0)


def _empty_workdir(tmp_path):
  w = tmp_path / "empty_run"
  (w / "checkpoints").mkdir(parents=True)
  return w


def test_half_written_checkpoint_is_ignored(tmp_path):
  model = _random_model()
  meta = {"model_config": model.config.to_dict()}
  with checkpoints.TrainCheckpointer(tmp_path, keep=3, save_best=False) as ckpt:
    ckpt.save(10, model_state=model, train_state={"step": 10}, meta=meta)
  # A run killed while orbax was writing step 20 leaves its temporary directory behind.
  tmp = tmp_path / "checkpoints" / "20.orbax-checkpoint-tmp-1234567"
  (tmp / "model").mkdir(parents=True)
  (tmp / "model" / "garbage").write_bytes(b"\x00" * 10)
  with pytest.raises(CheckpointError, match="unfinished"):
    checkpoints.load_model(tmp)
  loaded, info = checkpoints.load_model(tmp_path)
  assert info["step"] == 10 and info["checkpoint"].endswith(os.path.join("checkpoints", "10"))
  _leaves_equal(nnx.state(loaded), nnx.state(model))
  ckpt = checkpoints.TrainCheckpointer(tmp_path, keep=3, save_best=False)
  assert ckpt.latest_step() == 10
  ckpt.save(20, model_state=model, train_state={"step": 20}, meta=meta)  # resumes cleanly
  ckpt.close()
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "20"]


def test_load_model_workdir_best_latest_and_step(tmp_path):
  m_a = _random_model(seed=2)
  m_b = _random_model(seed=3)
  meta = {"model_config": m_a.config.to_dict()}
  with checkpoints.TrainCheckpointer(tmp_path, keep=3) as ckpt:
    ckpt.save(1, model_state=m_a, train_state={}, meta=meta, val_metric=0.9)
    ckpt.save(2, model_state=m_b, train_state={}, meta=meta, val_metric=0.1)
  best, info = checkpoints.load_model(tmp_path)  # the best one, not the latest
  assert info["step"] == 1 and "best" in info["checkpoint"]
  _leaves_equal(nnx.state(best), nnx.state(m_a))
  latest, info = checkpoints.load_model(tmp_path, step=2)
  assert info["step"] == 2
  _leaves_equal(nnx.state(latest), nnx.state(m_b))
  _, info = checkpoints.load_model(tmp_path / "checkpoints")  # a manager directory: its latest
  assert info["step"] == 2
  with pytest.raises(CheckpointError, match="step 5"):
    checkpoints.load_model(tmp_path, step=5)
  with pytest.raises(CheckpointError, match="not of step 2"):
    checkpoints.load_model(tmp_path / "checkpoints" / "1", step=2)
  with pytest.raises(CheckpointError, match="does not exist"):
    checkpoints.load_model(tmp_path / "nope")


# ------------------------------------------------------------------------ corrupt / mismatched


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  d = tmp_path_factory.mktemp("exp") / "model"
  checkpoints.save_model(d, _random_model())
  return d


def _copy(src, dst):
  import shutil
  shutil.copytree(src, dst)
  return dst


# orbax's asyncio loop may report a callback of the failed read after it closed: harmless.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["garbage_data", "truncated_data", "no_model", "bad_meta"])
def test_corrupt_step_dir_gives_clear_error(tmp_path, exported, damage):
  d = _copy(exported, tmp_path / "model")
  data = [p for p in (d / "model").rglob("*") if p.is_file() and p.parent.name == "d"]
  assert data
  if damage == "garbage_data":
    for p in data:
      p.write_bytes(os.urandom(p.stat().st_size))
  elif damage == "truncated_data":
    for p in data:
      p.write_bytes(p.read_bytes()[:7])
  elif damage == "no_model":
    import shutil
    shutil.rmtree(d / "model")
  else:
    (d / "meta" / "metadata").write_text("{not json")
  with pytest.raises(CheckpointError, match="corrupt|incomplete") as e:
    checkpoints.load_model(d)
  assert str(d) in str(e.value)


def test_restore_into_wrong_architecture_names_first_parameter(tmp_path):
  m = _random_model()
  with checkpoints.TrainCheckpointer(tmp_path, save_best=False) as ckpt:
    ckpt.save(1, model_state=m, train_state={}, meta={})
    wrong = _random_model(num_classes=100)
    with pytest.raises(CheckpointError, match=r"'fc/bias' has shape \(10,\).*expects \(100,\)"):
      ckpt.restore(model_state_target=wrong, train_state_target=None)
    wrong = _random_model(shortcut="A")  # no projection shortcuts
    with pytest.raises(CheckpointError, match="unexpected parameter 'blocks/3/down_bn"):
      ckpt.restore(model_state_target=wrong, train_state_target=None)
    wrong = _random_model(noise="pni_w")
    with pytest.raises(CheckpointError, match="'blocks/0/conv1/weight_noise/alpha'.*missing"):
      ckpt.restore(model_state_target=wrong, train_state_target=None)


# --------------------------------------------------------------------------------- PyTorch files


def _torch_state_dict(depth=20, num_classes=10, family="reference", shortcut=None):
  pytest.importorskip("torch")
  import torch_reference  # pylint: disable=g-import-not-at-top
  tm = torch_reference.CifarResNetTorch(depth, num_classes, family=family, shortcut=shortcut)
  sd = {k: v for k, v in tm.state_dict().items() if k not in ("mean", "std")}
  if family == "akamaster":
    sd = {"module." + k: v for k, v in sd.items()}
  return sd


class _Payload:
  """Unpickling this calls open(marker, 'w'): creates the marker file."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (open, (self.marker, "w"))


@pytest.mark.parametrize("zipfile", [True, False])
def test_reduce_payload_is_refused_without_running_it(tmp_path, zipfile):
  torch = pytest.importorskip("torch")
  marker = tmp_path / "payload_ran"
  path = tmp_path / "evil.pth.tar"
  torch.save({"state_dict": _torch_state_dict(), "extra": _Payload(marker)}, path,
             _use_new_zipfile_serialization=zipfile)
  for fn in (checkpoints.load_torch_state_dict, checkpoints.model_from_torch,
             checkpoints.load_model):
    with pytest.raises(CheckpointError, match="execute code") as e:
      fn(path)
    assert "builtins.open" in str(e.value) or "open" in str(e.value)
    assert not marker.exists()
  # The payload is real: an unrestricted load (never done by smoothjax) would run it.
  control = tmp_path / "control_ran"
  torch.save({"x": _Payload(control)}, tmp_path / "control.pth")
  torch.load(tmp_path / "control.pth", weights_only=False)
  assert control.exists()


def test_torch_file_detection_and_normalization(tmp_path):
  torch = pytest.importorskip("torch")
  for family, shortcut in (("reference", "B"), ("akamaster", "A")):
    sd = _torch_state_dict(family=family)
    assert checkpoints.detect_family(sd) == family
    path = tmp_path / f"{family}.th"
    torch.save({"state_dict": sd, "epoch": 3}, path)
    model, info = checkpoints.load_model(path)
    assert (info["family"], info["shortcut"], info["arch"]) == (family, shortcut, "resnet20")
    assert info["step"] is None and info["checkpoint"] == str(path)
    assert info["torch_meta"] == {"epoch": 3}
    assert (model.config.mean, model.config.std) == checkpoints.FAMILIES[family]
    assert info["normalization"]["source"] == "auto"
    # Explicit normalisation overrides the family's (string or (mean, std) pair).
    m2, info2 = checkpoints.load_model(path, normalization="0.1,0.2,0.3,0.4,0.5,0.6")
    assert m2.config.mean == (0.1, 0.2, 0.3) and m2.config.std == (0.4, 0.5, 0.6)
    m3, _ = checkpoints.model_from_torch(sd, normalization=((0.5,) * 3, (0.2,) * 3))
    assert m3.config.std == (0.2,) * 3
    other = "akamaster" if family == "reference" else "reference"
    m4, _ = checkpoints.model_from_torch(sd, normalization=other)
    assert (m4.config.mean, m4.config.std) == checkpoints.FAMILIES[other]
    _leaves_equal(nnx.state(m2, nnx.Param), nnx.state(model, nnx.Param))
  with pytest.raises(CheckpointError, match="bad normalization"):
    checkpoints.model_from_torch(sd, normalization="1,2,3")
  with pytest.raises(CheckpointError, match="step=1 applies to train workdirs"):
    checkpoints.load_model(path, step=1)
  torch.save({"weights": [1, 2]}, tmp_path / "nosd.pth")
  with pytest.raises(CheckpointError, match="no state dict"):
    checkpoints.load_model(tmp_path / "nosd.pth")
  (tmp_path / "trunc.pth").write_bytes(path.read_bytes()[:100])
  with pytest.raises(CheckpointError, match="cannot read PyTorch checkpoint"):
    checkpoints.load_model(tmp_path / "trunc.pth")
  with pytest.raises(CheckpointError, match="not a CIFAR ResNet"):
    checkpoints.detect_family({"features.0.weight": np.zeros((3, 3))})


def test_torch_mismatches_name_the_parameter():
  sd = {k: v.numpy() for k, v in _torch_state_dict(depth=20).items()}
  # Wrong head size: the first mismatching parameter is the head's weight.
  with pytest.raises(CheckpointError,
                     match=r"'fc.weight' has shape \(10, 64\).*expects \(100, 64\) "
                           r"\(1 more mismatches\)"):
    checkpoints.model_from_torch(sd, num_classes=100)
  # A layer of the wrong width.
  bad = dict(sd)
  bad["layer2.0.conv1.weight"] = np.zeros((48, 16, 3, 3), np.float32)
  with pytest.raises(CheckpointError,
                     match=r"'layer2.0.conv1.weight' has shape \(48, 16, 3, 3\).*"
                           r"expects \(32, 16, 3, 3\)"):
    checkpoints.model_from_torch(bad)
  with pytest.raises(CheckpointError, match="is a resnet20 .*arch='resnet32'"):
    checkpoints.model_from_torch(sd, arch="resnet32")
  missing = {k: v for k, v in sd.items() if k != "layer1.1.bn2.running_var"}
  with pytest.raises(CheckpointError, match="'layer1.1.bn2.running_var' is missing"):
    checkpoints.model_from_torch(missing)
  extra = dict(sd, **{"layer1.0.conv1.alpha_w": np.ones((16, 16, 3, 3), np.float32)})
  with pytest.raises(CheckpointError, match="unexpected parameters.*layer1.0.conv1.alpha_w"):
    checkpoints.model_from_torch(extra)
  with pytest.raises(CheckpointError, match="ResNet-26"):
    checkpoints.model_from_torch(
        {k: v for k, v in _torch_state_dict(depth=26).items()})


def test_real_checkpoint_detection(siam_resnet20, akamaster_dir):
  pytest.importorskip("torch")
  sd = checkpoints.load_torch_state_dict(siam_resnet20)
  assert checkpoints.detect_family(sd) == "reference"
  assert "layer2.0.downsample.0.weight" in sd
  aka = checkpoints.load_torch_state_dict(akamaster_dir / "resnet20-12fca82f.th")
  assert checkpoints.detect_family(aka) == "akamaster"
  with pytest.raises(CheckpointError, match=r"'linear.weight' has shape \(10, 64\)"):
    checkpoints.model_from_torch(akamaster_dir / "resnet20-12fca82f.th", num_classes=100)
  with pytest.raises(CheckpointError, match="is a resnet20"):
    checkpoints.load_model(akamaster_dir / "resnet20-12fca82f.th", arch="resnet56")
  with pytest.raises(CheckpointError, match="supports|ResNet|wrn"):
    checkpoints.model_from_torch(siam_resnet20, arch="wrn28_4")


def test_quiet_closed_event_loops(monkeypatch):
  """A callback for a closed loop (TensorStore's late reads after orbax's failed restore) is
  dropped instead of raising; open loops still run theirs."""
  import asyncio

  from smoothjax import _utils

  # The unpatched method (an in-process CLI test may have installed the patch already);
  # monkeypatch restores whatever was there after the test.
  monkeypatch.setattr(asyncio.BaseEventLoop, "call_soon_threadsafe",
                      _utils._ORIGINAL_CALL_SOON_THREADSAFE)
  closed = asyncio.new_event_loop()
  closed.close()
  with pytest.raises(RuntimeError, match="Event loop is closed"):
    closed.call_soon_threadsafe(print)
  _utils.quiet_closed_event_loops()
  assert closed.call_soon_threadsafe(print) is None
  ran = []
  loop = asyncio.new_event_loop()
  try:
    loop.call_soon_threadsafe(ran.append, 1)
    loop.call_soon_threadsafe(loop.stop)
    loop.run_forever()
  finally:
    loop.close()
  assert ran == [1]


def test_quiet_drops_only_orbax_unraisable_coroutines(monkeypatch):
  """Orbax's abandoned read coroutines (GC'd with their exception) are dropped; the rest print."""
  import os
  import sys
  import types

  from smoothjax import _utils

  seen = []
  monkeypatch.setattr(_utils, "_ORIGINAL_UNRAISABLEHOOK", seen.append)
  monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # restored after the test
  ns = {}
  exec(compile("async def _read_array_index_and_device_put():\n  pass\n",  # noqa: S102
               os.path.join(os.sep, "site-packages", "orbax", "serialization.py"), "exec"), ns)
  orbax_coro = ns["_read_array_index_and_device_put"]()

  async def ours():
    pass

  other = ours()
  try:
    _utils.quiet_closed_event_loops()
    assert sys.unraisablehook is _utils._drop_orbax_unraisable
    sys.unraisablehook(types.SimpleNamespace(object=orbax_coro))
    assert seen == []
    hit = types.SimpleNamespace(object=other)
    sys.unraisablehook(hit)
    assert seen == [hit]
  finally:
    orbax_coro.close()
    other.close()


def test_quiet_drops_only_orbax_unretrieved_futures(monkeypatch, caplog):
  """asyncio's "exception was never retrieved" record of a future that failed in orbax (the
  gather of a failed restore's other reads) is dropped; the same record of any other logs."""
  import asyncio
  import gc
  import logging
  import os

  from smoothjax import _utils

  logger = logging.getLogger("asyncio")
  monkeypatch.setattr(logger, "filters", list(logger.filters))  # restored after the test
  ns = {}
  exec(compile("def _read_shard():\n  raise ValueError('damaged')\n",  # noqa: S102
               os.path.join(os.sep, "site-packages", "orbax", "serialization.py"), "exec"), ns)

  def ours():
    raise ValueError("ours")

  def abandon(loop, raiser):
    fut = loop.create_future()
    try:
      raiser()
    except ValueError as e:
      fut.set_exception(e)
    del fut
    gc.collect()

  _utils.quiet_closed_event_loops()
  _utils.quiet_closed_event_loops()
  assert logger.filters.count(_utils._drop_orbax_unretrieved) == 1
  loop = asyncio.new_event_loop()
  try:
    with caplog.at_level(logging.ERROR, logger="asyncio"):
      abandon(loop, ns["_read_shard"])
      assert not caplog.records
      abandon(loop, ours)
      assert [r.getMessage().splitlines()[0] for r in caplog.records] == [
          "Future exception was never retrieved"]
  finally:
    loop.close()
