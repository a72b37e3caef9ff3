"""Statistics and invariances of the noise pieces (He et al. 2019; Zheltonozhskii et al. 2020)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smoothjax import noise as noise_lib

_DRAWS = 20_000


def _draws(layer, w, n=_DRAWS):
  keys = jax.random.split(jax.random.key(0), n)
  return np.asarray(jax.vmap(lambda k: layer.sample(w, k))(keys), np.float64)


@pytest.mark.parametrize("granularity", ["layer", "channel", "element"])
def test_pni_weight_noise_std_is_alpha_times_std_w(granularity):
  shape = (3, 3, 2, 4)
  w = jax.random.normal(jax.random.key(1), shape) * 0.3
  layer = noise_lib.PNIWeightNoise(shape, granularity=granularity, alpha_init=0.25)
  # Make alpha vary (where its shape allows) so the check is not of a constant.
  alpha = np.asarray(layer.alpha[...]) * np.linspace(0.5, 1.5, layer.alpha.size).reshape(
      layer.alpha.shape)
  layer.alpha[...] = jnp.asarray(alpha, jnp.float32)
  expected = np.broadcast_to(alpha * np.std(np.asarray(w), ddof=1), shape)
  s = _draws(layer, w)
  emp_std = s.std(axis=0)
  # Std of a sample std is about std / sqrt(2 N): 5 such errors is a safe bound.
  np.testing.assert_allclose(emp_std, expected, rtol=5 / np.sqrt(2 * _DRAWS))
  np.testing.assert_allclose(s.mean(axis=0), 0, atol=5 * expected.max() / np.sqrt(_DRAWS))


def test_pni_gradient_treats_std_w_as_constant():
  shape = (4, 3)
  w = jax.random.normal(jax.random.key(2), shape)
  layer = noise_lib.PNIWeightNoise(shape)
  key = jax.random.key(3)
  g = jax.grad(lambda w: layer(w, key).sum())(w)
  np.testing.assert_allclose(g, np.ones(shape), atol=1e-6)  # d(W + const * eps)/dW = 1


def test_cni_weight_noise_covariance():
  shape = (2, 2, 1, 2)  # 8 weights: a full 8x8 covariance to compare
  size = int(np.prod(shape))
  w = jax.random.normal(jax.random.key(4), shape)
  layer = noise_lib.CNIWeightNoise(shape, rank=5, key=jax.random.key(3))
  alpha_d = jax.random.uniform(jax.random.key(5), shape, minval=0.02, maxval=0.2)
  f = jax.random.normal(jax.random.key(6), (size, 5)) * 0.1
  layer.alpha_d[...] = alpha_d
  layer.factor[...] = f
  s = _draws(layer, w).reshape(_DRAWS, size)
  emp = np.cov(s, rowvar=False)
  std_w = np.std(np.asarray(w), ddof=1)
  f = np.asarray(f)
  expected = np.diag(np.abs(std_w * np.asarray(alpha_d)).reshape(-1)) + f @ f.T
  # Entry-wise standard error of a sample covariance: sqrt((S_ii S_jj + S_ij^2) / N).
  d = np.diag(expected)
  se = np.sqrt((np.outer(d, d) + expected ** 2) / _DRAWS)
  assert np.all(np.abs(emp - expected) < 5 * se), np.max(np.abs(emp - expected) / se)


def test_cni_gradient_flows_through_std_w():
  shape = (4, 3)
  w = jax.random.normal(jax.random.key(7), shape)
  layer = noise_lib.CNIWeightNoise(shape, key=jax.random.key(3))
  key = jax.random.key(8)
  g = jax.grad(lambda w: layer(w, key).sum())(w)
  assert not np.allclose(g, 1.0)  # the diagonal term depends on W through std(W)


def test_pni_activation_noise_std():
  a = jax.random.normal(jax.random.key(9), (2, 4, 4, 3)) * jnp.array([1.0, 3.0]).reshape(2, 1, 1, 1)
  layer = noise_lib.PNIActivationNoise((4, 4, 3), alpha_init=0.25)
  keys = jax.random.split(jax.random.key(10), _DRAWS)
  s = np.asarray(jax.vmap(lambda k: layer(a, k) - a)(keys), np.float64)
  per_example_std = np.asarray(a).reshape(2, -1).std(axis=1, ddof=1)
  emp = s.std(axis=0).reshape(2, -1).mean(axis=1)
  np.testing.assert_allclose(emp, 0.25 * per_example_std, rtol=0.02)
  # One draw per pass is shared by the batch (scaled per example).
  np.testing.assert_allclose(s[:, 0] / per_example_std[0], s[:, 1] / per_example_std[1],
                             rtol=1e-4, atol=1e-5)


def test_input_noise_units():
  x = jnp.full((4000, 2, 2, 3), 0.5)
  std = (0.2, 0.25, 0.5)
  key = jax.random.key(11)
  pix = np.asarray(noise_lib.add_input_noise(key, x, 0.1) - x)
  np.testing.assert_allclose(pix.reshape(-1, 3).std(0), [0.1] * 3, rtol=0.03)
  nor = np.asarray(noise_lib.add_input_noise(key, x, 0.1, sigma_space="normalized", std=std) - x)
  # After normalisation (divide by std) the noise has std sigma in every channel.
  np.testing.assert_allclose((nor / np.array(std)).reshape(-1, 3).std(0), [0.1] * 3, rtol=0.03)
  with pytest.raises(ValueError, match="sigma_space"):
    noise_lib.add_input_noise(key, x, 0.1, sigma_space="pixels")


@pytest.mark.parametrize("spec,weight,act,gran", [
    ("none", None, False, "element"),
    ("pni_w", "pni", False, "element"),
    ("pni_w:channel", "pni", False, "channel"),
    ("cni_w+pni_a", "cni", True, "element"),
    ("PNI_A", None, True, "element"),
])
def test_parse_noise(spec, weight, act, gran):
  cfg = noise_lib.parse_noise(spec)
  assert (cfg.weight, cfg.activation, cfg.pni_granularity) == (weight, act, gran)
  assert noise_lib.parse_noise(cfg.spec).weight == weight


@pytest.mark.parametrize("bad", ["gauss", "pni_w+cni_w", "cni_w:layer", "pni_w:pixel"])
def test_parse_noise_rejects(bad):
  with pytest.raises(ValueError):
    noise_lib.parse_noise(bad)


def test_noise_config_validation():
  with pytest.raises(ValueError, match="input_sigma"):
    noise_lib.NoiseConfig(input_sigma=-0.1)
  cfg = noise_lib.NoiseConfig(weight="cni", input_sigma=0.12)
  assert noise_lib.NoiseConfig.from_dict(cfg.to_dict()) == cfg


def test_rank_promotion_raises_and_explicit_broadcasts_are_bit_identical():
  """conftest.py makes implicit rank promotion an error; the explicit per-channel broadcasts
  that replaced it (``channels_last``, PNI-A's ``[None]``) give the same bits as NumPy's rule."""
  x = jax.random.uniform(jax.random.key(0), (2, 4, 4, 3))
  std = (0.2, 0.3, 0.4)
  with pytest.raises(ValueError, match="rank_promotion"):
    _ = x * jnp.asarray(std)
  key = jax.random.key(1)
  got = noise_lib.add_input_noise(key, x, 0.25, sigma_space="normalized", std=std)
  layer = noise_lib.PNIActivationNoise((4, 4, 3))
  got_a = layer(x, key)
  with jax.numpy_rank_promotion("allow"):
    want = x + noise_lib.input_noise_scale(0.25, "normalized", std) * jax.random.normal(
        key, x.shape, x.dtype)
    s = jax.lax.stop_gradient(jnp.std(x, axis=(1, 2, 3), keepdims=True, ddof=1))
    want_a = x + layer.alpha[...] * s * jax.random.normal(key, x.shape[1:], x.dtype)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  np.testing.assert_array_equal(np.asarray(got_a), np.asarray(want_a))
  assert noise_lib.channels_last(jnp.arange(3.0), 4).shape == (1, 1, 1, 3)
