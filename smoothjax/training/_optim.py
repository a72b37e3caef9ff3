"""Parameter groups, learning-rate schedules and the optimiser of ``config.optim``.

Optimisation follows the reference: gradients are clipped to a global norm (``optim.clip_norm``),
then weight decay is added per group (PyTorch's coupled ``weight_decay``), then SGD with Nesterov
momentum under a piecewise-constant schedule. Adam, RAdam, Lookahead and one-cycle / cosine
schedules are options.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from flax import traverse_util

from smoothjax import noise as noise_lib
from smoothjax._utils import config_value as _get

OPTIMIZERS = ("sgd", "adam", "radam")
SCHEDULES = ("piecewise", "constant", "onecycle", "cosine")

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
  name = str(_get(cfg, "optimizer"))
  if name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
  parts = []
  clip = float(_get(cfg, "clip_norm"))
  if clip < 0:
    raise ValueError(f"optim.clip_norm must be >= 0, got {clip}")
  if clip > 0:
    parts.append(optax.clip_by_global_norm(clip))
  wd = float(_get(cfg, "weight_decay"))
  decays = {"weights": wd,
            "norm_bias": wd if _get(cfg, "decay_norm_and_bias") else 0.0,
            "alpha": float(_get(cfg, "alpha_decay")),
            "factor": float(_get(cfg, "factor_decay"))}
  for group, value in decays.items():
    if value < 0:
      raise ValueError(f"weight decay of {group} must be >= 0, got {value}")
  for value in sorted(set(decays.values())):
    if value > 0:
      groups = {g for g, v in decays.items() if v == value}
      mask = jax.tree.map(lambda label, gs=groups: label in gs, labels)
      parts.append(optax.add_decayed_weights(value, mask=mask))
  if name == "sgd":
    momentum = float(_get(cfg, "momentum"))
    parts.append(optax.sgd(schedule, momentum=momentum or None,
                           nesterov=bool(_get(cfg, "nesterov")) and momentum > 0))
  else:
    kw = dict(b1=float(_get(cfg, "b1")), b2=float(_get(cfg, "b2")),
              eps=float(_get(cfg, "eps")))
    parts.append((optax.adam if name == "adam" else optax.radam)(schedule, **kw))
  tx = optax.chain(*parts)
  k = int(_get(cfg, "lookahead_steps"))
  if k > 0:
    tx = optax.lookahead(tx, sync_period=k, slow_step_size=float(_get(cfg, "lookahead_alpha")))
  return tx


def init_train_state(tx: optax.GradientTransformation, params: Any, *,
                     lookahead: bool = False) -> dict:
  """The training state pytree: ``{"step", "opt_state"}`` (+ ``"slow"`` weights for Lookahead)."""
  if lookahead:
    lp = optax.LookaheadParams.init_synced(params)
    return {"step": jnp.zeros((), jnp.int32), "opt_state": tx.init(lp), "slow": lp.slow}
  return {"step": jnp.zeros((), jnp.int32), "opt_state": tx.init(params)}

