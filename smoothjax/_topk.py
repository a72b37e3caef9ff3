"""Rank-by-rank hard-vote top-k: the smoothed top-5 of the reference implementation.

Every Monte-Carlo sample votes with its whole top-k ranking. One histogram per rank counts how
often class ``c`` was ranked ``r`` over the ``n`` samples; the smoothed top-k is then picked
rank by rank: rank 0 is the argmax of the rank-0 histogram (the usual hard vote, ties to the
lowest class id), rank 1 the argmax of the rank-1 histogram among the classes not picked yet,
and so on (Nemcovsky et al.'s reference ``monte_carlo_predict``).

This replaces "the 5 classes with the most hard votes", which at small ``n`` fills the top-5
with classes that got no vote at all, in class-id order: at ``n = 1`` it reports label 0, 1, 2
or 3 as "top-5 correct" whenever they are not the argmax. Rank by rank, ``n = 1`` gives exactly
the base model's top-5.

One corner remains in the reference rule: at rank ``r`` every sample may rank an already picked
class there (e.g. two samples ``(1, 5, 2)`` and ``(4, 2, 1)``: rank 2 holds only the picked
classes 1 and 2), and the argmax then falls on the lowest unpicked class id, voted for or not.
With ``empty_rank="cumulative"`` (the default) such a rank picks instead by the votes of ranks
``0 .. r`` together (how many samples put the class in their top ``r + 1``), which is never zero
for every unpicked class; ``empty_rank="lowest_id"`` keeps the reference's rule. Every other
pick, and all of rank 0, is the same under both.

Counts are prefix sums over samples, like the other votes: the histograms of the first ``n``
samples, for every ``n`` of a one-pass curve, accumulate :func:`rank_contributions` with the
same ``sample < n`` mask.

Example:
  >>> import jax.numpy as jnp
  >>> from smoothjax import _topk as topk
  >>> logits = jnp.asarray([[[0., 3., 1., 2.]], [[0., 1., 3., 2.]], [[3., 2., 1., 0.]]])
  >>> counts = topk.rank_histograms(logits, k=2)       # (n=3, B=1, C=4) -> (B, k, C)
  >>> counts.tolist()
  [[[1, 1, 1, 0], [0, 1, 0, 2]]]
  >>> topk.hard_topk_from_ranks(counts).tolist()       # rank 0: tie -> class 0; rank 1: 3
  [[0, 3]]

References:
  Nemcovsky et al., "Smoothed Inference for Improving Adversarial Robustness", arXiv 1911.07198
    (and its reference implementation's ``monte_carlo_predict``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = [
    "EMPTY_RANK_RULES",
    "rank_contributions",
    "rank_histograms",
    "hard_topk_from_ranks",
    "topk_correct_from_ranks",
]

EMPTY_RANK_RULES = ("cumulative", "lowest_id")


def rank_contributions(logits: jax.Array, *, k: int = 5) -> jax.Array:
  """One sample's top-k ranking as one-hot rows: ``(..., C) -> (..., k, C)`` int32.

  ``out[..., r, c] = 1`` when class ``c`` has rank ``r`` (0 = largest logit; ties -> the lower
  class id ranks first, as in :func:`smoothjax.smoothing.ranks`). Summed over samples these are
  the per-rank histograms.

  Args:
    logits: ``(..., C)`` logits of one sample.
    k: ranks kept (``1 <= k <= C``).

  Returns:
    ``(..., k, C)`` int32 one-hot rows.

  Raises:
    ValueError: ``k`` out of range.
  """
  c = logits.shape[-1]
  if not 1 <= k <= c:
    raise ValueError(f"k must be in [1, {c}] (the number of classes), got {k}")
  # A stable sort, as smoothing.ranks: ties -> lower class id first. (lax.top_k orders -0.0
  # below +0.0, so it would split ties that argmax and smoothing.ranks keep.)
  idx = jnp.argsort(-logits, axis=-1, stable=True)[..., :k]
  return jax.nn.one_hot(idx, c, dtype=jnp.int32)


@functools.partial(jax.jit, static_argnames=("k",))
def rank_histograms(logits: jax.Array, *, k: int = 5) -> jax.Array:
  """Per-rank vote histograms of ``n`` samples: ``(n, B, C) -> (B, k, C)`` int32.

  Counted with one-hot sums (no ``bincount``: it is not shardable under an explicit mesh).

  Args:
    logits: ``(n, B, C)`` logits of ``n`` samples of ``B`` images.
    k: ranks kept.

  Returns:
    ``(B, k, C)``: ``out[b, r, c]`` = how many samples ranked class ``c`` at rank ``r``.
  """
  if logits.ndim != 3:
    raise ValueError(f"logits must have shape (n, B, C), got {logits.shape}")
  return rank_contributions(logits, k=k).sum(0)


@functools.partial(jax.jit, static_argnames=("k", "empty_rank"))
def hard_topk_from_ranks(rank_counts: jax.Array, *, k: int | None = None,
                         empty_rank: str = "cumulative") -> jax.Array:
  """The rank-by-rank smoothed top-k from per-rank histograms (pure, jittable).

  Args:
    rank_counts: ``(..., K, C)`` per-rank histograms (:func:`rank_histograms`, or the prefix
      sums of :func:`rank_contributions` for any ``n``); e.g. ``(B, 5, C)`` or
      ``(P, N, 5, C)`` for every prefix.
    k: picks (default ``K``; at most ``K``).
    empty_rank: ``"cumulative"`` (default) or ``"lowest_id"`` (the reference's rule): what
      picks a rank at which no unpicked class has a vote (see the module docstring).

  Returns:
    ``(..., k)`` int32 classes: column 0 is the hard vote (ties -> lowest class id).

  Raises:
    ValueError: bad shapes, ``k`` or ``empty_rank``.

  Example:
    >>> import jax.numpy as jnp
    >>> counts = jnp.zeros((1, 3, 6), jnp.int32)
    >>> counts = counts.at[0, 0, 4].set(1).at[0, 1, 2].set(1).at[0, 2, 5].set(1)  # n = 1
    >>> hard_topk_from_ranks(counts).tolist()   # the sample's own ranking, not (4, 0, 1)
    [[4, 2, 5]]
  """
  if empty_rank not in EMPTY_RANK_RULES:
    raise ValueError(f"empty_rank must be one of {EMPTY_RANK_RULES}, got {empty_rank!r}")
  if rank_counts.ndim < 2:
    raise ValueError(f"rank_counts must have shape (..., K, C), got {rank_counts.shape}")
  kk, c = rank_counts.shape[-2:]
  k = kk if k is None else k
  if not 1 <= k <= min(kk, c):
    raise ValueError(f"k must be in [1, {min(kk, c)}] (ranks given, classes), got {k}")
  counts = rank_counts
  cum = jnp.cumsum(counts, axis=-2)
  picked = jnp.zeros(counts.shape[:-2] + (c,), bool)
  out = []
  for r in range(k):  # k is small and static: unrolled
    at_r = jnp.where(picked, -1, counts[..., r, :])
    choice = jnp.argmax(at_r, -1)  # first maximum: ties -> lowest class id
    if empty_rank == "cumulative":
      # No unpicked class has a vote at rank r: pick by the votes of ranks 0..r instead.
      by_cum = jnp.argmax(jnp.where(picked, -1, cum[..., r, :]), -1)
      choice = jnp.where(at_r.max(-1) > 0, choice, by_cum)
    out.append(choice)
    picked = picked | jax.nn.one_hot(choice, c, dtype=bool)
  return jnp.stack(out, -1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("k", "empty_rank"))
def topk_correct_from_ranks(rank_counts: jax.Array, labels: jax.Array, *, k: int | None = None,
                            empty_rank: str = "cumulative") -> jax.Array:
  """Whether the label is in the rank-by-rank smoothed top-k.

  Args:
    rank_counts: ``(..., N, K, C)`` per-rank histograms.
    labels: ``(N,)`` integer labels (broadcast against the leading axes).
    k, empty_rank: as in :func:`hard_topk_from_ranks`.

  Returns:
    ``(..., N)`` booleans (``.mean(-1)``: the top-k accuracy).
  """
  top = hard_topk_from_ranks(rank_counts, k=k, empty_rank=empty_rank)
  labels = jnp.broadcast_to(jnp.asarray(labels), top.shape[:-1])  # explicit: no rank promotion
  return jnp.any(top == labels[..., None], axis=-1)
