"""What every attack shares: names, the model-function type, losses, the threat-model geometry.

Also the pytree split of a model function into static structure and array leaves, so that the
compiled attacks take a model's parameters as arguments (see :class:`ModelLogits`).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from smoothjax._utils import as_key as _as_key

ATTACKS = ("none", "fgsm", "pgd", "epgd", "smoothadv", "pgd_s", "transfer", "nattack",
           "apgd_ce", "apgd_dlr", "autoattack_rand")
NORMS = ("linf", "l2")
_WHITE_BOX = ("fgsm", "pgd", "epgd", "smoothadv", "pgd_s", "apgd_ce", "apgd_dlr",
              "autoattack_rand")
_APGD = ("apgd_ce", "apgd_dlr", "autoattack_rand")

LogitsFn = Callable[[jax.Array, jax.Array], jax.Array]


class GradientMaskingWarning(UserWarning):
  """Warned when a gradient-masking sanity check (Athalye et al. 2018) fails."""


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def cross_entropy(logits: jax.Array, y: jax.Array, *, form: str = "log_softmax") -> jax.Array:
  """Per-example cross-entropy of integer labels ``y``.

  ``form="log_softmax"`` (the attacks): ``-log_softmax(logits)[y]`` in float32;
  ``form="logsumexp"`` (the training objectives): optax's ``logsumexp(logits) - logits[y]``. The
  two agree up to the last bits of their gradients; each is kept where it was used, so that
  attacks and training stay bit-identical.
  """
  if form == "logsumexp":
    return optax.softmax_cross_entropy_with_integer_labels(logits, y)
  if form != "log_softmax":
    raise ValueError(f"form must be 'log_softmax' or 'logsumexp', got {form!r}")
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  return -jnp.take_along_axis(logp, y[:, None].astype(jnp.int32), -1)[:, 0]


def kl_divergence(logits: jax.Array, p: jax.Array, *, p_logits: bool = False) -> jax.Array:
  """Per-example ``KL(p || softmax(logits))``.

  ``p``: probabilities (TRADES' inner maximisation target: ``sum xlogy(p, p) - p log q``, no
  gradient needed through ``p``), or, with ``p_logits=True``, logits of ``p`` (TRADES' training
  loss: ``sum exp(log p) (log p - log q)``, differentiable in both arguments). The two forms are
  kept as they were written in the two places that use them, so each stays bit-identical.
  """
  if p_logits:
    logp = jax.nn.log_softmax(p)
    logq = jax.nn.log_softmax(logits)
    return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)
  logq = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  return jnp.sum(jax.scipy.special.xlogy(p, p) - p * logq, -1)


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


def _per_example_norm(v: jax.Array) -> jax.Array:
  axes = tuple(range(1, v.ndim))
  return jnp.sqrt(jnp.sum(jnp.square(v), axis=axes, keepdims=True))


def _project(xa: jax.Array, x: jax.Array, eps: jax.Array, norm: str) -> jax.Array:
  """Projects ``xa`` onto the ``eps``-ball around ``x`` and then onto [0, 1].

  Clipping to [0, 1] after the projection keeps the point inside the ball for both norms
  (``x`` itself is in [0, 1], so clipping only moves coordinates towards ``x``).
  """
  d = xa - x
  if norm == "linf":
    d = jnp.clip(d, -eps, eps)
  else:
    n = _per_example_norm(d)
    d = d * jnp.minimum(1.0, eps / jnp.maximum(n, 1e-12))
  return jnp.clip(x + d, 0.0, 1.0)


def _ascent_step(g: jax.Array, step_size: jax.Array, norm: str) -> jax.Array:
  if norm == "linf":
    return step_size * jnp.sign(g)
  return step_size * g / jnp.maximum(_per_example_norm(g), 1e-12)


def _random_start(key, x, eps, norm: str, start: str, scale: float):
  if start == "none":
    return x
  if start == "normal":  # TRADES: x + 0.001 N(0, 1)
    return _project(x + scale * jax.random.normal(key, x.shape, x.dtype), x, eps, norm)
  if norm == "linf":
    d = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0) * eps
  else:  # uniform in the L2 ball: gaussian direction, radius eps * U^(1/d)
    kd, kr = jax.random.split(key)
    u = jax.random.normal(kd, x.shape, x.dtype)
    u = u / jnp.maximum(_per_example_norm(u), 1e-12)
    dim = math.prod(x.shape[1:])
    r = jax.random.uniform(kr, (x.shape[0],) + (1,) * (x.ndim - 1), x.dtype) ** (1.0 / dim)
    d = u * r * eps
  return _project(x + d, x, eps, norm)


def _is_dynamic(leaf) -> bool:
  return isinstance(leaf, (jax.Array, np.ndarray, np.generic, float, int)) and not isinstance(
      leaf, bool)


def _split_fn(fn):
  """(static, dynamic leaves) of a model function.

  Array leaves of a pytree function (e.g. :class:`ModelLogits`' parameters) become arguments of
  the compiled attack; everything else (closures, the tree structure) is static and part of the
  compilation cache key, so a closure is compiled once per identity.
  """
  leaves, treedef = jax.tree.flatten(fn)
  mask = tuple(_is_dynamic(leaf) for leaf in leaves)
  static = tuple(None if d else leaf for leaf, d in zip(leaves, mask))
  return (treedef, mask, static), tuple(leaf for leaf, d in zip(leaves, mask) if d)


def _join_fn(static, dynamic):
  treedef, mask, static_leaves = static
  it = iter(dynamic)
  leaves = [next(it) if d else leaf for d, leaf in zip(mask, static_leaves)]
  return jax.tree.unflatten(treedef, leaves)


def _attack_inputs(logits_fn, key, x):
  """``(fn_static, fn_leaves, key, x)``: the split ``logits_fn``, a typed key, float32 images."""
  fn_static, fn_leaves = _split_fn(logits_fn)
  key = _as_key(key)
  if not isinstance(x, jax.core.Tracer):
    x = jnp.asarray(x, jnp.float32)
  if x.ndim < 2:
    raise ValueError(f"x must be a batch of images (at least 2-D), got shape {x.shape}")
  return fn_static, fn_leaves, key, x


def _tracing(*trees) -> bool:
  return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(trees))


def _check_int(name: str, v, lo: int = 1) -> None:
  if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
    raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")


def _check_number(name: str, v):
  """``float(v)`` of a finite number >= 0; a traced ``v`` is returned as it is."""
  if isinstance(v, jax.core.Tracer):
    return v
  try:
    f = float(v)
  except (TypeError, ValueError):
    raise ValueError(f"{name} must be a number, got {v!r}") from None
  if not (math.isfinite(f) and f >= 0):
    raise ValueError(f"{name} must be a finite number >= 0, got {f}")
  return f


def _check_common(*, eps, steps, step_size, norm, samples=1, restarts=1):
  """The attacks' shared settings (one check for every attack and for ``craft``)."""
  if norm not in NORMS:
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
  for name, v in (("steps", steps), ("samples", samples), ("restarts", restarts)):
    _check_int(name, v)
  for name, v in (("eps", eps), ("step_size", step_size)):
    _check_number(name, v)

