"""Tests of smoothjax.topk: the rank-by-rank hard-vote top-k of the reference."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smoothjax import _topk as topk
from smoothjax import smoothing


def _logits_from_rankings(rankings, num_classes):
  """``(n, B, C)`` logits whose per-sample rankings start with the given classes."""
  rankings = np.asarray(rankings)
  n, b, k = rankings.shape
  logits = np.zeros((n, b, num_classes), np.float32)
  for s in range(n):
    for i in range(b):
      for r, cls in enumerate(rankings[s, i]):
        logits[s, i, cls] = k - r  # others stay 0, below every ranked class
  return jnp.asarray(logits)


def _np_reference(counts, k, empty_rank="lowest_id"):
  """The rule written directly with Python loops (for one image)."""
  counts = np.asarray(counts)
  cum = np.cumsum(counts, 0)
  picked = []
  for r in range(k):
    free = [c for c in range(counts.shape[1]) if c not in picked]
    best = max(counts[r, c] for c in free)
    if best == 0 and empty_rank == "cumulative":
      best_cum = max(cum[r, c] for c in free)
      picked.append(min(c for c in free if cum[r, c] == best_cum))
    else:
      picked.append(min(c for c in free if counts[r, c] == best))
  return picked


def test_single_sample_equals_base_top5_with_ties():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(np.round(rng.normal(size=(1, 64, 10)) * 1.5), jnp.float32)  # ties
  got = topk.hard_topk_from_ranks(topk.rank_histograms(logits, k=5))
  want = np.argsort(-np.asarray(logits[0]), axis=-1, kind="stable")[:, :5]  # ties -> lower id
  np.testing.assert_array_equal(np.asarray(got), want)
  np.testing.assert_array_equal(
      np.asarray(topk.hard_topk_from_ranks(topk.rank_histograms(logits), empty_rank="lowest_id")),
      want)
  # Ranks agree with smoothing.ranks (0 = largest, ties -> lower class id).
  r = np.asarray(smoothing.ranks(logits[0]))
  np.testing.assert_array_equal(np.take_along_axis(r, want, -1), np.tile(np.arange(5), (64, 1)))


def test_hand_computed_example_with_ties():
  # Four samples, C = 10, top-3 rankings:
  #   rank 0: 7, 5, 7, 5 -> 5 and 7 tie at 2 votes -> 5 (lowest id)
  #   rank 1: 5, 7, 9, 9 -> among {not 5}: 9 (2 votes)
  #   rank 2: 9, 9, 5, 3 -> among {not 5, 9}: 3 (1 vote; 7 has none)
  rankings = [[[7, 5, 9]], [[5, 7, 9]], [[7, 9, 5]], [[5, 9, 3]]]
  counts = topk.rank_histograms(_logits_from_rankings(rankings, 10), k=3)
  want_counts = np.zeros((1, 3, 10), np.int32)
  for s in rankings:
    for r, cls in enumerate(s[0]):
      want_counts[0, r, cls] += 1
  np.testing.assert_array_equal(np.asarray(counts), want_counts)
  assert topk.hard_topk_from_ranks(counts).tolist() == [[5, 9, 3]]
  assert topk.hard_topk_from_ranks(counts, empty_rank="lowest_id").tolist() == [[5, 9, 3]]
  # Column 0 is exactly the hard vote (ties -> lowest class id) of the same samples.
  hard = smoothing.hard_vote.fn(_logits_from_rankings(rankings, 10)).sum(0)
  assert int(np.argmax(hard[0])) == 5
  # The old rule (top-3 of the hard-vote counts) fills up with the zero-vote class 0.
  old = np.argsort(-np.asarray(hard), axis=-1, kind="stable")[:, :3]
  assert old.tolist() == [[5, 7, 0]]
  labels = np.array([0])
  assert bool(smoothing.topk_correct(hard, labels, k=3)[0])  # label 0 "top-3 correct"
  assert not bool(topk.topk_correct_from_ranks(counts, labels)[0])


def test_old_rule_failure_mode_does_not_occur():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 10, 256)
  logits = jnp.asarray(rng.normal(size=(1, 256, 10)), jnp.float32)
  counts = topk.rank_histograms(logits)
  hard = smoothing.hard_vote.fn(logits).sum(0)
  base = np.argsort(-np.asarray(logits[0]), axis=-1, kind="stable")[:, :5]
  base_acc = (base == labels[:, None]).any(-1).mean()
  old_acc = smoothing.topk_correct(hard, labels, k=5).mean()
  new_acc = np.asarray(topk.topk_correct_from_ranks(counts, labels)).mean()
  assert new_acc == base_acc and old_acc != base_acc  # n=1: the old rule's top-5 is spurious
  # For every n = 1..8 (prefix sums of one pass), rule "cumulative": every picked class has a
  # vote among the first r + 1 ranks of some sample.
  lg = jnp.asarray(np.round(rng.normal(size=(8, 256, 10))), jnp.float32)
  cnt = np.cumsum(np.asarray(topk.rank_contributions(lg)), 0)  # (n, B, 5, C) for n = 1..8
  top = np.asarray(topk.hard_topk_from_ranks(jnp.asarray(cnt)))  # (n, B, 5)
  cum = np.cumsum(cnt, 2)
  for r in range(5):
    assert np.all(np.take_along_axis(cum[:, :, r], top[:, :, r:r + 1], -1) > 0), r
  s = np.sort(top, -1)
  assert np.all(s[..., 1:] != s[..., :-1])  # distinct picks
  # The reference's rule (empty ranks -> lowest id) does pick zero-vote classes here.
  ref = np.asarray(topk.hard_topk_from_ranks(jnp.asarray(cnt), empty_rank="lowest_id"))
  assert any(np.any(np.take_along_axis(cum[:, :, r], ref[:, :, r:r + 1], -1) == 0)
             for r in range(5))


def test_empty_rank_corner_case():
  # Rank 2 holds only the picked classes 1 and 2: the reference rule picks class 0, which no
  # sample voted for; "cumulative" picks 4 (the top-3 of one sample; ties with 5 -> lower id).
  rankings = [[[1, 5, 2]], [[4, 2, 1]]]
  counts = topk.rank_histograms(_logits_from_rankings(rankings, 8), k=3)
  assert topk.hard_topk_from_ranks(counts, empty_rank="lowest_id").tolist() == [[1, 2, 0]]
  assert topk.hard_topk_from_ranks(counts).tolist() == [[1, 2, 4]]


def test_matches_python_reference_on_random_counts_and_prefixes():
  rng = np.random.default_rng(2)
  n, b, c = 9, 32, 7
  logits = jnp.asarray(np.round(rng.normal(size=(n, b, c))), jnp.float32)
  contrib = topk.rank_contributions(logits, k=4)  # (n, B, 4, C)
  chex.assert_shape(contrib, (n, b, 4, c))
  prefixes = np.array([1, 2, 5, 9])
  # Prefix histograms, accumulated as smoothing accumulates votes: sum of mask * contributions.
  mask = (np.arange(n)[None, :] < prefixes[:, None]).astype(np.int32)  # (P, n)
  pref_counts = jnp.einsum("pn,nbkc->pbkc", mask, contrib)
  np.testing.assert_array_equal(np.asarray(pref_counts[-1]),
                                np.asarray(topk.rank_histograms(logits, k=4)))
  for rule in topk.EMPTY_RANK_RULES:
    got = np.asarray(topk.hard_topk_from_ranks(pref_counts, empty_rank=rule))
    chex.assert_shape(got, (len(prefixes), b, 4))
    for p in range(len(prefixes)):
      for i in range(b):
        assert got[p, i].tolist() == _np_reference(pref_counts[p, i], 4, rule), (rule, p, i)
  assert topk.hard_topk_from_ranks(pref_counts, k=2).shape == (len(prefixes), b, 2)


def test_jits_once_and_bad_input():
  f = chex.assert_max_traces(topk.hard_topk_from_ranks.__wrapped__, n=1)
  g = jax.jit(f)
  x = jnp.zeros((3, 5, 10), jnp.int32)
  g(x)
  g(x + 1)
  with pytest.raises(ValueError, match="empty_rank"):
    topk.hard_topk_from_ranks(x, empty_rank="first")
  with pytest.raises(ValueError, match="k must be"):
    topk.hard_topk_from_ranks(x, k=6)
  with pytest.raises(ValueError, match="k must be"):
    topk.rank_contributions(jnp.zeros((2, 4)), k=5)
  with pytest.raises(ValueError, match=r"\(n, B, C\)"):
    topk.rank_histograms(jnp.zeros((2, 4)))
