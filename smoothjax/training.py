"""Training: objectives, optimizers, one jitted data-parallel train step, and the train loop.

Objectives (REFERENCE.md §5), selected by ``config.objective.name``:

* ``"standard"``: cross-entropy. With a model that carries Gaussian input noise
  (``config.model.input_sigma``) this is *noise training / fine-tuning* (CNI-I+W).
* ``"adversarial"``: Madry et al.'s ``w * CE(f(x_adv), y) + (1 - w) * CE(f(x), y)``. The examples
  come from ``config.objective.attack``: ``"pgd"`` (Madry; the reference uses k = 7, a = 2/255,
  w = 0.5), ``"epgd"`` (expectation over m noise draws: *EPGD adversarial training*),
  ``"smoothadv"`` (Salman et al.'s attack on the soft-smoothed model: *SmoothAdv training*) or
  ``"fgsm"``. They are generated with the model in evaluation mode (BatchNorm running
  statistics), its noise switched on, and then held constant (no gradient through the attack).
  With input noise on the model this is CNI-I+W fine-tuning with an adversarial term.
* ``"trades"``: Zhang et al.'s ``CE(f(x), y) + beta * KL(f(x) || f(x_adv))`` with ``x_adv``
  maximising the KL term. ``beta = 0`` gives exactly the loss of ``"standard"``.
* ``"fast"``: Wong, Rice & Kolter (2020) "fast is better than free" adversarial training: one
  FGSM step from a uniform random start in ``[-eps, eps]`` with step ``1.25 eps``, trained on
  the adversarial examples only (``adv_weight = 1``), with a one-cycle learning rate. Pair it
  with ``config.train.best_metric = "pgd_accuracy"`` (PGD accuracy on a held-out validation
  minibatch every epoch) to keep the snapshot before any catastrophic overfitting.

Learnable noise scales (:class:`smoothjax.noise.NoiseScale`: PNI's ``alpha``, CNI's ``alpha_d``
and ``F``) train with the other parameters. Weight decay is applied per group: the ordinary
weights get ``optim.weight_decay``; PNI/CNI ``alpha`` get ``optim.alpha_decay`` (0: PNI excludes
them from weight decay); CNI's ``F`` gets ``optim.factor_decay`` (the later CNI code's "noise
decay", an L2 penalty: weight decay ``lambda`` is the gradient of ``lambda/2 ||F||^2``).

Optimisation follows the reference: gradients are clipped to a global norm
(``optim.clip_norm``, 0.05 in the reference), then weight decay is added (PyTorch's coupled
``weight_decay``), then SGD with Nesterov momentum under a piecewise-constant schedule
(``optim.milestones`` in epochs, ``optim.gamma``). Adam, RAdam, Lookahead and one-cycle / cosine
schedules are options.

The train step is one ``jax.jit``-compiled function with donated state, data-parallel over a
1-D device mesh ``('batch',)``: the batch is sharded, the state replicated; XLA inserts the
cross-device reductions (BatchNorm statistics, gradient means). Random numbers come from
``fold_in(train_key, step)`` and do not depend on the device count (threefry is
sharding-invariant), so 1 and N devices give the same result up to floating-point reduction
order, and a resumed run gives bit-for-bit the parameters of an uninterrupted one.

Example:
  >>> from train.configs import smoke                                 # doctest: +SKIP
  >>> final = train_and_evaluate(smoke.get_config(), "/tmp/smoke")      # doctest: +SKIP

References:
  Madry et al., Towards Deep Learning Models Resistant to Adversarial Attacks, ICLR 2018.
  Zhang et al., Theoretically Principled Trade-off between Robustness and Accuracy (TRADES),
  ICML 2019.
  He, Rakin & Fan, Parametric Noise Injection (PNI), CVPR 2019.
  Zheltonozhskii et al., Colored Noise Injection for Training Adversarially Robust Neural
  Networks, arXiv 2003.02188.
  Salman et al., Provably Robust Deep Learning via Adversarially Trained Smoothed Classifiers,
  NeurIPS 2019.
  Wong, Rice & Kolter, Fast is better than free: Revisiting adversarial training, ICLR 2020.
  Nemcovsky et al., Smoothed Inference for Improving Adversarial Robustness, arXiv 1911.07198.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import sys
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from flax import traverse_util
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from smoothjax import attacks
from smoothjax import checkpoints as ckpt_lib
from smoothjax import data as data_lib
from smoothjax import metrics as metrics_lib
from smoothjax import models as models_lib
from smoothjax import noise as noise_lib
from smoothjax import smoothing

__all__ = [
    "OBJECTIVES",
    "ATTACKS",
    "OPTIMIZERS",
    "SCHEDULES",
    "BEST_METRICS",
    "NonFiniteLossError",
    "Objective",
    "model_config_from",
    "param_labels",
    "make_schedule",
    "make_optimizer",
    "init_train_state",
    "make_mesh",
    "replicate",
    "forward",
    "adversarial_examples",
    "objective_loss",
    "make_train_step",
    "make_pgd_eval_step",
    "load_training_data",
    "train_and_evaluate",
]

OBJECTIVES = ("standard", "adversarial", "trades", "fast")
ATTACKS = ("pgd", "epgd", "smoothadv", "fgsm")
OPTIMIZERS = ("sgd", "adam", "radam")
SCHEDULES = ("piecewise", "constant", "onecycle", "cosine")
BEST_METRICS = ("accuracy", "smoothed_accuracy", "pgd_accuracy")
BATCH_AXIS = "batch"


class NonFiniteLossError(RuntimeError):
  """The training loss (or gradient norm) became NaN or infinite; the run stopped."""


# ----------------------------------------------------------------------------------------------
# Configuration.


def _get(cfg: Any, name: str, default: Any = None) -> Any:
  """``cfg.name`` for ConfigDicts, dicts and objects, with a default."""
  if cfg is None:
    return default
  if isinstance(cfg, Mapping):
    return cfg.get(name, default)
  try:
    return getattr(cfg, name)
  except AttributeError:
    return default


def model_config_from(cfg: Any, *, num_classes: int | None = None) -> models_lib.ModelConfig:
  """Builds a :class:`~smoothjax.models.ModelConfig` from ``config.model``.

  Args:
    cfg: ``config.model`` with ``arch``, ``noise`` (a ``--noise`` spec such as ``"cni_w"``),
      ``shortcut``, ``num_classes`` (0: the dataset's), ``normalization`` (``"reference"``,
      ``"akamaster"`` or six numbers), and the noise settings ``input_sigma``, ``sigma_space``,
      ``pni_granularity``, ``pni_alpha_init``, ``cni_rank``, ``cni_alpha_init``, ``cni_f_init``,
      ``cni_f_dist``.
    num_classes: the dataset's number of classes (used when ``cfg.num_classes`` is 0).

  Raises:
    ValueError: an unknown architecture, noise spec, normalisation, or a class count that
      contradicts the dataset.
  """
  overrides = {}
  for name in ("input_sigma", "sigma_space", "pni_granularity", "pni_alpha_init", "cni_rank",
               "cni_alpha_init", "cni_f_init", "cni_f_dist"):
    value = _get(cfg, name)
    if value is not None:
      overrides[name] = value
  spec = str(_get(cfg, "noise", "none"))
  if ":" in spec:  # pni_w:channel names the granularity itself
    overrides.pop("pni_granularity", None)
  noise = noise_lib.parse_noise(spec, **overrides)
  n = int(_get(cfg, "num_classes", 0) or 0)
  if n and num_classes and n != num_classes:
    raise ValueError(f"config.model.num_classes={n} but the dataset has {num_classes} classes")
  n = n or num_classes or 10
  mean, std = ckpt_lib.parse_normalization(_get(cfg, "normalization", "reference"))
  return models_lib.ModelConfig(arch=str(_get(cfg, "arch", "resnet20")), num_classes=n,
                                shortcut=str(_get(cfg, "shortcut", "B")), noise=noise,
                                mean=mean, std=std)


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
      (Madry et al. and the reference craft PGD in eval mode).
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

  def __post_init__(self):
    if self.attack_bn not in ("auto", "train", "eval"):
      raise ValueError(f"objective.attack_bn must be auto, train or eval, got {self.attack_bn!r}")
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
      v = _get(cfg, f.name)
      if v is not None:
        kw[f.name] = type(f.default)(v)  # str, int, float or bool, as the default
    return cls(**kw)

  @property
  def attack_train_mode(self) -> bool:
    """Whether the examples are crafted with BatchNorm batch statistics (see ``attack_bn``)."""
    if self.attack_bn == "auto":
      return self.name == "fast"
    return self.attack_bn == "train"

  @property
  def needs_adversary(self) -> bool:
    if self.name == "adversarial":
      return self.adv_weight > 0
    return self.name in ("trades", "fast")


# ----------------------------------------------------------------------------------------------
# Parameter groups, schedules, optimizers.


def param_labels(model: nnx.Module) -> dict:
  """Labels every parameter of ``model`` for weight decay (a pure dict like its Params).

  ``"factor"``: CNI's low-rank factor F; ``"alpha"``: every other
  :class:`~smoothjax.noise.NoiseScale` (PNI alpha, CNI alpha_d); ``"weights"``: conv / linear
  kernels; ``"norm_bias"``: 1-D parameters (BatchNorm scale and bias, linear biases).
  """
  params = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  noisy = set(traverse_util.flatten_dict(
      nnx.to_pure_dict(nnx.state(model, noise_lib.NoiseScale))))
  labels = {}
  for path, leaf in params.items():
    if path in noisy:
      labels[path] = "factor" if path[-1] == "factor" else "alpha"
    elif np.ndim(leaf) <= 1:
      labels[path] = "norm_bias"
    else:
      labels[path] = "weights"
  return traverse_util.unflatten_dict(labels)


def make_schedule(*, kind: str = "piecewise", lr: float, steps_per_epoch: int, total_steps: int,
                  milestones=(), gamma: float = 0.1, warmup_epochs: float = 0.0,
                  peak_fraction: float = 0.4) -> Callable[[jax.Array], jax.Array]:
  """The learning rate as a function of the (0-based) update index.

  Args:
    kind: ``"piecewise"`` (``lr * gamma ** #{m : step >= m * steps_per_epoch}``, PyTorch's
      MultiStepLR stepped per epoch), ``"constant"``, ``"onecycle"`` (Wong et al.: linear from 0
      up to ``lr`` at ``peak_fraction`` of training, then linearly down to 0; evaluated at the
      end of each update, ``(step + 1) / total_steps``) or ``"cosine"``.
    lr: the base (peak) learning rate.
    steps_per_epoch: updates per epoch (milestones are in epochs).
    total_steps: length of training (one-cycle and cosine).
    milestones: epochs at which the piecewise schedule multiplies the rate by ``gamma``.
    gamma: the piecewise factor.
    warmup_epochs: linear warm-up from 0 (multiplies any schedule).
    peak_fraction: where the one-cycle schedule peaks.

  Raises:
    ValueError: unknown kind or nonsensical values.
  """
  if kind not in SCHEDULES:
    raise ValueError(f"unknown schedule {kind!r}; expected one of {', '.join(SCHEDULES)}")
  if not lr >= 0:
    raise ValueError(f"learning rate must be >= 0, got {lr}")
  if steps_per_epoch < 1 or total_steps < 1:
    raise ValueError(f"steps_per_epoch and total_steps must be >= 1, got {steps_per_epoch}, "
                     f"{total_steps}")
  if not 0 < peak_fraction < 1:
    raise ValueError(f"peak_fraction must be in (0, 1), got {peak_fraction}")
  bounds = jnp.asarray(sorted(int(round(float(m) * steps_per_epoch)) for m in milestones),
                       jnp.int32)
  warm = float(warmup_epochs) * steps_per_epoch

  def schedule(step):
    step = jnp.asarray(step)
    if kind == "piecewise":
      k = jnp.sum(step >= bounds) if bounds.size else 0
      out = lr * jnp.asarray(gamma, jnp.float32) ** k
    elif kind == "constant":
      out = jnp.asarray(lr, jnp.float32)
    elif kind == "onecycle":
      t = (step + 1).astype(jnp.float32)
      out = jnp.interp(t, jnp.asarray([0.0, peak_fraction * total_steps, float(total_steps)]),
                       jnp.asarray([0.0, lr, 0.0]))
    else:
      t = jnp.minimum(step.astype(jnp.float32) / total_steps, 1.0)
      out = lr * 0.5 * (1 + jnp.cos(jnp.pi * t))
    if warm > 0:
      out = out * jnp.minimum((step + 1).astype(jnp.float32) / warm, 1.0)
    return jnp.asarray(out, jnp.float32)

  return schedule


def make_optimizer(cfg: Any, *, labels: Any, schedule: Callable) -> optax.GradientTransformation:
  """The optimizer of ``config.optim``: clip -> weight decay per group -> SGD/Adam/RAdam.

  Args:
    cfg: ``config.optim`` with ``optimizer`` (:data:`OPTIMIZERS`), ``momentum``, ``nesterov``,
      ``b1``, ``b2``, ``eps`` (Adam family), ``weight_decay`` (kernels, and BatchNorm and
      biases unless ``decay_norm_and_bias`` is false), ``alpha_decay`` (PNI alpha, CNI
      alpha_d), ``factor_decay`` (CNI F), ``clip_norm`` (0: none), ``lookahead_steps`` (0:
      none) and ``lookahead_alpha``.
    labels: :func:`param_labels` of the model.
    schedule: the learning rate schedule.

  Returns:
    An optax transformation over the pure dict of the model's Params (with
    ``lookahead_steps > 0`` over :class:`optax.LookaheadParams` of them).
  """
  name = str(_get(cfg, "optimizer", "sgd"))
  if name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
  parts = []
  clip = float(_get(cfg, "clip_norm", 0.0))
  if clip < 0:
    raise ValueError(f"optim.clip_norm must be >= 0, got {clip}")
  if clip > 0:
    parts.append(optax.clip_by_global_norm(clip))
  wd = float(_get(cfg, "weight_decay", 0.0))
  decays = {"weights": wd,
            "norm_bias": wd if _get(cfg, "decay_norm_and_bias", True) else 0.0,
            "alpha": float(_get(cfg, "alpha_decay", 0.0)),
            "factor": float(_get(cfg, "factor_decay", 0.0))}
  for group, value in decays.items():
    if value < 0:
      raise ValueError(f"weight decay of {group} must be >= 0, got {value}")
  for value in sorted(set(decays.values())):
    if value > 0:
      groups = {g for g, v in decays.items() if v == value}
      mask = jax.tree.map(lambda label, gs=groups: label in gs, labels)
      parts.append(optax.add_decayed_weights(value, mask=mask))
  if name == "sgd":
    momentum = float(_get(cfg, "momentum", 0.9))
    parts.append(optax.sgd(schedule, momentum=momentum or None,
                           nesterov=bool(_get(cfg, "nesterov", True)) and momentum > 0))
  else:
    kw = dict(b1=float(_get(cfg, "b1", 0.9)), b2=float(_get(cfg, "b2", 0.999)),
              eps=float(_get(cfg, "eps", 1e-8)))
    parts.append((optax.adam if name == "adam" else optax.radam)(schedule, **kw))
  tx = optax.chain(*parts)
  k = int(_get(cfg, "lookahead_steps", 0))
  if k > 0:
    tx = optax.lookahead(tx, sync_period=k, slow_step_size=float(_get(cfg, "lookahead_alpha", 0.5)))
  return tx


def init_train_state(tx: optax.GradientTransformation, params: Any, *,
                     lookahead: bool = False) -> dict:
  """The training state pytree: ``{"step", "opt_state"}`` (+ ``"slow"`` weights for Lookahead)."""
  if lookahead:
    lp = optax.LookaheadParams.init_synced(params)
    return {"step": jnp.zeros((), jnp.int32), "opt_state": tx.init(lp), "slow": lp.slow}
  return {"step": jnp.zeros((), jnp.int32), "opt_state": tx.init(params)}


def make_mesh(num_devices: int = 0, *, batch_size: int | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh ``('batch',)`` over the local devices.

  Args:
    num_devices: how many local devices to use (0: all).
    batch_size: if given, the largest device count <= ``num_devices`` dividing it is used.
  """
  devices = jax.local_devices()
  n = len(devices) if num_devices <= 0 else min(num_devices, len(devices))
  if batch_size is not None:
    while batch_size % n:
      n -= 1
  return jax.make_mesh((n,), (BATCH_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices[:n])


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Puts a pytree on every device of ``mesh`` (the train step's state layout).

  Pass the state through this before the first call of :func:`make_train_step`'s function:
  its outputs live on the mesh, and inputs of another layout would compile it a second time.
  """
  return jax.device_put(tree, NamedSharding(mesh, P()))


# ----------------------------------------------------------------------------------------------
# Forward passes, adversarial examples, losses.


def forward(graphdef: nnx.GraphDef, params: Any, rest: Any, x: jax.Array, *, key: jax.Array,
            train: bool = False):
  """Pure forward pass of a model split as ``nnx.split(model, nnx.Param, ...)``.

  Returns:
    ``logits`` (``train=False``: BatchNorm running statistics) or ``(logits, new_rest)``
    (``train=True``: batch statistics, running statistics updated in ``new_rest``).
  """
  model = nnx.merge(graphdef, params, rest)
  logits = model(x, key=key, train=train)
  if not train:
    return logits
  _, _, new_rest = nnx.split(model, nnx.Param, ...)
  return logits, nnx.to_pure_dict(new_rest)


def _ce(logits: jax.Array, y: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _accuracy(logits: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(logits, -1) == y)


def _kl(logits_p: jax.Array, logits_q: jax.Array) -> jax.Array:
  """Batch mean of KL(softmax p || softmax q) (TRADES' KLDivLoss(sum) / batch)."""
  logp = jax.nn.log_softmax(logits_p)
  logq = jax.nn.log_softmax(logits_q)
  return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1).mean()


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
      return forward(graphdef, params, rest, xx, key=kk, train=True)[0]
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
    logits, rest = forward(graphdef, params, rest, x, key=k_clean, train=True)
    loss = _ce(logits, y)
    aux["accuracy"] = _accuracy(logits, y)
  elif o.name == "trades":
    logits, rest = forward(graphdef, params, rest, x, key=k_clean, train=True)
    logits_adv, rest = forward(graphdef, params, rest, x_adv, key=k_adv, train=True)
    kl = _kl(logits, logits_adv)
    loss = _ce(logits, y) + o.beta * kl
    aux.update(accuracy=_accuracy(logits, y), adv_accuracy=_accuracy(logits_adv, y), kl=kl)
  else:  # adversarial, fast
    w = 1.0 if o.name == "fast" else o.adv_weight
    loss = 0.0
    if w > 0:
      logits_adv, rest = forward(graphdef, params, rest, x_adv, key=k_adv, train=True)
      loss = w * _ce(logits_adv, y)
      aux["adv_accuracy"] = _accuracy(logits_adv, y)
    if w < 1:
      logits, rest = forward(graphdef, params, rest, x, key=k_clean, train=True)
      loss = loss + (1 - w) * _ce(logits, y)
      aux["accuracy"] = _accuracy(logits, y)
  return loss, (rest, aux)


# ----------------------------------------------------------------------------------------------
# The jitted steps.


def make_train_step(*, graphdef: nnx.GraphDef, objective: Objective,
                    tx: optax.GradientTransformation, schedule: Callable,
                    mesh: jax.sharding.Mesh, augment: bool = True, lookahead: bool = False,
                    nan_at_step: int = -1, donate: bool = True) -> Callable:
  """The jitted, data-parallel train step.

  Returns:
    ``step_fn(params, rest, train_state, key, xb, yb) -> (params, rest, train_state,
    metrics)``: ``xb`` uint8 NHWC and ``yb`` int32 (sharded over the mesh's ``'batch'`` axis),
    the rest replicated. The step's randomness is ``fold_in(key, train_state["step"])``:
    ``fold_in(., 0)`` augmentation, ``fold_in(., 1)`` the attack, ``fold_in(., 2/3)`` the clean
    and adversarial forward passes. ``params``, ``rest`` and ``train_state`` are donated.
    ``nan_at_step >= 0`` injects a NaN into the loss at that step (to test the NaN guard).
  """
  rep = NamedSharding(mesh, P())
  bat = NamedSharding(mesh, P(BATCH_AXIS))

  def step_fn(params, rest, train_state, key, xb, yb):
    step = train_state["step"]
    k = jax.random.fold_in(key, step)
    x = data_lib.to_float(xb)
    if augment:
      x = data_lib.augment(jax.random.fold_in(k, 0), x)
    x_adv = None
    if objective.needs_adversary:
      x_adv = adversarial_examples(objective, graphdef, params, rest, x, yb,
                                   key=jax.random.fold_in(k, 1))

    def loss_fn(p):
      return objective_loss(objective, graphdef, p, rest, x, yb, key=k, x_adv=x_adv)

    (loss, (new_rest, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    if nan_at_step >= 0:
      loss = jnp.where(step == nan_at_step, jnp.nan, loss)
    if lookahead:
      lp = optax.LookaheadParams(fast=params, slow=train_state["slow"])
      updates, opt_state = tx.update(grads, train_state["opt_state"], lp)
      lp = optax.apply_updates(lp, updates)
      new_params = lp.fast
      new_train_state = {"step": step + 1, "opt_state": opt_state, "slow": lp.slow}
    else:
      updates, opt_state = tx.update(grads, train_state["opt_state"], params)
      new_params = optax.apply_updates(params, updates)
      new_train_state = {"step": step + 1, "opt_state": opt_state}
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(step)}
    metrics.update(aux)
    return new_params, new_rest, new_train_state, metrics

  return jax.jit(step_fn, in_shardings=(rep, rep, rep, rep, bat, bat), out_shardings=rep,
                 donate_argnums=(0, 1, 2) if donate else ())


def make_pgd_eval_step(*, graphdef: nnx.GraphDef, mesh: jax.sharding.Mesh, eps: float,
                       steps: int, step_size: float) -> Callable:
  """Jitted PGD accuracy of one batch (the fast-AT catastrophic-overfitting check).

  Returns:
    ``pgd_fn(params, rest, key, xb, yb, mask) -> {"pgd_correct", "count"}``.
  """
  rep = NamedSharding(mesh, P())
  bat = NamedSharding(mesh, P(BATCH_AXIS))

  def pgd_fn(params, rest, key, xb, yb, mask):
    x = data_lib.to_float(xb)

    def logits_fn(xx, kk):
      return forward(graphdef, params, rest, xx, key=kk)

    x_adv = attacks.pgd(logits_fn, x, yb, key=jax.random.fold_in(key, 0), eps=eps, steps=steps,
                        step_size=step_size, random_start=True)
    logits = logits_fn(x_adv, jax.random.fold_in(key, 1))
    m = mask.astype(jnp.int32)
    return {"pgd_correct": jnp.sum((jnp.argmax(logits, -1) == yb) * m), "count": jnp.sum(m)}

  return jax.jit(pgd_fn, in_shardings=(rep, rep, rep, bat, bat, bat), out_shardings=rep)


def _padded_batches(x: np.ndarray, y: np.ndarray, batch_size: int, multiple: int):
  """Fixed-size batches (the last one zero-padded, masked) with a size divisible by ``multiple``."""
  batch_size = max(multiple, batch_size - batch_size % multiple)
  for i in range(0, len(x), batch_size):
    xb, yb = x[i:i + batch_size], y[i:i + batch_size]
    n = len(xb)
    mask = np.ones((batch_size,), bool)
    if n < batch_size:
      xb = np.concatenate([xb, np.zeros((batch_size - n,) + xb.shape[1:], xb.dtype)])
      yb = np.concatenate([yb, np.zeros((batch_size - n,), yb.dtype)])
      mask[n:] = False
    yield xb, yb, mask


def _run_eval(fn, params, rest, key, x, y, *, batch_size: int, mesh) -> dict:
  bat = NamedSharding(mesh, P(BATCH_AXIS))
  totals: dict[str, float] = {}
  for i, (xb, yb, mask) in enumerate(_padded_batches(x, y, batch_size, mesh.size)):
    out = fn(params, rest, jax.random.fold_in(key, i), jax.device_put(xb, bat),
             jax.device_put(yb, bat), jax.device_put(mask, bat))
    for k, v in jax.device_get(out).items():
      totals[k] = totals.get(k, 0) + float(v)
  return totals


# ----------------------------------------------------------------------------------------------
# Data.


def _synthetic_dataset(spec: str, *, validation_size: int | None) -> data_lib.Dataset:
  """``synthetic[:N]``: N (default 3000) generated 32x32 images, learnable, deterministic.

  Each class has its own smooth colour pattern (a random low-frequency field); images are that
  pattern plus Gaussian pixel noise and a random brightness, so a small CNN learns it within a
  few epochs. The last N/3 images form the test split. For runs without any real data.
  """
  _, _, arg = spec.partition(":")
  try:
    n = int(arg) if arg else 3000
  except ValueError:
    raise data_lib.DatasetError(f"bad dataset spec {spec!r}: expected synthetic[:N]") from None
  if n < 30:
    raise data_lib.DatasetError(f"synthetic dataset needs N >= 30 images, got {n}")
  rng = np.random.default_rng(0)
  classes = 10
  coarse = rng.uniform(0, 1, (classes, 4, 4, 3))
  patterns = np.kron(coarse, np.ones((1, 8, 8, 1)))  # (10, 32, 32, 3) blocky colour fields
  y = rng.integers(0, classes, n)
  x = patterns[y] * rng.uniform(0.6, 1.0, (n, 1, 1, 1)) + rng.normal(0, 0.15, (n, 32, 32, 3))
  x = np.clip(np.round(x * 255), 0, 255).astype(np.uint8)
  cut = n - n // 3
  return data_lib.from_arrays(name=spec, x_train=x[:cut], y_train=y[:cut], x_test=x[cut:],
                              y_test=y[cut:], num_classes=classes,
                              validation_size=validation_size)


def load_training_data(cfg: Any) -> data_lib.Dataset:
  """Loads ``config.data`` (``dataset``, ``data_dir``, ``cache_dir``, ``validation_size``).

  ``dataset`` is any :func:`smoothjax.data.load_dataset` spec (``cifar10``, ``cifar100``,
  ``npz:PATH``, ``folder:PATH`` e.g. ``folder:../shared/data/cifar10_jpeg75.tar``) or
  ``synthetic[:N]`` (generated images, for runs without data). ``validation_size < 0`` takes
  the default rule (5,000 images, or 10% of a smaller training set).
  """
  spec = str(_get(cfg, "dataset", "cifar10"))
  vs = int(_get(cfg, "validation_size", -1))
  vs = None if vs < 0 else vs
  if spec.split(":", 1)[0] == "synthetic":
    return _synthetic_dataset(spec, validation_size=vs)
  return data_lib.load_dataset(spec, data_dir=_get(cfg, "data_dir") or None,
                               cache_dir=_get(cfg, "cache_dir") or None, validation_size=vs)


# ----------------------------------------------------------------------------------------------
# The train loop.


def _init_from(model: nnx.Module, path: str) -> tuple[int, list[str]]:
  """Copies the parameters of a checkpoint into ``model`` where path and shape agree.

  Returns:
    ``(copied, kept)``: how many arrays were copied, and the paths left at their initial
    values (e.g. noise scales when fine-tuning a noisy model from a plain one).
  """
  src, info = ckpt_lib.load_model(path)  # PyTorch files load without noise parameters
  norm = info.get("normalization") or {}
  if norm and (tuple(norm.get("mean", ())) != tuple(model.config.mean)
               or tuple(norm.get("std", ())) != tuple(model.config.std)):
    _log(f"warning: init_from={path} was trained with normalisation mean {norm.get('mean')} "
         f"std {norm.get('std')}, but config.model.normalization gives mean "
         f"{list(model.config.mean)} std {list(model.config.std)}")
  src_flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(src)))
  state = nnx.state(model)
  flat = traverse_util.flatten_dict(nnx.to_pure_dict(state))
  kept, copied = [], 0
  for path_, leaf in flat.items():
    other = src_flat.get(path_)
    if other is not None and np.shape(other) == np.shape(leaf):
      flat[path_] = other
      copied += 1
    else:
      kept.append("/".join(map(str, path_)))
  if copied == 0:
    raise ckpt_lib.CheckpointError(f"init_from={path}: no parameter fits the model")
  nnx.replace_by_pure_dict(state, traverse_util.unflatten_dict(flat))
  nnx.update(model, state)
  return copied, kept


def _check_config(config: Any) -> None:
  t = config.train
  if int(config.data.batch_size) < 1:
    raise ValueError(f"data.batch_size must be >= 1, got {config.data.batch_size}")
  if str(t.best_metric) not in BEST_METRICS:
    raise ValueError(f"train.best_metric must be one of {', '.join(BEST_METRICS)}, got "
                     f"{t.best_metric!r}")
  if t.best_metric == "pgd_accuracy" and int(t.val_pgd_examples) <= 0:
    raise ValueError("train.best_metric='pgd_accuracy' needs train.val_pgd_examples > 0")
  if int(t.keep) < 1:
    raise ValueError(f"train.keep must be >= 1, got {t.keep}")
  Objective.from_config(config.objective)
  model_config_from(config.model)
  if bool(_get(config, "init_required", False)) and not str(_get(config, "init_from", "")):
    raise ValueError("this preset fine-tunes a trained model: pass "
                     "--config.init_from=PATH (a train workdir, orbax step directory or "
                     "PyTorch file)")


def _log(msg: str) -> None:
  print(f"[train] {msg}", file=sys.stderr, flush=True)


def _config_json(config: Any) -> dict:
  if hasattr(config, "to_json_best_effort"):
    return json.loads(config.to_json_best_effort())
  return json.loads(json.dumps(config, default=str))


def train_and_evaluate(config: Any, workdir: str | os.PathLike, *,
                       model: nnx.Module | None = None) -> dict:
  """Trains a model as ``config`` says, resuming from ``workdir``'s latest checkpoint.

  The workdir receives ``config.json``, ``metrics.jsonl`` (JSON lines; TensorBoard events too
  when a writer is installed), ``checkpoints/<step>/`` (the last ``train.keep``, saved every
  ``train.checkpoint_every_steps`` steps and at the end of every epoch), ``best/<step>/`` (best
  by ``train.best_metric`` on the validation split) and, with ``train.keep_worst``,
  ``worst/best/<step>/`` (the *lowest* clean validation accuracy: the EPGD-"diverged"
  snapshot). Every checkpoint's meta records ``model_config``, so that
  ``python -m evaluate --checkpoint=WORKDIR`` rebuilds the model.

  Rerunning with the same config resumes from the latest checkpoint and ends with the
  parameters an uninterrupted run would have (bit for bit).

  Args:
    config: an ``ml_collections.ConfigDict`` with ``seed``, ``init_from``, ``model``, ``data``,
      ``optim``, ``objective``, ``train`` and ``debug`` (see ``train/configs/base.py``).
    workdir: the run's directory (created if absent).
    model: train this (freshly built) model instead of building one from ``config.model``;
      its ``config`` (a :class:`~smoothjax.models.ModelConfig`) is what checkpoints record.

  Returns:
    The last validation metrics (``{"step", "epoch", "accuracy", "smoothed_accuracy", ...}``).

  Raises:
    ValueError: a bad config value (``smoothjax.data.DatasetError`` for the dataset,
      ``smoothjax.checkpoints.CheckpointError`` for checkpoints).
    NonFiniteLossError: the loss or the gradient norm became NaN or infinite. The checkpoints
      on disk all predate it.
  """
  _check_config(config)
  t_cfg, d_cfg = config.train, config.data
  ds = load_training_data(d_cfg)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  x_train, y_train = ds.split("train")
  limit = int(_get(d_cfg, "train_limit", 0))
  if limit > 0:
    x_train, y_train = x_train[:limit], y_train[:limit]
  has_val = len(ds.x_val) > 0
  x_val, y_val = (ds.x_val, ds.y_val) if has_val else (None, None)
  if has_val and int(t_cfg.val_limit) > 0:
    x_val, y_val = x_val[:int(t_cfg.val_limit)], y_val[:int(t_cfg.val_limit)]
  if t_cfg.best_metric == "pgd_accuracy" and not has_val:
    raise ValueError("train.best_metric='pgd_accuracy' needs a validation split")

  root = jax.random.key(int(config.seed))
  k_init, k_train, k_data, k_eval = (jax.random.fold_in(root, i) for i in range(4))
  if model is None:
    mcfg = model_config_from(config.model, num_classes=ds.num_classes)
    model = models_lib.build_model(mcfg, key=k_init)
  else:
    mcfg = model.config
  checkpointer = ckpt_lib.TrainCheckpointer(workdir, keep=int(t_cfg.keep), save_best=True)
  latest = checkpointer.latest_step()
  if str(_get(config, "init_from", "")) and latest is None:  # a resumed run has its own
    copied, kept = _init_from(model, str(config.init_from))
    _log(f"initialised {copied} arrays from {config.init_from}"
         + (f"; {len(kept)} kept at their initial values ({', '.join(kept[:4])}"
            f"{', ...' if len(kept) > 4 else ''})" if kept else ""))
  labels = param_labels(model)
  graphdef, params_s, rest_s = nnx.split(model, nnx.Param, ...)
  params, rest = nnx.to_pure_dict(params_s), nnx.to_pure_dict(rest_s)

  batch_size = int(d_cfg.batch_size)
  spe = data_lib.steps_per_epoch(len(x_train), batch_size)
  if spe < 1:
    raise data_lib.DatasetError(
        f"batch_size={batch_size} exceeds the {len(x_train)} training images")
  total_steps = int(t_cfg.num_steps) if int(t_cfg.num_steps) > 0 else int(t_cfg.epochs) * spe
  o_cfg = config.optim
  schedule = make_schedule(kind=str(o_cfg.schedule), lr=float(o_cfg.lr), steps_per_epoch=spe,
                           total_steps=total_steps, milestones=tuple(o_cfg.milestones),
                           gamma=float(o_cfg.gamma), warmup_epochs=float(o_cfg.warmup_epochs),
                           peak_fraction=float(o_cfg.peak_fraction))
  tx = make_optimizer(o_cfg, labels=labels, schedule=schedule)
  lookahead = int(_get(o_cfg, "lookahead_steps", 0)) > 0
  objective = Objective.from_config(config.objective)
  train_state = init_train_state(tx, params, lookahead=lookahead)

  mesh = make_mesh(int(t_cfg.num_devices), batch_size=batch_size)
  bat = NamedSharding(mesh, P(BATCH_AXIS))

  # Resume.
  worst_ckpt = (ckpt_lib.TrainCheckpointer(workdir / "worst", keep=1, save_best=True)
                if bool(t_cfg.keep_worst) else None)
  meta_base = {"model_config": mcfg.to_dict(), "config": _config_json(config),
               "dataset": ds.name, "objective": dataclasses.asdict(objective)}
  start = 0
  restored_meta: dict = {}
  if latest is not None:
    model_target = ckpt_lib.model_state_dict(model)
    restored_model, restored_train, restored_meta = checkpointer.restore(
        model_state_target=model_target, train_state_target=train_state)
    state = nnx.state(model)
    nnx.replace_by_pure_dict(state, restored_model)
    nnx.update(model, state)
    _, params_s, rest_s = nnx.split(model, nnx.Param, ...)
    params, rest = nnx.to_pure_dict(params_s), nnx.to_pure_dict(rest_s)
    train_state = restored_train
    start = int(np.asarray(train_state["step"]))
    _log(f"resuming from {workdir / 'checkpoints' / str(latest)} (step {start})")

  config_path = workdir / "config.json"
  cfg_json = _config_json(config)
  if config_path.exists() and start > 0:
    try:
      old = json.loads(config_path.read_text())
    except json.JSONDecodeError:
      old = None
    if old is not None and old != cfg_json:
      _log("warning: the config differs from the one this workdir was started with; "
           "continuing with the new one")
  tmp = config_path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(cfg_json, indent=2, sort_keys=True))
  os.replace(tmp, config_path)

  writer = metrics_lib.MetricWriter(workdir, resume_step=start if latest is not None else None,
                                    tensorboard=bool(_get(t_cfg, "tensorboard", True)))

  params, rest, train_state, k_train_d = replicate((params, rest, train_state, k_train), mesh)
  step_fn = make_train_step(graphdef=graphdef, objective=objective, tx=tx, schedule=schedule,
                            mesh=mesh, augment=bool(d_cfg.augment), lookahead=lookahead,
                            nan_at_step=int(config.debug.nan_at_step))
  noisy = mcfg.noise.any_model_noise or mcfg.noise.input_sigma > 0
  val_n = max(1, int(t_cfg.val_n)) if noisy else 1
  val_mesh = smoothing.sample_mesh(list(mesh.devices.flat))  # the training devices
  pgd_fn = None
  if int(t_cfg.val_pgd_examples) > 0 and has_val:
    pgd_fn = make_pgd_eval_step(graphdef=graphdef, mesh=mesh, eps=objective.eps,
                                steps=int(t_cfg.val_pgd_steps),
                                step_size=float(t_cfg.val_pgd_step_size))

  def validate(step: int) -> dict:
    out = {"step": step, "epoch": step / spe}
    if not has_val:
      return out
    key = jax.random.fold_in(k_eval, step)
    # The smoothed classifier exactly as `python -m evaluate` samples it (same noise layout):
    # prefix 1 = one noisy pass, prefix val_n = soft vote (mean softmax) of val_n draws.
    votes = smoothing.sample_votes(jax.random.fold_in(key, 0),
                                   nnx.merge(graphdef, params, rest), x_val,
                                   prefixes=sorted({1, val_n}), votes=("soft",),
                                   batch_size=int(t_cfg.eval_batch_size), mesh=val_mesh)
    pred = smoothing.vote_predictions(votes["soft"])
    out["accuracy"] = float(np.mean(pred[0] == y_val))
    out["smoothed_accuracy"] = float(np.mean(pred[-1] == y_val))
    out["val_n"] = val_n
    if pgd_fn is not None:
      n = int(t_cfg.val_pgd_examples)
      tot = _run_eval(pgd_fn, params, rest, jax.random.fold_in(key, 1), x_val[:n], y_val[:n],
                      batch_size=min(n, int(t_cfg.eval_batch_size)), mesh=mesh)
      out["pgd_accuracy"] = tot["pgd_correct"] / tot["count"]
    return out

  def save(step: int, val: dict | None, *, force: bool = False) -> None:
    meta = dict(meta_base, step=step, epoch=step / spe)
    metric = None
    if val is not None:
      meta["validation"] = {k: v for k, v in val.items() if k not in ("step",)}
      metric = val.get(str(t_cfg.best_metric))
    model_state = {}
    model_state.update(nnx.to_pure_dict(nnx.state(nnx.merge(graphdef, params, rest))))
    checkpointer.save(step, model_state=model_state, train_state=train_state, meta=meta,
                      val_metric=metric, force=force)
    if worst_ckpt is not None and val is not None and "accuracy" in val:
      worst_ckpt.save(step, model_state=model_state, train_state=train_state,
                      meta=dict(meta, snapshot="worst clean validation accuracy"),
                      val_metric=-val["accuracy"], force=True)

  last_val: dict = {}
  if start >= total_steps:
    _log(f"already trained: step {start} of {total_steps}; nothing to do")
    last_val = dict(restored_meta.get("validation") or {}, step=start)
    writer.close()
    checkpointer.close()
    if worst_ckpt is not None:
      worst_ckpt.close()
    return last_val

  _log(f"{mcfg.arch} noise={mcfg.noise.spec} input_sigma={mcfg.noise.input_sigma} "
       f"objective={objective.name} on {ds.name}: {len(x_train)} train / "
       f"{0 if x_val is None else len(x_val)} val images, batch {batch_size}, {spe} steps/epoch, "
       f"{total_steps} steps, {mesh.size} device(s) ({jax.devices()[0].platform})")
  pbar = None
  if bool(t_cfg.progress):
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    pbar = tqdm(total=total_steps, initial=start, file=sys.stderr, dynamic_ncols=True,
                mininterval=1.0, desc="train", unit="step")

  ckpt_every = int(t_cfg.checkpoint_every_steps)
  eval_every = int(t_cfg.eval_every_epochs)  # <= 0: no validation
  log_every = max(1, int(t_cfg.log_every_steps))
  sleep = float(config.debug.sleep_per_step)
  last_saved = latest
  window: list[dict] = []
  t_window = time.perf_counter()
  pending = None  # (step, metrics) not yet checked: checked after the next step is dispatched

  def check(step: int, metrics) -> dict:
    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not (math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])):
      raise NonFiniteLossError(
          f"non-finite loss at step {step} (epoch {step // spe}): loss={m['loss']}, "
          f"grad_norm={m['grad_norm']}; stopped. The last good checkpoint is step "
          f"{last_saved} in {workdir / 'checkpoints'}"
          + ("" if last_saved is not None else " (none was saved)")
          + ". Lower optim.lr or set optim.clip_norm.")
    return m

  def record(step: int, m: dict) -> None:
    nonlocal t_window
    window.append(m)
    if (step + 1) % log_every == 0 or step + 1 == total_steps:
      now = time.perf_counter()
      mean = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
      mean["images_per_s"] = len(window) * batch_size / max(now - t_window, 1e-9)
      writer.write(step + 1, mean, split="train")
      if pbar is not None:
        post = {"loss": f"{mean['loss']:.3f}",
                "acc": f"{mean.get('accuracy', mean.get('adv_accuracy', 0.0)):.3f}",
                "img/s": f"{mean['images_per_s']:.0f}"}
        if "adv_accuracy" in mean and "accuracy" in mean:
          post["adv"] = f"{mean['adv_accuracy']:.3f}"
        pbar.set_postfix(post, refresh=False)
      window.clear()
      t_window = now

  try:
    batches = data_lib.train_batches(x_train, y_train, batch_size=batch_size, key=k_data,
                                     start_step=start)
    for step, xb, yb in batches:
      if step >= total_steps:
        break
      xb, yb = jax.device_put(xb, bat), jax.device_put(yb, bat)
      params, rest, train_state, metrics = step_fn(params, rest, train_state, k_train_d, xb, yb)
      if pending is not None:
        record(pending[0], check(*pending))
      pending = (step, metrics)
      if sleep > 0:
        time.sleep(sleep)
      done = step + 1
      epoch_end = done % spe == 0 or done == total_steps
      if pbar is not None:
        pbar.update(1)
      if not (epoch_end or (ckpt_every > 0 and done % ckpt_every == 0)):
        continue
      record(pending[0], check(*pending))  # never save a step whose loss is not finite
      pending = None
      val = None
      if epoch_end and eval_every > 0 and ((done // spe) % eval_every == 0
                                           or done == total_steps):
        val = validate(done)
        last_val = val
        writer.write(done, {k: v for k, v in val.items() if k != "step"}, split="val")
        writer.flush()
        _log(f"step {done} epoch {done / spe:.2f}: "
             + ", ".join(f"{k} {v:.4f}" for k, v in val.items()
                         if k not in ("step", "epoch", "val_n")))
      save(done, val, force=True)
      last_saved = done
    if pending is not None:
      record(pending[0], check(*pending))
  finally:
    if pbar is not None:
      pbar.close()
    writer.close()
    checkpointer.close()
    if worst_ckpt is not None:
      worst_ckpt.close()
  return last_val
