"""Auto-PGD (APGD-CE, APGD-DLR) with expectation over transformation, as compiled ``lax.scan``.

Croce & Hein's parameter-free PGD: the step size starts at ``2 eps`` and is halved per image at
checkpoints when the attack stalls; each step has momentum ``alpha = 0.75``; the attack restarts
from the best point found so far whenever it halves the step. Against a randomized model every
gradient is an EOT gradient (Athalye et al.): the mean over ``eot_samples`` noise draws of the
gradient of one noisy forward pass. AutoAttack's ``version='rand'`` (:data:`PRESETS` ``"rand"``)
runs APGD-CE and APGD-DLR with 100 iterations, 1 restart and 20 draws: ``2 * 101 * 20`` (about
4,000) gradients per image; :func:`autoattack_rand` is the per-image worst case of the two.

Like :mod:`smoothjax.attacks`, every function takes a ``logits_fn(x, key) -> logits``: one noisy
forward pass of images ``x`` in [0, 1] pixel units, whose key drives all of the model's noise.
A pytree ``logits_fn`` (``smoothjax.attacks.model_logits_fn``) passes its parameters as
arguments of the compiled attack; a closure is compiled once per identity.

The algorithm (Croce & Hein 2020, Algorithm 1), per image, for ``N = steps`` iterations:

* start: ``x0 = x + eps * t / ||t||`` (L-inf: ``t`` uniform in [-1, 1]^d scaled to sup-norm 1;
  L2: ``t`` Gaussian), clipped to [0, 1];
* step ``k``: ``z = P(x_k + eta_k * s(g_k))`` and
  ``x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1}))`` with ``alpha = 1`` at the
  first step, ``s`` the sign (L-inf) or ``g / ||g||_2`` (L2) and ``P`` the projection onto the
  eps-ball and [0, 1];
* checkpoints ``w_j``: AutoAttack's integer form of ``p_0 = 0, p_1 = 0.22,
  p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``: the first window has
  ``max(int(0.22 N), 1)`` steps and each next one ``max(int(0.03 N), 1)`` fewer, down to
  ``max(int(0.06 N), 1)`` (for ``N = 100`` this is exactly ``ceil(p_j N)``: 22, 41, 57, 70,
  80, 87, 93, 99); ``schedule="paper"`` uses ``ceil(p_j N)`` itself. At ``w_j`` the step is
  halved if at most ``rho`` of the ``h = w_j - w_{j-1}`` steps of the window increased the
  loss (condition 1; AutoAttack and torchattacks test ``count <= rho * h``), or if the step
  was not halved at ``w_{j-1}`` and the best loss did not improve since then (condition 2);
  then ``x_{w_j}`` and its gradient are reset to the best point's.

Differences to the PyTorch implementations (AutoAttack, torchattacks): the loss that drives
the step control and the best point is the *mean* over the draws (they keep the last draw's),
an image counts as fooled when the argmax of its mean softmax over the draws differs from its
label (they use the last draw's logits), and the first window's condition 1 compares the first
step with the loss at ``x0``, as in the paper (they compare it with 0). On a deterministic model
with ``eot_samples=1`` only the last point differs: from torchattacks' start, on a linear
model, the same images are broken and most examples agree to 1e-5 (tests/test_apgd.py).

Keys: restart ``r`` uses ``k_start, k_steps = split(fold_in(key, r))``; the gradient at
iterate ``t`` (``t = 0`` is the start) uses ``k_t = fold_in(k_steps, t)`` and its draw ``j``
runs the model with ``fold_in(k_t, j)``. Draws are looped with ``lax.scan`` (each draw shared
by the batch, as in :mod:`smoothjax.attacks`). Images interact only through the model's noise
draws: step sizes, checkpoints and best points are per image, and the loss is summed over the
batch before differentiating (AutoAttack's ``loss_indiv.sum()``), so each image gets its own
gradient.

References:
  Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
  parameter-free attacks", ICML 2020.
  Athalye, Engstrom, Ilyas, Kwok, "Synthesizing Robust Adversarial Examples", ICML 2018.
  Nemcovsky et al., "Smoothed Inference for Improving Adversarial Robustness", arXiv 1911.07198.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from smoothjax._utils import as_key as _as_key
from smoothjax.attacks._common import (_attack_inputs, _check_int, _check_number, _join_fn,
                                       _split_fn)

__all__ = [
    "LOSSES",
    "NORMS",
    "PRESETS",
    "APGDInfo",
    "dlr_loss",
    "eot_gradient",
    "checkpoints",
    "apgd",
    "autoattack_rand",
]

LOSSES = ("ce", "dlr")
NORMS = ("linf", "l2")
SCHEDULES = ("autoattack", "paper")

# Budgets (keyword arguments of apgd / autoattack_rand). Gradients per image and attack:
# (steps + 1) * eot_samples * restarts.
PRESETS = {
    # AutoAttack version='rand' (Croce & Hein): 100 iterations, 1 restart, 20 EOT draws.
    "rand": dict(steps=100, restarts=1, eot_samples=20),
    # AutoAttack version='standard' budget of APGD-CE / APGD-DLR (deterministic models).
    "standard": dict(steps=100, restarts=1, eot_samples=1),
    # CPU-sized: 20 iterations with 4 draws, 84 gradients per image and attack (~1/24 of "rand").
    "cpu": dict(steps=20, restarts=1, eot_samples=4),
}

LogitsFn = Callable[[jax.Array, jax.Array], jax.Array]
# score_fn(x, key) -> (B, C) scores (logits, probabilities or vote counts; the argmax is taken).
ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]


class APGDInfo(NamedTuple):
  """Per-image outcome of :func:`apgd` / :func:`autoattack_rand`.

  Attributes:
    fooled: (B,) bool, some iterate was misclassified (``autoattack_rand``: by ``score_fn``).
    loss: (B,) float32, the best loss reached (``autoattack_rand``: of the chosen attack).
  """

  fooled: jax.Array
  loss: jax.Array


# --------------------------------------------------------------------------------------------
# Losses and the EOT gradient
# --------------------------------------------------------------------------------------------


def _cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
  logp = jax.nn.log_softmax(logits, -1)
  return -jnp.take_along_axis(logp, y[:, None], -1)[:, 0]


def dlr_loss(logits: jax.Array, y: jax.Array) -> jax.Array:
  """Per-example untargeted Difference of Logits Ratio loss (Croce & Hein 2020, eq. 6).

  ``DLR(z, y) = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)`` with ``z_pi1 >= z_pi2 >=
  z_pi3`` the largest logits. It is positive exactly when the example is misclassified and
  invariant to shifting and (positive) rescaling of the logits.

  Args:
    logits: (B, C) logits, C >= 3.
    y: (B,) integer labels.

  Returns:
    (B,) float32 losses (higher is more adversarial).

  References:
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020.
  """
  z = logits.astype(jnp.float32)
  if z.shape[-1] < 3:
    raise ValueError(f"the DLR loss needs at least 3 classes, got {z.shape[-1]}")
  y = y.astype(jnp.int32)
  zs = jnp.sort(z, -1)
  z_y = jnp.take_along_axis(z, y[:, None], -1)[:, 0]
  z_other = jnp.max(jnp.where(jax.nn.one_hot(y, z.shape[-1], dtype=bool), -jnp.inf, z), -1)
  return -(z_y - z_other) / (zs[:, -1] - zs[:, -3] + 1e-12)


def _loss(name: str, logits: jax.Array, y: jax.Array) -> jax.Array:
  logits = logits.astype(jnp.float32)
  return _cross_entropy(logits, y) if name == "ce" else dlr_loss(logits, y)


def _eot(fn, x, y, key, loss: str, samples: int):
  """(mean gradient, mean loss, mean softmax) over draws ``fold_in(key, j)``, j < samples."""

  def one(k):
    def total(xv):
      logits = fn(xv, k).astype(jnp.float32)
      li = _loss(loss, logits, y)
      return jnp.sum(li), (li, jax.nn.softmax(logits, -1))

    (_, (li, p)), g = jax.value_and_grad(total, has_aux=True)(x)
    return g, li, p

  if samples == 1:
    return one(jax.random.fold_in(key, 0))

  def body(acc, j):
    return jax.tree.map(jnp.add, acc, one(jax.random.fold_in(key, j))), None

  b = x.shape[0]
  # The number of classes is known only after one forward pass: trace it abstractly.
  c = jax.eval_shape(lambda: fn(x, jax.random.fold_in(key, 0))).shape[-1]
  init = (jnp.zeros_like(x), jnp.zeros((b,), jnp.float32), jnp.zeros((b, c), jnp.float32))
  acc, _ = jax.lax.scan(body, init, jnp.arange(samples))
  return jax.tree.map(lambda a: a / samples, acc)


def eot_gradient(logits_fn: LogitsFn, x, y, *, key, samples: int = 1, loss: str = "ce"):
  """The EOT gradient used by :func:`apgd`: the mean over ``samples`` draws.

  Draw ``j`` runs ``logits_fn(x, fold_in(key, j))``; its gradient is that of the per-example
  loss summed over the batch (so row ``i`` of the gradient is image ``i``'s own).

  Args:
    logits_fn: ``logits_fn(x, key) -> logits`` (one noisy forward pass).
    x: images, batch first.
    y: (B,) integer labels.
    key: PRNG key of this gradient.
    samples: number of noise draws m.
    loss: ``"ce"`` or ``"dlr"``.

  Returns:
    ``(grad, loss, probs)``: the mean over the draws of the per-image loss gradient (x's
    shape), of the per-image loss (B,) and of the softmax (B, C).

  References:
    Athalye, Engstrom, Ilyas, Kwok, "Synthesizing Robust Adversarial Examples", ICML 2018.
  """
  _check_choice("loss", loss, LOSSES)
  _check_int("samples", samples)
  x = jnp.asarray(x, jnp.float32)
  return _eot(logits_fn, x, jnp.asarray(y).astype(jnp.int32), _as_key(key), loss, int(samples))


# --------------------------------------------------------------------------------------------
# Geometry and the step-size schedule
# --------------------------------------------------------------------------------------------


def _norm2(v: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(range(1, v.ndim)), keepdims=True))


def _project(xa, x, eps, norm: str):
  """Projection onto the eps-ball around ``x`` (AutoAttack's form), then onto [0, 1]."""
  d = xa - x
  if norm == "linf":
    d = jnp.clip(d, -eps, eps)
  else:
    n = _norm2(d)
    d = d / (n + 1e-12) * jnp.minimum(eps, n)
  return jnp.clip(x + d, 0.0, 1.0)


def _direction(g, norm: str):
  return jnp.sign(g) if norm == "linf" else g / (_norm2(g) + 1e-12)


def _start(key, x, eps, norm: str):
  if norm == "linf":
    t = jax.random.uniform(key, x.shape, jnp.float32, -1.0, 1.0)
    t = t / (jnp.max(jnp.abs(t), axis=tuple(range(1, x.ndim)), keepdims=True) + 1e-12)
  else:
    t = jax.random.normal(key, x.shape, jnp.float32)
    t = t / (_norm2(t) + 1e-12)
  return jnp.clip(x + eps * t, 0.0, 1.0)


def checkpoints(steps: int, schedule: str = "autoattack") -> tuple[int, ...]:
  """The checkpoints ``w_1 < w_2 < ... <= steps`` (iterations after which steps may halve).

  Args:
    steps: number of iterations N.
    schedule: ``"autoattack"``: AutoAttack's integer windows (first ``max(int(0.22 N), 1)``,
      each next ``max(int(0.03 N), 1)`` shorter, at least ``max(int(0.06 N), 1)``);
      ``"paper"``: ``ceil(p_j N)`` with ``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j +
      max(p_j - p_{j-1} - 0.03, 0.06)``. Both give 22, 41, 57, 70, 80, 87, 93, 99 for N = 100.

  Returns:
    The checkpoints, in iterations (1-based: ``w`` means after the ``w``-th step).

  References:
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020, section 3.2.
  """
  _check_int("steps", steps)
  _check_choice("schedule", schedule, SCHEDULES)
  out = []
  if schedule == "autoattack":
    h = max(int(0.22 * steps), 1)
    decr, h_min = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    w = h
    while w <= steps:
      out.append(w)
      h = max(h - decr, h_min)
      w += h
    return tuple(out)
  p_prev, p = 0.0, 0.22
  while p <= 1.0 + 1e-9:
    w = math.ceil(round(p * steps, 9))
    if w >= 1 and (not out or w > out[-1]):
      out.append(w)
    p_prev, p = p, p + max(p - p_prev - 0.03, 0.06)
  return tuple(out)


# --------------------------------------------------------------------------------------------
# The compiled attack
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Config:
  """Static settings of one compiled APGD (hashable: part of the jit cache key)."""

  steps: int
  loss: str = "ce"
  norm: str = "linf"
  eot_samples: int = 1
  restarts: int = 1
  rho: float = 0.75
  momentum: float = 0.75
  initial_step: float = 2.0
  schedule: str = "autoattack"


def _where(mask, a, b):
  return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - mask.ndim)), a, b)


def _one_run(fn, x, y, key, eps, x_init, cfg: _Config):
  """One APGD run from a random start (or x_init): (x_adv, fooled, best loss), per image."""
  b = x.shape[0]
  k_start, k_steps = jax.random.split(key)
  eot = lambda xv, t: _eot(fn, xv, y, jax.random.fold_in(k_steps, t), cfg.loss,
                           cfg.eot_samples)
  if x_init is None:
    x0 = _start(k_start, x, eps, cfg.norm)
  else:
    x0 = _project(x_init.astype(jnp.float32), x, eps, cfg.norm)
  g0, l0, p0 = eot(x0, 0)

  ws = checkpoints(cfg.steps, cfg.schedule)
  is_ckpt = np.zeros(cfg.steps, bool)
  window = np.ones(cfg.steps, np.float32)
  prev = 0
  for w in ws:
    is_ckpt[w - 1], window[w - 1], prev = True, w - prev, w

  state = dict(
      x=x0, x_prev=x0, g=g0, loss=l0, eta=jnp.full((b,), cfg.initial_step, jnp.float32) * eps,
      best_x=x0, best_g=g0, best_loss=l0, adv_x=x0, fooled=jnp.argmax(p0, -1) != y,
      n_incr=jnp.zeros((b,), jnp.int32), loss_at_ckpt=l0, halved=jnp.ones((b,), bool))

  def step(s, inp):
    i, ckpt, h = inp
    a = jnp.where(i > 0, cfg.momentum, 1.0)
    eta = s["eta"].reshape((b,) + (1,) * (x.ndim - 1))
    z = _project(s["x"] + eta * _direction(s["g"], cfg.norm), x, eps, cfg.norm)
    xn = _project(s["x"] + a * (z - s["x"]) + (1 - a) * (s["x"] - s["x_prev"]), x, eps,
                  cfg.norm)
    g, loss, probs = eot(xn, i + 1)
    f = jnp.argmax(probs, -1) != y
    improved = loss > s["best_loss"]
    best_loss = jnp.where(improved, loss, s["best_loss"])
    best_x, best_g = _where(improved, xn, s["best_x"]), _where(improved, g, s["best_g"])
    n_incr = s["n_incr"] + (loss > s["loss"]).astype(jnp.int32)
    # Checkpoint: condition 1 (too few increases in the window) or condition 2 (not halved at
    # the last checkpoint and no improvement of the best loss since it).
    stalled = (n_incr <= cfg.rho * h) | (~s["halved"] & (s["loss_at_ckpt"] >= best_loss))
    halve = ckpt & stalled
    new = dict(
        x=_where(halve, best_x, xn), x_prev=s["x"], g=_where(halve, best_g, g), loss=loss,
        eta=jnp.where(halve, s["eta"] / 2, s["eta"]), best_x=best_x, best_g=best_g,
        best_loss=best_loss, adv_x=_where(f, xn, s["adv_x"]), fooled=s["fooled"] | f,
        n_incr=jnp.where(ckpt, 0, n_incr),
        loss_at_ckpt=jnp.where(ckpt, best_loss, s["loss_at_ckpt"]),
        halved=jnp.where(ckpt, halve, s["halved"]))
    return new, None

  xs = (jnp.arange(cfg.steps), jnp.asarray(is_ckpt), jnp.asarray(window))
  s, _ = jax.lax.scan(step, state, xs)
  # Fooled images: the last misclassified iterate (AutoAttack's x_best_adv); the others: the
  # highest-loss point (for a randomized model it may still fool the final evaluation).
  return _where(s["fooled"], s["adv_x"], s["best_x"]), s["fooled"], s["best_loss"]


def _apgd_impl(fn_static, fn_leaves, x, y, key, eps, x_init, cfg: _Config):
  fn = _join_fn(fn_static, fn_leaves)
  x = x.astype(jnp.float32)
  y = y.astype(jnp.int32)
  if cfg.restarts == 1:
    return _one_run(fn, x, y, jax.random.fold_in(key, 0), eps, x_init, cfg)

  def body(best, r):
    bx, bf, bl = best
    xa, f, loss = _one_run(fn, x, y, jax.random.fold_in(key, r), eps, x_init, cfg)
    # AutoAttack keeps the first restart that fools an image; otherwise keep the best loss.
    take = (f & ~bf) | (~f & ~bf & (loss > bl))
    return (_where(take, xa, bx), bf | f, jnp.where(take, loss, bl)), None

  b = x.shape[0]
  init = (x, jnp.zeros((b,), bool), jnp.full((b,), -jnp.inf, jnp.float32))
  out, _ = jax.lax.scan(body, init, jnp.arange(cfg.restarts))
  return out


_apgd_jit = jax.jit(_apgd_impl, static_argnums=(0,), static_argnames=("cfg",))


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def apgd(logits_fn: LogitsFn, x, y, *, key, eps, steps: int = 20, loss: str = "ce",
         norm: str = "linf", eot_samples: int = 1, restarts: int = 1, rho: float = 0.75,
         momentum: float = 0.75, initial_step: float = 2.0, schedule: str = "autoattack",
         x_init=None, return_info: bool = False):
  """APGD-CE / APGD-DLR (Croce & Hein 2020) with EOT gradients, untargeted, L-inf or L2.

  Jittable (inlined when called under the caller's ``jax.jit``); otherwise compiled once per
  static setting, with a pytree ``logits_fn``'s arrays as arguments. Cost per image:
  ``(steps + 1) * eot_samples * restarts`` gradients (see :data:`PRESETS`).

  Args:
    logits_fn: ``logits_fn(x, key) -> logits`` (one noisy forward pass).
    x: images in [0, 1], batch first (any layout).
    y: (B,) integer labels.
    key: PRNG key (or int seed); see the module docstring for how it is used.
    eps: radius of the threat model in [0, 1] pixel units.
    steps: iterations N (the checkpoints are computed from it statically).
    loss: ``"ce"`` (cross-entropy) or ``"dlr"`` (:func:`dlr_loss`, needs >= 3 classes).
    norm: ``"linf"`` (signed steps) or ``"l2"`` (normalised-gradient steps, L2 projection).
    eot_samples: noise draws m per gradient (the gradient is the mean of m single-draw ones).
    restarts: independent runs; per image the first one that fools it is kept, else the one
      with the highest loss.
    rho: condition 1's fraction of loss increases below which the step is halved.
    momentum: alpha, the weight of the new step against the previous update.
    initial_step: eta_0 / eps.
    schedule: ``"autoattack"`` or ``"paper"`` checkpoints (see :func:`checkpoints`).
    x_init: optional start point (``x``'s shape, projected onto the eps-ball and [0, 1]) used
      instead of the random start by every restart (AutoAttack's ``x_init``).
    return_info: also return an :class:`APGDInfo`.

  Returns:
    ``x_adv`` (float32, ``x``'s shape, in the eps-ball around ``x`` and in [0, 1]): per image
    the last misclassified iterate if there is one, else the highest-loss iterate; with
    ``return_info``, ``(x_adv, APGDInfo(fooled, loss))``.

  Raises:
    ValueError: bad settings.

  Example:
    >>> fn = smoothjax.attacks.model_logits_fn(*nnx.split(model), sigma=0.12)
    >>> x_adv = apgd(fn, x, y, key=jax.random.key(0), eps=8 / 255, loss="dlr",
    ...              **PRESETS["rand"])

  References:
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020.
    Athalye, Engstrom, Ilyas, Kwok, "Synthesizing Robust Adversarial Examples", ICML 2018.
  """
  cfg = _make_config(steps=steps, loss=loss, norm=norm, eot_samples=eot_samples,
                     restarts=restarts, rho=rho, momentum=momentum, initial_step=initial_step,
                     schedule=schedule)
  _check_number("eps", eps)
  fn_static, fn_leaves, key, x = _attack_inputs(logits_fn, key, x)
  y = jnp.asarray(y)
  if y.shape != x.shape[:1]:
    raise ValueError(f"y must hold {x.shape[0]} labels, got shape {y.shape}")
  eps = jnp.asarray(eps, jnp.float32)
  if x_init is not None:
    x_init = jnp.asarray(x_init, jnp.float32)
    if x_init.shape != x.shape:
      raise ValueError(f"x_init must have x's shape {x.shape}, got {x_init.shape}")
  args = (fn_leaves, x, y, key, eps, x_init)
  if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(args)):
    xa, fooled, best = _apgd_impl(fn_static, *args, cfg=cfg)
  else:
    xa, fooled, best = _apgd_jit(fn_static, *args, cfg=cfg)
  return (xa, APGDInfo(fooled, best)) if return_info else xa


def autoattack_rand(logits_fn: LogitsFn, x, y, *, key, eps, norm: str = "linf",
                    steps: int = 20, eot_samples: int = 1, restarts: int = 1,
                    score_fn: ScoreFn | None = None, return_info: bool = False, **kw):
  """The per-image worst case of APGD-CE and APGD-DLR (AutoAttack's ``version='rand'``).

  An image is broken if either attack's example fools the scorer; per image this returns
  APGD-CE's example where it fools the scorer and APGD-DLR's otherwise, as AutoAttack does by
  running APGD-DLR on the points APGD-CE left robust. Here both attacks run on every image
  (one compiled program per attack, no data-dependent shapes); for the full budget pass
  ``**PRESETS["rand"]``.

  Keys: APGD-CE uses ``fold_in(key, 0)``, APGD-DLR ``fold_in(key, 1)``, and both examples are
  scored with the same key ``fold_in(key, 2)`` (common random numbers).

  Args:
    logits_fn: ``logits_fn(x, key) -> logits`` (one noisy forward pass).
    x: images in [0, 1], batch first.
    y: (B,) integer labels.
    key: PRNG key (or int seed).
    eps: radius in [0, 1] pixel units.
    norm: ``"linf"`` or ``"l2"``.
    steps, eot_samples, restarts: each attack's budget (:data:`PRESETS`).
    score_fn: ``score_fn(x, key) -> (B, C)`` scores of the classifier under evaluation (e.g. a
      smoothed prediction, ``smoothjax.attacks.smoothed_probs_fn``); an example fools it when
      the argmax differs from ``y``. ``None``: the attacks' own criterion (the argmax of the
      mean softmax over the ``eot_samples`` draws at some iterate).
    return_info: also return an :class:`APGDInfo` (fooled by either; the chosen attack's loss).
    **kw: passed to :func:`apgd` (``rho``, ``momentum``, ``initial_step``, ``schedule``).

  Returns:
    ``x_adv``, or ``(x_adv, APGDInfo)`` with ``return_info``.

  References:
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020.
  """
  key = _as_key(key)
  y = jnp.asarray(y)
  common = dict(eps=eps, norm=norm, steps=steps, eot_samples=eot_samples, restarts=restarts,
                return_info=True, **kw)
  x_ce, info_ce = apgd(logits_fn, x, y, key=jax.random.fold_in(key, 0), loss="ce", **common)
  x_dlr, info_dlr = apgd(logits_fn, x, y, key=jax.random.fold_in(key, 1), loss="dlr", **common)
  if score_fn is None:
    fooled_ce, fooled_dlr = info_ce.fooled, info_dlr.fooled
  else:
    fn_static, fn_leaves = _split_fn(score_fn)
    args = (fn_leaves, x_ce, x_dlr, y, jax.random.fold_in(key, 2))
    tracing = any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(args))
    fooled_ce, fooled_dlr = (_fooled_impl if tracing else _fooled_jit)(fn_static, *args)
  xa = _where(fooled_ce, x_ce, x_dlr)
  if not return_info:
    return xa
  return xa, APGDInfo(fooled_ce | fooled_dlr, jnp.where(fooled_ce, info_ce.loss, info_dlr.loss))


def _fooled_impl(fn_static, fn_leaves, x_a, x_b, y, key):
  """Whether ``score_fn``'s argmax differs from ``y`` at two sets of examples (same key)."""
  fn = _join_fn(fn_static, fn_leaves)
  y = y.astype(jnp.int32)
  return tuple(jnp.argmax(fn(xv, key), -1) != y for xv in (x_a, x_b))


_fooled_jit = jax.jit(_fooled_impl, static_argnums=(0,))


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _check_choice(name, v, choices):
  if v not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {v!r}")


def _make_config(*, steps, loss, norm, eot_samples, restarts, rho, momentum, initial_step,
                 schedule) -> _Config:
  _check_int("steps", steps)
  _check_int("eot_samples", eot_samples)
  _check_int("restarts", restarts)
  _check_choice("loss", loss, LOSSES)
  _check_choice("norm", norm, NORMS)
  _check_choice("schedule", schedule, SCHEDULES)
  for name, v, lo, hi in (("rho", rho, 0.0, 1.0), ("momentum", momentum, 0.0, 1.0),
                          ("initial_step", initial_step, 0.0, math.inf)):
    v = float(v)
    if not (lo <= v <= hi) or math.isnan(v):
      raise ValueError(f"{name} must be in [{lo}, {hi}], got {v}")
  return _Config(steps=int(steps), loss=loss, norm=norm, eot_samples=int(eot_samples),
                 restarts=int(restarts), rho=float(rho), momentum=float(momentum),
                 initial_step=float(initial_step), schedule=schedule)
