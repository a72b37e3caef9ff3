"""A classifier smoothjax did not build (plain JAX) is smoothed, certified and attacked."""

import jax
import jax.numpy as jnp
import numpy as np

from smoothjax import attacks, certify, classifier, smoothing
from tiny_model import TinyLinear, images

C = 4


def _plain_jax_mlp(params, x):
  """A two-layer MLP written with nothing but jax.numpy (no smoothjax, no Flax)."""
  h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"][None])
  return h @ params["w2"]


def _params(seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {"w1": jax.random.normal(k1, (4 * 4 * 3, 8)) / 4, "b1": jnp.zeros((8,)),
          "w2": jax.random.normal(k2, (8, C))}


def test_models_satisfy_the_protocol():
  model = classifier.FunctionClassifier(_plain_jax_mlp, _params(), num_classes=C)
  assert isinstance(model, classifier.Classifier)
  assert isinstance(TinyLinear(num_classes=C), classifier.Classifier)


def test_plain_jax_classifier_is_smoothed_certified_and_attacked():
  params = _params()
  model = classifier.FunctionClassifier(_plain_jax_mlp, params, num_classes=C)
  x = images(6)
  logits = np.asarray(_plain_jax_mlp(params, jnp.asarray(x)))
  y = logits.argmax(-1)

  # sigma = 0: every sample is the plain prediction.
  votes = smoothing.sample_votes(0, model, x, sigma=0.0, prefixes=(1, 4), votes=("hard",))
  np.testing.assert_array_equal(votes["hard"][-1], 4 * np.eye(C, dtype=int)[y])
  # sigma > 0: counts are integers summing to n, same key => same counts.
  v1 = smoothing.sample_votes(1, model, x, sigma=0.25, prefixes=(16,), votes=("hard",))
  v2 = smoothing.sample_votes(1, model, x, sigma=0.25, prefixes=(16,), votes=("hard",))
  np.testing.assert_array_equal(v1["hard"], v2["hard"])
  np.testing.assert_array_equal(np.asarray(v1["hard"]).sum(-1), 16)

  cert = certify.certify(jax.random.key(2), model, x, sigma=0.25, n0=8, num_samples=64,
                         alpha=0.01, batch_size=64)
  assert len(cert.predict) == len(x) and np.all(np.asarray(cert.radius) >= 0)

  eps = 0.1
  fn = smoothing.make_logits_fn(model, sigma=0.05)
  xa = attacks.craft("pgd", fn, x, y, key=jax.random.key(3), eps=eps, steps=3,
                     step_size=eps / 2)
  assert np.abs(xa - x).max() <= eps + 1e-6 and xa.min() >= 0 and xa.max() <= 1
  ce = lambda xx: float(np.mean(np.asarray(attacks.cross_entropy(
      _plain_jax_mlp(params, jnp.asarray(xx)), jnp.asarray(y)))))
  assert ce(xa) > ce(x)


def test_stochastic_classifier_gets_a_key_per_sample():
  def dropout_mlp(params, x, key):
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"][None])
    if key is not None:
      h = h * jax.random.bernoulli(key, 0.5, h.shape) * 2
    return h @ params["w2"]

  model = classifier.FunctionClassifier(dropout_mlp, _params(), num_classes=C, stochastic=True)
  x = images(4)
  clean = np.asarray(model(jnp.asarray(x), noise=False))
  np.testing.assert_allclose(clean, np.asarray(_plain_jax_mlp(_params(), jnp.asarray(x))),
                             rtol=1e-6)
  a = np.asarray(model(jnp.asarray(x), key=jax.random.key(0)))
  b = np.asarray(model(jnp.asarray(x), key=jax.random.key(1)))
  assert not np.allclose(a, b)
  votes = smoothing.sample_votes(0, model, x, sigma=0.0, prefixes=(32,), votes=("soft",))
  assert np.asarray(votes["soft"]).shape == (1, len(x), C)
