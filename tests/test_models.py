"""Models: shapes for every architecture, keys, noise on/off, BatchNorm modes, pure boundary."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from smoothjax import models

X = jax.random.uniform(jax.random.key(0), (4, 32, 32, 3))


@pytest.mark.parametrize("arch,shortcut,classes", [
    ("resnet20", "A", 10), ("resnet20", "B", 100), ("resnet32", "A", 10), ("resnet44", "B", 10),
    ("resnet56", "A", 10),
])
def test_resnet_shapes(arch, shortcut, classes):
  m = models.build_model(arch, shortcut=shortcut, num_classes=classes, key=0)
  assert m(X[:2]).shape == (2, classes)
  depth = int(arch[6:])
  convs = [k for k, _ in nnx.iter_graph(m) if k and k[-1] == "kernel"]
  # depth = 1 stem conv + 2 per block + head; option B adds 2 projection convs.
  assert len(convs) == depth + (2 if shortcut == "B" else 0)


@pytest.mark.slow
@pytest.mark.parametrize("arch,width", [("resnet110", 64), ("wrn28_4", 256), ("wrn34_10", 640)])
def test_deep_and_wide_shapes(arch, width):
  m = models.build_model(arch, num_classes=100, key=0)
  assert m(X[:1]).shape == (1, 100)
  assert m.fc.kernel.shape == (width, 100)


def test_wrn_28_4_param_count():
  m = models.build_model("wrn28_4", key=0)
  n = models.param_count(nnx.state(m, nnx.Param))
  # Zagoruyko & Komodakis' WRN-28-4 has 5.85M parameters (conv + BN + fc).
  assert abs(n - 5.85e6) / 5.85e6 < 0.01, n


@pytest.mark.parametrize("spec", ["pni_w", "pni_w:layer", "cni_w", "pni_w+pni_a", "cni_w+pni_a"])
def test_noise_off_is_bit_identical_to_plain(spec):
  plain = models.build_model("resnet20", key=3)
  noisy = models.build_model("resnet20", noise=spec, key=3)
  ref = plain(X)
  np.testing.assert_array_equal(noisy(X, noise=False), ref)
  np.testing.assert_array_equal(noisy(X, key=jax.random.key(1), noise=False), ref)
  assert not np.allclose(noisy(X, key=jax.random.key(1)), ref)


@pytest.mark.parametrize("spec", ["pni_w", "cni_w", "pni_a"])
def test_same_key_same_output_different_key_different(spec):
  m = models.build_model("resnet20", noise=spec, key=0)
  a = m(X, key=jax.random.key(1))
  np.testing.assert_array_equal(a, m(X, key=jax.random.key(1)))
  assert np.abs(np.asarray(a - m(X, key=jax.random.key(2)))).max() > 1e-3


def test_noisy_model_requires_a_key():
  m = models.build_model("resnet20", noise="pni_w", key=0)
  with pytest.raises(ValueError, match="key"):
    m(X)


def test_weight_noise_draw_is_shared_by_the_batch_input_noise_is_not():
  x = jnp.broadcast_to(X[:1], (3, 32, 32, 3))
  m = models.build_model("resnet20", noise="pni_w", key=0)
  y = m(x, key=jax.random.key(5))
  np.testing.assert_allclose(y[0], y[1], rtol=1e-5, atol=1e-5)
  y = m(x, key=jax.random.key(5), sigma=0.1)
  assert np.abs(np.asarray(y[0] - y[1])).max() > 1e-4


def test_sigma_zero_and_model_input_sigma():
  m = models.build_model("resnet20", key=0)
  np.testing.assert_array_equal(m(X, key=jax.random.key(1), sigma=0.0), m(X))
  m2 = models.build_model("resnet20", noise=models.noise_lib.NoiseConfig(input_sigma=0.25), key=0)
  with pytest.raises(ValueError, match="key"):
    m2(X)
  a = m2(X, key=jax.random.key(1))
  np.testing.assert_allclose(a, m(X, key=jax.random.key(1), sigma=0.25), rtol=1e-6)


def test_batchnorm_train_and_eval_modes():
  m = models.build_model("resnet20", key=0)
  g, s = nnx.split(m)
  y_eval = models.apply(g, s, X)
  y_train, s2 = models.apply_train(g, s, X)
  assert not np.allclose(y_eval, y_train)  # batch statistics vs running statistics
  before = np.asarray(s["bn1"]["mean"][...])
  after = np.asarray(s2["bn1"]["mean"][...])
  assert np.allclose(before, 0) and not np.allclose(after, 0)
  # PyTorch momentum 0.1: new running mean = 0.9 * 0 + 0.1 * batch mean.
  h = jax.lax.conv_general_dilated((X - jnp.asarray(m.config.mean)[None, None, None])
                                   / jnp.asarray(m.config.std)[None, None, None],
                                   m.conv1.kernel[...], (1, 1), ((1, 1), (1, 1)),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(after, 0.1 * np.asarray(h.mean(axis=(0, 1, 2))), rtol=1e-4, atol=1e-6)


def test_pure_apply_compiles_once():
  m = models.build_model("resnet20", noise="cni_w", key=0)
  g, s = nnx.split(m)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def f(s, x, key):
    return models.apply(g, s, x, key=key)

  a = f(s, X, jax.random.key(1))
  b = f(s, X, jax.random.key(2))
  assert a.shape == b.shape == (4, 10)
  np.testing.assert_allclose(a, m(X, key=jax.random.key(1)), rtol=1e-5, atol=1e-5)


def test_bad_inputs():
  m = models.build_model("resnet20", key=0)
  with pytest.raises(ValueError, match="NHWC"):
    m(jnp.zeros((2, 3, 32, 32)))
  with pytest.raises(ValueError, match="architecture"):
    models.build_model("resnet18")
  with pytest.raises(ValueError, match="shortcut"):
    models.build_model("resnet20", shortcut="C")


def test_model_config_round_trip():
  cfg = models.ModelConfig("resnet32", num_classes=100, shortcut="A", noise="cni_w+pni_a",
                           mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
  assert models.ModelConfig.from_dict(cfg.to_dict()) == cfg
