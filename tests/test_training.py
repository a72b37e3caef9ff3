"""Training objectives, optimizer, schedules and the data-parallel train step."""

import json

import numpy as np
import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx
from flax import traverse_util

from smoothjax import data as data_lib
from smoothjax import models
from smoothjax import training
from smoothjax.training import _loop as training_loop
from tiny_model import TinyNoisyCNN
from train.configs import base


def _optim(**kw):
  c = base.get_config().optim
  c.update(kw)
  return c


def _split(model):
  g, p, r = nnx.split(model, nnx.Param, ...)
  return g, nnx.to_pure_dict(p), nnx.to_pure_dict(r)


def _flat(tree):
  return traverse_util.flatten_dict(tree)


# ------------------------------------------------------------------------------------------------
# Schedules and optimizer (no model compiled).


def test_piecewise_schedule_steps_at_epoch_boundaries():
  s = training.make_schedule(kind="piecewise", lr=0.1, steps_per_epoch=10, total_steps=100,
                             milestones=(2, 4), gamma=0.1)
  got = np.array([float(s(i)) for i in (0, 19, 20, 39, 40, 99)])
  np.testing.assert_allclose(got, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)


def test_onecycle_schedule_is_wongs_interpolation():
  total = 50
  s = training.make_schedule(kind="onecycle", lr=0.2, steps_per_epoch=5, total_steps=total,
                             peak_fraction=0.4)
  steps = np.arange(total)
  want = np.interp(steps + 1, [0, 0.4 * total, total], [0, 0.2, 0])
  np.testing.assert_allclose([float(s(i)) for i in steps], want, rtol=1e-5, atol=1e-7)
  assert float(s(19)) == pytest.approx(0.2)


def test_bad_schedule_and_optimizer_raise():
  with pytest.raises(ValueError, match="schedule"):
    training.make_schedule(kind="triangle", lr=0.1, steps_per_epoch=1, total_steps=1)
  with pytest.raises(ValueError, match="optimizer"):
    training.make_optimizer(_optim(optimizer="lbfgs"), labels={}, schedule=lambda s: 0.1)
  with pytest.raises(ValueError, match="objective"):
    training.Objective(name="madry")
  with pytest.raises(ValueError, match="adv_weight"):
    training.Objective(name="adversarial", adv_weight=1.5)


def _noise_model(noise):
  return TinyNoisyCNN(noise=noise)


@pytest.mark.parametrize("noise", ["pni_w", "cni_w"])
def test_weight_decay_groups(noise):
  """Kernels decay with weight_decay; PNI/CNI alphas with alpha_decay; CNI F with factor_decay."""
  model = _noise_model(noise)
  labels = training.param_labels(model)
  _, params, _ = _split(model)
  flat_labels = _flat(labels)
  kinds = set(flat_labels.values())
  assert {"weights", "norm_bias", "alpha"} <= kinds
  assert ("factor" in kinds) == (noise == "cni_w")
  # One SGD step (lr 1, no momentum, no clipping) with zero gradients: p <- p - lr * wd * p.
  cfg = _optim(momentum=0.0, clip_norm=0.0, weight_decay=0.1, alpha_decay=0.0,
               factor_decay=0.5, decay_norm_and_bias=False)
  tx = training.make_optimizer(cfg, labels=labels, schedule=lambda s: 1.0)
  state = tx.init(params)
  grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(grads, state, params)
  factor = {"weights": 0.1, "norm_bias": 0.0, "alpha": 0.0, "factor": 0.5}
  for path, u in _flat(updates).items():
    p = _flat(params)[path]
    np.testing.assert_allclose(np.asarray(u), -factor[flat_labels[path]] * np.asarray(p),
                               rtol=1e-6, err_msg="/".join(map(str, path)))


def test_optimizer_matches_torch_sgd_nesterov_clip_and_decay():
  """clip_by_global_norm -> coupled weight decay -> Nesterov SGD == the reference's PyTorch."""
  torch = pytest.importorskip("torch")
  rng = np.random.RandomState(0)
  params = {"a": rng.randn(3, 4).astype(np.float32), "b": rng.randn(5).astype(np.float32)}
  grads = [{k: rng.randn(*v.shape).astype(np.float32) for k, v in params.items()}
           for _ in range(4)]
  labels = {"a": "weights", "b": "weights"}
  sched = training.make_schedule(kind="piecewise", lr=0.1, steps_per_epoch=2, total_steps=4,
                                 milestones=(1,), gamma=0.1)
  tx = training.make_optimizer(_optim(weight_decay=1e-2, clip_norm=0.05), labels=labels,
                               schedule=sched)
  p = {k: jnp.asarray(v) for k, v in params.items()}
  st = tx.init(p)
  for g in grads:
    u, st = tx.update({k: jnp.asarray(v) for k, v in g.items()}, st, p)
    p = optax.apply_updates(p, u)

  tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
  opt = torch.optim.SGD(tp.values(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2)
  sch = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[1], gamma=0.1)
  for i, g in enumerate(grads):
    for k in tp:
      tp[k].grad = torch.tensor(g[k])
    torch.nn.utils.clip_grad_norm_(tp.values(), 0.05)
    opt.step()
    if i % 2 == 1:  # end of an epoch of 2 steps
      sch.step()
  for k in params:
    np.testing.assert_allclose(np.asarray(p[k]), tp[k].detach().numpy(), rtol=1e-5, atol=1e-7)


def test_lookahead_syncs_slow_weights():
  params = {"w": jnp.ones((3,))}
  tx = training.make_optimizer(
      _optim(optimizer="radam", lr=0.05, weight_decay=0.0, clip_norm=1.0, lookahead_steps=2,
             lookahead_alpha=0.5), labels={"w": "weights"}, schedule=lambda s: 0.05)
  ts = training.init_train_state(tx, params, lookahead=True)
  lp = optax.LookaheadParams(fast=params, slow=ts["slow"])
  st = ts["opt_state"]
  for _ in range(2):
    u, st = tx.update({"w": jnp.full((3,), 2.0)}, st, lp)
    lp = optax.apply_updates(lp, u)
  # After sync_period steps the fast weights are reset onto the moved slow weights.
  np.testing.assert_allclose(lp.fast["w"], lp.slow["w"])
  assert float(lp.slow["w"][0]) < 1.0


# ------------------------------------------------------------------------------------------------
# Objectives (one small jitted program each).


@pytest.fixture(scope="module")
def pni_model():
  return TinyNoisyCNN(noise="pni_w", input_sigma=0.03)


def test_trades_beta0_equals_standard_loss_and_gradient(pni_model):
  g, params, rest = _split(pni_model)
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.rand(4, 32, 32, 3), jnp.float32)
  y = jnp.asarray([0, 1, 2, 3])
  x_adv = jnp.clip(x + 8 / 255 * jnp.sign(jnp.asarray(rng.randn(4, 32, 32, 3))), 0, 1)
  std = training.Objective(name="standard")
  trades = training.Objective(name="trades", beta=0.0)
  key = jax.random.key(7)

  @jax.jit
  def both(p):
    def f(obj):
      return lambda p: training.objective_loss(obj, g, p, rest, x, y, key=key, x_adv=x_adv)
    (l1, (_, a1)), g1 = jax.value_and_grad(f(std), has_aux=True)(p)
    (l2, (_, a2)), g2 = jax.value_and_grad(f(trades), has_aux=True)(p)
    return l1, l2, g1, g2, a2["kl"]

  l1, l2, g1, g2, kl = both(params)
  assert float(kl) > 0  # the adversarial pass did run
  assert float(l1) == float(l2)
  for (path, a), b in zip(_flat(g1).items(), _flat(g2).values()):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9, err_msg="/".join(map(str, path)))


def test_madry_loss_is_weighted_sum_of_clean_and_adversarial(pni_model):
  g, params, rest = _split(pni_model)
  rng = np.random.RandomState(1)
  x = jnp.asarray(rng.rand(4, 32, 32, 3), jnp.float32)
  x_adv = jnp.clip(x + 0.03, 0, 1)
  y = jnp.asarray([3, 1, 4, 1])
  key = jax.random.key(3)

  @jax.jit
  def run():
    madry = training.Objective(name="adversarial", adv_weight=0.25)
    loss, _ = training.objective_loss(madry, g, params, rest, x, y, key=key, x_adv=x_adv)
    # By hand: separate train-mode passes, adversarial first (key slot 3), then clean (slot 2).
    la, rest1 = training.forward(g, params, rest, x_adv, key=jax.random.fold_in(key, 3),
                                 train=True)
    lc, _ = training.forward(g, params, rest1, x, key=jax.random.fold_in(key, 2), train=True)
    ce = optax.softmax_cross_entropy_with_integer_labels
    return loss, 0.25 * ce(la, y).mean() + 0.75 * ce(lc, y).mean()

  loss, want = run()
  np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# The train step.


def _step_setup(noise="pni_w", input_sigma=0.0, batch=16, lr=0.1, mesh_devices=1,
                objective=None, width=8):
  model = TinyNoisyCNN(noise=noise, input_sigma=input_sigma, width=width)
  labels = training.param_labels(model)
  g, params, rest = _split(model)
  sched = training.make_schedule(kind="constant", lr=lr, steps_per_epoch=10, total_steps=100)
  tx = training.make_optimizer(_optim(clip_norm=0.0, weight_decay=5e-4), labels=labels,
                               schedule=sched)
  mesh = training.make_mesh(mesh_devices, batch_size=batch)
  step = training.make_train_step(graphdef=g, objective=objective or training.Objective(),
                                  tx=tx, schedule=sched, mesh=mesh)
  state = training.replicate((params, rest, training.init_train_state(tx, params)), mesh)
  return (step, *state)


def test_loss_decreases_on_real_images(lossless_npz):
  ds = data_lib.load_dataset(f"npz:{lossless_npz}")
  x, y = ds.split("train")
  x, y = x[:256], y[:256]
  step, params, rest, ts = _step_setup(noise="none", batch=32, lr=0.5, width=32)
  key = jax.random.key(0)
  losses = []
  for s, xb, yb in data_lib.train_batches(x, y, batch_size=32, key=jax.random.key(1)):
    if s == 60:
      break
    params, rest, ts, m = step(params, rest, ts, key, xb, yb)
    losses.append(float(m["loss"]))
  assert all(np.isfinite(losses))
  assert int(ts["step"]) == 60
  first, last = np.mean(losses[:5]), np.mean(losses[-5:])
  assert last < first - 0.2, (first, last)


def test_one_device_equals_eight_devices():
  """Batch sharded over 8 devices == 1 device, up to reduction order (noise, BN, augment)."""
  if len(jax.local_devices()) < 8:
    pytest.skip("needs 8 (virtual) devices: XLA_FLAGS=--xla_force_host_platform_device_count=8")
  rng = np.random.RandomState(0)
  xb = rng.randint(0, 256, (16, 32, 32, 3)).astype(np.uint8)
  yb = rng.randint(0, 10, 16).astype(np.int32)
  out = []
  for n in (1, 8):
    step, params, rest, ts = _step_setup(noise="pni_w", input_sigma=0.05, mesh_devices=n)
    for _ in range(2):
      params, rest, ts, m = step(params, rest, ts, jax.random.key(5), xb, yb)
    out.append((params, rest, m))
  (p1, r1, m1), (p8, r8, m8) = out
  np.testing.assert_allclose(float(m1["loss"]), float(m8["loss"]), rtol=1e-5)
  for (path, a), b in zip(_flat(p1).items(), _flat(p8).values()):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6, err_msg="/".join(map(str, path)))
  for (path, a), b in zip(_flat(r1).items(), _flat(r8).values()):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6, err_msg="/".join(map(str, path)))


def test_adversarial_examples_stay_in_the_threat_model():
  """Every objective's generator returns points of the eps-ball in [0, 1]; PGD/FGSM ascend."""
  model = TinyNoisyCNN(noise="none", width=8)
  g, params, rest = _split(model)
  rng = np.random.RandomState(2)
  x = jnp.asarray(rng.rand(8, 32, 32, 3), jnp.float32)
  y = jnp.asarray(rng.randint(0, 10, 8))
  eps = 8 / 255
  objs = {
      "fast": training.Objective(name="fast", eps=eps, step_size=1.25 * eps),
      "pgd": training.Objective(name="adversarial", eps=eps, steps=3),
      "epgd": training.Objective(name="adversarial", attack="epgd", eps=eps, steps=1, samples=2),
      "smoothadv": training.Objective(name="adversarial", attack="smoothadv", eps=eps, steps=1,
                                      samples=2),
      "trades": training.Objective(name="trades", eps=eps, steps=2),
  }

  @jax.jit
  def run(key):
    out = {name: training.adversarial_examples(o, g, params, rest, x, y, key=key)
           for name, o in objs.items()}
    ce = lambda xx: optax.softmax_cross_entropy_with_integer_labels(
        training.forward(g, params, rest, xx, key=key), y).mean()
    return out, {name: ce(v) for name, v in out.items()}, ce(x)

  out, losses, clean = run(jax.random.key(0))
  for name, xa in out.items():
    d = np.abs(np.asarray(xa) - np.asarray(x))
    assert d.max() <= eps + 1e-6 and d.max() > eps / 4, name
    assert np.asarray(xa).min() >= 0 and np.asarray(xa).max() <= 1, name
  assert float(losses["pgd"]) > float(clean)
  assert float(losses["fast"]) > float(clean)


def _tiny_config(tmp_path, **train):
  c = base.get_config()
  c.data.dataset = "synthetic:400"
  c.data.batch_size = 24
  c.optim.update(lr=0.2, clip_norm=0.0, weight_decay=5e-4, schedule="onecycle",
                 milestones=())
  c.objective.update(name="fast", eps=4 / 255, step_size=5 / 255)
  c.train.update(epochs=3, checkpoint_every_steps=5, keep=2, val_n=3, eval_batch_size=40,
                 best_metric="pgd_accuracy", val_pgd_examples=16, val_pgd_steps=2,
                 keep_worst=True, progress=False, log_every_steps=4, num_devices=1)
  c.train.update(train)
  return c


def test_train_and_evaluate_fast_at_end_to_end(tmp_path):
  from smoothjax import checkpoints
  from smoothjax import metrics as metrics_lib

  c = _tiny_config(tmp_path)
  wd = tmp_path / "run"
  final = training.train_and_evaluate(c, wd, model=TinyNoisyCNN(noise="pni_w", input_sigma=0.02,
                                                                width=16))
  # synthetic:400 = 267 training images (1/3 test), the last 10% validation: 241 train / 26
  # val; 241 // 24 = 10 steps per epoch, 3 epochs.
  assert final["step"] == 30 and final["epoch"] == 3
  assert {"accuracy", "smoothed_accuracy", "pgd_accuracy"} <= set(final)
  assert final["val_n"] == 3
  rows = metrics_lib.read_metrics(wd)
  val = [r for r in rows if r["split"] == "val"]
  train_rows = [r for r in rows if r["split"] == "train"]
  assert [r["step"] for r in val] == [10, 20, 30]
  assert {"loss", "adv_accuracy", "grad_norm", "lr", "images_per_s"} <= set(train_rows[0])
  assert "accuracy" not in train_rows[0]  # fast AT trains on adversarial examples only
  ck = checkpoints.TrainCheckpointer(wd, keep=2)
  assert ck.all_steps() == [25, 30]  # every 5 steps + epoch ends, last 2 kept
  best_pgd = max(r["pgd_accuracy"] for r in val)
  assert ck.best_value == pytest.approx(best_pgd)
  assert ck.best_step() == [r["step"] for r in val if r["pgd_accuracy"] == best_pgd][0]
  worst = checkpoints.TrainCheckpointer(wd / "worst", keep=1)
  assert worst.best_value == pytest.approx(-min(r["accuracy"] for r in val))
  cfg_json = (wd / "config.json").read_text()
  assert '"best_metric": "pgd_accuracy"' in cfg_json
  prov = json.loads((wd / "provenance.json").read_text())  # one entry per start
  assert len(prov) >= 1 and prov[-1]["packages"]["jax"] == jax.__version__
  assert prov[-1]["argv"] and "smoothjax" in prov[-1]
  _, _, meta = ck.restore(model_state_target=nnx.to_pure_dict(
      nnx.state(TinyNoisyCNN(noise="pni_w", input_sigma=0.02, width=16))),
                          train_state_target=None)
  assert meta["model_config"]["noise"]["weight"] == "pni"
  assert meta["model_config"]["noise"]["input_sigma"] == 0.02
  # Rerunning a finished run does nothing and returns the last validation.
  again = training.train_and_evaluate(c, wd, model=TinyNoisyCNN(noise="pni_w",
                                                                input_sigma=0.02, width=16))
  assert again["step"] == 30 and again["accuracy"] == final["accuracy"]


def test_nan_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(tmp_path):
  from smoothjax import checkpoints

  c = _tiny_config(tmp_path, epochs=2, checkpoint_every_steps=3, best_metric="accuracy",
                   val_pgd_examples=0, keep_worst=False, eval_every_epochs=0)
  c.objective.name = "standard"
  c.debug.nan_at_step = 7
  wd = tmp_path / "nan"
  with pytest.raises(training.NonFiniteLossError,
                     match="non-finite loss at step 7 .*last good checkpoint is step 6"):
    training.train_and_evaluate(c, wd, model=TinyNoisyCNN(noise="pni_w"))
  ck = checkpoints.TrainCheckpointer(wd, keep=2)
  # Checkpoints at steps 3 and 6 are good; the NaN of update 7 (0-based) never reaches disk.
  assert ck.all_steps() == [3, 6]
  state, _, meta = ck.restore(
      model_state_target=nnx.to_pure_dict(nnx.state(TinyNoisyCNN(noise="pni_w"))),
      train_state_target=None)
  assert meta["step"] == 6
  assert all(np.isfinite(np.asarray(l)).all() for l in jax.tree.leaves(state))
  rows = [r for r in __import__("smoothjax.metrics").metrics.read_metrics(wd)
          if r["split"] == "train"]
  assert rows and all(r["step"] <= 7 for r in rows)


def test_init_from_pytorch_keeps_noise_scales(siam_resnet20):
  """Fine-tuning a noisy model from a plain checkpoint: weights copied, noise scales kept."""
  pytest.importorskip("torch")
  from smoothjax import checkpoints

  model = models.build_model("resnet20", noise="pni_w", key=0)
  alpha_before = nnx.to_pure_dict(nnx.state(model, models.noise_lib.NoiseScale))
  copied, kept = training_loop._init_from(model, str(siam_resnet20))  # pylint: disable=protected-access
  assert kept and all(k.endswith("alpha") for k in kept)
  src, _ = checkpoints.load_model(siam_resnet20)
  src_flat = _flat(nnx.to_pure_dict(nnx.state(src)))
  flat = _flat(nnx.to_pure_dict(nnx.state(model)))
  assert copied == len(src_flat) == len(flat) - len(kept)
  for path, v in src_flat.items():
    np.testing.assert_array_equal(flat[path], v)
  alpha_after = nnx.to_pure_dict(nnx.state(model, models.noise_lib.NoiseScale))
  for a, b in zip(jax.tree.leaves(alpha_before), jax.tree.leaves(alpha_after)):
    np.testing.assert_array_equal(a, b)


def test_objective_step_size_defaults_follow_the_papers():
  """step_size 0 (the config default): fast AT 1.25 eps, FGSM eps (1.25 eps from a random
  start), the PGD family eps/4 (exactly 2/255 at 8/255, the reference's PGD-7)."""
  eps = 8 / 255
  assert training.Objective(name="fast", eps=eps).step_size == 1.25 * eps
  assert training.Objective(name="adversarial", attack="fgsm", eps=eps,
                            random_start=False).step_size == eps
  assert training.Objective(name="adversarial", attack="fgsm", eps=eps).step_size == 1.25 * eps
  assert training.Objective(name="adversarial", eps=eps).step_size == 2 / 255
  assert training.Objective(name="trades", eps=eps).step_size == 2 / 255
  assert training.Objective(name="fast", eps=eps, step_size=0.01).step_size == 0.01
  assert training.Objective.from_config(base.get_config().objective).step_size == 2 / 255
  with pytest.raises(ValueError, match="attack_bn"):
    training.Objective(name="fast", attack_bn="batch")


def test_fast_at_crafts_with_batch_statistics():
  """Wong et al. craft fast AT's FGSM with the model in train mode: the examples equal FGSM
  on the batch-statistics forward pass, differ from the eval-mode ones, and leave the running
  statistics untouched; attack_bn="eval" gives the eval-mode examples."""
  from smoothjax import attacks
  model = TinyNoisyCNN(noise="none", width=8)
  g, params, rest = _split(model)
  # Running statistics far from the batch's, so the two BatchNorm modes disagree.
  rest = jax.tree.map(lambda v: v * 3.0 + 0.5, rest)
  rng = np.random.RandomState(3)
  x = jnp.asarray(rng.rand(8, 32, 32, 3), jnp.float32)
  y = jnp.asarray(rng.randint(0, 10, 8))
  eps, key = 8 / 255, jax.random.key(1)
  fast = training.Objective(name="fast", eps=eps)
  assert fast.attack_train_mode
  got = training.adversarial_examples(fast, g, params, rest, x, y, key=key)
  train_fn = lambda xx, kk: training.forward(g, params, rest, xx, key=kk, train=True)[0]
  eval_fn = lambda xx, kk: training.forward(g, params, rest, xx, key=kk, train=False)
  want = attacks.fgsm(train_fn, x, y, key=key, eps=eps, random_start=True)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  eval_adv = attacks.fgsm(eval_fn, x, y, key=key, eps=eps, random_start=True)
  assert np.abs(np.asarray(got) - np.asarray(eval_adv)).max() > eps
  as_eval = training.Objective(name="fast", eps=eps, attack_bn="eval")
  np.testing.assert_array_equal(
      np.asarray(training.adversarial_examples(as_eval, g, params, rest, x, y, key=key)),
      np.asarray(eval_adv))
  assert not training.Objective(name="adversarial", eps=eps).attack_train_mode


def test_craft_fgsm_random_start_steps_by_1_25_eps():
  """craft("fgsm", random_start=True) takes Wong et al.'s 1.25 eps step, as fgsm() does."""
  from smoothjax import attacks
  import tiny_model
  model = tiny_model.TinyLinear(hw=4)
  g, state = nnx.split(model)
  fn = lambda xx, kk: nnx.merge(g, state)(xx, key=kk)
  x = tiny_model.images(6, hw=4)
  x = 0.25 + 0.5 * x  # away from the [0, 1] bounds
  y = np.arange(6) % 4
  eps, key = 8 / 255, jax.random.key(0)
  got = attacks.craft("fgsm", fn, x, y, key=key, eps=eps, random_start=True, batch_size=6)
  want = attacks.fgsm(fn, jnp.asarray(x), jnp.asarray(y), key=jax.random.fold_in(key, 0),
                      eps=eps, random_start=True)
  np.testing.assert_allclose(got, np.asarray(want), atol=1e-7)
  plain = attacks.fgsm(fn, jnp.asarray(x), jnp.asarray(y), key=jax.random.fold_in(key, 0),
                       eps=eps, random_start=True, step_size=eps)
  assert np.abs(got - np.asarray(plain)).max() > 1e-3


def test_resume_from_a_copied_checkpoint_is_bit_exact(tmp_path, monkeypatch, capsys):
  """config.resume_from: a fresh workdir continues another run's train state bit for bit."""
  import shutil

  from smoothjax import checkpoints

  c = _tiny_config(tmp_path, epochs=2, checkpoint_every_steps=3, best_metric="accuracy",
                   val_pgd_examples=0, keep_worst=False, eval_every_epochs=1)
  c.objective.name = "standard"

  def new_model():
    return TinyNoisyCNN(noise="pni_w", width=8)

  def params(wd, step):
    state, opt, _ = checkpoints.TrainCheckpointer(wd, keep=2).restore(
        step, model_state_target=nnx.to_pure_dict(nnx.state(new_model())),
        train_state_target=None)
    return _flat(state)

  a = tmp_path / "A"
  training.train_and_evaluate(c, a, model=new_model())  # 20 steps uninterrupted
  out = capsys.readouterr().out
  # The end-of-run summary (process 0): best checkpoint, its validation, wall time, the files.
  best = checkpoints.TrainCheckpointer(a, keep=2).best_step()
  assert f"[train] best checkpoint: {a.absolute() / 'best' / str(best)} (step {best})" in out
  assert "; validation accuracy " in out and "smoothed_accuracy" in out
  assert "[train] training done in " in out
  assert f"config {a.absolute() / 'config.json'}" in out
  assert f"metrics {a.absolute() / 'metrics.jsonl'}" in out

  class Stop(Exception):
    pass

  save = training_loop.save_checkpoint

  def save_then_stop(ckpts, state, step, val):
    save(ckpts, state, step, val)
    if step >= 6:
      raise Stop
  monkeypatch.setattr(training_loop, "save_checkpoint", save_then_stop)
  b = tmp_path / "B"
  with pytest.raises(Stop):
    training.train_and_evaluate(c, b, model=new_model())
  monkeypatch.undo()
  src = tmp_path / "copied" / "6"
  shutil.copytree(b / "checkpoints" / "6", src)
  shutil.rmtree(b)

  c.resume_from = str(src)
  cdir = tmp_path / "C"
  training.train_and_evaluate(c, cdir, model=new_model())
  assert f"resuming from {src.absolute()} (step 6)" in capsys.readouterr().err
  pa, pc = params(a, 20), params(cdir, 20)
  assert pa.keys() == pc.keys()
  for k in pa:
    np.testing.assert_array_equal(pa[k], pc[k], err_msg="/".join(map(str, k)))
  # C really continued from step 6 (a fresh start would give the same parameters too).
  from smoothjax import metrics as metrics_lib
  assert min(r["step"] for r in metrics_lib.read_metrics(cdir) if r["split"] == "train") > 6
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(checkpoints.CheckpointError, match="holds no finished train checkpoint"):
    checkpoints.train_step_dir(empty)
