"""Cohen et al.'s PREDICT (with abstention) and CERTIFY for smoothed classifiers.

Counting runs in JAX (:func:`smoothjax.smoothing.sample_counts`); the statistics run on the
host in NumPy/SciPy:

* **PREDICT**: draw ``n`` samples, take the top two classes by count, and abstain unless a
  two-sided binomial test of ``count1`` successes in ``count1 + count2`` trials (p = 1/2)
  rejects at level ``alpha``.
* **CERTIFY**: ``n0`` selection samples choose the class ``cA``; ``n`` independent estimation
  samples count ``nA`` votes for it; ``pA`` = one-sided ``(1 - alpha)`` Clopper-Pearson lower
  bound of ``nA / n``; abstain if ``pA < 1/2``, else certify the L2 radius ``sigma
  Phi^-1(pA)``.

Radii are returned in [0, 1] pixel units: with ``sigma`` in normalised units (noise added
after per-channel normalisation with std ``std_c``), the pixel-space noise has per-channel std
``sigma std_c`` and the certified pixel radius is ``min_c(std_c) sigma Phi^-1(pA)``.

The guarantee also holds for a model with its own weight / activation noise (a randomised base
classifier): it is the smoothed classifier over the joint noise, and ``p -> Phi(Phi^-1(p) -
t)`` is convex for ``t >= 0`` (its derivative ``exp(t z - t^2/2)``, ``z = Phi^-1(p)``, grows
with ``p``), so by Jensen's inequality the bound survives the expectation over the model's noise.

References:
  Cohen, Rosenfeld, Kolter, "Certified Adversarial Robustness via Randomized Smoothing",
  ICML 2019 (Algorithm 1 / 2; the ``core.py`` of their code).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
from scipy import stats

from smoothjax import smoothing
from smoothjax._utils import as_key

__all__ = [
    "ABSTAIN",
    "lower_confidence_bound",
    "predict_from_counts",
    "certify_from_counts",
    "pixel_radius_factor",
    "CertifyResult",
    "predict",
    "certify",
    "certified_accuracy",
]

ABSTAIN = -1


def lower_confidence_bound(num_a, num_samples: int, alpha: float) -> np.ndarray:
  """One-sided ``(1 - alpha)`` Clopper-Pearson lower bound on a binomial proportion.

  Equals ``statsmodels.proportion_confint(num_a, n, alpha=2 * alpha, method="beta")[0]``
  (Cohen et al.'s ``lower_confidence_bound``): ``Beta(alpha; nA, n - nA + 1)`` quantile, 0 when
  ``nA = 0``.
  """
  num_a = np.asarray(num_a, np.float64)
  if not 0 < alpha < 1:
    raise ValueError(f"alpha must be in (0, 1), got {alpha}")
  with np.errstate(invalid="ignore"):
    lb = stats.beta.ppf(alpha, num_a, num_samples - num_a + 1)
  return np.where(num_a > 0, lb, 0.0)


def _top2(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  # Stable order by (-count, class id): ties go to the lower class id.
  order = np.argsort(-counts, axis=-1, kind="stable")
  return order[..., 0], order[..., 1]


def predict_from_counts(counts, *, alpha: float) -> np.ndarray:
  """Cohen et al.'s PREDICT from hard-vote counts ``(N, C)``: class or :data:`ABSTAIN` (-1)."""
  counts = np.asarray(counts)
  if not 0 < alpha < 1:
    raise ValueError(f"alpha must be in (0, 1), got {alpha}")
  c1, c2 = _top2(counts)
  n1 = np.take_along_axis(counts, c1[..., None], -1)[..., 0]
  n2 = np.take_along_axis(counts, c2[..., None], -1)[..., 0]
  out = np.empty(counts.shape[:-1], np.int64)
  for i in np.ndindex(out.shape):
    k, m = int(n1[i]), int(n1[i] + n2[i])
    p = stats.binomtest(k, m, 0.5).pvalue if m > 0 else 1.0
    out[i] = ABSTAIN if p > alpha else c1[i]
  return out


def pixel_radius_factor(sigma_space: str, std) -> float:
  """Factor turning a radius in ``sigma_space`` units into [0, 1] pixel units."""
  if sigma_space == "pixel":
    return 1.0
  if sigma_space == "normalized":
    return float(min(std))
  raise ValueError(f"sigma_space must be 'pixel' or 'normalized', got {sigma_space!r}")


def certify_from_counts(counts0, counts, *, sigma: float, alpha: float,
                        radius_factor: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Cohen et al.'s CERTIFY from selection and estimation counts (``(N, C)`` each).

  Args:
    counts0: hard-vote counts of the ``n0`` selection samples.
    counts: hard-vote counts of the ``n`` estimation samples (independent of ``counts0``).
    sigma: input-noise std.
    alpha: failure probability.
    radius_factor: multiplies the radius (see :func:`pixel_radius_factor`).

  Returns:
    ``(predict, radius, p_a)``: class or -1 (abstain), certified L2 radius (0 when abstaining),
    the lower confidence bound ``pA``.
  """
  counts0 = np.asarray(counts0)
  counts = np.asarray(counts)
  n = int(counts.sum(-1).max()) if counts.size else 0
  c_a = np.argmax(counts0, axis=-1)  # ties -> lowest class id
  n_a = np.take_along_axis(counts, c_a[..., None], -1)[..., 0]
  total = counts.sum(-1)
  p_a = np.array([lower_confidence_bound(k, int(t), alpha) for k, t in
                  zip(n_a.ravel(), total.ravel())]).reshape(n_a.shape) if n else np.zeros(
                      n_a.shape)
  ok = p_a >= 0.5
  with np.errstate(divide="ignore", invalid="ignore"):
    radius = np.where(ok, sigma * stats.norm.ppf(np.clip(p_a, 0.5, 1.0)), 0.0) * radius_factor
  predict = np.where(ok, c_a, ABSTAIN)
  return predict, radius, p_a


@dataclasses.dataclass
class CertifyResult:
  """Per-image CERTIFY output (numpy arrays of length N).

  Attributes:
    predict: certified class, or -1 (abstain).
    radius: certified L2 radius in [0, 1] pixel units (0 when abstaining).
    p_a: Clopper-Pearson lower bound of the top class' probability.
    counts0, counts: selection / estimation hard-vote counts ``(N, C)``.
  """

  predict: np.ndarray
  radius: np.ndarray
  p_a: np.ndarray
  counts0: np.ndarray
  counts: np.ndarray

  def correct(self, labels) -> np.ndarray:
    return self.predict == np.asarray(labels)


def predict(key, model, x, *, sigma=None, sigma_space: str | None = None,
            num_samples: int = 100_000, alpha: float = 0.001, batch_size: int = 256,
            **kw) -> np.ndarray:
  """Cohen et al.'s PREDICT: the smoothed class of each image, or -1 (abstain).

  Args:
    key: PRNG key (or int seed).
    model: an NNX model or ``(graphdef, state)``.
    x: ``(N, H, W, 3)`` images in [0, 1].
    sigma, sigma_space: input noise (see :func:`smoothjax.smoothing.sample_votes`).
    num_samples: ``n``.
    alpha: test level.
    batch_size: images x samples per forward pass.
    **kw: passed to :func:`smoothjax.smoothing.sample_counts` (``indices``, ``mesh``, ...).
  """
  counts = smoothing.sample_counts(key, model, x, sigma=sigma, sigma_space=sigma_space,
                                   num_samples=num_samples, batch_size=batch_size, **kw)
  return predict_from_counts(counts, alpha=alpha)


def certify(key, model, x, *, sigma=None, sigma_space: str | None = None, n0: int = 100,
            num_samples: int = 100_000, alpha: float = 0.001, batch_size: int = 256,
            progress: Callable[[int], Any] | None = None, **kw) -> CertifyResult:
  """Cohen et al.'s CERTIFY for a batch of images.

  Selection samples use ``fold_in(key, 0)``, estimation samples ``fold_in(key, 1)``
  (independent draws, as the algorithm requires).

  Args:
    key: PRNG key (or int seed).
    model: an NNX model or ``(graphdef, state)``.
    x: ``(N, H, W, 3)`` images in [0, 1].
    sigma: Gaussian input-noise std (> 0) in ``sigma_space`` units; ``None`` = the model's.
    sigma_space: ``"pixel"`` (default) or ``"normalized"``.
    n0: selection samples (Cohen: 100).
    num_samples: estimation samples ``n`` (Cohen: 100,000).
    alpha: failure probability (Cohen: 0.001).
    batch_size: images x samples per forward pass.
    progress: called with the number of image-samples done.
    **kw: passed to :func:`smoothjax.smoothing.sample_counts`.

  Returns:
    :class:`CertifyResult` with radii in [0, 1] pixel units.

  Raises:
    ValueError: if sigma is not > 0 (certification needs Gaussian input noise) or on bad
      sample counts / alpha.
  """
  key = as_key(key)
  graphdef, state = smoothing.split_model(model)
  cfg = smoothing.graphdef_config(graphdef, state)
  sigma, sigma_space = smoothing.resolve_sigma(cfg, sigma, sigma_space)
  if sigma <= 0:
    raise ValueError("certification needs Gaussian input noise: sigma must be > 0")
  if n0 < 1 or num_samples < 1:
    raise ValueError(f"n0 and n must be positive integers, got n0={n0}, n={num_samples}")
  if not 0 < alpha < 1:
    raise ValueError(f"alpha must be in (0, 1), got {alpha}")
  common = dict(sigma=sigma, sigma_space=sigma_space, batch_size=batch_size,
                progress=progress, **kw)
  counts0 = smoothing.sample_counts(jax.random.fold_in(key, 0), (graphdef, state), x,
                                    num_samples=n0, **common)
  counts = smoothing.sample_counts(jax.random.fold_in(key, 1), (graphdef, state), x,
                                   num_samples=num_samples, **common)
  factor = pixel_radius_factor(sigma_space, cfg.std)
  pred, radius, p_a = certify_from_counts(counts0, counts, sigma=sigma, alpha=alpha,
                                          radius_factor=factor)
  return CertifyResult(pred, radius, p_a, counts0, counts)


def certified_accuracy(radius, correct, radii) -> np.ndarray:
  """Certified accuracy at each radius: fraction of images correct with ``radius >= r``.

  (Cohen et al.'s ``analyze.py``: ``(correct & (radius >= r)).mean()``; abstentions count as
  wrong.)
  """
  radius = np.asarray(radius)
  correct = np.asarray(correct, bool)
  return np.array([(correct & (radius >= r)).mean() if radius.size else 0.0 for r in radii])
