"""The dispatcher of ``python -m evaluate --attack=NAME``: validation, batching, per-batch keys."""

from __future__ import annotations

import jax
import numpy as np

from smoothjax._utils import as_key as _as_key
from smoothjax._utils import pad_rows
from smoothjax.attacks._apgd import apgd, autoattack_rand
from smoothjax.attacks._common import (_APGD, _WHITE_BOX, ATTACKS, LogitsFn, _check_common,
                                       _check_int, _check_number)
from smoothjax.attacks._nattack import nattack
from smoothjax.attacks._pgd import epgd, fgsm, pgd, pgd_s, smoothadv

def _batches(n: int, batch_size: int):
  for i, start in enumerate(range(0, n, batch_size)):
    yield i, start, min(start + batch_size, n)


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
      ``source_logits_fn``), ``nattack`` (queries ``smoothed_probs_fn``), ``apgd_ce`` /
      ``apgd_dlr`` (Croce & Hein's Auto-PGD with the cross-entropy / DLR loss and an EOT
      gradient over ``samples`` draws; parameter-free, ``step_size`` is ignored) and
      ``autoattack_rand`` (per image the worst case of both, judged by
      ``smoothed_probs_fn`` when given, else by the attacks' own criterion; as a transfer
      attack, by the source model's own criterion).
    logits_fn: the target's ``logits_fn(x, key)`` (white box).
    x: images in [0, 1], batch first (NumPy or JAX).
    y: integer labels.
    key: PRNG key; batch ``i`` uses ``fold_in(key, i)``.
    eps: radius in [0, 1] pixel units (>= 0).
    norm: ``"linf"`` or ``"l2"``.
    steps: PGD-family steps (FGSM: 1; ignored by NAttack, which runs ``iterations``).
    step_size: default ``eps / 4`` (FGSM: ``eps``; FGSM with ``random_start=True``: ``1.25 eps``,
      Wong et al.).
    samples: noise draws per step of EPGD / SmoothAdv / PGD-s (PGD and FGSM use 1); the EOT
      draws per gradient of the APGD attacks (``eot_samples``).
    restarts: PGD-family and APGD restarts.
    source_logits_fn: transfer source model.
    smoothed_probs_fn: NAttack's ``probs_fn(x, key)``; ``autoattack_rand``'s ``score_fn``.
    population, iterations: NAttack budget (these defaults are ``python -m evaluate``'s
      CPU-sized 100 x 100; Li et al.'s 300 x 500 are :func:`nattack`'s).
    batch_size: images per compiled call (the last batch is padded, so one program serves
      every batch).
    transfer_attack: the white-box attack run on the source model for ``transfer``.
    nattack_batch_size: images per NAttack call (default: ``population * batch <= 8192``).
    **kw: passed to the attack (e.g. ``fixed_noise=True`` for SmoothAdv, ``sigma``/``lr``/
      ``confirm`` for NAttack, ``unroll``).

  Returns:
    ``x_adv`` as a float32 NumPy array of ``x``'s shape.

  Raises:
    ValueError: unknown name, bad settings or inputs, a missing source / probs function.
  """
  if name not in ATTACKS:
    raise ValueError(f"unknown attack {name!r}; expected one of {', '.join(ATTACKS)}")
  eps = _check_number("eps", eps)
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
  step_size = _check_number("step_size", step_size)
  _check_common(eps=eps, steps=steps, step_size=step_size, norm=norm, samples=samples,
                restarts=restarts)
  for nm, v, lo in (("batch_size", batch_size, 1), ("population", population, 2),
                    ("iterations", iterations, 1)):
    _check_int(nm, v, lo)
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
    xb, yb = pad_rows(x[lo:hi], bs, fill="edge"), pad_rows(y[lo:hi], bs, fill="edge")
    kb = jax.random.fold_in(key, i)
    if name == "nattack":
      xa, _ = nattack(smoothed_probs_fn, xb, yb, key=kb, eps=eps, population=population,
                      iterations=iterations, norm=norm, **kw)
    elif name == "fgsm":
      xa = fgsm(logits_fn, xb, yb, key=kb, eps=eps, step_size=step_size, norm=norm, **kw)
    elif name in _APGD:
      common = dict(key=kb, eps=eps, steps=steps, eot_samples=samples, norm=norm,
                    restarts=restarts, **kw)
      if name == "autoattack_rand":
        xa = autoattack_rand(logits_fn, xb, yb, score_fn=smoothed_probs_fn, **common)
      else:
        xa = apgd(logits_fn, xb, yb, loss=name[5:], **common)
    elif name == "pgd":
      xa = pgd(logits_fn, xb, yb, key=kb, eps=eps, steps=steps, step_size=step_size,
               norm=norm, restarts=restarts, **kw)
    else:
      fn = {"epgd": epgd, "smoothadv": smoothadv, "pgd_s": pgd_s}[name]
      xa = fn(logits_fn, xb, yb, key=kb, eps=eps, steps=steps, step_size=step_size,
              samples=samples, norm=norm, restarts=restarts, **kw)
    out[lo:hi] = np.asarray(xa)[: hi - lo]
  return out

