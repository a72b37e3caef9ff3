"""NAttack (Li et al. 2019): score-based black-box NES search in tanh space, compiled.

Against a randomized (smoothed) target one query is a random variable: a candidate that one
noisy query misclassifies is often classified correctly by the next. A candidate therefore
counts as a success only when ``confirm`` further queries with fresh noise all misclassify it
too; otherwise the search goes on and the best unconfirmed candidate is kept.

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

LI2019_BUDGET = (300, 500)  # Li et al.'s population x iterations (CIFAR-10), our defaults
DEFAULT_CONFIRM = 8  # fresh re-queries that must all misclassify a candidate


def budget_columns(population: int, iterations: int, confirm: int) -> dict:
  """The NAttack settings every record of it carries (``nattack_*`` fields)."""
  return {"nattack_population": int(population), "nattack_iterations": int(iterations),
          "nattack_confirm": int(confirm),
          "nattack_li2019_budget": (int(population), int(iterations)) == LI2019_BUDGET}


@dataclasses.dataclass(frozen=True)
class _NAttackConfig:
  population: int
  iterations: int
  sigma: float
  lr: float
  norm: str
  prob_floor: float
  confirm: int


def _nattack_impl(fn_static, fn_leaves, x, y, key, eps, cfg: _NAttackConfig):
  fn = _join_fn(fn_static, fn_leaves)
  x = x.astype(jnp.float32)
  y = y.astype(jnp.int32)
  p, b = cfg.population, x.shape[0]
  k_init, k_loop = jax.random.split(key)
  w0 = jnp.arctanh((2.0 * x - 1.0) * (1.0 - 1e-6))  # x in tanh space
  mu0 = 0.001 * jax.random.normal(k_init, x.shape, x.dtype)

  def per_image(mask):
    return mask.reshape((b,) + (1,) * (x.ndim - 1))

  def image(z):
    return _project(0.5 * jnp.tanh(z) + 0.5, x, eps, cfg.norm)

  def wrong(probs):
    return jnp.argmax(probs, -1) != y

  def margin(probs):  # clipped margin loss max(0, log p_y - max_{c != y} log p_c)
    logp = jnp.log(jnp.maximum(probs, cfg.prob_floor))
    onehot = jax.nn.one_hot(y, probs.shape[-1], dtype=bool)
    real = jnp.sum(jnp.where(onehot, logp, 0.0), -1)
    other = jnp.max(jnp.where(onehot, -jnp.inf, logp), -1)
    return jnp.maximum(real - other, 0.0)

  def query(mu, kt):
    noise = jax.random.normal(jax.random.fold_in(kt, 0), (p,) + x.shape, x.dtype)
    mean_img = image(w0 + mu)
    cands = jax.vmap(image)((w0 + mu)[None] + cfg.sigma * noise)  # (P, B, ...)
    allx = jnp.concatenate([mean_img[None], cands]).reshape((p + 1) * b, *x.shape[1:])
    probs = fn(allx, jax.random.fold_in(kt, 1)).astype(jnp.float32)  # one call per iteration
    probs = probs.reshape(p + 1, b, -1)
    return noise, mean_img, probs

  def confirmation(img, kt, needed):
    """Fraction of the ``confirm`` re-queries (keys ``fold_in(kt, 2 + j)``) misclassifying img."""
    if cfg.confirm == 0:
      return jnp.ones((b,), jnp.float32)

    def requery():
      def one(_, j):
        return None, wrong(fn(img, jax.random.fold_in(kt, 2 + j))).astype(jnp.float32)
      return jnp.mean(jax.lax.scan(one, None, jnp.arange(cfg.confirm))[1], 0)

    return jax.lax.cond(jnp.any(needed), requery, lambda: jnp.zeros((b,), jnp.float32))

  def update(hit, score, mean_img, succ, best, x_adv, candidate):
    """Confirmed hits succeed; else ``candidate`` images replace a kept one scoring no higher."""
    new = hit & (score >= 1.0)
    keep = candidate & ~succ & ~new & (score >= best)
    x_adv = jnp.where(per_image(new | keep), mean_img, x_adv)
    return succ | new, jnp.where(keep, score, best), x_adv

  def body(state):
    t, mu, succ, best, x_adv = state
    kt = jax.random.fold_in(k_loop, t)
    noise, mean_img, probs = query(mu, kt)
    hit = wrong(probs[0]) & ~succ
    score = confirmation(mean_img, kt, hit)
    succ, best, x_adv = update(hit, score, mean_img, succ, best, x_adv, hit)
    reward = -0.5 * margin(probs[1:])  # (P, B)
    a = (reward - reward.mean(0)[None]) / (reward.std(0)[None] + 1e-7)
    step = (cfg.lr / (p * cfg.sigma)) * jnp.einsum("pb...,pb->b...", noise, a)
    mu = jnp.where(per_image(succ), mu, mu + step)
    return t + 1, mu, succ, best, x_adv

  def cond(state):
    t, _, succ, _, _ = state
    return (t < cfg.iterations) & ~jnp.all(succ)

  init = (jnp.int32(0), mu0, jnp.zeros((b,), bool), jnp.full((b,), -1.0, jnp.float32), x)
  _, mu, succ, best, x_adv = jax.lax.while_loop(cond, body, init)
  # The last update is checked too (the mean image only); its re-queries score it even when
  # that query is right, so it replaces an earlier unconfirmed candidate that scores no higher.
  kt = jax.random.fold_in(k_loop, cfg.iterations)
  mean_img = image(w0 + mu)
  hit = wrong(fn(mean_img, jax.random.fold_in(kt, 1))) & ~succ
  score = confirmation(mean_img, kt, ~succ)
  succ, _, x_adv = update(hit, score, mean_img, succ, best, x_adv, ~succ)
  return x_adv, succ


_nattack_jit = jax.jit(_nattack_impl, static_argnums=(0,), static_argnames=("cfg",))


def nattack(smoothed_probs_fn: Callable[[jax.Array, jax.Array], jax.Array], x, y, *, key, eps,
            population: int = LI2019_BUDGET[0], iterations: int = LI2019_BUDGET[1],
            sigma: float = 0.1, lr: float = 0.02, norm: str = "linf", prob_floor: float = 1e-3,
            confirm: int = DEFAULT_CONFIRM) -> tuple[jax.Array, jax.Array]:
  """NAttack (Li et al. 2019): score-based black-box NES search in tanh space.

  A Gaussian ``N(mu, sigma^2 I)`` over tanh-space perturbations; each iteration samples
  ``population`` candidates, projects each onto the eps-ball (and [0, 1]), scores it with the
  clipped margin loss ``max(0, log p_y - max_{c != y} log p_c)`` (probabilities clipped below at
  ``prob_floor`` so that zero votes stay finite), standardises the rewards and moves ``mu`` by
  ``lr / (population * sigma) * sum_j A_j eps_j``. The whole population (plus the mean) of a
  batch of images is scored in *one* call of ``smoothed_probs_fn`` per iteration; iterations are
  a compiled ``while_loop``.

  Success: when the projected mean of an image is misclassified, ``confirm`` independent
  re-queries of it with fresh keys (``fold_in(fold_in(key_loop, t), 2 + j)``, ``j < confirm``;
  the iteration's population query uses ``fold_in(., 1)``) must *all* misclassify it as well.
  A confirmed image stops; an unconfirmed one goes on searching, and the candidate whose
  re-queries misclassified it most often (ties: the later) is kept. Against a target whose
  query is wrong with probability ``q`` a lucky candidate passes with probability
  ``q ** (confirm + 1)``: with ``q = 0.3`` and the default ``confirm = 8`` about 6e-6 per
  iteration, against 0.3 without confirmation (``confirm=0``, the first misclassified query
  stops, Li et al.'s rule for deterministic models). The re-queries run only in iterations
  where some image of the batch needs them. The attacked images should then be scored afresh
  (``python -m evaluate`` scores them with the smoothed classifier and new noise).

  Args:
    smoothed_probs_fn: traceable ``probs_fn(x, key) -> (B, C)`` probabilities or vote
      frequencies; against a smoothed target each query is an n-sample smoothed prediction
      (e.g. :func:`smoothed_probs_fn` or ``smoothjax.smoothing.make_smoothed_probs_fn``).
    x, y: images in [0, 1] and integer labels.
    key: drives the population noise and the queries (``fold_in(key_loop, t)`` per iteration,
      ``key_init, key_loop = split(key)``).
    eps: radius in [0, 1] pixel units.
    population, iterations, sigma, lr: NES settings; the defaults are Li et al.'s (300, 500,
      0.1, 0.02). ``python -m evaluate`` defaults to a far smaller CPU-sized budget.
    norm: ``"linf"`` or ``"l2"``.
    prob_floor: lower clip of the probabilities before the log.
    confirm: re-queries that must all misclassify a candidate (``0``: no confirmation).

  Returns:
    ``(x_adv, success)``: the confirmed misclassified projected mean of each image (else the
    best unconfirmed candidate, else the final mean), and whether a confirmed one was found.
  """
  _check_common(eps=eps, steps=iterations, step_size=0.0, norm=norm)
  if not isinstance(population, (int, np.integer)) or population < 2:
    raise ValueError(f"population must be an integer >= 2, got {population!r}")
  if (not isinstance(confirm, (int, np.integer)) or isinstance(confirm, bool)
      or confirm < 0):
    raise ValueError(f"confirm must be an integer >= 0 (0: no confirmation), got {confirm!r}")
  if not (sigma > 0 and lr > 0 and prob_floor > 0):
    raise ValueError(f"sigma, lr and prob_floor must be > 0, got {sigma}, {lr}, {prob_floor}")
  cfg = _NAttackConfig(int(population), int(iterations), float(sigma), float(lr), norm,
                       float(prob_floor), int(confirm))
  fn_static, fn_leaves = _split_fn(smoothed_probs_fn)
  args = (fn_leaves, jnp.asarray(x, jnp.float32), jnp.asarray(y), _as_key(key),
          jnp.asarray(eps, jnp.float32))
  if _tracing(*args):
    return _nattack_impl(fn_static, *args, cfg=cfg)
  return _nattack_jit(fn_static, *args, cfg=cfg)
