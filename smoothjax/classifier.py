"""The model interface of smoothjax, and an adapter that gives it to any JAX classifier.

:func:`smoothjax.smoothing.sample_votes`, :func:`smoothjax.certify.certify`,
:func:`smoothjax.smoothing.make_logits_fn` (hence every attack) and the evaluation driver accept
any NNX module that satisfies :class:`Classifier`: the models of :mod:`smoothjax.models` do,
and :class:`FunctionClassifier` wraps a classifier smoothjax did not build (plain JAX, Flax
Linen ``apply``, Equinox, a hand-written NNX module's forward) so that it can be smoothed,
certified and attacked. The smoothing draws the Gaussian input noise itself; the classifier
only has to map a batch of [0, 1] images to logits.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from smoothjax import classifier, smoothing
  >>> def logits_fn(params, x):                      # any (params, images) -> logits
  ...   return x.reshape(x.shape[0], -1) @ params["w"]
  >>> params = {"w": jnp.zeros((4 * 4 * 3, 10))}
  >>> model = classifier.FunctionClassifier(logits_fn, params, num_classes=10)
  >>> votes = smoothing.sample_votes(0, model, jnp.zeros((2, 4, 4, 3)), sigma=0.25,
  ...                                prefixes=(8,), votes=("hard",))
  >>> votes["hard"].shape  # (prefixes, images, classes) integer counts
  (1, 2, 10)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol, runtime_checkable

import jax
from flax import nnx

from smoothjax import noise as noise_lib

__all__ = ["Classifier", "ClassifierConfig", "FunctionClassifier"]


@runtime_checkable
class Classifier(Protocol):
  """What smoothjax needs of a model (an ``nnx.Module``, so that ``nnx.split`` applies).

  Attributes:
    config: has ``num_classes``, ``std`` (per-channel normalisation std: the unit of
      ``sigma_space="normalized"``) and ``noise`` (a :class:`smoothjax.noise.NoiseConfig`:
      ``input_sigma`` / ``sigma_space`` of the model's own input noise, ``any_model_noise``:
      whether a forward pass needs a key). :class:`smoothjax.models.ModelConfig` and
      :class:`ClassifierConfig` are two such configs.
  """

  config: Any

  def __call__(self, x: jax.Array, *, key: jax.Array | None = None, train: bool = False,
               sigma: Any = None, noise: bool = True) -> jax.Array:
    """Logits ``(B, num_classes)`` of NHWC images ``x`` in [0, 1].

    ``key`` drives the model's own noise (``fold_in(key, 0)`` its Gaussian input noise of std
    ``sigma``, default ``config.noise.input_sigma``); ``noise=False`` is a clean pass;
    ``train`` selects BatchNorm batch statistics.
    """


@dataclasses.dataclass(frozen=True)
class _OwnNoise(noise_lib.NoiseConfig):
  """A foreign classifier's noise: none of smoothjax's, maybe its own (``stochastic``)."""

  stochastic: bool = False

  @property
  def any_model_noise(self) -> bool:
    return self.stochastic

  @property
  def spec(self) -> str:
    return "own" if self.stochastic else "none"


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  """The :class:`Classifier` config of a :class:`FunctionClassifier`.

  Attributes:
    num_classes: number of classes.
    stochastic: whether the classifier is randomized itself (it then gets a key per pass).
    mean, std: the input normalisation the classifier applies internally, if any (``std``
      is only used for ``sigma_space="normalized"``).
  """

  num_classes: int
  stochastic: bool = False
  mean: tuple[float, ...] = (0.0, 0.0, 0.0)
  std: tuple[float, ...] = (1.0, 1.0, 1.0)

  @property
  def noise(self) -> noise_lib.NoiseConfig:
    return _OwnNoise(stochastic=self.stochastic)


class FunctionClassifier(nnx.Module):
  """A :class:`Classifier` around ``logits_fn(params, x)`` (or ``(params, x, key)``).

  Args:
    logits_fn: ``logits_fn(params, x) -> (B, num_classes)`` for NHWC images ``x`` in [0, 1];
      with ``stochastic=True``, ``logits_fn(params, x, key)`` (``key`` is ``None`` for a
      clean pass). Pure and traceable: it runs inside ``jax.jit`` and ``jax.grad``.
    params: its parameters (any pytree of arrays, or ``None``); they become ``nnx.Param``
      variables, so compiled programs take them as arguments.
    num_classes: number of classes.
    stochastic: see ``logits_fn``.
  """

  def __init__(self, logits_fn: Callable[..., jax.Array], params: Any = None, *,
               num_classes: int, stochastic: bool = False):
    self.logits_fn = logits_fn
    self.params = nnx.data(jax.tree.map(nnx.Param, params))
    self.config = ClassifierConfig(int(num_classes), stochastic=bool(stochastic))

  def __call__(self, x: jax.Array, *, key: jax.Array | None = None, train: bool = False,
               sigma: Any = None, noise: bool = True) -> jax.Array:
    del train  # a foreign classifier has no BatchNorm mode to switch
    if not noise:
      key = None
    if key is not None and sigma is not None and not (isinstance(sigma, (int, float))
                                                      and sigma == 0):
      x = noise_lib.add_input_noise(jax.random.fold_in(key, 0), x, sigma)
    params = jax.tree.map(lambda v: v[...], self.params,
                          is_leaf=lambda v: isinstance(v, nnx.Variable))
    if self.config.stochastic:
      return self.logits_fn(params, x, None if key is None else jax.random.fold_in(key, 1))
    return self.logits_fn(params, x)
