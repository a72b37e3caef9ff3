"""Adversarial attacks on randomized classifiers, as compiled ``lax.scan`` loops.

Every attack takes a ``logits_fn(x, key) -> logits``: a pure function of images ``x`` in [0, 1]
pixel units (any layout; NHWC for the smoothjax models) and of a key that drives *all* of the
model's noise (weight / activation noise and the Gaussian input noise at the evaluated sigma),
for example ``smoothjax.smoothing.make_logits_fn(model, sigma=0.12)`` or
:func:`model_logits_fn`. Against a noisy model an attack that differentiates one noisy forward
pass per step sees a random gradient (REFERENCE.md §4): PGD does exactly that (the reference's
setting), EPGD, SmoothAdv and PGD-s average over ``samples`` draws per step.

White box (REFERENCE.md §4):

* :func:`fgsm` -- one signed gradient step (Goodfellow et al. 2015; with ``random_start``, the
  "fast" FGSM of Wong et al. 2020).
* :func:`pgd` -- Madry et al.'s projected gradient descent, L-inf or L2, uniform random start,
  restarts keeping the strongest example, targeted option, the reference's accumulated-gradient
  quirk as an option, and any per-example loss (TRADES' KL is :func:`trades_adversary`).
* :func:`epgd` -- expectation PGD (Nemcovsky et al., eq. 25): each step's loss is the mean over
  ``m`` noise draws of the per-example cross-entropy.
* :func:`smoothadv` -- Salman et al.'s attack on the smoothed soft classifier: loss
  ``-log(mean_m softmax_y)`` (average before the log); ``fixed_noise=True`` keeps the ``m``
  draws fixed across steps, as Salman et al. do.
* :func:`pgd_s` -- PGD against the soft-smoothed classifier (the paper's Table 2): the
  cross-entropy of the mean softmax over ``m`` fresh draws per step. It is the same loss as
  SmoothAdv's, so ``pgd_s(...)`` equals ``smoothadv(..., fixed_noise=False)`` by construction.

Black box: :func:`nattack` (Li et al. 2019, NES search in tanh space with a population
evaluated in one call per iteration) and transfer (:func:`craft` with ``name="transfer"``:
PGD crafted on a source model). :func:`craft` is the dispatcher of ``python -m evaluate
--attack=NAME``; :func:`run_sanity_checks` runs Athalye et al.'s gradient-masking checklist;
:func:`attack_vs_compute` / :func:`plot_attack_vs_compute` give the paper's Fig. 0.B.3.

Keys (fixed, so that results never depend on batching inside one call): ``k_restarts, k_select
= split(key)``; restart ``r`` uses ``fold_in(k_restarts, r)``, split into ``(k_start, k_steps,
k_fixed)``; step ``t`` uses ``k_t = fold_in(k_steps, t)`` and its noise draw ``j`` (0 <= j < m)
runs the model with ``fold_in(k_t, j)`` (``fold_in(k_fixed, j)`` with fixed noise). PGD is the
``m = 1`` case of EPGD, so ``epgd(..., samples=1)`` equals ``pgd(...)`` for the same key.

Draws inside a step are looped with ``lax.scan`` (``draws="loop"``, default), each draw shared
by the whole batch: ``vmap`` over weight-noise draws turns every convolution into a grouped
convolution (about 10x slower on CPU). ``draws="vmap"`` is offered for models with input noise
only. Steps are a ``lax.scan`` with ``unroll=1`` by default: with
:func:`smoothjax.models.conv2d`'s custom VJP, convolutions inside scan bodies run as fast as
unrolled code on XLA:CPU and compile time stays flat in the number of steps (measured in
``benchmarks/bench_attacks.py``).

References:
  Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018.
  Nemcovsky et al., "Smoothed Inference for Improving Adversarial Robustness", arXiv 1911.07198.
  Salman et al., "Provably Robust Deep Learning via Adversarially Trained Smoothed
  Classifiers", NeurIPS 2019.
  Li et al., "NATTACK: Learning the Distributions of Adversarial Examples", ICML 2019.
  Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy", ICML 2019.
  Athalye, Carlini, Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018.
  Wong, Rice, Kolter, "Fast is better than free", ICLR 2020.
"""

from __future__ import annotations

import argparse
import dataclasses
import fractions
import json
import math
import pathlib
import sys
import warnings
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from smoothjax import models as models_lib

__all__ = [
    "ATTACKS",
    "NORMS",
    "GradientMaskingWarning",
    "ModelLogits",
    "model_logits_fn",
    "SmoothedProbs",
    "smoothed_probs_fn",
    "cross_entropy",
    "kl_divergence",
    "fgsm",
    "pgd",
    "epgd",
    "smoothadv",
    "pgd_s",
    "trades_adversary",
    "nattack",
    "craft",
    "run_sanity_checks",
    "attack_vs_compute",
    "plot_attack_vs_compute",
]

ATTACKS = ("none", "fgsm", "pgd", "epgd", "smoothadv", "pgd_s", "transfer", "nattack")
NORMS = ("linf", "l2")
_WHITE_BOX = ("fgsm", "pgd", "epgd", "smoothadv", "pgd_s")

LogitsFn = Callable[[jax.Array, jax.Array], jax.Array]


class GradientMaskingWarning(UserWarning):
  """Warned when a gradient-masking sanity check (Athalye et al. 2018) fails."""


# --------------------------------------------------------------------------------------------
# Model functions
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
  """Per-example cross-entropy of integer labels ``y``."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  return -jnp.take_along_axis(logp, y[:, None].astype(jnp.int32), -1)[:, 0]


def kl_divergence(logits: jax.Array, p: jax.Array) -> jax.Array:
  """Per-example ``KL(p || softmax(logits))`` (TRADES' inner maximisation target)."""
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


# --------------------------------------------------------------------------------------------
# The PGD family: one compiled core
# --------------------------------------------------------------------------------------------


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


def _as_key(key) -> jax.Array:
  if isinstance(key, (int, np.integer)):
    return jax.random.key(int(key))
  if not isinstance(key, jax.Array):
    raise ValueError(f"key must be a jax.random.key(...) or an int seed, got {type(key)}")
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return jax.random.wrap_key_data(key)
  return key


def _tracing(*trees) -> bool:
  return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(trees))


def _check_common(*, eps, steps, step_size, norm, samples=1, restarts=1):
  if norm not in NORMS:
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
  if not isinstance(steps, (int, np.integer)) or steps < 1:
    raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
  if not isinstance(samples, (int, np.integer)) or samples < 1:
    raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
  if not isinstance(restarts, (int, np.integer)) or restarts < 1:
    raise ValueError(f"restarts must be an integer >= 1, got {restarts!r}")
  for name, v in (("eps", eps), ("step_size", step_size)):
    if not isinstance(v, jax.core.Tracer):
      v = float(v)
      if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {v}")


def _run(logits_fn, x, y, key, eps, step_size, cfg: _Config):
  fn_static, fn_leaves = _split_fn(logits_fn)
  key = _as_key(key)
  if not isinstance(x, jax.core.Tracer):
    x = jnp.asarray(x, jnp.float32)
  if x.ndim < 2:
    raise ValueError(f"x must be a batch of images (at least 2-D), got shape {x.shape}")
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
  (REFERENCE.md §4), i.e. SmoothAdv's loss with fresh noise: the result equals
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


# --------------------------------------------------------------------------------------------
# NAttack
# --------------------------------------------------------------------------------------------


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
    cands = jax.vmap(image)(w0 + mu + cfg.sigma * noise)  # (P, B, ...)
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
    a = (reward - reward.mean(0)) / (reward.std(0) + 1e-7)
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


# --------------------------------------------------------------------------------------------
# Dispatcher
# --------------------------------------------------------------------------------------------


def _batches(n: int, batch_size: int):
  for i, start in enumerate(range(0, n, batch_size)):
    yield i, start, min(start + batch_size, n)


def _pad_to(a: np.ndarray, size: int) -> np.ndarray:
  if len(a) == size:
    return a
  reps = np.repeat(a[-1:], size - len(a), axis=0)
  return np.concatenate([a, reps])


def craft(name: str, logits_fn: LogitsFn | None, x, y, *, key, eps, norm: str = "linf",
          steps: int = 7, step_size=None, samples: int = 8, restarts: int = 1,
          source_logits_fn: LogitsFn | None = None, smoothed_probs_fn=None,
          population: int = 100, iterations: int = 100, batch_size: int = 256,
          transfer_attack: str = "pgd", nattack_batch_size: int | None = None,
          **kw) -> np.ndarray:
  """Crafts adversarial examples for ``python -m evaluate --attack=NAME``.

  Args:
    name: one of :data:`ATTACKS`: ``none``, ``fgsm``, ``pgd``, ``epgd``, ``smoothadv``,
      ``pgd_s``, ``transfer`` (``transfer_attack``, PGD by default, crafted on
      ``source_logits_fn``), ``nattack`` (queries ``smoothed_probs_fn``).
    logits_fn: the target's ``logits_fn(x, key)`` (white box).
    x: images in [0, 1], batch first (NumPy or JAX).
    y: integer labels.
    key: PRNG key; batch ``i`` uses ``fold_in(key, i)``.
    eps: radius in [0, 1] pixel units (>= 0).
    norm: ``"linf"`` or ``"l2"``.
    steps: PGD-family steps (FGSM: 1; ignored by NAttack, which runs ``iterations``).
    step_size: default ``eps / 4`` (FGSM: ``eps``; FGSM with ``random_start=True``: ``1.25 eps``,
      Wong et al.).
    samples: noise draws per step of EPGD / SmoothAdv / PGD-s (PGD and FGSM use 1).
    restarts: PGD-family restarts.
    source_logits_fn: transfer source model.
    smoothed_probs_fn: NAttack's ``probs_fn(x, key)``.
    population, iterations: NAttack budget.
    batch_size: images per compiled call (the last batch is padded, so one program serves
      every batch).
    transfer_attack: the white-box attack run on the source model for ``transfer``.
    nattack_batch_size: images per NAttack call (default: ``population * batch <= 8192``).
    **kw: passed to the attack (e.g. ``fixed_noise=True`` for SmoothAdv, ``sigma``/``lr`` for
      NAttack, ``unroll``).

  Returns:
    ``x_adv`` as a float32 NumPy array of ``x``'s shape.

  Raises:
    ValueError: unknown name, bad settings or inputs, a missing source / probs function.
  """
  if name not in ATTACKS:
    raise ValueError(f"unknown attack {name!r}; expected one of {', '.join(ATTACKS)}")
  if norm not in NORMS:
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
  try:
    eps = float(eps)
  except (TypeError, ValueError):
    raise ValueError(f"eps must be a number, got {eps!r}") from None
  if not (math.isfinite(eps) and eps >= 0):
    raise ValueError(f"eps must be a finite number >= 0, got {eps}")
  for nm, v, lo in (("steps", steps, 1), ("samples", samples, 1), ("restarts", restarts, 1),
                    ("batch_size", batch_size, 1), ("population", population, 2),
                    ("iterations", iterations, 1)):
    if not isinstance(v, (int, np.integer)) or v < lo:
      raise ValueError(f"{nm} must be an integer >= {lo}, got {v!r}")
  x = np.asarray(x, np.float32)
  y = np.asarray(y)
  if x.ndim < 2 or len(x) == 0:
    raise ValueError(f"x must be a non-empty batch of images, got shape {x.shape}")
  if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"y must be {len(x)} integer labels, got shape {y.shape} {y.dtype}")
  if not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 1:
    raise ValueError("x must hold images in [0, 1] pixel units (got values outside [0, 1]); "
                     "divide uint8 images by 255")
  if step_size is None:
    if name == "fgsm":  # Goodfellow et al.: eps; from a random start (Wong et al.): 1.25 eps
      step_size = 1.25 * eps if kw.get("random_start", False) else eps
    else:
      step_size = eps / 4
  step_size = float(step_size)
  if not (math.isfinite(step_size) and step_size >= 0):
    raise ValueError(f"step_size must be a finite number >= 0, got {step_size}")
  if name == "none":
    return x.copy()
  if name == "transfer":
    if source_logits_fn is None:
      raise ValueError("the transfer attack needs a source model (source_logits_fn / "
                       "--source_checkpoint)")
    if transfer_attack not in _WHITE_BOX:
      raise ValueError(f"transfer_attack must be one of {_WHITE_BOX}, got {transfer_attack!r}")
    return craft(transfer_attack, source_logits_fn, x, y, key=key, eps=eps, norm=norm,
                 steps=steps, step_size=step_size, samples=samples, restarts=restarts,
                 batch_size=batch_size, **kw)
  if name == "nattack":
    if smoothed_probs_fn is None:
      raise ValueError("nattack needs smoothed_probs_fn (the target's probabilities)")
  elif logits_fn is None:
    raise ValueError(f"{name} needs the target's logits_fn")
  key = _as_key(key)
  if name == "nattack":
    bs = nattack_batch_size or max(1, min(batch_size, 8192 // (population + 1)))
  else:
    bs = batch_size
  bs = min(bs, len(x))
  out = np.empty_like(x)
  for i, lo, hi in _batches(len(x), bs):
    xb, yb = _pad_to(x[lo:hi], bs), _pad_to(y[lo:hi], bs)
    kb = jax.random.fold_in(key, i)
    if name == "nattack":
      xa, _ = nattack(smoothed_probs_fn, xb, yb, key=kb, eps=eps, population=population,
                      iterations=iterations, norm=norm, **kw)
    elif name == "fgsm":
      xa = fgsm(logits_fn, xb, yb, key=kb, eps=eps, step_size=step_size, norm=norm, **kw)
    elif name == "pgd":
      xa = pgd(logits_fn, xb, yb, key=kb, eps=eps, steps=steps, step_size=step_size,
               norm=norm, restarts=restarts, **kw)
    else:
      fn = {"epgd": epgd, "smoothadv": smoothadv, "pgd_s": pgd_s}[name]
      xa = fn(logits_fn, xb, yb, key=kb, eps=eps, steps=steps, step_size=step_size,
              samples=samples, norm=norm, restarts=restarts, **kw)
    out[lo:hi] = np.asarray(xa)[: hi - lo]
  return out


# --------------------------------------------------------------------------------------------
# Sanity checks and attack vs compute
# --------------------------------------------------------------------------------------------


def _tolerance(acc: float, n: int) -> float:
  """Slack for comparing two accuracies on n images: two binomial standard errors, >= 2%."""
  return max(0.02, 2.0 * math.sqrt(max(acc * (1 - acc), 0.25 / max(n, 1)) / max(n, 1)))


def run_sanity_checks(logits_fn: LogitsFn, x, y, *, key, eps, steps: int = 7, step_size=None,
                      accuracy_fn: Callable[[np.ndarray], float],
                      source_logits_fn: LogitsFn | None = None, smoothed_probs_fn=None,
                      large_eps: float = 0.5, large_eps_max_accuracy: float = 0.1,
                      more_steps_factor: int = 4, norm: str = "linf", batch_size: int = 256,
                      nattack_population: int = 100, nattack_iterations: int = 50,
                      nattack_images: int = 16, warn: bool = True) -> list[dict]:
  """Athalye et al.'s checklist against gradient masking, on PGD with the given settings.

  Checks (each a dict ``{"check", "passed", "detail"}`` plus the accuracies it compared):

  * ``large_eps``: accuracy under PGD at ``eps = large_eps`` (default 0.5) is at most
    ``large_eps_max_accuracy`` (unbounded attacks must reach ~0%).
  * ``more_steps``: PGD with ``more_steps_factor`` x the steps is not clearly better for the
    defender (its accuracy is at most the base PGD accuracy plus a tolerance).
  * ``fgsm_weaker``: FGSM (one step) is not clearly stronger than PGD.
  * ``white_box_vs_transfer`` (with ``source_logits_fn``): transfer PGD is not clearly
    stronger than white-box PGD.
  * ``white_box_vs_nattack`` (with ``smoothed_probs_fn``): NAttack is not clearly stronger than
    PGD on the first ``nattack_images`` images (NAttack queries ``population`` smoothed
    predictions per iteration: a full-size comparison would cost hours on a CPU). The other
    images keep their PGD examples, so ``accuracy_fn`` sees the two attacks differ only there.

  "Clearly" means by more than two binomial standard errors (and at least 2 points). A
  :class:`GradientMaskingWarning` is emitted for every failed check (``warn=True``).

  Args:
    logits_fn, x, y, key, eps, steps, step_size, norm, batch_size: the PGD under test
      (``step_size`` default ``eps / 4``).
    accuracy_fn: ``accuracy_fn(x_adv) -> float``, the defended (e.g. smoothed) accuracy of all
      of ``x``'s images.
    source_logits_fn, smoothed_probs_fn: enable the black-box comparisons.
    nattack_population, nattack_iterations, nattack_images: NAttack budget of the comparison.

  Returns:
    The list of check records.
  """
  key = _as_key(key)
  x = np.asarray(x, np.float32)
  y = np.asarray(y)
  n = len(x)
  step_size = eps / 4 if step_size is None else step_size
  common = dict(norm=norm, batch_size=batch_size)
  examples = {}

  def attack_acc(tag, name, fn, k, **kw):
    examples[tag] = craft(name, fn, x, y, key=jax.random.fold_in(key, k), **common, **kw)
    return float(accuracy_fn(examples[tag]))

  base = attack_acc("pgd", "pgd", logits_fn, 0, eps=eps, steps=steps, step_size=step_size)
  tol = _tolerance(base, n)
  checks = []

  big = attack_acc("pgd_large_eps", "pgd", logits_fn, 1, eps=large_eps, steps=max(steps, 10),
                   step_size=large_eps / 4)
  checks.append({"check": "large_eps", "passed": big <= large_eps_max_accuracy,
                 "detail": f"PGD-{max(steps, 10)} at eps={large_eps:g}: accuracy {big:.4f} "
                           f"(must be <= {large_eps_max_accuracy:g})",
                 "accuracy": big})
  more = attack_acc("pgd_more_steps", "pgd", logits_fn, 2, eps=eps,
                    steps=steps * more_steps_factor, step_size=step_size)
  checks.append({"check": "more_steps", "passed": more <= base + tol,
                 "detail": f"PGD-{steps * more_steps_factor} accuracy {more:.4f} vs PGD-{steps} "
                           f"{base:.4f} (must be <= {base + tol:.4f})",
                 "accuracy": more, "reference_accuracy": base})
  fg = attack_acc("fgsm", "fgsm", logits_fn, 3, eps=eps)
  checks.append({"check": "fgsm_weaker", "passed": fg >= base - tol,
                 "detail": f"FGSM accuracy {fg:.4f} vs PGD-{steps} {base:.4f} "
                           f"(must be >= {base - tol:.4f})",
                 "accuracy": fg, "reference_accuracy": base})
  if source_logits_fn is not None:
    tr = attack_acc("transfer", "transfer", None, 4, eps=eps, steps=steps, step_size=step_size,
                    source_logits_fn=source_logits_fn)
    checks.append({"check": "white_box_vs_transfer", "passed": tr >= base - tol,
                   "detail": f"transfer accuracy {tr:.4f} vs white-box PGD-{steps} {base:.4f} "
                             f"(must be >= {base - tol:.4f})",
                   "accuracy": tr, "reference_accuracy": base})
  if smoothed_probs_fn is not None:
    k = max(1, min(n, int(nattack_images)))
    mix = examples["pgd"].copy()
    mix[:k] = craft("nattack", None, x[:k], y[:k], key=jax.random.fold_in(key, 5), eps=eps,
                    smoothed_probs_fn=smoothed_probs_fn, population=nattack_population,
                    iterations=nattack_iterations, **common)
    # accuracy difference on the k images (the others are identical in both sets)
    diff = (float(accuracy_fn(mix)) - base) * n / k
    tol_k = _tolerance(0.5, k)
    checks.append({"check": "white_box_vs_nattack", "passed": diff >= -tol_k,
                   "detail": f"NAttack (population {nattack_population}, {nattack_iterations} "
                             f"iterations) on the first {k} images: accuracy {diff:+.4f} vs "
                             f"white-box PGD-{steps} on them (must be >= {-tol_k:.4f})",
                   "accuracy_difference": diff, "images": k})
  if warn:
    for c in checks:
      if not c["passed"]:
        warnings.warn(f"gradient-masking check {c['check']} failed: {c['detail']}",
                      GradientMaskingWarning, stacklevel=2)
  return checks


def attack_vs_compute(logits_fn: LogitsFn, x, y, *, key, eps,
                      budgets: Sequence[tuple[int, int]],
                      attacks: Sequence[str] = ("pgd", "epgd", "smoothadv"),
                      accuracy_fn: Callable[[np.ndarray], float], step_size=None,
                      norm: str = "linf", batch_size: int = 256, **kw) -> list[dict]:
  """Accuracy as a function of the attack's compute k * m (the paper's Fig. 0.B.3).

  Args:
    logits_fn, x, y, key, eps, norm, batch_size: as :func:`craft`.
    budgets: ``(k, m)`` pairs: k steps with m noise draws per step. PGD uses m = 1 (compute
      k); its duplicate budgets run once.
    attacks: any of ``pgd``, ``epgd``, ``smoothadv``, ``pgd_s``.
    accuracy_fn: ``accuracy_fn(x_adv) -> float`` (e.g. the smoothed accuracy at some n), or
      a ``{label: float}`` dict (e.g. ``{"n=1": ..., "n=64": ...}``): one row per label.
    step_size: default ``eps / 4``.
    **kw: passed to :func:`craft` (e.g. ``fixed_noise=True``).

  Returns:
    Records ``{"attack", "steps", "samples", "compute", "accuracy"}`` (plus ``"label"``),
    ``compute = k * m``.
  """
  key = _as_key(key)
  for a in attacks:
    if a not in ("pgd", "epgd", "smoothadv", "pgd_s"):
      raise ValueError(f"attack_vs_compute supports pgd, epgd, smoothadv, pgd_s; got {a!r}")
  rows, seen = [], set()
  for ai, a in enumerate(attacks):
    for k, m in budgets:
      if int(k) < 1 or int(m) < 1:
        raise ValueError(f"budgets must be pairs of integers >= 1, got {(k, m)}")
      m_used = 1 if a == "pgd" else int(m)
      if (a, int(k), m_used) in seen:
        continue
      seen.add((a, int(k), m_used))
      xa = craft(a, logits_fn, x, y, key=jax.random.fold_in(key, ai), eps=eps, norm=norm,
                 steps=int(k), step_size=step_size, samples=m_used, batch_size=batch_size,
                 **kw)
      row = {"attack": a, "steps": int(k), "samples": m_used, "compute": int(k) * m_used}
      acc = accuracy_fn(xa)
      if isinstance(acc, Mapping):  # several accuracies of the same examples (e.g. per n)
        rows.extend(dict(row, label=str(lbl), accuracy=float(v)) for lbl, v in acc.items())
      else:
        rows.append(dict(row, accuracy=float(acc)))
  return rows


def plot_attack_vs_compute(rows: Sequence[dict], path, *, title: str | None = None) -> None:
  """Plots accuracy against compute k * m (PNG via matplotlib's Agg).

  One line per attack and number of samples m (k varies along it; PGD has m = 1), one colour
  per line; rows with a ``"label"`` (e.g. ``"n=1"``, ``"n=64"``: the smoothing the examples
  were scored with) get one line style per label.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  curves: dict[tuple, list[dict]] = {}
  for r in rows:
    curves.setdefault((r["attack"], r["samples"], r.get("label") or ""), []).append(r)
  series = sorted({(a, m) for a, m, _ in curves}, key=lambda am: (am[0] != "pgd", am))
  labels = sorted({lbl for _, _, lbl in curves},
                  key=lambda s: (len(s), s))  # "n=1" before "n=64"
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  styles = ["--", "-", ":", "-."]
  fig, ax = plt.subplots(figsize=(6, 4.2))
  for (a, m, lbl), rs in sorted(curves.items()):
    rs = sorted(rs, key=lambda r: r["compute"])
    name = a if a == "pgd" else f"{a} m={m}"
    if lbl:
      name += f" ({lbl})"
    ax.plot([r["compute"] for r in rs], [100 * r["accuracy"] for r in rs], marker="o",
            color=colors[series.index((a, m)) % len(colors)],
            linestyle=styles[labels.index(lbl) % len(styles)], label=name)
  ax.set_xscale("log", base=2)
  ax.set_xlabel("attack compute k·m (gradient evaluations)")
  ax.set_ylabel("accuracy under attack (%)")
  ax.set_title(title or "Attack vs compute")
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


# --------------------------------------------------------------------------------------------
# Command line: the attack-vs-compute figure
# --------------------------------------------------------------------------------------------


def _fraction(text: str) -> float:
  try:
    return float(fractions.Fraction(text.strip()))
  except (ValueError, ZeroDivisionError):
    raise argparse.ArgumentTypeError(f"{text!r} is not a number (fractions like 8/255 are "
                                     "fine)") from None


def _budgets(text: str) -> list[tuple[int, int]]:
  out = []
  for part in text.split(","):
    k, sep, m = part.strip().partition("x")
    if not (sep and k.isdigit() and m.isdigit() and int(k) >= 1 and int(m) >= 1):
      raise argparse.ArgumentTypeError(f"budget {part!r} must be KxM, e.g. 4x8 (k steps, m "
                                       "samples)")
    out.append((int(k), int(m)))
  return out


def main(argv: Sequence[str] | None = None) -> int:
  """``python -m smoothjax.attacks``: accuracy vs attack compute k*m (Fig. 0.B.3), PNG + JSON.

  Example (the SIAM ResNet-20 with Gaussian input noise of std 0.05 pixels)::

    python -m smoothjax.attacks \\
      --checkpoint=../shared/weights/siam/resnet20_regular_model_best.pth.tar \\
      --dataset=npz:../shared/data/cifar10_lossless_3k.npz --limit=200 --sigma=0.05 \\
      --eps=2/255 --n=1,32 --out=docs/attack_vs_compute.png
  """
  ap = argparse.ArgumentParser(prog="python -m smoothjax.attacks",
                               description="Accuracy against attack compute k*m (PGD, EPGD, "
                               "SmoothAdv), with and without smoothing.")
  ap.add_argument("--checkpoint", required=True, help="as python -m evaluate --checkpoint")
  ap.add_argument("--noise", default=None, help="the model's noise when the file has none")
  ap.add_argument("--dataset", default="cifar10")
  ap.add_argument("--limit", type=int, default=200)
  ap.add_argument("--sigma", type=_fraction, default=None,
                  help="input-noise std (default: the model's own)")
  ap.add_argument("--sigma_space", choices=("pixel", "normalized"), default="pixel")
  ap.add_argument("--eps", type=_fraction, default=8 / 255)
  ap.add_argument("--norm", choices=NORMS, default="linf")
  ap.add_argument("--step_size", type=_fraction, default=None)
  ap.add_argument("--budgets", type=_budgets,
                  default=_budgets("1x1,2x1,4x1,8x1,16x1,1x4,2x4,4x4"))
  ap.add_argument("--attacks", default="pgd,epgd,smoothadv")
  ap.add_argument("--n", default="1,32", help="smoothing sample counts scored (hard vote)")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--batch_size", type=int, default=256)
  ap.add_argument("--out", default="attack_vs_compute.png")
  args = ap.parse_args(argv)

  from smoothjax import checkpoints, data, smoothing  # heavier imports, CLI only

  try:
    ns = tuple(sorted({int(v) for v in args.n.split(",")}))
    if min(ns) < 1:
      raise ValueError
  except ValueError:
    ap.error(f"--n must be positive integers, got {args.n!r}")
  try:
    model, _ = checkpoints.load_model(args.checkpoint, noise=args.noise)
    ds = data.load_dataset(args.dataset)
  except ValueError as e:  # CheckpointError, DatasetError
    print(f"error: {e}", file=sys.stderr)
    return 2
  x, y = ds.split("test")
  x = np.asarray(data.to_float(x[: args.limit]))
  y = np.asarray(y[: args.limit])
  key = jax.random.key(args.seed)
  logits_fn = smoothing.make_logits_fn(model, sigma=args.sigma, sigma_space=args.sigma_space)

  def accuracy_fn(xa):
    votes = smoothing.sample_votes(jax.random.fold_in(key, 1), model, xa, sigma=args.sigma,
                                   sigma_space=args.sigma_space, prefixes=ns, votes=("hard",),
                                   batch_size=args.batch_size)
    return {f"n={n}": a for n, a in zip(ns, votes.accuracy("hard", y))}

  rows = attack_vs_compute(logits_fn, x, y, key=jax.random.fold_in(key, 0), eps=args.eps,
                           budgets=args.budgets, attacks=tuple(args.attacks.split(",")),
                           accuracy_fn=accuracy_fn, step_size=args.step_size, norm=args.norm,
                           batch_size=args.batch_size)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  sigma = "model's own" if args.sigma is None else f"{args.sigma:g} ({args.sigma_space})"
  plot_attack_vs_compute(rows, out, title=f"eps={args.eps:.4g} {args.norm}, sigma={sigma}, "
                         f"{len(x)} images")
  settings = {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(args).items()}
  out.with_suffix(".json").write_text(json.dumps({"settings": settings, "rows": rows},
                                                 indent=1) + "\n")
  for r in rows:
    print(f"{r['attack']:10s} k={r['steps']:<3d} m={r['samples']:<3d} compute={r['compute']:<4d}"
          f" {r.get('label', ''):8s} accuracy={100 * r['accuracy']:.1f}%")
  print(f"wrote {out} and {out.with_suffix('.json')}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
