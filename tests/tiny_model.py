"""A tiny linear classifier with the smoothjax model interface, for fast smoothing tests."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from smoothjax import models


class TinyLinear(nnx.Module):
  """A linear classifier on tiny images with the smoothjax model interface (fast to compile).

  Optional Gaussian weight noise of std ``weight_noise`` drawn from ``fold_in(key, 1)``.
  """

  def __init__(self, *, num_classes=4, hw=4, weight_noise=0.0, scale=1.0, key=0):
    noise = "pni_w" if weight_noise else "none"
    self.config = models.ModelConfig("resnet20", num_classes=num_classes, noise=noise)
    kw, kb = jax.random.split(jax.random.key(key))
    self.w = nnx.Param(scale * jax.random.normal(kw, (hw * hw * 3, num_classes)) / hw)
    self.b = nnx.Param(0.1 * jax.random.normal(kb, (num_classes,)))
    self.weight_noise = weight_noise

  def __call__(self, x, *, key=None, train=False, sigma=None, noise=True):
    assert sigma in (None, 0)
    mean = jnp.asarray(self.config.mean)
    std = jnp.asarray(self.config.std)
    xn = ((x - mean) / std).reshape(x.shape[0], -1)
    w = self.w[...]
    if noise and key is not None and self.weight_noise:
      w = w + self.weight_noise * jax.random.normal(jax.random.fold_in(key, 1), w.shape)
    return xn @ w + self.b[...]


def images(n, hw=4, seed=0):
  return np.random.RandomState(seed).rand(n, hw, hw, 3).astype(np.float32)
