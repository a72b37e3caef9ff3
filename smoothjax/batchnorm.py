"""BatchNorm statistics of noisy models: diagnosis and recalibration over many noise draws.

A model with weight noise draws one noise sample per forward pass, shared by the batch (the
reference's granularity). In training, BatchNorm normalises with the batch's statistics, i.e.
with the statistics *of that one draw*: a draw that shifts a channel's activations is undone by
the batch mean. The running statistics then average those within-draw statistics: the running
mean is the mean over draws (fine), but the running variance is the mean *within-draw* variance
and lacks the variance *between* draws of each channel's mean. At evaluation a fresh draw's
channel offset is not removed, and the normalised activations are too wide by
``sqrt(1 + between / within)``; over depth this compounds.

:func:`draw_variance` measures ``between / within`` per BatchNorm layer; :func:`recalibrate`
sets the running statistics to those of the full noisy distribution (mean over draws and
images; variance within draws plus between draws), layer by layer consistently, so that the
eval-mode forward pass of a fresh draw sees correctly scaled activations. Every draw of the
calibration normalises with the statistics pooled over all draws (one ``vmap`` over draws with
a named axis), so each layer is calibrated on the inputs it will see at evaluation.

Recalibration rescales, but cannot undo what a model trained with per-draw statistics learnt
to rely on (its eval-mode accuracy stays far below the batch-statistics one after a CNI-W
fine-tune). :func:`pooled_draws_forward` removes the cause: a training pass with several noise
draws per batch whose BatchNorm statistics are pooled over all draws, so that training
normalises as evaluation does (``objective.noise_draws`` of :class:`smoothjax.training.Objective`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

__all__ = ["draw_variance", "recalibrate", "pooled_draws_forward"]

_DRAWS = "noise_draws"


def _batchnorms(model: nnx.Module):
  return [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]


def _per_draw_stats_fn(model: nnx.Module, pooled: bool):
  """A jitted ``(keys (D,), x) -> BatchNorm batch statistics`` of ``D`` draws on ``x``.

  With ``pooled`` the statistics of every BatchNorm are taken over all draws and images
  (and every draw is normalised with them); else each draw normalises with its own.
  """
  calib = nnx.clone(model)
  for m in _batchnorms(calib):
    m.momentum = 0.0  # the "running" statistics become this pass's batch statistics
    m.axis_name = _DRAWS if pooled else None
  graphdef, state = nnx.split(calib)

  def one(key, x):
    mdl = nnx.merge(graphdef, state, copy=True)
    mdl(x, key=key, train=True)
    return nnx.to_pure_dict(nnx.state(mdl, nnx.BatchStat))

  return jax.jit(jax.vmap(one, in_axes=(0, None), axis_name=_DRAWS))


def _chunks(images: np.ndarray, batch_size: int):
  n = len(images)
  if n == 0:
    raise ValueError("need at least one image")
  bs = min(batch_size, n)
  return [images[i:i + bs] for i in range(0, n - bs + 1, bs)]


def _draw_keys(key: jax.Array, chunk: int, draws: int) -> jax.Array:
  return jax.random.split(jax.random.fold_in(key, chunk), draws)


def draw_variance(model: nnx.Module, images, key: jax.Array, *, draws: int = 8,
                  batch_size: int = 256) -> dict[str, dict[str, float]]:
  """Between-draw vs within-draw variance of every BatchNorm's input, as in training.

  Each draw's batch statistics (per channel, over the images and positions of one batch,
  BatchNorm in training mode) are computed for ``draws`` noise draws; ``between`` is the
  variance over draws of a channel's mean, ``within`` the mean over draws of its variance,
  both averaged over channels (and over batches of ``batch_size`` images). Training-mode
  running statistics estimate ``within`` only; a ratio ``between / within`` well above ~0.1
  means eval-mode activations of a fresh draw are mis-normalised (see :func:`recalibrate`).

  Args:
    model: a model with the smoothjax forward signature ``model(x, key=, train=)``.
    images: NHWC images in [0, 1] pixel units.
    key: PRNG key of the noise draws.
    draws: noise draws per batch (>= 2).
    batch_size: images per batch (the last incomplete batch is dropped).

  Returns:
    ``{layer path: {"between": ..., "within": ..., "ratio": between / within}}`` for every
    BatchNorm layer, the path joined with ``/`` (``"blocks/2/bn1"``).
  """
  if draws < 2:
    raise ValueError(f"draws must be >= 2, got {draws}")
  fn = _per_draw_stats_fn(model, pooled=False)
  acc: dict[str, list[tuple[float, float]]] = {}
  for b, x in enumerate(_chunks(np.asarray(images, np.float32), batch_size)):
    stats = fn(_draw_keys(key, b, draws), jnp.asarray(x))
    flat = _flat(stats)
    for path, leaf in flat.items():
      if path[-1] != "mean":
        continue
      var = flat[path[:-1] + ("var",)]
      between = float(jnp.var(leaf, axis=0).mean())
      within = float(jnp.mean(var, axis=0).mean())
      acc.setdefault("/".join(map(str, path[:-1])), []).append((between, within))
  out = {}
  for name, vals in acc.items():
    between, within = (float(np.mean(v)) for v in zip(*vals))
    out[name] = dict(between=between, within=within, ratio=between / max(within, 1e-12))
  return out


def recalibrate(model: nnx.Module, images, key: jax.Array, *, draws: int = 16,
                batch_size: int = 128) -> nnx.Module:
  """Returns a copy of ``model`` whose BatchNorm running statistics fit its noise distribution.

  Every BatchNorm's running mean and variance are set to the mean and variance of its input
  over ``draws`` noise draws (weight, activation and the model's own input noise, as in
  ``model(x, key=...)``) and all ``images``: the variance includes the between-draw variance
  that training-mode running averages miss. Layers are calibrated consistently: each pass
  normalises every layer with the statistics pooled over its draws, as evaluation will. Use it
  after training a noisy model (any noise; for a noise-free model it recomputes the plain
  population statistics), before evaluating or smoothing it in eval mode. Parameters and noise
  scales are unchanged.

  Args:
    model: a model with the smoothjax forward signature ``model(x, key=, train=)``.
    images: NHWC images in [0, 1] pixel units (e.g. a few thousand training images, without
      augmentation).
    key: PRNG key of the calibration's noise draws.
    draws: noise draws per batch of images (all draws see the same images).
    batch_size: images per batch; statistics are pooled over ``draws * batch_size`` images per
      pass and combined exactly over batches (the last incomplete batch is dropped).

  Returns:
    A new model; ``model`` itself is not modified.
  """
  if draws < 1:
    raise ValueError(f"draws must be >= 1, got {draws}")
  fn = _per_draw_stats_fn(model, pooled=True)
  means, variances = [], []
  for b, x in enumerate(_chunks(np.asarray(images, np.float32), batch_size)):
    stats = fn(_draw_keys(key, b, draws), jnp.asarray(x))
    # Pooled over the draws axis: every draw holds the same statistics.
    stats = jax.tree.map(lambda s: s[0], stats)
    flat = _flat(stats)
    means.append({p[:-1]: v for p, v in flat.items() if p[-1] == "mean"})
    variances.append({p[:-1]: v for p, v in flat.items() if p[-1] == "var"})
  new_stats = {}
  for layer in means[0]:
    mu_b = jnp.stack([m[layer] for m in means])
    var_b = jnp.stack([v[layer] for v in variances])
    mu = mu_b.mean(axis=0)  # equal-size batches: the plain mean is exact
    new_stats[layer + ("mean",)] = mu
    new_stats[layer + ("var",)] = (var_b + (mu_b - mu[None]) ** 2).mean(axis=0)
  out = nnx.clone(model)
  state = nnx.state(out, nnx.BatchStat)
  pure = nnx.to_pure_dict(state)
  for path, value in new_stats.items():
    node = pure
    for p in path[:-1]:
      node = node[p]
    node[path[-1]] = value.astype(node[path[-1]].dtype)
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(out, state)
  return out


def pooled_draws_forward(model: nnx.Module, x: jax.Array, *, key: jax.Array,
                         draws: int) -> jax.Array:
  """Training-mode forward pass with ``draws`` noise draws, BatchNorm pooled over all of them.

  The batch is split into ``draws`` equal consecutive groups; group ``g`` runs with its own
  noise draw, key ``fold_in(key, g)`` (weight, activation and input noise), and every
  BatchNorm normalises all groups with the mean and variance of its input over the whole
  batch, i.e. over the draws. Those statistics are what the running averages estimate and
  what evaluation (one fresh draw, running statistics) normalises with, so a model trained
  this way is trained under its evaluation-time normalisation. With one draw per batch (a
  plain ``model(x, key=key, train=True)``) each draw's per-channel offsets are removed by the
  batch statistics in training and by nothing at evaluation (see the module docstring).

  ``model``'s running statistics are updated in place, once per call (momentum as usual).

  Args:
    model: a model with the smoothjax forward signature ``model(x, key=, train=)``.
    x: a batch whose size is a multiple of ``draws``.
    key: the pass's PRNG key.
    draws: number of noise draws (groups), >= 1; ``1`` is the plain training-mode pass with
      ``key`` itself (bit-identical to ``model(x, key=key, train=True)``).

  Returns:
    The logits of the batch, in ``x``'s order.
  """
  if draws < 1 or x.shape[0] % draws:
    raise ValueError(f"the batch of {x.shape[0]} images does not split into {draws} noise "
                     "draws (draws must be >= 1 and divide the batch size)")
  if draws == 1:
    return model(x, key=key, train=True)
  bns = _batchnorms(model)
  names = [m.axis_name for m in bns]
  for m in bns:
    m.axis_name = _DRAWS
  graphdef, state = nnx.split(model)

  def one(k, xg):
    mdl = nnx.merge(graphdef, state, copy=True)
    return mdl(xg, key=k, train=True), nnx.state(mdl, nnx.BatchStat)

  keys = jax.vmap(lambda g: jax.random.fold_in(key, g))(jnp.arange(draws))
  xs = x.reshape((draws, x.shape[0] // draws) + x.shape[1:])
  logits, stats = jax.vmap(one, axis_name=_DRAWS)(keys, xs)
  for m, name in zip(bns, names):
    m.axis_name = name
  # Pooled over the draws axis: every group computed the same running statistics.
  nnx.update(model, jax.tree.map(lambda s: s[0], stats))
  return logits.reshape((x.shape[0],) + logits.shape[2:])


def _flat(tree) -> dict[tuple, jax.Array]:
  """``{path tuple: leaf}`` of a nested pure dict."""
  out = {}

  def walk(node, prefix):
    if isinstance(node, dict):
      for k, v in node.items():
        walk(v, prefix + (k,))
    else:
      out[prefix] = node

  walk(tree, ())
  return out
