"""The jitted, data-parallel steps over a 1-D device mesh ``('batch',)``: train and PGD eval.

The batch is sharded, the state replicated; XLA inserts the cross-device reductions (BatchNorm
statistics, gradient means). Random numbers come from ``fold_in(train_key, step)`` and do not
depend on the device count.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from smoothjax import attacks
from smoothjax import data as data_lib
from smoothjax.training._objectives import (Objective, adversarial_examples, forward,
                                            objective_loss)

BATCH_AXIS = "batch"

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

