"""Tests of smoothjax.certify: Cohen et al.'s PREDICT and CERTIFY vs hand computations."""

import jax
import numpy as np
import pytest
from scipy import stats

from smoothjax import certify, smoothing
from tiny_model import TinyLinear, images as _images


def test_lower_confidence_bound_is_one_sided_clopper_pearson():
  # nA = n: the bound solves p^n = alpha.
  np.testing.assert_allclose(certify.lower_confidence_bound(100, 100, 0.001), 0.001 ** (1 / 100),
                             rtol=1e-10)
  # nA = 0: 0.
  assert certify.lower_confidence_bound(0, 100, 0.001) == 0.0
  # general: the Beta quantile, and the binomial tail at the bound equals alpha.
  k, n, a = 9_000, 10_000, 0.001
  lb = float(certify.lower_confidence_bound(k, n, a))
  assert lb == pytest.approx(stats.beta.ppf(a, k, n - k + 1), rel=1e-12)
  assert stats.binom.sf(k - 1, n, lb) == pytest.approx(a, rel=1e-6)  # P[X >= k | p = lb]
  assert lb < k / n


def test_certify_from_counts_matches_hand_computation():
  sigma, alpha = 0.25, 0.001
  counts0 = np.array([[2, 95, 3], [40, 30, 30], [0, 0, 100], [10, 0, 90]])
  counts = np.array([[10, 980, 10], [520, 300, 180], [0, 0, 1000], [505, 0, 495]])
  pred, radius, p_a = certify.certify_from_counts(counts0, counts, sigma=sigma, alpha=alpha)
  # image 0: cA = 1, nA = 980 of 1000
  pa0 = stats.beta.ppf(alpha, 980, 1000 - 980 + 1)
  assert pred[0] == 1 and radius[0] == pytest.approx(sigma * stats.norm.ppf(pa0), rel=1e-9)
  # image 1: cA = 0 (selection), nA = 520: pA < 1/2 -> abstain
  assert p_a[1] < 0.5 and pred[1] == certify.ABSTAIN and radius[1] == 0
  # image 2: all votes: pA = alpha^(1/n)
  assert radius[2] == pytest.approx(sigma * stats.norm.ppf(alpha ** (1 / 1000)), rel=1e-9)
  # image 3: selection picks class 2 but estimation gives it 495/1000 -> abstain
  assert pred[3] == certify.ABSTAIN
  # normalised sigma: radius in pixels = min_c std_c * sigma * Phi^-1(pA)
  std = (0.247, 0.243, 0.262)
  factor = certify.pixel_radius_factor("normalized", std)
  _, r2, _ = certify.certify_from_counts(counts0, counts, sigma=sigma, alpha=alpha,
                                         radius_factor=factor)
  np.testing.assert_allclose(r2, 0.243 * radius)


def test_predict_from_counts_abstains_by_binomial_test():
  counts = np.array([[60, 40, 0], [70, 30, 0], [0, 50, 50], [3, 0, 97], [0, 5, 5]])
  got = certify.predict_from_counts(counts, alpha=0.05)
  # by hand: two-sided binomial p-values of the top two counts
  assert stats.binomtest(60, 100).pvalue > 0.05 and got[0] == certify.ABSTAIN
  assert stats.binomtest(70, 100).pvalue < 0.05 and got[1] == 0
  assert got[2] == certify.ABSTAIN  # tie
  assert got[3] == 2
  assert got[4] == certify.ABSTAIN


def test_certify_end_to_end_uses_independent_selection_and_estimation():
  model = TinyLinear(num_classes=3, scale=0.4)
  x = _images(4, seed=2)
  key = jax.random.key(7)
  sigma, n0, n, alpha = 0.1, 20, 400, 0.01
  res = certify.certify(key, model, x, sigma=sigma, n0=n0, num_samples=n, alpha=alpha,
                        batch_size=2048)
  c0 = smoothing.sample_counts(jax.random.fold_in(key, 0), model, x, sigma=sigma,
                               num_samples=n0)
  c1 = smoothing.sample_counts(jax.random.fold_in(key, 1), model, x, sigma=sigma,
                               num_samples=n)
  np.testing.assert_array_equal(res.counts0, c0)
  np.testing.assert_array_equal(res.counts, c1)
  ca = c0.argmax(-1)
  na = c1[np.arange(4), ca]
  pa = stats.beta.ppf(alpha, na, n - na + 1)
  want = np.where(pa >= 0.5, sigma * stats.norm.ppf(np.clip(pa, 0.5, 1)), 0.0)
  np.testing.assert_allclose(res.radius, want, rtol=1e-9)
  assert (res.radius > 0).any()
  # normalized space: radius scaled by min std
  res_n = certify.certify(key, model, x, sigma=sigma, sigma_space="normalized", n0=n0,
                          num_samples=n, alpha=alpha, batch_size=2048)
  ok = res_n.predict >= 0
  np.testing.assert_allclose(
      res_n.radius[ok], min(model.config.std) * sigma * stats.norm.ppf(res_n.p_a[ok]),
      rtol=1e-9)
  pred = certify.predict(key, model, x, sigma=sigma, num_samples=n, alpha=alpha)
  np.testing.assert_array_equal(pred, certify.predict_from_counts(
      smoothing.sample_counts(key, model, x, sigma=sigma, num_samples=n), alpha=alpha))


def test_certified_accuracy_and_errors():
  radius = np.array([0.0, 0.3, 0.6, 1.2])
  correct = np.array([False, True, True, False])
  np.testing.assert_allclose(certify.certified_accuracy(radius, correct, [0, 0.3, 0.5, 1.0]),
                             [0.5, 0.5, 0.25, 0.0])
  with pytest.raises(ValueError, match="sigma must be > 0"):
    certify.certify(0, TinyLinear(), _images(1), sigma=0.0, n0=1, num_samples=2)
  with pytest.raises(ValueError, match="alpha"):
    certify.predict_from_counts(np.array([[1, 0]]), alpha=1.5)
