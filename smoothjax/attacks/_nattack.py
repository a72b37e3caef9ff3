"""NAttack (Li et al. 2019): score-based black-box NES search in tanh space, compiled.

References:
  Li et al., "NATTACK: Learning the Distributions of Adversarial Examples", ICML 2019.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from smoothjax._utils import as_key as _as_key
from smoothjax.attacks._common import _check_common, _join_fn, _project, _split_fn, _tracing

@dataclasses.dataclass(frozen=True)
class _NAttackConfig:
  population: int
  iterations: int
  sigma: float
  lr: float
  norm: str
  prob_floor: float


def _nattack_impl(fn_static, fn_leaves, x, y, key, eps, cfg: _NAttackConfig):
  fn = _join_fn(fn_static, fn_leaves)
  x = x.astype(jnp.float32)
  y = y.astype(jnp.int32)
  p, b = cfg.population, x.shape[0]
  k_init, k_loop = jax.random.split(key)
  w0 = jnp.arctanh((2.0 * x - 1.0) * (1.0 - 1e-6))  # x in tanh space
  mu0 = 0.001 * jax.random.normal(k_init, x.shape, x.dtype)

  def image(z):
    return _project(0.5 * jnp.tanh(z) + 0.5, x, eps, cfg.norm)

  def margin(probs):  # clipped margin loss max(0, log p_y - max_{c != y} log p_c)
    logp = jnp.log(jnp.maximum(probs, cfg.prob_floor))
    onehot = jax.nn.one_hot(y, probs.shape[-1], dtype=bool)
    real = jnp.sum(jnp.where(onehot, logp, 0.0), -1)
    other = jnp.max(jnp.where(onehot, -jnp.inf, logp), -1)
    return jnp.maximum(real - other, 0.0)

  def query(mu, t):
    kt = jax.random.fold_in(k_loop, t)
    noise = jax.random.normal(jax.random.fold_in(kt, 0), (p,) + x.shape, x.dtype)
    mean_img = image(w0 + mu)
    cands = jax.vmap(image)((w0 + mu)[None] + cfg.sigma * noise)  # (P, B, ...)
    allx = jnp.concatenate([mean_img[None], cands]).reshape((p + 1) * b, *x.shape[1:])
    probs = fn(allx, jax.random.fold_in(kt, 1)).astype(jnp.float32)  # one call per iteration
    probs = probs.reshape(p + 1, b, -1)
    return noise, mean_img, probs

  def body(state):
    t, mu, succ, x_adv = state
    noise, mean_img, probs = query(mu, t)
    hit = jnp.argmax(probs[0], -1) != y
    first = hit & ~succ
    x_adv = jnp.where(first.reshape((b,) + (1,) * (x.ndim - 1)), mean_img, x_adv)
    succ = succ | hit
    reward = -0.5 * margin(probs[1:])  # (P, B)
    a = (reward - reward.mean(0)[None]) / (reward.std(0)[None] + 1e-7)
    step = (cfg.lr / (p * cfg.sigma)) * jnp.einsum("pb...,pb->b...", noise, a)
    mu = jnp.where(succ.reshape((b,) + (1,) * (x.ndim - 1)), mu, mu + step)
    return t + 1, mu, succ, x_adv

  def cond(state):
    t, _, succ, _ = state
    return (t < cfg.iterations) & ~jnp.all(succ)

  init = (jnp.int32(0), mu0, jnp.zeros((b,), bool), x)
  _, mu, succ, x_adv = jax.lax.while_loop(cond, body, init)
  # The last update is checked too (only the mean image is queried).
  mean_img = image(w0 + mu)
  probs = fn(mean_img, jax.random.fold_in(jax.random.fold_in(k_loop, cfg.iterations), 1))
  hit = (jnp.argmax(probs, -1) != y) & ~succ
  x_adv = jnp.where(hit.reshape((b,) + (1,) * (x.ndim - 1)), mean_img, x_adv)
  unsucc = ~(succ | hit)
  x_adv = jnp.where(unsucc.reshape((b,) + (1,) * (x.ndim - 1)), mean_img, x_adv)
  return x_adv, succ | hit


_nattack_jit = jax.jit(_nattack_impl, static_argnums=(0,), static_argnames=("cfg",))


def nattack(smoothed_probs_fn: Callable[[jax.Array, jax.Array], jax.Array], x, y, *, key, eps,
            population: int = 300, iterations: int = 500, sigma: float = 0.1, lr: float = 0.02,
            norm: str = "linf", prob_floor: float = 1e-3) -> tuple[jax.Array, jax.Array]:
  """NAttack (Li et al. 2019): score-based black-box NES search in tanh space.

  A Gaussian ``N(mu, sigma^2 I)`` over tanh-space perturbations; each iteration samples
  ``population`` candidates, projects each onto the eps-ball (and [0, 1]), scores it with the
  clipped margin loss ``max(0, log p_y - max_{c != y} log p_c)`` (probabilities clipped below at
  ``prob_floor`` so that zero votes stay finite), standardises the rewards and moves ``mu`` by
  ``lr / (population * sigma) * sum_j A_j eps_j``. An image stops when its projected mean is
  misclassified. The whole population (plus the mean) of a batch of images is scored in *one*
  call of ``smoothed_probs_fn`` per iteration; iterations are a compiled ``while_loop``.

  Args:
    smoothed_probs_fn: traceable ``probs_fn(x, key) -> (B, C)`` probabilities or vote
      frequencies; against a smoothed target each query is an n-sample smoothed prediction
      (e.g. :func:`smoothed_probs_fn` or ``smoothjax.smoothing.make_smoothed_probs_fn``).
    x, y: images in [0, 1] and integer labels.
    key: drives the population noise and the queries (``fold_in(key_loop, t)`` per iteration).
    eps: radius in [0, 1] pixel units.
    population, iterations, sigma, lr: NES settings (Li et al.: 300, 500, 0.1, 0.02).
    norm: ``"linf"`` or ``"l2"``.
    prob_floor: lower clip of the probabilities before the log.

  Returns:
    ``(x_adv, success)``: the first misclassified projected mean of each image (the final one
    when none was), and whether one was found.
  """
  _check_common(eps=eps, steps=iterations, step_size=0.0, norm=norm)
  if not isinstance(population, (int, np.integer)) or population < 2:
    raise ValueError(f"population must be an integer >= 2, got {population!r}")
  if not (sigma > 0 and lr > 0 and prob_floor > 0):
    raise ValueError(f"sigma, lr and prob_floor must be > 0, got {sigma}, {lr}, {prob_floor}")
  cfg = _NAttackConfig(int(population), int(iterations), float(sigma), float(lr), norm,
                       float(prob_floor))
  fn_static, fn_leaves = _split_fn(smoothed_probs_fn)
  args = (fn_leaves, jnp.asarray(x, jnp.float32), jnp.asarray(y), _as_key(key),
          jnp.asarray(eps, jnp.float32))
  if _tracing(*args):
    return _nattack_impl(fn_static, *args, cfg=cfg)
  return _nattack_jit(fn_static, *args, cfg=cfg)

