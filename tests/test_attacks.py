"""Attacks: geometry, analytic optima, key derivation, SmoothAdv's gradient, NAttack, crafting."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from smoothjax import attacks
from smoothjax.attacks import _pgd as attacks_pgd
from smoothjax.cli import attacks as attacks_cli
from smoothjax import models
from smoothjax import smoothing
from tiny_model import TinyConvNet

HW, C = 4, 5
D = HW * HW * 3


def _linear(seed=0, classes=C):
  rng = np.random.RandomState(seed)
  return (jnp.asarray(rng.randn(D, classes).astype(np.float32)),
          jnp.asarray(0.1 * rng.randn(classes).astype(np.float32)))


W, B = _linear()


def clean_fn(x, key):
  del key
  return x.reshape(x.shape[0], -1) @ W + B[None]


def noisy_fn(x, key):
  """Linear model with weight noise (one draw per forward pass, shared by the batch)."""
  w = W + 0.5 * jax.random.normal(jax.random.fold_in(key, 1), W.shape)
  return x.reshape(x.shape[0], -1) @ w + B[None]


def inoisy_fn(x, key):
  """The same with Gaussian input noise as well (per image)."""
  xf = x.reshape(x.shape[0], -1)
  xf = xf + 0.1 * jax.random.normal(jax.random.fold_in(key, 0), xf.shape)
  return noisy_fn(xf, key)


def soft_probs(x, key):
  return jax.nn.softmax(clean_fn(x, key) / 4)  # soft enough for NAttack's probability floor


def _images(n, seed=1):
  return np.random.RandomState(seed).rand(n, HW, HW, 3).astype(np.float32)


def _labels(x):
  return np.argmax(np.asarray(clean_fn(jnp.asarray(x), None)), -1)


def _acc(x, y):
  return float(np.mean(_labels(x) == y))


X = _images(32)
Y = _labels(X)  # the clean model is 100% accurate on its own predictions
KEY = jax.random.key(0)


def _linf(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def _l2(a, b):
  d = (np.asarray(a, np.float64) - np.asarray(b, np.float64)).reshape(len(a), -1)
  return np.sqrt((d ** 2).sum(1))


# ----------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_never_leaves_the_ball_or_the_box(norm):
  eps = 0.1 if norm == "linf" else 0.5
  # Large steps, restarts, random starts: the projection must do all the work.
  kw = dict(key=KEY, eps=eps, norm=norm)
  outs = [attacks.fgsm(noisy_fn, X, Y, step_size=3 * eps, random_start=True, **kw),
          attacks.pgd(noisy_fn, X, Y, steps=4, step_size=2 * eps, restarts=2,
                      accumulate_grad=True, **kw),
          attacks.smoothadv(noisy_fn, X, Y, steps=2, step_size=2 * eps, samples=2, **kw)]
  for xa in outs:
    xa = np.asarray(xa)
    assert xa.shape == X.shape and xa.dtype == np.float32
    assert xa.min() >= 0 and xa.max() <= 1
    if norm == "linf":
      assert _linf(xa, X) <= eps + 1e-6
    else:
      assert np.all(_l2(xa, X) <= eps * (1 + 1e-5))
    assert _acc(xa, Y) < 1.0  # and it attacked


# ----------------------------------------------------------------------------- analytic optima


def test_pgd_finds_the_linear_optimum_linf():
  # Binary linear logits: the CE of label y grows with (w_o - w_y).x, separable per coordinate,
  # so the optimum over the L-inf ball and [0, 1] is x + eps*sign(w_o - w_y), clipped.
  w2, b2 = _linear(seed=3, classes=2)

  def fn(x, key):
    return x.reshape(x.shape[0], -1) @ w2 + b2[None]

  x = _images(16, seed=4)
  y = np.random.RandomState(5).randint(0, 2, 16)
  eps = 0.1
  xa = attacks.pgd(fn, x, y, key=KEY, eps=eps, steps=10, step_size=eps / 4)
  d = np.asarray(w2[:, 1] - w2[:, 0]).reshape(HW, HW, 3)  # w_1 - w_0
  direction = np.where(y[:, None, None, None] == 0, np.sign(d), -np.sign(d))
  lo, hi = np.maximum(x - eps, 0), np.minimum(x + eps, 1)
  want = np.where(direction > 0, hi, lo)
  np.testing.assert_allclose(np.asarray(xa), want, atol=1e-6)
  # and FGSM from x reaches the same point in one step where the box does not bind
  xf = np.asarray(attacks.fgsm(fn, x, y, key=KEY, eps=eps))
  np.testing.assert_allclose(xf, np.clip(x + eps * direction, 0, 1), atol=1e-6)


def test_pgd_finds_the_linear_optimum_l2():
  w2, b2 = _linear(seed=3, classes=2)

  def fn(x, key):
    return x.reshape(x.shape[0], -1) @ w2 + b2[None]

  x = 0.25 + 0.5 * _images(8, seed=6)  # far from the box: the L2 ball alone binds
  y = np.zeros(8, np.int64)
  eps = 0.2
  d = np.asarray(w2[:, 1] - w2[:, 0]).reshape(HW, HW, 3)
  want = x + eps * d / np.linalg.norm(d)
  # From x, normalised steps of eps/4 along the constant gradient reach the optimum in 4 steps.
  xa = attacks.pgd(fn, x, y, key=KEY, eps=eps, steps=6, step_size=eps / 4, norm="l2",
                   random_start=False)
  np.testing.assert_allclose(np.asarray(xa), want, atol=1e-5)
  # From a uniform start in the ball, projected ascent converges to it.
  xa = attacks.pgd(fn, x, y, key=KEY, eps=eps, steps=30, step_size=eps / 4, norm="l2")
  delta = (np.asarray(xa) - x).reshape(8, -1)
  cos = delta @ d.reshape(-1) / (np.linalg.norm(delta, axis=1) * np.linalg.norm(d))
  assert np.all(cos > 0.999) and np.allclose(np.linalg.norm(delta, axis=1), eps, rtol=1e-4)


def test_targeted_pgd_reaches_the_target():
  target = (Y + 1) % C
  xa = attacks.pgd(clean_fn, X, target, key=KEY, eps=0.5, steps=20, step_size=0.05,
                   targeted=True)
  assert np.mean(_labels(xa) == target) >= 0.9


def test_accumulated_gradient_quirk():
  # Binary linear logits: the CE gradient is a positive multiple of w_other - w_y at every
  # point, so the sign of the running sum equals the sign of each gradient.
  w2, b2 = _linear(seed=3, classes=2)
  y2 = np.random.RandomState(5).randint(0, 2, len(X))

  def fn(x, key):
    return x.reshape(x.shape[0], -1) @ w2 + b2[None]

  kw = dict(key=KEY, eps=0.05, steps=4, step_size=0.01)
  a = attacks.pgd(fn, X, y2, **kw)
  b = attacks.pgd(fn, X, y2, accumulate_grad=True, **kw)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # With a noisy model the gradients differ from step to step, so the quirk changes the path.
  a = attacks.pgd(noisy_fn, X, Y, **kw)
  b = attacks.pgd(noisy_fn, X, Y, accumulate_grad=True, **kw)
  assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_restarts_keep_the_strongest():
  eps, kw = 0.03, dict(steps=3, step_size=0.01)
  one = np.asarray(attacks.pgd(clean_fn, X, Y, key=KEY, eps=eps, **kw))
  many = np.asarray(attacks.pgd(clean_fn, X, Y, key=KEY, eps=eps, restarts=4, **kw))
  ce = lambda xa: np.asarray(attacks.cross_entropy(clean_fn(jnp.asarray(xa), None), Y))
  fooled_one, fooled_many = _labels(one) != Y, _labels(many) != Y
  assert np.all(fooled_many >= fooled_one)
  both = ~fooled_one & ~fooled_many
  assert np.all(ce(many)[both] >= ce(one)[both] - 1e-5)
  assert np.any(ce(many) > ce(one) + 1e-4)  # restarts > 0 found something better somewhere


# ----------------------------------------------------------------------------- keys and draws


def test_epgd_with_one_sample_equals_pgd():
  # Weight and input noise: the m = 1 draw of step t is the PGD draw of step t.
  kw = dict(key=jax.random.key(7), eps=0.05, steps=4, step_size=0.0125)
  a = attacks.pgd(inoisy_fn, X, Y, **kw)
  b = attacks.epgd(inoisy_fn, X, Y, samples=1, **kw)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  c = attacks.epgd(inoisy_fn, X, Y, samples=2, **kw)
  assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_pgd_s_is_smoothadv_with_fresh_noise_and_fixed_noise_differs():
  kw = dict(key=KEY, eps=0.05, steps=3, step_size=0.0125, samples=3)
  a = attacks.pgd_s(noisy_fn, X, Y, **kw)
  b = attacks.smoothadv(noisy_fn, X, Y, fixed_noise=False, **kw)
  c = attacks.smoothadv(noisy_fn, X, Y, fixed_noise=True, **kw)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(np.asarray(a), np.asarray(c))


def _keys(base, m):
  return [jax.random.fold_in(base, j) for j in range(m)]


def _fd_grad(loss, x, h=1e-3):
  """Central finite differences of a per-example loss, all perturbations in one batch."""
  n, d = len(x), x[0].size
  e = np.eye(d, dtype=np.float32).reshape((d,) + x.shape[1:]) * h
  xp = (x[:, None] + e[None]).reshape((n * d,) + x.shape[1:])
  xm = (x[:, None] - e[None]).reshape((n * d,) + x.shape[1:])
  idx = np.repeat(np.arange(n), d)
  return ((loss(xp, idx) - loss(xm, idx)) / (2 * h)).reshape(x.shape)


def _smoothadv_loss(keys, y):
  """-log(mean_j softmax(f(x; k_j))_y) per example, in float64 NumPy (weight noise only, so a
  batch of perturbed copies sees exactly the draws of the attack)."""

  def loss(xv, idx):
    z = np.stack([np.asarray(noisy_fn(jnp.asarray(xv, jnp.float32), k), np.float64)
                  for k in keys])
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return -np.log(p.mean(0)[np.arange(len(idx)), y[idx]])

  return loss


def test_smoothadv_gradient_matches_finite_differences():
  m, base = 4, jax.random.key(11)
  x = _images(3, seed=8)
  y = np.array([0, 1, 2])
  fd = _fd_grad(_smoothadv_loss(_keys(base, m), y), x)
  for draws in ("loop", "vmap"):
    cfg = attacks_pgd._Config(steps=1, objective="smooth", samples=m, draws=draws)
    g = np.asarray(attacks_pgd._loss_grad(noisy_fn, cfg, jnp.asarray(x), jnp.asarray(y), base))
    np.testing.assert_allclose(g, fd, rtol=1e-2, atol=1e-3)
  # The attack itself (fixed noise, no random start): its draws are fold_in(k_fixed, j) with
  # k_fixed derived from the key as documented; one step follows the sign of the FD gradient.
  key = jax.random.key(21)
  k_restarts, _ = jax.random.split(key)
  _, _, k_fixed = jax.random.split(jax.random.fold_in(k_restarts, 0), 3)
  fd = _fd_grad(_smoothadv_loss(_keys(k_fixed, m), y), x)
  a = 0.01
  x1 = np.asarray(attacks.smoothadv(noisy_fn, x, y, key=key, eps=a, steps=1, step_size=a,
                                    samples=m, fixed_noise=True, random_start=False))
  clear = np.abs(fd) > 1e-3
  assert clear.mean() > 0.9
  np.testing.assert_allclose(x1[clear], np.clip(x + a * np.sign(fd), 0, 1)[clear], atol=1e-6)


def test_epgd_gradient_is_the_mean_of_single_draw_gradients():
  m, base = 3, jax.random.key(5)
  x, y = jnp.asarray(X[:4]), jnp.asarray(Y[:4])
  cfg = attacks_pgd._Config(steps=1, samples=m)
  g = attacks_pgd._loss_grad(noisy_fn, cfg, x, y, base)
  single = [jax.grad(lambda v: jnp.sum(attacks.cross_entropy(noisy_fn(v, k), y)))(x)
            for k in _keys(base, m)]
  np.testing.assert_allclose(np.asarray(g), np.mean(single, 0), rtol=1e-5, atol=1e-6)
  gv = attacks_pgd._loss_grad(noisy_fn, attacks_pgd._Config(steps=1, samples=m, draws="vmap"), x, y,
                          base)
  np.testing.assert_allclose(np.asarray(gv), np.asarray(g), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- TRADES, NAttack


def test_trades_adversary_increases_the_kl():
  x = jnp.asarray(X)
  xa = attacks.trades_adversary(clean_fn, x, key=KEY, eps=0.05, steps=5, step_size=0.0125)
  assert _linf(xa, X) <= 0.05 + 1e-6 and float(xa.min()) >= 0 and float(xa.max()) <= 1
  p = jax.nn.softmax(clean_fn(x, None))
  kl = np.asarray(attacks.kl_divergence(clean_fn(xa, None), p))
  start = x + 0.001 * jax.random.normal(KEY, x.shape)
  kl0 = np.asarray(attacks.kl_divergence(clean_fn(start, None), p))
  assert np.all(kl >= kl0) and kl.mean() > 10 * kl0.mean()


def test_nattack_lowers_the_accuracy_of_a_tiny_model():
  eps = 0.1
  xa, success = attacks.nattack(soft_probs, X, Y, key=KEY, eps=eps, population=50,
                                iterations=60)
  xa, success = np.asarray(xa), np.asarray(success)
  assert _linf(xa, X) <= eps + 1e-6 and xa.min() >= 0 and xa.max() <= 1
  fooled = _labels(xa) != Y
  assert fooled.mean() >= 0.6  # from 100% accuracy
  np.testing.assert_array_equal(fooled[success], True)  # success means misclassified


def test_nattack_on_a_smoothed_noisy_model():
  probs = attacks.smoothed_probs_fn(noisy_fn, num_samples=8, vote="hard")
  clean = np.argmax(np.asarray(probs(jnp.asarray(X), KEY)), -1) == Y
  xa, success = attacks.nattack(probs, X, Y, key=KEY, eps=0.1, population=40, iterations=40)
  after = np.argmax(np.asarray(probs(jnp.asarray(xa), jax.random.key(3))), -1) == Y
  assert after.mean() <= clean.mean() - 0.3  # 0.31 (without confirmation: 0.66)
  # A confirmed success is misclassified by a fresh query more often than not (0.23 correct;
  # without confirmation every image "succeeded" and 0.66 of them were still correct).
  assert after[np.asarray(success)].mean() < 0.5


def _coin_probs(x, key):
  """A randomized classifier: one query says class 1 with probability q(x), else class 0.

  q = 0.95 for bright images (mean > 0.5), 0.3 for dark ones, whatever the perturbation
  (eps < 0.2 cannot cross): with labels 0 the smoothed (majority) prediction is wrong exactly
  on the bright images, while a single query misclassifies 30% of the dark ones.
  """
  q = jnp.where(x.reshape(x.shape[0], -1).mean(-1) > 0.5, 0.95, 0.3)
  return jax.nn.one_hot((jax.random.uniform(key, q.shape) < q).astype(jnp.int32), C)


def test_nattack_confirms_success_with_fresh_queries():
  rng = np.random.RandomState(0)
  bright = np.arange(32) % 2 == 0
  x = np.where(bright[:, None, None, None], 0.8, 0.2) + rng.uniform(-0.1, 0.1, (32, 2, 2, 3))
  x, y = x.astype(np.float32), np.zeros(32, np.int32)
  kw = dict(key=KEY, eps=0.05, population=4, iterations=20)
  # Without confirmation a lucky query freezes nearly every dark image as "attacked"
  # (1 - 0.7^20 > 99.9% of them), although the smoothed classifier is right on all of them.
  _, lucky = attacks.nattack(_coin_probs, x, y, confirm=0, **kw)
  assert np.asarray(lucky)[~bright].mean() >= 0.9
  # Confirmed by 8 fresh re-queries, success is the smoothed misclassification: the bright
  # images (0.95^9 = 0.63 per iteration) and no dark one (0.3^9 = 2e-5 per iteration).
  xa, success = attacks.nattack(_coin_probs, x, y, confirm=8, **kw)
  np.testing.assert_array_equal(np.asarray(success), bright)
  assert _linf(xa, x) <= 0.05 + 1e-6


# ----------------------------------------------------------------------------- craft


def test_craft_is_deterministic_and_batch_padded():
  x, y = X[:7], Y[:7]
  kw = dict(key=jax.random.key(3), eps=0.05, steps=2, samples=2, batch_size=3)
  for name in ("pgd", "smoothadv"):
    a = attacks.craft(name, noisy_fn, x, y, **kw)
    b = attacks.craft(name, noisy_fn, x, y, **kw)
    assert isinstance(a, np.ndarray) and a.shape == x.shape
    np.testing.assert_array_equal(a, b)
    c = attacks.craft(name, noisy_fn, x, y, **dict(kw, key=jax.random.key(4)))
    assert not np.array_equal(a, c)
  # batch i uses fold_in(key, i): the second batch of 3 is the attack of those images alone
  a = attacks.craft("pgd", noisy_fn, x, y, **kw)
  direct = attacks.pgd(noisy_fn, x[3:6], y[3:6], key=jax.random.fold_in(kw["key"], 1),
                       eps=0.05, steps=2, step_size=0.05 / 4)
  np.testing.assert_array_equal(a[3:6], np.asarray(direct))
  np.testing.assert_array_equal(attacks.craft("none", None, x, y, key=0, eps=0.1), x)


def test_craft_transfer_and_nattack_dispatch():
  t = attacks.craft("transfer", None, X[:8], Y[:8], key=1, eps=0.05, steps=2,
                    source_logits_fn=clean_fn)
  np.testing.assert_array_equal(
      t, attacks.craft("pgd", clean_fn, X[:8], Y[:8], key=1, eps=0.05, steps=2))
  # (the settings and shapes of test_nattack_lowers_the_accuracy_of_a_tiny_model: no compile)
  n = attacks.craft("nattack", None, X, Y, key=1, eps=0.1, smoothed_probs_fn=soft_probs,
                    population=50, iterations=60)
  direct, _ = attacks.nattack(soft_probs, X, Y, key=jax.random.fold_in(jax.random.key(1), 0),
                              eps=0.1, population=50, iterations=60)
  np.testing.assert_array_equal(n, np.asarray(direct))


@pytest.mark.parametrize("kw, match", [
    (dict(name="bogus"), "unknown attack"),
    (dict(eps=-0.1), "eps"),
    (dict(eps=float("nan")), "eps"),
    (dict(steps=0), "steps"),
    (dict(norm="l1"), "norm"),
    (dict(x=X * 2), r"\[0, 1\]"),
    (dict(y=Y[:3]), "labels"),
    (dict(name="transfer"), "source"),
    (dict(name="nattack"), "smoothed_probs_fn"),
    (dict(samples=0), "samples"),
])
def test_craft_rejects_bad_input(kw, match):
  args = dict(name="pgd", x=X, y=Y, eps=0.1, steps=2)
  args.update(kw)
  with pytest.raises(ValueError, match=match):
    attacks.craft(args.pop("name"), clean_fn, args.pop("x"), args.pop("y"), key=0, **args)


def test_attack_functions_reject_bad_settings():
  with pytest.raises(ValueError, match="steps"):
    attacks.pgd(clean_fn, X, Y, key=KEY, eps=0.1, steps=0, step_size=0.1)
  with pytest.raises(ValueError, match="draws"):
    attacks.epgd(clean_fn, X, Y, key=KEY, eps=0.1, steps=1, step_size=0.1, draws="grouped")
  with pytest.raises(ValueError, match="loss"):
    attacks.pgd(clean_fn, X, Y, key=KEY, eps=0.1, steps=1, step_size=0.1, loss="hinge")
  with pytest.raises(ValueError, match="population"):
    attacks.nattack(clean_fn, X, Y, key=KEY, eps=0.1, population=1)
  with pytest.raises(ValueError, match="confirm"):
    attacks.nattack(clean_fn, X, Y, key=KEY, eps=0.1, confirm=-1)


# ----------------------------------------------------------------------------- compilation


def test_compiles_once_per_function_and_model_pytrees_do_not_recompile():
  traces = []

  def fn(x, key):
    traces.append(1)
    return noisy_fn(x, key)

  for seed in range(3):
    attacks.pgd(fn, X, Y, key=seed, eps=0.05 * (seed + 1), steps=2, step_size=0.01)
  assert len(traces) == 1  # eps, step size and key are arguments, not constants
  # A ModelLogits carries its parameters as arguments: a second model of the same architecture
  # (or another sigma) reuses the compiled attack.
  g1, s1 = nnx.split(TinyConvNet(0))
  _, s2 = nnx.split(TinyConvNet(1))
  before = attacks_pgd._attack_jit._cache_size()
  a = attacks.pgd(attacks.model_logits_fn(g1, s1, sigma=0.1), X, Y, key=KEY, eps=0.03,
                  steps=2, step_size=0.01)
  b = attacks.pgd(attacks.model_logits_fn(g1, s2, sigma=0.2), X, Y, key=KEY, eps=0.03,
                  steps=2, step_size=0.01)
  assert attacks_pgd._attack_jit._cache_size() == before + 1
  assert not np.array_equal(np.asarray(a), np.asarray(b))
  # and it is the model: sigma = 0 gives the attack on the noise-free model
  fn0 = attacks.model_logits_fn(g1, s1, sigma=0.0)
  c = attacks.pgd(fn0, X, Y, key=KEY, eps=0.03, steps=2, step_size=0.01)
  d = attacks.pgd(lambda x, k: TinyConvNet(0)(x, noise=False), X, Y, key=KEY, eps=0.03,
                  steps=2, step_size=0.01)
  np.testing.assert_allclose(np.asarray(c), np.asarray(d), atol=1e-6)


def test_works_inside_a_callers_jit():
  # The trainer builds logits_fn from traced parameters inside its own jitted step.
  @jax.jit
  def step(w, x, y, key):
    fn = lambda xv, k: xv.reshape(xv.shape[0], -1) @ w + B[None]
    return attacks.pgd(fn, x, y, key=key, eps=0.05, steps=3, step_size=0.02)

  inside = step(W, jnp.asarray(X), jnp.asarray(Y), KEY)
  outside = attacks.pgd(clean_fn, X, Y, key=KEY, eps=0.05, steps=3, step_size=0.02)
  np.testing.assert_allclose(np.asarray(inside), np.asarray(outside), atol=1e-6)


def test_conv2d_custom_vjp_matches_autodiff():
  # smoothjax.models.conv2d's input gradient is hand-written (fast inside scan bodies on CPU).
  for hw, k, s, p in [(7, 3, 2, 1), (8, 1, 2, 0), (6, 3, 1, 0)]:
    x = jax.random.normal(jax.random.key(0), (2, hw, hw, 3))
    w = jax.random.normal(jax.random.key(1), (k, k, 3, 4))
    f1 = lambda x, w: jnp.sum(jnp.sin(models.conv2d(x, w, s, p)))
    f2 = lambda x, w: jnp.sum(jnp.sin(jax.lax.conv_general_dilated(
        x, w, (s, s), ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC"))))
    for a, b in zip(jax.grad(f1, (0, 1))(x, w), jax.grad(f2, (0, 1))(x, w)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- checks, compute


def test_sanity_checks_pass_on_an_honest_model_and_flag_gradient_masking():
  acc = lambda xa: _acc(xa, Y)
  checks = attacks.run_sanity_checks(clean_fn, X, Y, key=KEY, eps=0.05, steps=7,
                                     step_size=0.0125, accuracy_fn=acc,
                                     source_logits_fn=noisy_fn, smoothed_probs_fn=soft_probs,
                                     nattack_population=50, nattack_iterations=60,
                                     nattack_images=len(X))
  names = [c["check"] for c in checks]
  assert names == ["large_eps", "more_steps", "fgsm_weaker", "white_box_vs_transfer",
                   "white_box_vs_nattack"]
  assert all(c["passed"] for c in checks), checks
  # the NAttack record says what budget ran, and that it is not Li et al.'s 300 x 500
  assert {k: checks[-1][k] for k in ("nattack_population", "nattack_iterations",
                                     "nattack_confirm", "nattack_li2019_budget")} == {
      "nattack_population": 50, "nattack_iterations": 60, "nattack_confirm": 8,
      "nattack_li2019_budget": False}

  # A masked gradient (Athalye et al.): the model's gradient points the wrong way (value x,
  # derivative -1), so gradient attacks make it *more* confident and even eps = 0.5 fails.
  def masked(x, key):
    return clean_fn(2 * jax.lax.stop_gradient(x) - x, key)

  with pytest.warns(attacks.GradientMaskingWarning, match="large_eps"):
    checks = attacks.run_sanity_checks(masked, X, Y, key=KEY, eps=0.05, steps=7,
                                       step_size=0.0125, accuracy_fn=acc)
  assert not {c["check"]: c["passed"] for c in checks}["large_eps"]


def test_attack_vs_compute_rows_and_plot(tmp_path):
  acc = lambda xa: _acc(xa, Y)
  rows = attacks.attack_vs_compute(noisy_fn, X, Y, key=KEY, eps=0.05,
                                   budgets=[(1, 1), (2, 2), (2, 1)], attacks=("pgd", "epgd"),
                                   accuracy_fn=acc)
  got = {(r["attack"], r["steps"], r["samples"]): r for r in rows}
  assert set(got) == {("pgd", 1, 1), ("pgd", 2, 1), ("epgd", 1, 1), ("epgd", 2, 2),
                      ("epgd", 2, 1)}
  assert all(r["compute"] == r["steps"] * r["samples"] for r in rows)
  assert all(0 <= r["accuracy"] <= 1 for r in rows)
  # several accuracies of the same examples (e.g. per smoothing n): one row per label
  rows2 = attacks.attack_vs_compute(noisy_fn, X, Y, key=KEY, eps=0.05, budgets=[(1, 1), (2, 2)],
                                    attacks=("pgd", "epgd"),
                                    accuracy_fn=lambda xa: {"n=1": acc(xa), "n=8": 0.5})
  assert [(r["attack"], r["compute"], r["label"]) for r in rows2] == [
      ("pgd", 1, "n=1"), ("pgd", 1, "n=8"), ("pgd", 2, "n=1"), ("pgd", 2, "n=8"),
      ("epgd", 1, "n=1"), ("epgd", 1, "n=8"), ("epgd", 4, "n=1"), ("epgd", 4, "n=8")]
  for i, r in enumerate((rows, rows2)):
    out = tmp_path / f"avc{i}.png"
    attacks.plot_attack_vs_compute(r, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_attack_vs_compute_cli_arguments():
  with pytest.raises(SystemExit):
    attacks_cli.main(["--checkpoint=x", "--budgets=4by8"])
  for bad in ("pgd,apgd_ce", "pgd,pgd", "pgd,"):  # refused before any checkpoint is read
    with pytest.raises(SystemExit):
      attacks_cli.main(["--checkpoint=x", f"--attacks={bad}"])
  assert attacks_cli._budgets("1x1, 4x8") == [(1, 1), (4, 8)]
  assert attacks_cli._fraction("8/255") == pytest.approx(8 / 255)


@pytest.mark.slow
def test_attack_vs_compute_cli(siam_resnet20, lossless_npz, tmp_path):
  out = tmp_path / "plots" / "avc.png"
  rc = attacks_cli.main([f"--checkpoint={siam_resnet20}", f"--dataset=npz:{lossless_npz}",
                     "--limit=8", "--sigma=0.05", "--eps=2/255", "--budgets=1x1,1x2",
                     "--attacks=pgd,epgd", "--n=1,4", f"--out={out}"])
  assert rc == 0 and out.exists()
  import json
  rows = json.loads(out.with_suffix(".json").read_text())["rows"]
  assert {(r["attack"], r["compute"], r["label"]) for r in rows} == {
      ("pgd", 1, "n=1"), ("pgd", 1, "n=4"), ("epgd", 1, "n=1"), ("epgd", 1, "n=4"),
      ("epgd", 2, "n=1"), ("epgd", 2, "n=4")}


def test_fgsm_is_weaker_than_pgd_on_a_real_model(siam_resnet20, lossless_npz):
  from smoothjax import checkpoints
  model, _ = checkpoints.model_from_torch(siam_resnet20)
  g, s = nnx.split(model)
  fn = attacks.model_logits_fn(g, s)
  data = np.load(lossless_npz)
  x = data["x_test"][:64].astype(np.float32) / 255
  y = data["y_test"][:64]
  acc = lambda xa: float(np.mean(np.argmax(np.asarray(fn(jnp.asarray(xa), KEY)), -1) == y))
  eps = 1 / 255
  a_fgsm = acc(attacks.fgsm(fn, x, y, key=KEY, eps=eps))
  a_pgd = acc(attacks.pgd(fn, x, y, key=KEY, eps=eps, steps=5, step_size=eps / 4))
  assert acc(x) > 0.85
  assert a_pgd < a_fgsm < acc(x)


def test_craft_apgd_dispatch_and_autoattack_rand_is_the_worst_case():
  """apgd_ce / apgd_dlr are apgd(loss=...) per batch; autoattack_rand (judged by the smoothed
  scorer) is at most as accurate as either with the same keys, also as a transfer attack."""
  x, y = X[:24], Y[:24]
  key, eps = jax.random.key(5), 0.08
  kw = dict(eps=eps, steps=3, samples=2, batch_size=24)
  probs = attacks.smoothed_probs_fn(noisy_fn, num_samples=4)
  kb = jax.random.fold_in(key, 0)  # one batch
  x_ce = attacks.craft("apgd_ce", noisy_fn, x, y, key=key, **kw)
  np.testing.assert_array_equal(x_ce, np.asarray(attacks.apgd(
      noisy_fn, x, y, key=kb, eps=eps, steps=3, eot_samples=2, loss="ce")))
  # autoattack_rand runs APGD-CE with fold_in(kb, 0) and APGD-DLR with fold_in(kb, 1)
  x_ce = np.asarray(attacks.apgd(noisy_fn, x, y, key=jax.random.fold_in(kb, 0), eps=eps,
                                 steps=3, eot_samples=2, loss="ce"))
  x_dlr = np.asarray(attacks.apgd(noisy_fn, x, y, key=jax.random.fold_in(kb, 1), eps=eps,
                                  steps=3, eot_samples=2, loss="dlr"))
  x_aa = attacks.craft("autoattack_rand", noisy_fn, x, y, key=key, smoothed_probs_fn=probs,
                       **kw)
  assert _linf(x_aa, x) <= eps + 1e-6
  k_score = jax.random.fold_in(kb, 2)  # the key autoattack_rand scores both examples with

  def acc(xa):
    return float(np.mean(np.argmax(np.asarray(probs(jnp.asarray(xa), k_score)), -1) == y))

  assert acc(x_aa) <= min(acc(x_ce), acc(x_dlr))
  assert acc(x_aa) < acc(x)
  t = attacks.craft("transfer", None, x, y, key=key, source_logits_fn=noisy_fn,
                    transfer_attack="apgd_dlr", **kw)
  np.testing.assert_array_equal(t, attacks.craft("apgd_dlr", noisy_fn, x, y, key=key, **kw))


def test_attack_vs_compute_smoothadv_uses_fixed_noise():
  acc = lambda xa: _acc(xa, Y[:8])
  rows = attacks.attack_vs_compute(noisy_fn, X[:8], Y[:8], key=KEY, eps=0.05, budgets=[(2, 2)],
                                   attacks=("smoothadv", "pgd_s"), accuracy_fn=acc)
  assert [r.get("fixed_noise") for r in rows] == [True, None]
  seen = []
  fake = lambda xa: seen.append(np.asarray(xa)) or 0.0
  attacks.attack_vs_compute(noisy_fn, X[:8], Y[:8], key=KEY, eps=0.05, budgets=[(2, 2)],
                            attacks=("smoothadv",), accuracy_fn=fake)
  want = attacks.craft("smoothadv", noisy_fn, X[:8], Y[:8], key=jax.random.fold_in(KEY, 0),
                       eps=0.05, steps=2, samples=2, fixed_noise=True)
  np.testing.assert_array_equal(seen[0], want)


def test_loss_forms_and_smoothed_reductions_agree():
  """One home for the losses and the smoothed prediction, each call site's numerics kept:
  optax's form of the CE equals optax exactly and the attacks' form to rounding; KL from
  logits equals KL from probabilities; hard votes stacked or summed give the same counts."""
  import optax  # pylint: disable=import-outside-toplevel
  logits = jax.random.normal(jax.random.key(0), (6, C)) * 3
  y = jnp.arange(6) % C
  np.testing.assert_array_equal(attacks.cross_entropy(logits, y, form="logsumexp"),
                                optax.softmax_cross_entropy_with_integer_labels(logits, y))
  np.testing.assert_allclose(attacks.cross_entropy(logits, y), attacks.cross_entropy(
      logits, y, form="logsumexp"), rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="form"):
    attacks.cross_entropy(logits, y, form="hinge")
  other = jax.random.normal(jax.random.key(1), (6, C))
  np.testing.assert_allclose(attacks.kl_divergence(logits, other, p_logits=True),
                             attacks.kl_divergence(logits, jax.nn.softmax(other)), atol=1e-5)
  stacked = attacks.smoothed_probs_fn(noisy_fn, num_samples=8, vote="hard")
  summed = attacks.SmoothedProbs(noisy_fn, 8, "hard", reduction="sum")
  np.testing.assert_array_equal(stacked(jnp.asarray(X), KEY), summed(jnp.asarray(X), KEY))
  assert attacks.SmoothedProbs is smoothing.SmoothedProbs
  with pytest.raises(ValueError, match="reduction"):
    attacks.SmoothedProbs(noisy_fn, 8, "hard", reduction="median")
