"""The PGD family as one compiled core: FGSM, PGD, EPGD, SmoothAdv, PGD-s, TRADES' adversary.

Keys: ``k_restarts, k_select = split(key)``; restart ``r`` uses ``fold_in(k_restarts, r)``, split
into ``(k_start, k_steps, k_fixed)``; step ``t`` uses ``k_t = fold_in(k_steps, t)`` and its noise
draw ``j`` runs the model with ``fold_in(k_t, j)`` (``fold_in(k_fixed, j)`` with fixed noise).

References: Madry et al. (ICLR 2018), Nemcovsky et al. (arXiv 1911.07198), Salman et al.
(NeurIPS 2019), Zhang et al. (ICML 2019), Wong et al. (ICLR 2020); the full titles are in
:mod:`smoothjax.attacks`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from smoothjax._utils import as_key as _as_key
from smoothjax.attacks._common import (LogitsFn, _ascent_step, _attack_inputs, _check_common,
                                       _join_fn, _project, _random_start, _tracing,
                                       cross_entropy, kl_divergence)

@dataclasses.dataclass(frozen=True)
class _Config:
  """Static settings of one compiled attack (hashable: part of the jit cache key)."""

  steps: int
  norm: str = "linf"
  start: str = "uniform"  # "none" | "uniform" | "normal"
  start_scale: float = 0.0
  targeted: bool = False
  accumulate_grad: bool = False
  objective: str = "expect"  # "expect": mean_m loss | "smooth": -log mean_m softmax_y
  loss: Any = "ce"  # "ce" or a callable loss(logits, y) -> (B,)
  samples: int = 1
  fixed_noise: bool = False
  draws: str = "loop"  # "loop" | "vmap"
  restarts: int = 1
  unroll: int = 1



def _per_example_loss(cfg: _Config, logits, y):
  return cross_entropy(logits, y) if cfg.loss == "ce" else cfg.loss(logits, y)


def _loss_grad(fn, cfg: _Config, xa, y, base_key):
  """Gradient (ascent direction) of the attack loss at ``xa``; draws ``fold_in(base_key, j)``."""
  m = cfg.samples
  keys = jax.vmap(lambda j: jax.random.fold_in(base_key, j))(jnp.arange(m))

  if cfg.objective == "expect":
    def one(xv, k):
      return jax.grad(lambda xv: jnp.sum(_per_example_loss(cfg, fn(xv, k), y)))(xv)

    if m == 1:
      return one(xa, keys[0])
    if cfg.draws == "vmap":
      return jnp.mean(jax.vmap(one, in_axes=(None, 0))(xa, keys), 0)

    def body(gsum, k):
      return gsum + one(xa, k), None

    gsum, _ = jax.lax.scan(body, jnp.zeros_like(xa), keys)
    return gsum / m

  # "smooth": loss = -log(mean_j p_j[y]); gradient = -(sum_j p_j grad log p_j) / sum_j p_j,
  # accumulated in log space (online log-sum-exp) so memory stays flat in m.
  def log_py(xv, k):
    logp = jax.nn.log_softmax(fn(xv, k).astype(jnp.float32), -1)
    return jnp.take_along_axis(logp, y[:, None].astype(jnp.int32), -1)[:, 0]

  if cfg.draws == "vmap":
    def loss(xv):
      lp = jax.vmap(log_py, in_axes=(None, 0))(xv, keys)  # (m, B)
      return -jnp.sum(jax.nn.logsumexp(lp, 0))
    return jax.grad(loss)(xa)

  bshape = (xa.shape[0],) + (1,) * (xa.ndim - 1)

  def body(carry, k):
    mx, s, g = carry
    lp, vjp = jax.vjp(lambda xv: log_py(xv, k), xa)
    (gj,) = vjp(jnp.ones_like(lp))
    new_mx = jnp.maximum(mx, lp)
    old_w, new_w = jnp.exp(mx - new_mx), jnp.exp(lp - new_mx)
    s = s * old_w + new_w
    g = g * old_w.reshape(bshape) + gj * new_w.reshape(bshape)
    return (new_mx, s, g), None

  b = xa.shape[0]
  init = (jnp.full((b,), -jnp.inf, jnp.float32), jnp.zeros((b,), jnp.float32),
          jnp.zeros_like(xa))
  (_, s, g), _ = jax.lax.scan(body, init, keys)
  return -g / s.reshape(bshape)


def _score(fn, cfg: _Config, xa, y, base_key):
  """Per-example (loss, success) of a finished restart, for keeping the strongest."""
  m = cfg.samples
  keys = jax.vmap(lambda j: jax.random.fold_in(base_key, j))(jnp.arange(m))

  def body(_, k):
    logits = fn(xa, k).astype(jnp.float32)
    loss = (_per_example_loss(cfg, logits, y) if cfg.objective == "expect"
            else jnp.zeros(logits.shape[:1], jnp.float32))
    return None, (loss, jax.nn.softmax(logits, -1))

  b = xa.shape[0]
  _, (losses, ps) = jax.lax.scan(body, None, keys)  # (m, B), (m, B, C): small
  lsum, pmean = jnp.sum(losses, 0), jnp.mean(ps, 0)
  if cfg.objective == "expect":
    loss = lsum / m
  else:
    py = jnp.take_along_axis(pmean, y[:, None].astype(jnp.int32), -1)[:, 0]
    loss = -jnp.log(jnp.maximum(py, 1e-30))
  if cfg.loss != "ce":
    return loss, jnp.zeros((b,), bool)
  pred = jnp.argmax(pmean, -1)
  if cfg.targeted:
    return -loss, pred == y
  return loss, pred != y


def _attack_impl(fn_static, fn_leaves, x, y, key, eps, step_size, cfg: _Config):
  fn = _join_fn(fn_static, fn_leaves)
  x = x.astype(jnp.float32)
  k_restarts, k_select = jax.random.split(key)

  def one_restart(r):
    k_start, k_steps, k_fixed = jax.random.split(jax.random.fold_in(k_restarts, r), 3)
    x0 = _random_start(k_start, x, eps, cfg.norm, cfg.start, cfg.start_scale)

    def step(carry, t):
      xa, gacc = carry
      kt = jax.random.fold_in(k_steps, t)
      g = _loss_grad(fn, cfg, xa, y, k_fixed if cfg.fixed_noise else kt)
      if cfg.accumulate_grad:  # the reference never zeroes x.grad: sign of the running sum
        gacc = gacc + g
        g = gacc
      if cfg.targeted:
        g = -g
      xa = _project(xa + _ascent_step(g, step_size, cfg.norm), x, eps, cfg.norm)
      return (xa, gacc), None

    gacc0 = jnp.zeros_like(x) if cfg.accumulate_grad else jnp.zeros((), x.dtype)
    (xa, _), _ = jax.lax.scan(step, (x0, gacc0), jnp.arange(cfg.steps), unroll=cfg.unroll)
    return xa

  if cfg.restarts == 1:
    return one_restart(0)

  b = x.shape[0]
  bshape = (b,) + (1,) * (x.ndim - 1)

  def restart_body(best, r):
    bx, bl, bs = best
    xa = one_restart(r)
    # Every restart is scored with the same noise draws (common random numbers).
    loss, succ = _score(fn, cfg, xa, y, k_select)
    better = (succ & ~bs) | ((succ == bs) & (loss > bl))
    bx = jnp.where(better.reshape(bshape), xa, bx)
    return (bx, jnp.where(better, loss, bl), bs | succ), None

  init = (x, jnp.full((b,), -jnp.inf, jnp.float32), jnp.zeros((b,), bool))
  (bx, _, _), _ = jax.lax.scan(restart_body, init, jnp.arange(cfg.restarts))
  return bx


_attack_jit = jax.jit(_attack_impl, static_argnums=(0,), static_argnames=("cfg",))



def _run(logits_fn, x, y, key, eps, step_size, cfg: _Config):
  fn_static, fn_leaves, key, x = _attack_inputs(logits_fn, key, x)
  y = jax.tree.map(jnp.asarray, y)
  eps = jnp.asarray(eps, jnp.float32)
  step_size = jnp.asarray(step_size, jnp.float32)
  args = (fn_leaves, x, y, key, eps, step_size)
  if _tracing(*args):  # inside the caller's jit (e.g. a train step): inline, no nested cache
    return _attack_impl(fn_static, *args, cfg=cfg)
  return _attack_jit(fn_static, *args, cfg=cfg)


def fgsm(logits_fn: LogitsFn, x, y, *, key, eps, random_start: bool = False, step_size=None,
         norm: str = "linf") -> jax.Array:
  """Fast gradient sign method: one ascent step on the cross-entropy.

  Args:
    logits_fn: ``logits_fn(x, key) -> logits`` (one noisy forward pass).
    x: images in [0, 1], batch first.
    y: integer labels.
    key: drives the random start and the model's noise.
    eps: radius of the threat model in [0, 1] pixel units.
    random_start: start from a uniform point of the eps-ball (Wong et al.'s fast FGSM).
    step_size: default ``eps`` (Goodfellow et al.), or ``1.25 * eps`` with ``random_start``
      (Wong et al.).
    norm: ``"linf"`` (signed step) or ``"l2"`` (normalised gradient step).

  Returns:
    Adversarial images in the eps-ball around ``x`` and in [0, 1].
  """
  if step_size is None:
    step_size = 1.25 * eps if random_start else eps
  _check_common(eps=eps, steps=1, step_size=step_size, norm=norm)
  cfg = _Config(steps=1, norm=norm, start="uniform" if random_start else "none")
  return _run(logits_fn, x, y, key, eps, step_size, cfg)


def pgd(logits_fn: LogitsFn, x, y, *, key, eps, steps: int, step_size, norm: str = "linf",
        random_start: bool = True, restarts: int = 1, targeted: bool = False,
        accumulate_grad: bool = False, loss: str | Callable = "ce", unroll: int = 1
        ) -> jax.Array:
  """Projected gradient descent (Madry et al.), one fresh noise draw per gradient.

  Args:
    logits_fn: ``logits_fn(x, key) -> logits``.
    x: images in [0, 1], batch first.
    y: integer labels (target labels when ``targeted``), or whatever ``loss`` takes.
    key: drives the random start and every noise draw (see the module docstring).
    eps: radius in [0, 1] pixel units.
    steps: number of steps k.
    step_size: step a (L-inf: signed step; L2: step along the normalised gradient).
    norm: ``"linf"`` or ``"l2"``.
    random_start: start uniformly in the eps-ball (L-inf cube / L2 ball).
    restarts: independent restarts; per example the strongest one is kept (misclassified
      first, then the highest loss, scored with common noise draws).
    targeted: descend the loss of the target labels ``y`` instead.
    accumulate_grad: the reference implementation's quirk (it never zeroes ``x.grad``): step j
      uses the sign of the sum of the gradients of steps 0..j.
    loss: ``"ce"`` or a callable ``loss(logits, y) -> (B,)`` per-example loss to ascend.
    unroll: ``lax.scan`` unroll of the steps (1 is as fast and compiles in constant time).

  Returns:
    Adversarial images in the eps-ball around ``x`` and in [0, 1].
  """
  _check_common(eps=eps, steps=steps, step_size=step_size, norm=norm, restarts=restarts)
  cfg = _Config(steps=int(steps), norm=norm, start="uniform" if random_start else "none",
                targeted=bool(targeted), accumulate_grad=bool(accumulate_grad),
                loss=_check_loss(loss), restarts=int(restarts), unroll=_check_unroll(unroll))
  return _run(logits_fn, x, y, key, eps, step_size, cfg)


def _check_loss(loss):
  if loss == "ce" or callable(loss):
    return loss
  raise ValueError(f"loss must be 'ce' or a callable loss(logits, y), got {loss!r}")


def _check_unroll(unroll):
  if isinstance(unroll, bool) or (isinstance(unroll, (int, np.integer)) and unroll >= 1):
    return unroll
  raise ValueError(f"unroll must be a positive integer or a bool, got {unroll!r}")


def _check_draws(draws):
  if draws not in ("loop", "vmap"):
    raise ValueError(f"draws must be 'loop' or 'vmap', got {draws!r}")
  return draws


def epgd(logits_fn: LogitsFn, x, y, *, key, eps, steps: int, step_size, samples: int = 8,
         norm: str = "linf", random_start: bool = True, restarts: int = 1,
         loss: str | Callable = "ce", draws: str = "loop", unroll: int = 1) -> jax.Array:
  """Expectation PGD (Nemcovsky et al., eq. 25): mean over ``samples`` draws of the loss.

  Each step's gradient is the mean of ``samples`` single-draw gradients of the per-example
  cross-entropy (fresh draws every step); ``k`` steps cost ``k * m`` gradient evaluations.
  With ``samples=1`` this is :func:`pgd` with the same key, bit for bit.

  Args:
    draws: ``"loop"`` (``lax.scan`` over draws, each shared by the batch; right for weight
      noise) or ``"vmap"`` (for models with input noise only).
    Other arguments: as :func:`pgd`.
  """
  _check_common(eps=eps, steps=steps, step_size=step_size, norm=norm, samples=samples,
                restarts=restarts)
  cfg = _Config(steps=int(steps), norm=norm, start="uniform" if random_start else "none",
                loss=_check_loss(loss), samples=int(samples), draws=_check_draws(draws),
                restarts=int(restarts), unroll=_check_unroll(unroll))
  return _run(logits_fn, x, y, key, eps, step_size, cfg)


def smoothadv(logits_fn: LogitsFn, x, y, *, key, eps, steps: int, step_size, samples: int = 8,
              fixed_noise: bool = False, norm: str = "linf", random_start: bool = True,
              restarts: int = 1, draws: str = "loop", unroll: int = 1) -> jax.Array:
  """SmoothAdv (Salman et al. 2019, eq. 24): ascend ``-log(mean_m softmax(f(x))_y)``.

  The average over the ``m = samples`` draws is taken before the log (unlike EPGD). Salman et
  al. draw the m noise vectors once per attack and keep them across steps:
  ``fixed_noise=True``; the default draws fresh noise every step (then this is :func:`pgd_s`).

  Args:
    Same as :func:`epgd`, plus ``fixed_noise``.
  """
  _check_common(eps=eps, steps=steps, step_size=step_size, norm=norm, samples=samples,
                restarts=restarts)
  cfg = _Config(steps=int(steps), norm=norm, start="uniform" if random_start else "none",
                objective="smooth", samples=int(samples), fixed_noise=bool(fixed_noise),
                draws=_check_draws(draws), restarts=int(restarts),
                unroll=_check_unroll(unroll))
  return _run(logits_fn, x, y, key, eps, step_size, cfg)


def pgd_s(logits_fn: LogitsFn, x, y, *, key, eps, steps: int, step_size, samples: int = 8,
          norm: str = "linf", random_start: bool = True, restarts: int = 1,
          draws: str = "loop", unroll: int = 1) -> jax.Array:
  """PGD against the soft-smoothed classifier (the paper's "PGD-s", Table 2).

  Each step differentiates the cross-entropy of the mean softmax over ``samples`` fresh draws
  (Nemcovsky et al., Table 2), i.e. SmoothAdv's loss with fresh noise: the result equals
  ``smoothadv(..., fixed_noise=False)`` for the same key. Score it with the smoothed classifier.
  """
  return smoothadv(logits_fn, x, y, key=key, eps=eps, steps=steps, step_size=step_size,
                   samples=samples, fixed_noise=False, norm=norm, random_start=random_start,
                   restarts=restarts, draws=draws, unroll=unroll)


def trades_adversary(logits_fn: LogitsFn, x, *, key, eps, steps: int = 10,
                     step_size=2 / 255, unroll: int = 1) -> jax.Array:
  """TRADES' inner maximisation (Zhang et al. 2019): ascend ``KL(f(x) || f(x'))``.

  Starts from ``x + 0.001 * N(0, I)`` (as TRADES does), L-inf signed steps, projection onto the
  eps-ball and [0, 1]. ``f(x)`` is the softmax of one forward pass with its own noise draw
  (held fixed, no gradient); every step draws fresh noise for ``f(x')``.

  Returns:
    ``x'`` in the eps-ball around ``x`` and in [0, 1].
  """
  _check_common(eps=eps, steps=steps, step_size=step_size, norm="linf")
  key = _as_key(key)
  k_clean, k_attack = jax.random.split(key)
  p_clean = jax.lax.stop_gradient(
      jax.nn.softmax(logits_fn(jnp.asarray(x, jnp.float32), k_clean).astype(jnp.float32), -1))
  cfg = _Config(steps=int(steps), norm="linf", start="normal", start_scale=0.001,
                loss=kl_divergence, unroll=_check_unroll(unroll))
  return _run(logits_fn, x, p_clean, k_attack, eps, step_size, cfg)

