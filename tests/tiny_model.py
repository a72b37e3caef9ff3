"""The tests' tiny models with the smoothjax model interface (fast to compile).

* :class:`TinyLinear`: a linear classifier (smoothing, certification).
* :class:`TinyConvNet`: one convolution, input noise at ``sigma`` (attacks).
* :class:`TinyNoisyCNN`: conv + BatchNorm + linear with PNI-W and input noise (training).
"""

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
    mean = models.noise_lib.channels_last(jnp.asarray(self.config.mean), x.ndim)
    std = models.noise_lib.channels_last(jnp.asarray(self.config.std), x.ndim)
    xn = ((x - mean) / std).reshape(x.shape[0], -1)
    w = self.w[...]
    if noise and key is not None and self.weight_noise:
      w = w + self.weight_noise * jax.random.normal(jax.random.fold_in(key, 1), w.shape)
    return xn @ w + self.b[...][None]


def images(n, hw=4, seed=0):
  return np.random.RandomState(seed).rand(n, hw, hw, 3).astype(np.float32)


class TinyConvNet(nnx.Module):
  """A one-conv NNX model with the smoothjax model interface (input noise at ``sigma``)."""

  def __init__(self, seed, *, num_classes=5):
    k1, k2 = jax.random.split(jax.random.key(seed))
    self.kernel = nnx.Param(0.5 * jax.random.normal(k1, (3, 3, 3, 4)))
    self.head = nnx.Param(jax.random.normal(k2, (4, num_classes)))

  def __call__(self, x, *, key=None, train=False, sigma=None, noise=True):
    if noise and key is not None and sigma is not None:
      x = x + sigma * jax.random.normal(jax.random.fold_in(key, 0), x.shape)
    h = jax.nn.relu(models.conv2d(x, self.kernel[...], 1, 1)).mean((1, 2))
    return h @ self.head[...]


class TinyNoisyCNN(nnx.Module):
  """A small CNN with the smoothjax model interface and semantics (fast to compile).

  Input noise from ``fold_in(key, 0)`` (per image), PNI-W weight noise on the conv from
  ``fold_in(key, 1)`` (one draw per pass), BatchNorm, global average pooling, linear head.
  """

  def __init__(self, *, noise="pni_w", input_sigma=0.0, num_classes=10, width=8, key=0):
    self.config = models.ModelConfig("resnet20", num_classes=num_classes,
                                     noise=models.noise_lib.parse_noise(
                                         noise, input_sigma=input_sigma))
    rngs = nnx.Rngs(params=jax.random.key(key))
    counter = models._KeyCounter()  # pylint: disable=protected-access
    cfg = self.config.noise
    self.conv = models.NoisyConv(3, width, 3, stride=2, cfg=cfg, counter=counter,
                                 out_spatial=16, rngs=rngs)
    self.bn = nnx.BatchNorm(width, momentum=0.9, epsilon=1e-5, use_fast_variance=False,
                            rngs=rngs)
    self.fc = models.NoisyLinear(width, num_classes, weight_noise=None, cfg=cfg,
                                 counter=counter, rngs=rngs)

  def __call__(self, x, *, key=None, train=False, sigma=None, noise=True):
    cfg = self.config
    if key is not None and noise and cfg.noise.input_sigma:
      x = models.noise_lib.add_input_noise(jax.random.fold_in(key, 0), x, cfg.noise.input_sigma,
                                           std=cfg.std)
    x = ((x - models.noise_lib.channels_last(jnp.asarray(cfg.mean), x.ndim))
         / models.noise_lib.channels_last(jnp.asarray(cfg.std), x.ndim))
    h = nnx.relu(self.bn(self.conv(x, key if noise else None), use_running_average=not train))
    return self.fc(h.mean(axis=(1, 2)), None)
