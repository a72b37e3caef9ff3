"""``logits_fn(x, key)`` of a split model with the model's own (per batch) input noise.

Smoothed probabilities of any ``logits_fn`` are ``smoothjax.smoothing.SmoothedProbs``
(re-exported by :mod:`smoothjax.attacks` as ``SmoothedProbs`` / ``smoothed_probs_fn``).
"""

from __future__ import annotations

import jax

from smoothjax import models as models_lib


@jax.tree_util.register_pytree_node_class
class BatchNoiseLogits:
  """``logits_fn(x, key)`` of a split smoothjax model, input noise drawn per batch, as a pytree.

  The model's own forward pass (:func:`smoothjax.models.apply`): its input noise is one draw of
  the batch's shape from ``fold_in(key, 0)``, so an image's noise depends on its place in the
  batch (``smoothjax.smoothing.PerImageNoiseLogits`` keys each image's noise by its index, as
  the Monte-Carlo votes do).

  Passing a pytree (rather than a closure over the parameters) lets the attacks take the
  parameters as arguments of their compiled programs: no recompilation for a new checkpoint of
  the same architecture or a new sigma, and no parameters baked into the program as constants.

  Attributes:
    graphdef, state: from ``nnx.split(model)``.
    sigma: input-noise std (the model's own when ``None``), in the model's ``sigma_space``.
    noise: ``False`` runs the model without any noise.
  """

  def __init__(self, graphdef, state, sigma=None, noise: bool = True):
    self.graphdef, self.state, self.sigma, self.noise = graphdef, state, sigma, noise

  def __call__(self, x: jax.Array, key: jax.Array) -> jax.Array:
    return models_lib.apply(self.graphdef, self.state, x, key=key, sigma=self.sigma,
                            noise=self.noise)

  def tree_flatten(self):
    return (self.state, self.sigma), (self.graphdef, self.noise)

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(aux[0], children[0], children[1], aux[1])


ModelLogits = BatchNoiseLogits  # its former name


def model_logits_fn(graphdef, state, *, sigma=None, noise: bool = True) -> BatchNoiseLogits:
  """``logits_fn(x, key)`` of ``nnx.split(model)`` for the attacks (:class:`BatchNoiseLogits`)."""
  return BatchNoiseLogits(graphdef, state, sigma, noise)
