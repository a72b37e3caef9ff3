"""CNI-W and BatchNorm: eval-mode (running statistics) accuracy must track batch statistics.

Issue 13: with CNI's F initialised to a constant (the reference's ``torch.ones(...) * 0.01``),
``F n_f`` is one offset shared by every weight of a layer; each draw then shifts a conv's
outputs coherently, BatchNorm's batch statistics remove the shift in training, and the running
statistics (which only see within-draw variance) cannot at evaluation: an eval-mode noisy model
predicts one class. These tests pin the mechanism and the fix (random F rows by default,
``cni_f_dist="normal"``; ``smoothjax.batchnorm.recalibrate`` over many draws).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from smoothjax import batchnorm, models, training
from smoothjax import noise as noise_lib


def test_constant_f_shifts_every_weight_alike():
  shape = (3, 3, 8, 8)
  for dist, coherent in (("constant", True), ("normal", False)):
    layer = noise_lib.CNIWeightNoise(shape, alpha_init=0.0, f_dist=dist, key=jax.random.key(0))
    s = np.asarray(layer.sample(jnp.ones(shape), jax.random.key(1)))
    # Same per-weight variance r f^2 either way, but constant F gives one offset for all.
    assert (s.std() < 1e-7) == coherent, (dist, s.std())
  f = np.asarray(noise_lib.CNIWeightNoise(shape, key=jax.random.key(2)).factor[...])
  assert abs(f.std() - 0.01) < 0.001 and abs(f.mean()) < 0.001


def test_default_config_uses_random_f_and_reference_is_an_option():
  assert noise_lib.NoiseConfig().cni_f_dist == "normal"
  m = models.build_model("resnet20", noise=noise_lib.parse_noise("cni_w"), key=0)
  ref = models.build_model("resnet20", noise=noise_lib.parse_noise("cni_w", cni_f_dist="constant"),
                           key=0)
  f = np.asarray(m.blocks[0].conv1.weight_noise.factor[...])
  assert f.std() > 0.005
  np.testing.assert_array_equal(np.asarray(ref.blocks[0].conv1.weight_noise.factor[...]),
                                np.float32(0.01))
  # F's draw does not disturb the other parameters: kernels agree between the two.
  np.testing.assert_array_equal(np.asarray(m.blocks[3].conv2.kernel[...]),
                                np.asarray(ref.blocks[3].conv2.kernel[...]))
  with pytest.raises(ValueError, match="cni_f_dist"):
    noise_lib.NoiseConfig(cni_f_dist="ones")


@pytest.mark.slow
def test_resnet20_cni_draw_variance_small_with_random_f(lossless):
  """Per BatchNorm, between-draw / within-draw variance of a CNI-W ResNet-20 at initialisation.

  Training-mode running statistics only see the within-draw part. Measured (these seeds, 256
  lossless images, 8 draws): constant F (the reference's, the old default) 0.3-3.4 per layer,
  median ~1; random F 0.11-0.33 (the remaining part is the diagonal term, alpha_d = 0.0625).
  """
  xtr = lossless[0][:256]
  ratios = {}
  for dist in ("normal", "constant"):
    m = models.build_model("resnet20", noise=noise_lib.parse_noise("cni_w", cni_f_dist=dist),
                           key=0)
    r = batchnorm.draw_variance(m, xtr, jax.random.key(7), draws=8, batch_size=256)
    ratios[dist] = np.array([v["ratio"] for v in r.values()])
  assert ratios["normal"].max() < 0.6, ratios["normal"]
  assert np.median(ratios["constant"]) > 0.6 and ratios["constant"].max() > 2, ratios["constant"]


class _NoisyBN(nnx.Module):
  """x -> noisy dense -> BatchNorm (one weight draw per pass): exact statistics to compare."""

  def __init__(self):
    self.config = models.ModelConfig("resnet20")
    self.w = nnx.Param(jax.random.normal(jax.random.key(0), (6, 3)))
    self.bn = nnx.BatchNorm(3, momentum=0.9, use_fast_variance=False, rngs=nnx.Rngs(0))

  def __call__(self, x, *, key=None, train=False, noise=True):
    w = self.w[...]
    if key is not None:
      w = w + 0.5 + jax.random.normal(key, (1, 3))  # a large per-channel offset per draw
    return self.bn(x.reshape(x.shape[0], -1) @ w, use_running_average=not train)


def test_recalibrate_sets_the_statistics_of_all_draws():
  x = np.random.RandomState(0).rand(64, 1, 2, 3).astype(np.float32)
  m = _NoisyBN()
  key = jax.random.key(3)
  out = batchnorm.recalibrate(m, x, key, draws=8, batch_size=32)
  # Direct computation: the same keys, every draw and image pooled.
  acts = []
  for b in range(2):
    for k in jax.random.split(jax.random.fold_in(key, b), 8):
      w = m.w[...] + 0.5 + jax.random.normal(k, (1, 3))
      acts.append(x[32 * b:32 * (b + 1)].reshape(32, -1) @ w)
  a = np.concatenate(acts)
  np.testing.assert_allclose(out.bn.mean[...], a.mean(0), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out.bn.var[...], a.var(0), rtol=1e-4)
  np.testing.assert_array_equal(m.bn.var[...], 1.0)  # the input model is untouched
  r = batchnorm.draw_variance(m, x, key, draws=8, batch_size=32)["bn"]
  assert r["ratio"] > 1.0  # the offset dominates: what training-mode running stats miss


def test_pooled_draws_forward_normalises_every_draw_with_the_pooled_statistics():
  """Each group gets its own draw (key fold_in(key, g)); BatchNorm sees all groups at once."""
  x = jnp.asarray(np.random.RandomState(1).rand(12, 1, 2, 3), jnp.float32)
  key = jax.random.key(4)
  m = _NoisyBN()
  out = batchnorm.pooled_draws_forward(m, x, key=key, draws=3)
  # Direct computation: the groups' activations concatenated, one BatchNorm over all of them.
  ref = _NoisyBN()
  acts = jnp.concatenate([x[4 * g:4 * (g + 1)].reshape(4, -1) @ (
      ref.w[...] + 0.5 + jax.random.normal(jax.random.fold_in(key, g), (1, 3)))
      for g in range(3)])
  want = ref.bn(acts, use_running_average=False)
  np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(m.bn.mean[...], ref.bn.mean[...], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m.bn.var[...], ref.bn.var[...], rtol=1e-5)
  assert m.bn.axis_name is None
  # One draw: the plain training-mode pass, bit for bit.
  a, b = _NoisyBN(), _NoisyBN()
  np.testing.assert_array_equal(np.asarray(batchnorm.pooled_draws_forward(a, x, key=key, draws=1)),
                                np.asarray(b(x, key=key, train=True)))
  with pytest.raises(ValueError, match="divide the batch"):
    batchnorm.pooled_draws_forward(m, x, key=key, draws=5)


def test_objective_bn_options():
  o = training.Objective(name="fast", train_bn="frozen")
  assert not o.attack_train_mode  # crafted with the only normalisation the model has
  assert training.Objective(name="fast", noise_draws=4).attack_train_mode
  with pytest.raises(ValueError, match="train_bn"):
    training.Objective(train_bn="eval")
  with pytest.raises(ValueError, match="noise_draws"):
    training.Objective(noise_draws=0)
  with pytest.raises(ValueError, match="frozen"):
    training.Objective(train_bn="frozen", noise_draws=2)
  # Frozen: the training pass is the eval-mode pass and leaves the running statistics alone.
  model = _SmallCNN(noise_lib.parse_noise("cni_w"))
  g, params, rest = nnx.split(model, nnx.Param, ...)
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
  x = jnp.asarray(np.random.RandomState(0).rand(4, 8, 8, 3), jnp.float32)
  key = jax.random.key(0)
  logits, new_rest = training.forward(g, params, rest, x, key=key, train=True, objective=o)
  np.testing.assert_array_equal(np.asarray(logits),
                                np.asarray(training.forward(g, params, rest, x, key=key)))
  assert new_rest is rest


class _SmallCNN(nnx.Module):
  """A 4-conv CNN built from smoothjax's noisy layers (CNI-W on every conv, PNI on the head)."""

  def __init__(self, noise: noise_lib.NoiseConfig, key: int = 0):
    self.config = models.ModelConfig("resnet20", noise=noise)
    rngs = nnx.Rngs(params=key)
    counter = models._KeyCounter()
    chans = ((3, 16, 1), (16, 32, 2), (32, 32, 1), (32, 64, 2))
    self.convs = nnx.List([models.NoisyConv(a, b, 3, stride=s, cfg=noise, counter=counter,
                                            rngs=rngs) for a, b, s in chans])
    self.bns = nnx.List([models._bn(b, rngs) for _, b, _ in chans])
    head = dataclasses.replace(noise, pni_granularity="element")
    self.fc = models.NoisyLinear(64, 10, weight_noise="pni", cfg=head, counter=counter,
                                 rngs=rngs)

  def __call__(self, x, *, key=None, train=False, sigma=None, noise=True):
    key = key if noise else None
    mean = jnp.asarray(self.config.mean)[None, None, None]
    std = jnp.asarray(self.config.std)[None, None, None]
    h = (x - mean) / std
    for conv, bn in zip(self.convs, self.bns):
      h = nnx.relu(bn(conv(h, key), use_running_average=not train))
    return self.fc(h.mean(axis=(1, 2)), key)


def _fine_tuned(noise: noise_lib.NoiseConfig, x, y, *, clean_steps=150, noisy_steps=60, seed=0,
                objective: training.Objective = training.Objective(), noisy_lr=0.05,
                clip_norm=0.0):
  """Noise-free training, then a short noisy fine-tune (BatchNorm as ``objective`` says).

  The noisy steps use the library's training loss (``objective_loss``, ``"standard"``
  cross-entropy) with ``objective.train_bn`` / ``objective.noise_draws``.
  """
  model = _SmallCNN(noise, key=seed)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
  tx = optax.sgd(lambda c: jnp.where(c < clean_steps, 0.05, noisy_lr), momentum=0.9)
  if clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(clip_norm), tx)
  opt_state = tx.init(params)

  def clean_loss(p, rest, xb, yb, key):
    m = nnx.merge(graphdef, p, rest)
    logits = m(xb, key=None, train=True)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
    return loss, (nnx.to_pure_dict(nnx.split(m, nnx.Param, ...)[2]), {})

  @functools.partial(jax.jit, static_argnums=(5,))
  def step(params, rest, opt_state, xb, yb, noisy, key):
    def loss_fn(p):
      if noisy:
        return training.objective_loss(objective, graphdef, p, rest, xb, yb, key=key)
      return clean_loss(p, rest, xb, yb, key)
    (_, (rest, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), rest, opt_state

  rs = np.random.RandomState(seed)
  for i in range(clean_steps + noisy_steps):
    idx = rs.choice(len(x), 128, replace=False)
    params, rest, opt_state = step(params, rest, opt_state, jnp.asarray(x[idx]),
                                   jnp.asarray(y[idx]), i >= clean_steps,
                                   jax.random.key(1000 + i))
  return nnx.merge(graphdef, params, rest)


def _accuracy(model, x, y, *, train, key):
  g, s = nnx.split(model)

  @jax.jit
  def f(s, xb, k):
    return nnx.merge(g, s, copy=True)(xb, key=k, train=train).argmax(-1)

  return float(np.mean([np.mean(np.asarray(f(s, jnp.asarray(x), jax.random.fold_in(key, d)))
                                == y) for d in range(4)]))


@pytest.fixture(scope="module")
def lossless(request):
  from conftest import shared_path
  d = np.load(shared_path("data/cifar10_lossless_3k.npz"))
  return (d["x_train"].astype(np.float32) / 255, d["y_train"],
          d["x_test"][:500].astype(np.float32) / 255, d["y_test"][:500])


@pytest.mark.slow
@pytest.mark.xfail(strict=False, run=False, reason=(  # a record (~4 min): pytest --runxfail
    "issue 13, open: with random F the coherent shift is gone, but the diagonal term at "
    "alpha_d = 0.0625 (noise ~0.9x the weights' std) still leaves the eval-mode model well "
    "below batch statistics; measured on this CNN: batch stats 0.175, eval 0.121, recalibrated "
    "0.132. The training options objective.noise_draws (BatchNorm pooled over draws) and "
    "train_bn='frozen' do not close it yet: noisy lr 0.01, 60 steps: one draw batch 0.265 / "
    "eval 0.208; 8 draws 0.316 / 0.181; frozen 0.080 / 0.080 (diverges). ResNet-20, 100 "
    "fast-AT steps: one draw eval 0.334 / batch 0.431; 8 draws 0.292 / 0.426; frozen, clip "
    "0.05, 40 steps: eval 0.234. The remedy that holds is CNI's later init with frozen "
    "BatchNorm and clipping: test_frozen_batchnorm_keeps_the_eval_mode_model."))
@pytest.mark.parametrize("f_dist", ["normal", "constant"])
def test_eval_mode_tracks_batch_statistics_after_noisy_fine_tune(lossless, f_dist):
  """Eval-mode accuracy of a CNI-W model after a short noisy fine-tune ~ batch-stat accuracy.

  The default (random F) must hold; the reference's constant F is the issue-13 failure and must
  show it, so the test keeps its power to catch the bug (the old default was ``constant``).
  """
  xtr, ytr, xte, yte = lossless
  model = _fine_tuned(noise_lib.parse_noise("cni_w", cni_f_dist=f_dist), xtr, ytr)
  key = jax.random.key(5)
  batch = _accuracy(model, xte, yte, train=True, key=key)
  evald = _accuracy(model, xte, yte, train=False, key=key)
  recal = batchnorm.recalibrate(model, xtr[:512], jax.random.key(6), draws=16, batch_size=128)
  recald = _accuracy(recal, xte, yte, train=False, key=key)
  print(f"{f_dist}: batch stats {batch:.3f}, eval {evald:.3f}, recalibrated eval {recald:.3f}")
  assert batch > 0.2, batch  # the model learnt something under noise
  assert recald > batch - 0.08, (recald, batch)  # recalibration fixes even the constant F
  if f_dist == "normal":
    assert evald > batch - 0.08, (evald, batch)
  else:
    assert evald < batch - 0.08, (evald, batch)


@pytest.mark.slow
def test_frozen_batchnorm_keeps_the_eval_mode_model(lossless):
  """The remedy of the ``resnet20_cniw_at`` preset: CNI's later init and frozen BatchNorm.

  One weight draw per batch shifts every channel's mean coherently (post-ReLU inputs have a
  non-zero mean), which batch statistics remove in training and running statistics cannot at
  evaluation. Training with the running statistics (``train_bn="frozen"``, clipped gradients)
  trains the model as it is evaluated. Measured on this CNN (alpha_d 0.01, F 1e-4, 60 noisy
  steps, 500 lossless test images, eval mode with noise): parent 0.333, frozen (lr 0.01, clip
  1.0) 0.258 (lr 0.002: 0.330), batch mode (lr 0.05, the harness' default) 0.120. On ResNet-20
  (fast AT from pretrained:resnet20_at, alpha_d 0.01): batch mode, 351 steps: eval 0.299 vs
  batch statistics 0.567; frozen, 60 steps: eval 0.508 (n = 1, validation).
  """
  xtr, ytr, xte, yte = lossless
  noise = noise_lib.parse_noise("cni_w", cni_alpha_init=0.01, cni_f_init=1e-4)
  key = jax.random.key(5)
  parent = _accuracy(_fine_tuned(noise, xtr, ytr, noisy_steps=0), xte, yte, train=False, key=key)
  frozen = _accuracy(_fine_tuned(noise, xtr, ytr, objective=training.Objective(train_bn="frozen"),
                                 noisy_lr=0.01, clip_norm=1.0), xte, yte, train=False, key=key)
  batch = _accuracy(_fine_tuned(noise, xtr, ytr), xte, yte, train=False, key=key)
  print(f"parent {parent:.3f}, frozen {frozen:.3f}, batch mode {batch:.3f}")
  assert parent > 0.25, parent
  assert frozen > parent - 0.12, (frozen, parent)
  assert batch < parent - 0.12, (batch, parent)  # the failure the remedy avoids
