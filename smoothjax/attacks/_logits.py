"""Model functions for the attacks: ``logits_fn(x, key)`` of a split model, smoothed probabilities.

Both are pytrees, so their array leaves become arguments of the compiled attacks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from smoothjax import models as models_lib
from smoothjax.attacks._common import LogitsFn

@jax.tree_util.register_pytree_node_class
class ModelLogits:
  """``logits_fn(x, key)`` of a split smoothjax model, as a pytree.

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


def model_logits_fn(graphdef, state, *, sigma=None, noise: bool = True) -> ModelLogits:
  """``logits_fn(x, key)`` of ``nnx.split(model)`` for the attacks (see :class:`ModelLogits`)."""
  return ModelLogits(graphdef, state, sigma, noise)


@jax.tree_util.register_pytree_node_class
class SmoothedProbs:
  """``probs_fn(x, key) -> (B, C)``: an ``num_samples``-sample smoothed prediction.

  ``vote="hard"`` gives vote frequencies (the fraction of samples whose argmax is each class),
  ``"soft"`` the mean softmax. Sample ``s`` runs ``logits_fn(x, fold_in(key, s))``; samples are
  looped with ``lax.scan`` (each weight-noise draw shared by the batch).
  """

  def __init__(self, logits_fn: LogitsFn, num_samples: int, vote: str = "hard"):
    if num_samples < 1:
      raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if vote not in ("hard", "soft"):
      raise ValueError(f"vote must be 'hard' or 'soft', got {vote!r}")
    self.logits_fn, self.num_samples, self.vote = logits_fn, int(num_samples), vote

  def __call__(self, x: jax.Array, key: jax.Array) -> jax.Array:
    def body(_, s):
      logits = self.logits_fn(x, jax.random.fold_in(key, s))
      if self.vote == "hard":
        return None, jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1],
                                    dtype=jnp.float32)
      return None, jax.nn.softmax(logits.astype(jnp.float32), -1)

    _, votes = jax.lax.scan(body, None, jnp.arange(self.num_samples))  # (n, B, C): small
    return jnp.mean(votes, 0)

  def tree_flatten(self):
    # An opaque logits_fn (a closure) is static; a pytree one (ModelLogits) keeps its leaves.
    return (self.logits_fn,), (self.num_samples, self.vote)

  @classmethod
  def tree_unflatten(cls, aux, children):
    obj = object.__new__(cls)
    obj.logits_fn, (obj.num_samples, obj.vote) = children[0], aux
    return obj


def smoothed_probs_fn(logits_fn: LogitsFn, *, num_samples: int,
                      vote: str = "hard") -> SmoothedProbs:
  """The smoothed probabilities of ``logits_fn`` (see :class:`SmoothedProbs`), e.g. for NAttack."""
  return SmoothedProbs(logits_fn, num_samples, vote)

