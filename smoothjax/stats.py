"""Honest statistics of smoothed accuracies: confidence intervals and paired comparisons.

The images of one evaluation are not independent trials. The model's weight / activation
noise is drawn once per *block* of images (sample ``s`` of image ``i`` runs with the draw
``fold_in(sample_key, 1 + i // block)``, :func:`smoothjax.smoothing.sample_votes`), so every
image of a block sees the same ``n`` draws, and a lucky or unlucky draw moves the correctness
of all of them together. Input noise is per
image, and repeats use independent keys. A per-image binomial interval then treats ``N``
correlated trials as independent and is too narrow (see :func:`accuracy_ci`'s methods and the
coverage tests).

The blocks are the independent units: block ``b`` together with its images and all its draws
in all ``R`` repeats is independent of every other block (its images are different test images
and its keys are different keys). Every method here that is valid under these semantics works
on per-block totals, i.e. it is a cluster (block) method in the sense of survey statistics:

* ``block_beta``: Korn & Graubard's (1998) Clopper-Pearson interval with an effective sample
  size ``n / deff``; the design effect ``deff`` comes from the cluster-robust (between-block)
  variance, and ``n`` is shrunk further for the ``G - 1`` degrees of freedom of that variance.
  Asymmetric, inside [0, 1], sensible at accuracies near 0 or 1 and with few blocks.
* ``block_t``: the cluster-robust standard error with a Student t quantile on ``G - 1`` degrees
  of freedom (with blocks of equal size: the t interval on the ``G`` block accuracies).
* ``block_bootstrap``: the cluster bootstrap (resample whole blocks with replacement; Davison &
  Hinkley 1997, section 3.8; Field & Welsh 2007), percentile interval.
* ``repeats``: the t interval on the ``R`` per-repeat accuracies. It only measures the
  Monte-Carlo noise of the evaluation *on these images* (conditional on the test set), not the
  sampling of the test set; it is the spread the paper reports as "mean +- std".
* ``clopper_pearson``, ``wilson``: the naive intervals for ``R * N`` independent trials. Valid
  only for independent images (blocks of one image, i.e. per-image weight noise, and
  ``R = 1``); kept for comparison (they under-cover under shared draws).

Comparisons (two votes or two ``n`` on the same samples, two models with the same keys) are
paired: :func:`paired_difference` works on the per-block differences, the same units.

Estimand: the block methods cover the *population* accuracy of the smoothed classifier
(expectation over test images and over all noise), which is what an accuracy claim is about;
``repeats`` covers the expected accuracy on the fixed evaluated images.

Example:
  >>> import numpy as np
  >>> from smoothjax import stats
  >>> rng = np.random.default_rng(0)
  >>> correct = rng.random((1, 1024)) < 0.8            # (repeats, images)
  >>> blocks = stats.image_blocks(np.arange(1024), block_size=256)
  >>> ci = stats.accuracy_ci(correct, block_ids=blocks)
  >>> low, high = ci
  >>> ci.method
  'block_beta'

References:
  Korn, Graubard, "Confidence intervals for proportions with small expected number of positive
    counts estimated from survey data", Survey Methodology 24(2), 1998.
  Cameron, Miller, "A practitioner's guide to cluster-robust inference", J. Human Resources
    50(2), 2015.
  Davison, Hinkley, "Bootstrap Methods and their Application", Cambridge University Press, 1997.
  Field, Welsh, "Bootstrapping clustered data", J. R. Stat. Soc. B 69(3), 2007.
  Clopper, Pearson, "The use of confidence or fiducial limits illustrated in the case of the
    binomial", Biometrika 26(4), 1934.
  Wilson, "Probable inference, the law of succession, and statistical inference", JASA 22, 1927.
  Nemcovsky et al., "Smoothed Inference for Improving Adversarial Robustness", arXiv 1911.07198.
"""

from __future__ import annotations

import base64
import math
import operator
from typing import Any

import numpy as np
from scipy import sparse as sp_sparse
from scipy import stats as sp_stats
from scipy.sparse import csgraph as sp_csgraph

from smoothjax import certify as certify_lib

__all__ = [
    "CI_METHODS",
    "PAIRED_METHODS",
    "DEFAULT_BLOCK_SIZE",
    "Interval",
    "PairedDifference",
    "image_blocks",
    "merge_blocks",
    "block_totals",
    "accuracy_ci",
    "paired_difference",
    "encode_bits",
    "decode_bits",
]

CI_METHODS = ("block_beta", "block_t", "block_bootstrap", "repeats", "clopper_pearson", "wilson")
PAIRED_METHODS = ("block_t", "block_bootstrap", "repeats")
DEFAULT_BLOCK_SIZE = 256
_BLOCK_METHODS = ("block_beta", "block_t", "block_bootstrap")
_CHUNK = 1 << 22  # bootstrap resamples are drawn in chunks of about this many block indices


# --------------------------------------------------------------------------------- results


class Interval(tuple):
  """A confidence interval: unpacks as ``(low, high)``; more is kept as attributes.

  Attributes:
    low, high: the bounds (``nan`` when no valid interval exists, see :func:`accuracy_ci`).
    estimate: the point estimate (mean accuracy over repeats and images).
    level: the confidence level.
    method: the method that produced the bounds (after any documented fallback).
    requested: the method asked for.
    num_blocks, num_repeats, num_images: the data's shape.
  """

  def __new__(cls, low: float, high: float, **info: Any):
    self = super().__new__(cls, (float(low), float(high)))
    self.__dict__.update(info)
    return self

  low = property(operator.itemgetter(0), doc="The lower bound.")
  high = property(operator.itemgetter(1), doc="The upper bound.")

  def as_record(self, prefix: str = "accuracy") -> dict:
    """``{prefix_ci_low, prefix_ci_high, prefix_ci_method}`` for a results record (JSON-safe).

    ``nan`` bounds become ``None`` (JSON ``null``).
    """
    def clean(v):
      return None if not math.isfinite(v) else float(v)
    return {f"{prefix}_ci_low": clean(self.low), f"{prefix}_ci_high": clean(self.high),
            f"{prefix}_ci_method": self.method}

  def __repr__(self) -> str:
    return (f"Interval(low={self.low:.6g}, high={self.high:.6g}, "
            f"estimate={self.__dict__.get('estimate', float('nan')):.6g}, "
            f"method={self.__dict__.get('method')!r})")


class PairedDifference(tuple):
  """A paired comparison: unpacks as ``(diff, low, high, p_value)``; more as attributes.

  Attributes:
    diff: ``accuracy(a) - accuracy(b)`` on the same images and samples.
    low, high: the confidence interval of the difference.
    p_value: two-sided p-value of ``H0: the expected accuracies are equal``.
    level, method, requested, num_blocks, num_repeats, num_images: as for :class:`Interval`.
  """

  def __new__(cls, diff: float, low: float, high: float, p_value: float, **info: Any):
    self = super().__new__(cls, (float(diff), float(low), float(high), float(p_value)))
    self.__dict__.update(info)
    return self

  diff = property(operator.itemgetter(0), doc="The estimated difference.")
  low = property(operator.itemgetter(1), doc="The lower bound of the difference.")
  high = property(operator.itemgetter(2), doc="The upper bound of the difference.")
  p_value = property(operator.itemgetter(3), doc="The test's p-value.")

  def __repr__(self) -> str:
    return (f"PairedDifference(diff={self.diff:.6g}, low={self.low:.6g}, "
            f"high={self.high:.6g}, p_value={self.p_value:.4g}, "
            f"method={self.__dict__.get('method')!r})")


# ----------------------------------------------------------------------------- data checks


def image_blocks(indices, *, block_size: int = DEFAULT_BLOCK_SIZE) -> np.ndarray:
  """The noise block of every image: ``global_index // block_size``.

  Args:
    indices: ``(N,)`` global dataset indices of the evaluated images (those that select each
      image's noise).
    block_size: images per weight / activation-noise draw (1: per-image draws).

  Returns:
    ``(N,)`` int64 block ids.

  Raises:
    ValueError: a bad block size or non-integer / negative indices.

  Example:
    >>> image_blocks(np.arange(6), block_size=4).tolist()
    [0, 0, 0, 0, 1, 1]
  """
  if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) \
      or block_size < 1:
    raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
  idx = np.asarray(indices)
  if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
    raise ValueError(f"indices must be a 1-D integer array, got shape {idx.shape}, "
                     f"dtype {idx.dtype}")
  if idx.size and idx.min() < 0:
    raise ValueError("indices must be >= 0")
  return idx.astype(np.int64) // int(block_size)


def merge_blocks(*block_ids) -> np.ndarray:
  """The finest blocks coarser than every given partition (images dependent through any).

  For example the vote's noise blocks and the attack's batches (adversarial examples crafted
  with one noise draw per attack batch): two images are in one merged block when a chain of
  shared blocks links them (connected components).

  Args:
    *block_ids: ``(N,)`` integer block ids, one array per source of shared randomness.

  Returns:
    ``(N,)`` int64 merged block ids ``0 .. G-1``, numbered in the order of their first image.

  Raises:
    ValueError: no array, or arrays of different shapes / not integer.

  Example:
    >>> merge_blocks(np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 2, 3, 3])).tolist()
    [0, 0, 0, 0, 1, 1]
  """
  if not block_ids:
    raise ValueError("merge_blocks needs at least one block_ids array")
  first = np.asarray(block_ids[0])
  if first.ndim != 1:
    raise ValueError(f"block_ids must be 1-D (one per image), got shape {first.shape}")
  labels = [_as_blocks(b, first.shape[0]) for b in block_ids]
  num = labels[0].shape[0]
  offsets = np.cumsum([0] + [int(lab.max()) + 1 if num else 0 for lab in labels])
  # Bipartite graph: image i links its block in every partition; components = merged blocks.
  rows = np.concatenate([np.arange(num)] * len(labels))
  cols = np.concatenate([lab + off for lab, off in zip(labels, offsets[:-1])]) + num
  size = num + int(offsets[-1])
  graph = sp_sparse.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(size, size))
  _, comp = sp_csgraph.connected_components(graph, directed=False)
  _, dense = np.unique(comp[:num], return_inverse=True)
  return dense.reshape(-1).astype(np.int64)


def _as_correct(correct, name: str = "correct") -> np.ndarray:
  """``(R, N)`` float64 0/1 array from ``(N,)`` or ``(R, N)`` booleans / 0-1 integers."""
  c = np.asarray(correct)
  if c.ndim == 1:
    c = c[None]
  if c.ndim != 2:
    raise ValueError(f"{name} must have shape (N,) or (R, N), got {c.shape}")
  if c.shape[0] < 1 or c.shape[1] < 1:
    raise ValueError(f"{name} is empty (shape {c.shape})")
  if c.dtype != bool:
    if not (np.issubdtype(c.dtype, np.integer) or np.issubdtype(c.dtype, np.floating)):
      raise ValueError(f"{name} must be booleans or 0/1 numbers, got dtype {c.dtype}")
    if not np.all((c == 0) | (c == 1)):
      raise ValueError(f"{name} must contain only 0/1 (correct or not)")
  return c.astype(np.float64)


def _as_blocks(block_ids, num_images: int) -> np.ndarray:
  """Dense block labels ``0 .. G-1`` of shape ``(N,)``."""
  if block_ids is None:
    raise ValueError("block_ids is required: the noise block of every image (image_blocks("
                     "indices, block_size=...); np.arange(N) for per-image noise)")
  b = np.asarray(block_ids)
  if b.shape != (num_images,):
    raise ValueError(f"block_ids must have shape ({num_images},) (one per image), got "
                     f"{b.shape}")
  if not np.issubdtype(b.dtype, np.integer):
    raise ValueError(f"block_ids must be integers, got dtype {b.dtype}")
  _, dense = np.unique(b, return_inverse=True)
  return dense.reshape(-1)


def _check_level(level) -> float:
  level = float(level)
  if not 0 < level < 1:
    raise ValueError(f"level must be in (0, 1), got {level}")
  return level


def _rng(seed) -> np.random.Generator:
  if isinstance(seed, np.random.Generator):
    return seed
  return np.random.default_rng(seed)


def block_totals(correct, *, block_ids) -> tuple[np.ndarray, np.ndarray]:
  """Per-block correct counts and trial counts, summed over repeats.

  Args:
    correct: ``(N,)`` or ``(R, N)`` booleans: whether image ``i`` was classified correctly in
      repeat ``r``.
    block_ids: ``(N,)`` integer noise block of every image (:func:`image_blocks`).

  Returns:
    ``(successes, trials)``: two float64 arrays ``(G,)`` over the ``G`` distinct blocks (sorted
    by block id); ``trials[b] = R * (images in block b)``.

  Raises:
    ValueError: on a shape mismatch or non-binary ``correct``.
  """
  c = _as_correct(correct)
  g = _as_blocks(block_ids, c.shape[1])
  num = int(g.max()) + 1
  succ = np.bincount(g, weights=c.sum(0), minlength=num)
  trials = np.bincount(g, minlength=num).astype(np.float64) * c.shape[0]
  return succ, trials


# ------------------------------------------------------------------------------- intervals


def _clopper_pearson(x: float, n: float, level: float) -> tuple[float, float]:
  """Clopper-Pearson bounds for ``x`` successes of ``n`` (real-valued, as in Korn-Graubard)."""
  a = (1 - level) / 2
  # The upper bound is one minus the lower bound of the failures (Beta symmetry).
  low = float(certify_lib.lower_confidence_bound(x, n, a))
  high = 1.0 - float(certify_lib.lower_confidence_bound(n - x, n, a))
  return low, high


def _wilson(x: float, n: float, level: float) -> tuple[float, float]:
  z = float(sp_stats.norm.ppf(0.5 + level / 2))
  p = x / n
  den = 1 + z * z / n
  mid = (p + z * z / (2 * n)) / den
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
  return max(0.0, mid - half), min(1.0, mid + half)


def _cluster_var(s: np.ndarray, m: np.ndarray, p: float) -> float:
  """Cluster-robust (linearisation) variance of the ratio ``sum(s) / sum(m)``, G/(G-1) scaled."""
  g = len(s)
  return float(g / (g - 1) * np.sum((s - p * m) ** 2) / np.sum(m) ** 2)


def _t_interval(est: float, var: float, df: int, level: float) -> tuple[float, float]:
  half = float(sp_stats.t.ppf(0.5 + level / 2, df)) * math.sqrt(max(var, 0.0))
  return est - half, est + half


def _korn_graubard(s: np.ndarray, m: np.ndarray, p: float, level: float) -> tuple[float, float]:
  n = float(np.sum(m))
  g = len(s)
  n_eff = n
  if 0 < p < 1:
    var = _cluster_var(s, m, p)
    if var > 0:
      # deff < 1 (between-block variance below the binomial one) is truncated to 1 (NCHS).
      n_eff = min(n, p * (1 - p) / var)
  a = 1 - level
  if n > 1:
    # Degrees-of-freedom adjustment: the variance has G - 1 df, not n - 1.
    n_eff *= (sp_stats.t.ppf(a / 2, n - 1) / sp_stats.t.ppf(a / 2, g - 1)) ** 2
  return _clopper_pearson(p * n_eff, n_eff, level)


def _bootstrap_stats(s: np.ndarray, m: np.ndarray, num_resamples: int,
                     rng: np.random.Generator) -> np.ndarray:
  """``num_resamples`` cluster-bootstrap replicates of ``sum(s) / sum(m)``."""
  g = len(s)
  out = np.empty(num_resamples)
  step = max(1, _CHUNK // g)
  for lo in range(0, num_resamples, step):
    hi = min(num_resamples, lo + step)
    idx = rng.integers(0, g, size=(hi - lo, g))
    out[lo:hi] = s[idx].sum(1) / m[idx].sum(1)
  return out


def _percentile(reps: np.ndarray, level: float) -> tuple[float, float]:
  a = 1 - level
  low, high = np.quantile(reps, [a / 2, 1 - a / 2])
  return float(low), float(high)


def _check_resamples(num_resamples) -> int:
  if isinstance(num_resamples, bool) or not isinstance(num_resamples, (int, np.integer)) \
      or num_resamples < 1:
    raise ValueError(f"num_resamples must be a positive integer, got {num_resamples!r}")
  return int(num_resamples)


def accuracy_ci(correct, *, block_ids, level: float = 0.95, method: str = "block_beta",
                num_resamples: int = 2000, seed: int | np.random.Generator = 0) -> Interval:
  """Confidence interval of a smoothed accuracy, valid when images share noise draws.

  ``correct[r, i]`` says whether image ``i`` was classified correctly in repeat ``r``; the
  estimate is ``correct.mean()``. See the module docstring for the methods; in short:

  * ``block_beta`` (default): Korn-Graubard Clopper-Pearson interval with the effective sample
    size of the block design. Chosen as the default because it is valid for any dependence
    within a block, needs no repeats, keeps inside [0, 1] and stays sensible at accuracies
    near 0 or 1 and with few blocks (a 1,000-image evaluation has only 4 blocks of 256); the
    bootstrap needs many blocks and collapses to a point when every image is right.
  * ``block_t``: cluster-robust standard error, t quantile with ``G - 1`` df (clipped to
    [0, 1]).
  * ``block_bootstrap``: percentile cluster bootstrap over blocks (``num_resamples``, ``seed``).
    Needs many blocks (about 20 or more) to reach its level.
  * ``repeats``: t interval on the ``R`` per-repeat accuracies (needs ``R >= 2``); only the
    Monte-Carlo uncertainty on the evaluated images (it does not cover the sampling of the test
    set). Identical repeats (a model without noise) give a zero-width interval.
  * ``clopper_pearson`` / ``wilson``: ``R * N`` independent trials (valid only for per-image
    noise, i.e. blocks of one image, with ``R = 1``).

  Simulated coverage of nominal 95% intervals (400 evaluations each of the shared-draw model
  of ``tests/test_stats.py``: blocks of 64 to 256 images, per-block draw effects):
  ``block_beta`` 0.96 / 0.95 / 0.94 with 4 / 8 / 40 blocks; ``block_t`` 0.95 / 0.94 / 0.94;
  ``block_bootstrap`` 0.79 / 0.91 / 0.94; the naive ``wilson`` 0.49 / 0.68 / 0.73.

  Fallbacks (the :class:`Interval`'s ``method`` names the one used):

  * Every image in its own block and ``R = 1`` (independent trials by construction): the block
    methods give the exact ``clopper_pearson`` interval.
  * ``block_t`` / ``block_bootstrap`` when every trial is correct (or none is): they collapse
    to a point, so ``block_beta`` is used (its design effect is then 1, i.e. Clopper-Pearson on
    ``R * N`` trials, as Korn & Graubard prescribe).
  * A single block (``G = 1``: e.g. fewer than 256 images): the between-block variance is not
    estimable, so no block method is valid. With ``R >= 2`` the ``repeats`` interval is
    returned (conditional on the images, so narrower than the truth); with ``R = 1`` the bounds
    are ``nan`` (method ``"unavailable"``) rather than a misleading number.

  Args:
    correct: ``(N,)`` or ``(R, N)`` booleans (or 0/1 integers).
    block_ids: ``(N,)`` integer noise block of every image: :func:`image_blocks` of the images'
      global indices (``np.arange(N)`` for per-image noise). Images of one block share draws.
    level: confidence level.
    method: one of :data:`CI_METHODS`.
    num_resamples: bootstrap resamples (``block_bootstrap`` only).
    seed: seed or ``np.random.Generator`` of the bootstrap (results are reproducible).

  Returns:
    :class:`Interval`: ``low, high = accuracy_ci(...)``; ``.estimate``, ``.method``, ...

  Raises:
    ValueError: bad shapes (``block_ids`` not ``(N,)``), non-binary ``correct``, an unknown
      method, a bad level, ``repeats`` with a single repeat.

  References:
    Korn & Graubard 1998; Cameron & Miller 2015; Davison & Hinkley 1997 (module docstring).

  Example:
    >>> correct = np.ones((2, 1024), bool)       # 2 repeats, 4 blocks of 256, all correct
    >>> ci = accuracy_ci(correct, block_ids=image_blocks(np.arange(1024), block_size=256))
    >>> round(ci.low, 4), ci.high, ci.method
    (0.9953, 1.0, 'block_beta')
  """
  level = _check_level(level)
  if method not in CI_METHODS:
    raise ValueError(f"unknown method {method!r}; expected one of {', '.join(CI_METHODS)}")
  num_resamples = _check_resamples(num_resamples)
  c = _as_correct(correct)
  r, num = c.shape
  s, m = block_totals(c, block_ids=block_ids)
  g = len(s)
  est = float(s.sum() / m.sum())
  info = dict(estimate=est, level=level, requested=method, num_blocks=g, num_repeats=r,
              num_images=num)

  def result(low, high, used):
    return Interval(min(max(low, 0.0), 1.0), min(max(high, 0.0), 1.0), method=used, **info)

  used = method
  if method in _BLOCK_METHODS:
    if g == num and r == 1:
      used = "clopper_pearson"
    elif g < 2:
      if r < 2:
        return Interval(math.nan, math.nan, method="unavailable", **info)
      used = "repeats"
    elif method != "block_beta" and est in (0.0, 1.0):
      used = "block_beta"
  if used == "repeats":
    if r < 2:
      raise ValueError("method='repeats' needs at least 2 repeats (correct of shape (R, N), "
                       f"R >= 2), got R = {r}")
    accs = c.mean(1)
    low, high = _t_interval(est, float(accs.var(ddof=1)) / r, r - 1, level)
  elif used == "clopper_pearson":
    low, high = _clopper_pearson(s.sum(), m.sum(), level)
  elif used == "wilson":
    low, high = _wilson(s.sum(), m.sum(), level)
  elif used == "block_beta":
    low, high = _korn_graubard(s, m, est, level)
  elif used == "block_t":
    low, high = _t_interval(est, _cluster_var(s, m, est), g - 1, level)
  else:  # block_bootstrap
    reps = _bootstrap_stats(s, m, num_resamples, _rng(seed))
    low, high = _percentile(reps, level)
  return result(low, high, used)


# ------------------------------------------------------------------------ paired comparison


def paired_difference(correct_a, correct_b, *, block_ids, level: float = 0.95,
                      method: str = "block_t", num_resamples: int = 4000,
                      seed: int | np.random.Generator = 0) -> PairedDifference:
  """Paired comparison of two accuracies measured on the same images and noise samples.

  For two votes on the same Monte-Carlo samples, two prefixes ``n`` of one pass, or two models
  evaluated with the same keys: ``correct_a`` and ``correct_b`` are strongly correlated, so
  their difference is much more precise than two separate intervals suggest. The blocks stay
  the independent units: block ``b``'s difference ``sum(a - b)`` over its images and repeats
  is resampled (or its spread used) as a whole.

  * ``block_t`` (default): paired cluster-robust t test and interval on the per-block
    differences, ``G - 1`` df (with equal blocks: the paired t test on the ``G`` block
    differences). Chosen as the default because it holds its level from a handful of blocks
    on (type-I error at level 0.05 in 400 simulations of the paired shared-draw model of
    ``tests/test_stats.py``: 0.04-0.055 with 4 to 40 blocks) while the
    bootstrap needs many blocks (0.18 with 4 blocks, 0.135 with 8, 0.06 with 40); with many
    blocks both have the same power.
  * ``block_bootstrap``: paired cluster bootstrap of the difference; percentile interval;
    two-sided p-value ``2 * min(P*(d* <= 0), P*(d* >= 0))`` (with the usual +1 correction),
    the inversion of the percentile interval. Use it with about 20 blocks or more (5,000
    images or more with blocks of 256).
  * ``repeats``: paired t test on the ``R`` per-repeat differences (Monte-Carlo noise on the
    evaluated images only).

  Fallbacks: a single block uses ``repeats`` when ``R >= 2``, else returns ``nan`` bounds and
  p-value (method ``"unavailable"``). If every block's difference is zero (``a`` and ``b``
  agree on every image, e.g. identical votes), the result is ``(0, 0, 0, 1)``.

  Args:
    correct_a, correct_b: ``(N,)`` or ``(R, N)`` booleans of the same shape.
    block_ids: ``(N,)`` integer noise block of every image (:func:`image_blocks`).
    level: confidence level of the interval.
    method: one of :data:`PAIRED_METHODS`.
    num_resamples: bootstrap resamples.
    seed: seed or ``np.random.Generator`` of the bootstrap.

  Returns:
    :class:`PairedDifference`: ``diff, low, high, p_value = paired_difference(...)``.

  Raises:
    ValueError: shapes differ, bad ``block_ids``, non-binary input, unknown method, bad level.

  References:
    Davison & Hinkley 1997 (sections 3.8, 4.4); Cameron & Miller 2015 (module docstring).

  Example:
    >>> rng = np.random.default_rng(1)
    >>> a = rng.random(2048) < 0.8
    >>> b = a & (rng.random(2048) < 0.95)            # b loses about 4 points
    >>> d = paired_difference(a, b, block_ids=image_blocks(np.arange(2048), block_size=256))
    >>> d.diff > 0 and d.low > 0 and d.p_value < 0.01
    True
  """
  level = _check_level(level)
  if method not in PAIRED_METHODS:
    raise ValueError(f"unknown method {method!r}; expected one of {', '.join(PAIRED_METHODS)}")
  num_resamples = _check_resamples(num_resamples)
  a = _as_correct(correct_a, "correct_a")
  b = _as_correct(correct_b, "correct_b")
  if a.shape != b.shape:
    raise ValueError(f"correct_a and correct_b must have the same shape (same repeats and "
                     f"images), got {a.shape} and {b.shape}")
  r, num = a.shape
  sa, m = block_totals(a, block_ids=block_ids)
  sb, _ = block_totals(b, block_ids=block_ids)
  d = sa - sb
  g = len(d)
  diff = float(d.sum() / m.sum())
  info = dict(level=level, requested=method, num_blocks=g, num_repeats=r, num_images=num,
              accuracy_a=float(sa.sum() / m.sum()), accuracy_b=float(sb.sum() / m.sum()))
  if not np.any(a != b):
    return PairedDifference(0.0, 0.0, 0.0, 1.0, method=method, **info)
  used = method
  if method != "repeats" and g < 2:
    if r < 2:
      nan = math.nan
      return PairedDifference(diff, nan, nan, nan, method="unavailable", **info)
    used = "repeats"
  if used in ("repeats", "block_t"):
    if used == "repeats":
      if r < 2:
        raise ValueError("method='repeats' needs at least 2 repeats (shape (R, N), R >= 2), "
                         f"got R = {r}")
      per = (a - b).mean(1)
      var, df = float(per.var(ddof=1)) / r, r - 1
    else:
      var, df = _cluster_var(d, m, diff), g - 1
    if var <= 0:  # every repeat (block) shows the same nonzero difference
      return PairedDifference(diff, diff, diff, 0.0, method=used, **info)
    low, high = _t_interval(diff, var, df, level)
    p = float(2 * sp_stats.t.sf(abs(diff) / math.sqrt(var), df))
    return PairedDifference(diff, max(low, -1.0), min(high, 1.0), min(p, 1.0), method=used,
                            **info)
  reps = _bootstrap_stats(d, m, num_resamples, _rng(seed))
  low, high = _percentile(reps, level)
  below = np.count_nonzero(reps <= 0)
  above = np.count_nonzero(reps >= 0)
  p = min(1.0, 2 * (min(below, above) + 1) / (num_resamples + 1))
  return PairedDifference(diff, low, high, p, method=used, **info)


# ------------------------------------------------------------------------ compact storage


def encode_bits(correct) -> dict:
  """Packs a boolean array into a JSON-safe dict (for per-image correctness in point files).

  Args:
    correct: boolean (or 0/1) array of any shape.

  Returns:
    ``{"shape": [...], "bits": base64 of np.packbits}`` (1 bit per entry).

  Example:
    >>> decode_bits(encode_bits(np.array([[True, False, True]]))).tolist()
    [[True, False, True]]
  """
  c = np.asarray(correct)
  if c.dtype != bool:
    if not np.all((c == 0) | (c == 1)):
      raise ValueError("encode_bits takes booleans or 0/1 values")
    c = c.astype(bool)
  return {"shape": list(c.shape), "bits": base64.b64encode(np.packbits(c.reshape(-1))).decode()}


def decode_bits(packed: dict) -> np.ndarray:
  """The boolean array of :func:`encode_bits`."""
  shape = tuple(int(v) for v in packed["shape"])
  size = math.prod(shape)
  raw = np.frombuffer(base64.b64decode(packed["bits"]), np.uint8)
  return np.unpackbits(raw, count=size).astype(bool).reshape(shape)
