"""Training objectives: standard, adversarial (PGD, EPGD, SmoothAdv, FGSM), TRADES, fast AT.

:class:`Objective` is the typed ``config.objective``; :func:`adversarial_examples` crafts a batch's
examples and :func:`objective_loss` is the loss of one batch (train-mode forward passes).

References:
  Madry et al., Towards Deep Learning Models Resistant to Adversarial Attacks, ICLR 2018.
  Zhang et al., Theoretically Principled Trade-off between Robustness and Accuracy (TRADES),
  ICML 2019.
  Salman et al., Provably Robust Deep Learning via Adversarially Trained Smoothed Classifiers,
  NeurIPS 2019.
  Wong, Rice & Kolter, Fast is better than free: Revisiting adversarial training, ICLR 2020.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from smoothjax import attacks
from smoothjax import batchnorm
from smoothjax._utils import config_value as _get

OBJECTIVES = ("standard", "adversarial", "trades", "fast")
TRAIN_BN = ("batch", "frozen")
ATTACKS = ("pgd", "epgd", "smoothadv", "fgsm")

@dataclasses.dataclass(frozen=True)
class Objective:
  """A training objective (hashable: it is a static argument of the jitted step).

  Attributes:
    name: one of :data:`OBJECTIVES`.
    attack: ``"adversarial"``'s example generator, one of :data:`ATTACKS`.
    eps: L-infinity radius in [0, 1] pixel units (8/255 in the reference).
    steps: attack iterations k (PGD-7 in the reference, 10 for TRADES).
    step_size: attack step a in [0, 1] pixel units; 0 picks the attack's own default:
      ``1.25 eps`` for ``"fast"`` (Wong et al.), ``eps`` for plain FGSM (``1.25 eps`` with a
      random start), ``eps / 4`` otherwise (2/255 at eps = 8/255, the reference's PGD-7).
    samples: noise draws m per attack step for ``epgd`` / ``smoothadv`` (8).
    adv_weight: w in ``w CE(adv) + (1 - w) CE(clean)`` (0.5 in the reference; fast AT 1).
    beta: the TRADES trade-off (6; 1 also reported).
    random_start: PGD's uniform random start in the eps-ball (FGSM of fast AT always starts
      at random).
    fixed_noise: ``smoothadv``: draw the m noise samples once per attack (Salman et al.) rather
      than at every step.
    attack_bn: BatchNorm mode of the model while the examples are crafted: ``"train"`` (batch
      statistics; the running statistics the attack's forward pass would update are
      discarded), ``"eval"`` (running statistics), or ``"auto"``: ``"train"`` for ``"fast"``
      (Wong et al. craft their FGSM with the model in train mode), ``"eval"`` for the others
      (Madry et al. and the reference craft PGD in eval mode), and ``"eval"`` whenever
      ``train_bn="frozen"`` (the model's only normalisation is then the running one).
    train_bn: BatchNorm in the training passes: ``"batch"`` (batch statistics, running
      statistics updated; the usual) or ``"frozen"`` (the running statistics, never updated,
      as at evaluation; BatchNorm's scale and bias still train). Frozen BatchNorm is one
      remedy for noisy fine-tunes whose eval-mode model fails (see ``noise_draws``).
    noise_draws: noise draws per training pass (``train_bn="batch"``): the batch is split into
      this many equal groups, each with its own weight/activation noise draw, and BatchNorm's
      batch statistics are pooled over all groups
      (:func:`smoothjax.batchnorm.pooled_draws_forward`). With 1 (the reference's one draw
      per batch) BatchNorm removes each draw's per-channel offsets in training, which nothing
      removes at evaluation: a CNI-W model (alpha_d = 0.0625) then predicts one class in eval
      mode. Must divide ``data.batch_size``; forward passes cost the same FLOPs.
  """

  name: str = "standard"
  attack: str = "pgd"
  eps: float = 8 / 255
  steps: int = 7
  step_size: float = 0.0
  samples: int = 8
  adv_weight: float = 0.5
  beta: float = 6.0
  random_start: bool = True
  fixed_noise: bool = False
  attack_bn: str = "auto"
  train_bn: str = "batch"
  noise_draws: int = 1

  def __post_init__(self):
    if self.attack_bn not in ("auto", "train", "eval"):
      raise ValueError(f"objective.attack_bn must be auto, train or eval, got {self.attack_bn!r}")
    if self.train_bn not in TRAIN_BN:
      raise ValueError(f"objective.train_bn must be one of {', '.join(TRAIN_BN)}, got "
                       f"{self.train_bn!r}")
    if self.noise_draws < 1:
      raise ValueError(f"objective.noise_draws must be >= 1, got {self.noise_draws}")
    if self.noise_draws > 1 and self.train_bn == "frozen":
      raise ValueError("objective.noise_draws > 1 pools BatchNorm's batch statistics; with "
                       "train_bn='frozen' there are none: use one of them")
    if self.step_size == 0:  # frozen dataclass: resolve the default once, here
      if self.name == "fast":
        step = 1.25 * self.eps
      elif self.attack == "fgsm" and self.name == "adversarial":
        step = 1.25 * self.eps if self.random_start else self.eps
      else:
        step = self.eps / 4
      object.__setattr__(self, "step_size", step)
    if self.name not in OBJECTIVES:
      raise ValueError(f"unknown objective {self.name!r}; expected one of {', '.join(OBJECTIVES)}")
    if self.name == "adversarial" and self.attack not in ATTACKS:
      raise ValueError(f"unknown attack {self.attack!r}; expected one of {', '.join(ATTACKS)}")
    if self.needs_adversary:
      if not self.eps >= 0:
        raise ValueError(f"objective.eps must be >= 0, got {self.eps}")
      if self.steps < 1:
        raise ValueError(f"objective.steps must be >= 1, got {self.steps}")
      if not self.step_size > 0:
        raise ValueError(f"objective.step_size must be > 0, got {self.step_size}")
      if self.samples < 1:
        raise ValueError(f"objective.samples must be >= 1, got {self.samples}")
    if not 0.0 <= self.adv_weight <= 1.0:
      raise ValueError(f"objective.adv_weight must be in [0, 1], got {self.adv_weight}")
    if not self.beta >= 0:
      raise ValueError(f"objective.beta must be >= 0, got {self.beta}")

  @classmethod
  def from_config(cls, cfg: Any) -> "Objective":
    """From ``config.objective`` (fields as in this class; missing ones take the defaults)."""
    kw = {}
    for f in dataclasses.fields(cls):
      v = _get(cfg, f.name, None)
      if v is not None:
        kw[f.name] = type(f.default)(v)  # str, int, float or bool, as the default
    return cls(**kw)

  @property
  def attack_train_mode(self) -> bool:
    """Whether the examples are crafted with BatchNorm batch statistics (see ``attack_bn``)."""
    if self.attack_bn == "auto":
      return self.name == "fast" and self.train_bn == "batch"
    return self.attack_bn == "train"

  @property
  def needs_adversary(self) -> bool:
    if self.name == "adversarial":
      return self.adv_weight > 0
    return self.name in ("trades", "fast")


def forward(graphdef: nnx.GraphDef, params: Any, rest: Any, x: jax.Array, *, key: jax.Array,
            train: bool = False, objective: Objective | None = None):
  """Pure forward pass of a model split as ``nnx.split(model, nnx.Param, ...)``.

  Args:
    graphdef, params, rest: the model.
    x: images in [0, 1].
    key: the pass's PRNG key.
    train: a training pass, as ``objective`` (default: :class:`Objective`'s) sets it up:
      ``train_bn`` and ``noise_draws``.
    objective: see ``train``.

  Returns:
    ``logits`` (``train=False``: BatchNorm running statistics) or ``(logits, new_rest)``
    (``train=True``: batch statistics pooled over ``objective.noise_draws`` draws, running
    statistics updated in ``new_rest``; with ``train_bn="frozen"`` running statistics, ``rest``
    unchanged).
  """
  model = nnx.merge(graphdef, params, rest)
  o = objective or Objective()
  if not train or o.train_bn == "frozen":
    logits = model(x, key=key, train=False)
    return (logits, rest) if train else logits
  logits = batchnorm.pooled_draws_forward(model, x, key=key, draws=o.noise_draws)
  _, _, new_rest = nnx.split(model, nnx.Param, ...)
  return logits, nnx.to_pure_dict(new_rest)


def _ce(logits: jax.Array, y: jax.Array) -> jax.Array:
  return attacks.cross_entropy(logits, y, form="logsumexp").mean()


def _accuracy(logits: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(logits, -1) == y)


def _kl(logits_p: jax.Array, logits_q: jax.Array) -> jax.Array:
  """Batch mean of KL(softmax p || softmax q) (TRADES' KLDivLoss(sum) / batch)."""
  return attacks.kl_divergence(logits_q, logits_p, p_logits=True).mean()


def adversarial_examples(objective: Objective, graphdef: nnx.GraphDef, params: Any, rest: Any,
                         x: jax.Array, y: jax.Array, *, key: jax.Array) -> jax.Array:
  """The objective's adversarial examples for a batch (held constant: no gradient flows back).

  The attack sees the model with its noise on, in evaluation mode or, where
  ``objective.attack_train_mode`` (fast AT), with BatchNorm batch statistics (the running
  statistics are left as they are); every gradient of the attack uses a fresh noise draw (its
  keys come from ``key``).
  """
  params = jax.lax.stop_gradient(params)
  rest = jax.lax.stop_gradient(rest)
  bn_train = objective.attack_train_mode

  def logits_fn(xx, kk):
    if bn_train:
      return forward(graphdef, params, rest, xx, key=kk, train=True, objective=objective)[0]
    return forward(graphdef, params, rest, xx, key=kk, train=False)

  o = objective
  if o.name == "trades":
    x_adv = attacks.trades_adversary(logits_fn, x, key=key, eps=o.eps, steps=o.steps,
                                     step_size=o.step_size)
  elif o.name == "fast" or o.attack == "fgsm":
    # Fast AT: from a uniform random start, step `step_size` (1.25 eps); plain FGSM
    # (random_start=False): one step of size eps (Goodfellow et al.).
    start = o.name == "fast" or o.random_start
    x_adv = attacks.fgsm(logits_fn, x, y, key=key, eps=o.eps, random_start=start,
                         step_size=o.step_size if start else None)
  elif o.attack == "pgd":
    x_adv = attacks.pgd(logits_fn, x, y, key=key, eps=o.eps, steps=o.steps,
                        step_size=o.step_size, random_start=o.random_start)
  elif o.attack == "epgd":
    x_adv = attacks.epgd(logits_fn, x, y, key=key, eps=o.eps, steps=o.steps,
                         step_size=o.step_size, random_start=o.random_start, samples=o.samples)
  else:
    x_adv = attacks.smoothadv(logits_fn, x, y, key=key, eps=o.eps, steps=o.steps,
                              step_size=o.step_size, random_start=o.random_start,
                              samples=o.samples, fixed_noise=o.fixed_noise)
  return jax.lax.stop_gradient(x_adv)


def objective_loss(objective: Objective, graphdef: nnx.GraphDef, params: Any, rest: Any,
                   x: jax.Array, y: jax.Array, *, key: jax.Array,
                   x_adv: jax.Array | None = None) -> tuple[jax.Array, tuple[Any, dict]]:
  """The training loss of one batch (train-mode forward passes).

  Keys: the clean forward pass uses ``fold_in(key, 2)``, the adversarial one ``fold_in(key, 3)``
  (each pass draws its own weight noise), so ``"trades"`` with ``beta = 0`` and ``"standard"``
  see identical clean logits.

  Args:
    objective: the objective.
    graphdef, params, rest: the model, split as ``nnx.split(model, nnx.Param, ...)``.
    x, y: images in [0, 1] and labels.
    key: the step's key.
    x_adv: :func:`adversarial_examples` of ``x`` (required when the objective needs them).

  Returns:
    ``(loss, (new_rest, aux))``; ``aux`` has ``accuracy`` (clean batch, when computed),
    ``adv_accuracy`` and, for TRADES, ``kl``.
  """
  o = objective
  k_clean, k_adv = jax.random.fold_in(key, 2), jax.random.fold_in(key, 3)
  aux = {}
  if o.needs_adversary and x_adv is None:
    raise ValueError(f"objective {o.name!r} needs adversarial examples (x_adv)")
  if o.name == "standard":
    logits, rest = forward(graphdef, params, rest, x, key=k_clean, train=True, objective=o)
    loss = _ce(logits, y)
    aux["accuracy"] = _accuracy(logits, y)
  elif o.name == "trades":
    logits, rest = forward(graphdef, params, rest, x, key=k_clean, train=True, objective=o)
    logits_adv, rest = forward(graphdef, params, rest, x_adv, key=k_adv, train=True, objective=o)
    kl = _kl(logits, logits_adv)
    loss = _ce(logits, y) + o.beta * kl
    aux.update(accuracy=_accuracy(logits, y), adv_accuracy=_accuracy(logits_adv, y), kl=kl)
  else:  # adversarial, fast
    w = 1.0 if o.name == "fast" else o.adv_weight
    loss = 0.0
    if w > 0:
      logits_adv, rest = forward(graphdef, params, rest, x_adv, key=k_adv, train=True, objective=o)
      loss = w * _ce(logits_adv, y)
      aux["adv_accuracy"] = _accuracy(logits_adv, y)
    if w < 1:
      logits, rest = forward(graphdef, params, rest, x, key=k_clean, train=True, objective=o)
      loss = loss + (1 - w) * _ce(logits, y)
      aux["accuracy"] = _accuracy(logits, y)
  return loss, (rest, aux)

