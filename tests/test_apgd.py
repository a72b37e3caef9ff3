"""APGD-CE / APGD-DLR: schedule, DLR loss, EOT gradient, constraints, keys and parity with
torchattacks' independent PyTorch APGD (exact on a tiny model, statistical on ResNet-20)."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from smoothjax import attacks
from smoothjax.attacks import _apgd as apgd

HW, C = 4, 5
D = HW * HW * 3
_rng = np.random.RandomState(0)
W = jnp.asarray(_rng.randn(D, C).astype(np.float32))
B = jnp.asarray(0.1 * _rng.randn(C).astype(np.float32))


def clean_fn(x, key):
  del key
  return x.reshape(x.shape[0], -1) @ W + B[None]


def noisy_fn(x, key):
  """Weight noise (one draw per pass, shared by the batch) and Gaussian input noise."""
  xf = x.reshape(x.shape[0], -1)
  xf = xf + 0.1 * jax.random.normal(jax.random.fold_in(key, 0), xf.shape)
  w = W + 0.5 * jax.random.normal(jax.random.fold_in(key, 1), W.shape)
  return xf @ w + B[None]


def _images(n, seed=0):
  return np.random.RandomState(seed).rand(n, HW, HW, 3).astype(np.float32)


def _labels(x):
  return np.array(jnp.argmax(clean_fn(jnp.asarray(x), None), -1))  # writable (for torch)


# --------------------------------------------------------------------------------------------
# Schedule and loss
# --------------------------------------------------------------------------------------------


def test_checkpoints():
  want = (22, 41, 57, 70, 80, 87, 93, 99)  # ceil(p_j * 100), Croce & Hein section 3.2
  assert apgd.checkpoints(100) == want
  assert apgd.checkpoints(100, "paper") == want
  # AutoAttack's integer windows for N = 20: 4, then 3, 2, then 1 step (the minimum).
  assert apgd.checkpoints(20) == (4, 7, 9) + tuple(range(10, 21))
  assert apgd.checkpoints(20, "paper") == (5, 9, 12, 14, 16, 18, 19, 20)
  assert apgd.checkpoints(1) == (1,)
  for n in (1, 2, 5, 37, 250):
    for sched in ("autoattack", "paper"):
      w = apgd.checkpoints(n, sched)
      assert list(w) == sorted(set(w)) and 1 <= w[0] and w[-1] <= n
  with pytest.raises(ValueError):
    apgd.checkpoints(0)


def _dlr_numpy(z, y):
  zs = np.sort(z, 1)
  z_y = z[np.arange(len(z)), y]
  other = np.where(np.eye(z.shape[1], dtype=bool)[y], -np.inf, z).max(1)
  return -(z_y - other) / (zs[:, -1] - zs[:, -3] + 1e-12)


def test_dlr_loss():
  rng = np.random.RandomState(1)
  z = rng.randn(64, 10).astype(np.float32) * 3
  y = rng.randint(0, 10, 64)
  got = np.asarray(apgd.dlr_loss(jnp.asarray(z), jnp.asarray(y)))
  np.testing.assert_allclose(got, _dlr_numpy(z, y), rtol=1e-5, atol=1e-6)
  # Positive exactly when misclassified; invariant to shifting and rescaling the logits.
  np.testing.assert_array_equal(got > 0, z.argmax(1) != y)
  np.testing.assert_allclose(np.asarray(apgd.dlr_loss(jnp.asarray(2.5 * z + 7), jnp.asarray(y))),
                             got, rtol=1e-4, atol=1e-5)
  torch = pytest.importorskip("torch")
  torchattacks = pytest.importorskip("torchattacks")
  ref = torchattacks.APGD.dlr_loss(None, torch.from_numpy(z), torch.from_numpy(y)).numpy()
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="3 classes"):
    apgd.dlr_loss(jnp.zeros((2, 2)), jnp.zeros((2,), jnp.int32))


# --------------------------------------------------------------------------------------------
# EOT
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_eot_gradient_is_mean_of_single_draw_gradients(loss):
  x = jnp.asarray(_images(6))
  y = jnp.asarray(_labels(x))
  key = jax.random.key(3)
  m = 5
  lossf = {"ce": lambda z, y: -jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], 1)[:, 0],
           "dlr": apgd.dlr_loss}[loss]

  @jax.jit
  def single(j):
    k = jax.random.fold_in(key, j)
    g = jax.grad(lambda xv: jnp.sum(lossf(noisy_fn(xv, k), y)))(x)
    z = noisy_fn(x, k)
    return g, lossf(z, y), jax.nn.softmax(z)

  draws = [single(j) for j in range(m)]
  g, l, p = apgd.eot_gradient(noisy_fn, x, y, key=key, samples=m, loss=loss)
  np.testing.assert_allclose(g, sum(d[0] for d in draws) / m, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(l, sum(d[1] for d in draws) / m, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(p, sum(d[2] for d in draws) / m, rtol=1e-5, atol=1e-6)
  # The draws are genuinely different (the test would be vacuous otherwise) ...
  assert float(jnp.abs(draws[0][0] - draws[1][0]).max()) > 1e-3
  # ... each row is its image's own gradient, and m = 1 is the single draw fold_in(key, 0).
  g1, _, _ = apgd.eot_gradient(noisy_fn, x, y, key=key, samples=1, loss=loss)
  np.testing.assert_allclose(g1, draws[0][0], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# The attack
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss,norm,eps", [("ce", "linf", 0.05), ("dlr", "l2", 0.5)])
def test_constraints_keys_and_strength(loss, norm, eps):
  x = _images(32)
  y = _labels(x)
  kw = dict(eps=eps, steps=10, loss=loss, norm=norm, eot_samples=2, restarts=2)
  xa, info = apgd.apgd(noisy_fn, x, y, key=0, return_info=True, **kw)
  xa = np.asarray(xa)
  assert xa.shape == x.shape and xa.dtype == np.float32
  assert xa.min() >= 0 and xa.max() <= 1
  d = (xa - x).reshape(len(x), -1)
  if norm == "linf":
    assert np.abs(d).max() <= eps + 1e-6
  else:
    assert np.linalg.norm(d, axis=1).max() <= eps * (1 + 1e-5)
  assert np.abs(d).max() > eps / 10  # it moved
  assert info.fooled.shape == (32,) and info.loss.shape == (32,)
  np.testing.assert_array_equal(xa, apgd.apgd(noisy_fn, x, y, key=0, **kw))  # same key
  assert not np.array_equal(xa, apgd.apgd(noisy_fn, x, y, key=1, **kw))
  # The attack works: it breaks more images (under the noisy model) than a random point of
  # the ball does.
  probs = attacks.smoothed_probs_fn(noisy_fn, num_samples=32, vote="soft")
  k = jax.random.key(9)
  acc_adv = float(np.mean(np.asarray(probs(jnp.asarray(xa), k)).argmax(1) == y))
  acc_clean = float(np.mean(np.asarray(probs(jnp.asarray(x), k)).argmax(1) == y))
  assert acc_adv < acc_clean - 0.2, (acc_adv, acc_clean)


def test_images_do_not_interact_and_jit():
  # On a deterministic model only the random start couples the batch, and it depends on the
  # batch's shape, not its content: image 0's result is the same next to any other image.
  x = _images(3)
  y = _labels(x)
  kw = dict(key=jax.random.key(5), eps=0.05, steps=12, loss="ce")
  a = np.asarray(apgd.apgd(clean_fn, x[[0, 1]], y[[0, 1]], **kw))
  b = np.asarray(apgd.apgd(clean_fn, x[[0, 2]], y[[0, 2]], **kw))
  np.testing.assert_array_equal(a[0], b[0])
  # Jittable: under the caller's jit it is inlined and gives the same result.
  c = jax.jit(lambda xv, yv: apgd.apgd(clean_fn, xv, yv, **kw))(x[[0, 1]], y[[0, 1]])
  np.testing.assert_allclose(np.asarray(c), a, atol=1e-6)


def test_autoattack_rand_takes_the_worst_case_per_image():
  x = _images(48, seed=2)
  y = _labels(x)
  eps, key = 0.03, jax.random.key(7)
  kw = dict(eps=eps, steps=8, eot_samples=2)
  x_ce = np.asarray(apgd.apgd(noisy_fn, x, y, key=jax.random.fold_in(key, 0), loss="ce", **kw))
  x_dlr = np.asarray(apgd.apgd(noisy_fn, x, y, key=jax.random.fold_in(key, 1), loss="dlr",
                               **kw))
  # Score with the clean model: the scorer, not the attacks' noisy criterion, decides.
  xa, info = apgd.autoattack_rand(noisy_fn, x, y, key=key, score_fn=clean_fn, return_info=True,
                                  **kw)
  xa = np.asarray(xa)
  f_ce, f_dlr = _labels(x_ce) != y, _labels(x_dlr) != y
  assert 0 < f_ce.sum() < len(x)  # both branches of the choice are exercised
  np.testing.assert_array_equal(xa[f_ce], x_ce[f_ce])
  np.testing.assert_array_equal(xa[~f_ce], x_dlr[~f_ce])
  np.testing.assert_array_equal(np.asarray(info.fooled), f_ce | f_dlr)
  np.testing.assert_array_equal(_labels(xa) != y, f_ce | f_dlr)
  # A pytree scorer (a smoothed prediction) is compiled with its arrays as arguments.
  probs = attacks.smoothed_probs_fn(noisy_fn, num_samples=4)
  xs, info_s = apgd.autoattack_rand(noisy_fn, x, y, key=key, score_fn=probs, return_info=True,
                                    **kw)
  from_ce = np.all(np.asarray(xs) == x_ce, axis=(1, 2, 3))
  assert np.all(from_ce | np.all(np.asarray(xs) == x_dlr, axis=(1, 2, 3)))
  assert np.all(np.asarray(info_s.fooled)[from_ce & ~np.all(x_ce == x_dlr, axis=(1, 2, 3))])
  # Without a scorer the attacks' own criterion is used.
  xb = apgd.autoattack_rand(noisy_fn, x, y, key=key, **kw)
  _, i_ce = apgd.apgd(noisy_fn, x, y, key=jax.random.fold_in(key, 0), loss="ce",
                      return_info=True, **kw)
  sel = np.asarray(i_ce.fooled)
  np.testing.assert_array_equal(np.asarray(xb)[sel], x_ce[sel])
  np.testing.assert_array_equal(np.asarray(xb)[~sel], x_dlr[~sel])


def test_bad_settings():
  x, y = _images(2), np.zeros(2, np.int32)
  for kw in (dict(loss="kl"), dict(norm="l1"), dict(steps=0), dict(eot_samples=0),
             dict(restarts=0), dict(rho=1.5), dict(eps=-1.0), dict(schedule="x"),
             dict(x_init=np.zeros((3, HW, HW, 3)))):
    args = dict(key=0, eps=0.1) | kw
    with pytest.raises(ValueError):
      apgd.apgd(clean_fn, x, y, **args)


# --------------------------------------------------------------------------------------------
# Parity with torchattacks' APGD (an independent PyTorch implementation)
# --------------------------------------------------------------------------------------------


def _torch_start(xt, eps, norm, seed=0):
  """torchattacks' / AutoAttack's random start, drawn as they draw it after manual_seed."""
  import torch
  torch.random.manual_seed(seed)
  if norm == "Linf":
    t = 2 * torch.rand(xt.shape) - 1
    t = t / t.reshape(len(t), -1).abs().max(1)[0].reshape(-1, 1, 1, 1)
  else:
    t = torch.randn(xt.shape)
    t = t / ((t ** 2).sum((1, 2, 3), keepdim=True).sqrt() + 1e-12)
  return (xt + eps * t).clamp(0, 1).numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("loss,norm,eps,min_same", [
    ("ce", "Linf", 0.03, 0.95), ("dlr", "Linf", 0.03, 0.8), ("ce", "L2", 0.3, 0.5),
    ("dlr", "L2", 0.3, 0.4)])
def test_matches_torchattacks_on_a_linear_model(loss, norm, eps, min_same):
  """From the same start, on the same linear model, both find the same examples.

  Float rounding differs between the libraries and a step-size decision can amplify it (most
  in L2, whose steps are continuous), so only most examples are bitwise close; which images
  are broken agrees exactly.
  """
  torch = pytest.importorskip("torch")
  torchattacks = pytest.importorskip("torchattacks")
  torch.set_num_threads(1)
  x = _images(200)
  y = _labels(x)

  class Linear(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.w = torch.nn.Parameter(torch.from_numpy(np.array(W)), requires_grad=False)
      self.b = torch.nn.Parameter(torch.from_numpy(np.array(B)), requires_grad=False)

    def forward(self, xt):  # NCHW -> the NHWC flattening of clean_fn
      return xt.permute(0, 2, 3, 1).reshape(len(xt), -1) @ self.w + self.b

  tm = Linear().eval()
  xt, yt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y).long()
  atk = torchattacks.APGD(tm, norm=norm, eps=eps, steps=20, n_restarts=1, seed=0, loss=loss,
                          eot_iter=1, rho=0.75)
  xa_t = atk(xt, yt).detach().numpy().transpose(0, 2, 3, 1)
  with torch.no_grad():
    fooled_t = tm(torch.from_numpy(xa_t.transpose(0, 3, 1, 2).copy())).argmax(1).numpy() != y
  xa_j, info = apgd.apgd(clean_fn, x, y, key=0, eps=eps, steps=20, loss=loss, norm=norm.lower(),
                         x_init=_torch_start(xt, eps, norm), return_info=True)
  xa_j, fooled_j = np.asarray(xa_j), np.asarray(info.fooled)
  np.testing.assert_array_equal(fooled_j, fooled_t)
  np.testing.assert_array_equal(_labels(xa_j) != y, fooled_t)
  assert 0.05 < fooled_t.mean() < 0.95
  d = (xa_j - x).reshape(len(x), -1)
  assert xa_j.min() >= 0 and xa_j.max() <= 1
  assert (np.abs(d).max() if norm == "Linf" else np.linalg.norm(d, axis=1).max()) <= eps + 1e-5
  same = np.abs(xa_j - xa_t).reshape(len(x), -1).max(1) < 1e-5
  assert same[fooled_t].mean() >= min_same, same[fooled_t].mean()


NUM_IMAGES, STEPS, EPS = 500, 20, 1 / 255


@pytest.mark.slow
def test_apgd_ce_robust_accuracy_matches_torchattacks(siam_twins):
  """APGD-CE-20 at eps = 1/255 on the SIAM ResNet-20, 500 lossless test images: JAX vs
  torchattacks (independent random starts) within 3 points of robust accuracy."""
  torch = pytest.importorskip("torch")
  torchattacks = pytest.importorskip("torchattacks")
  import torch_reference
  x, y, tm = siam_twins.x, siam_twins.y, siam_twins.torch_model
  assert len(x) == NUM_IMAGES
  fn = attacks.model_logits_fn(*nnx.split(siam_twins.model), noise=False)

  def acc_of(xa):
    return float(np.mean(torch_reference.logits_nhwc(tm, xa, 250).argmax(1) == y))

  clean = acc_of(x)
  t0 = time.time()
  xa_j = np.concatenate([np.asarray(apgd.apgd(
      fn, x[i:i + 250], y[i:i + 250], key=jax.random.fold_in(jax.random.key(0), i), eps=EPS,
      steps=STEPS, loss="ce")) for i in range(0, NUM_IMAGES, 250)])
  t_jax = time.time() - t0
  assert np.abs(xa_j - x).max() <= EPS + 1e-6 and xa_j.min() >= 0 and xa_j.max() <= 1
  t0 = time.time()
  atk = torchattacks.APGD(tm, norm="Linf", eps=EPS, steps=STEPS, n_restarts=1, seed=0,
                          loss="ce", eot_iter=1, rho=0.75)
  xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  xa_t = np.concatenate([
      atk(xt[i:i + 250], torch.from_numpy(y[i:i + 250])).detach().numpy().transpose(0, 2, 3, 1)
      for i in range(0, NUM_IMAGES, 250)])
  t_torch = time.time() - t0
  acc_jax, acc_torch = acc_of(xa_j), acc_of(xa_t)
  print(f"eps=1/255 APGD-CE-{STEPS} on {NUM_IMAGES} images: clean {clean:.3f}  JAX {acc_jax:.3f}"
        f" ({t_jax:.0f} s)  torchattacks {acc_torch:.3f} ({t_torch:.0f} s)")
  assert 0.05 < acc_torch < clean - 0.3  # neither 0 nor clean: a difference would show
  assert abs(acc_jax - acc_torch) <= 0.03, (acc_jax, acc_torch)
