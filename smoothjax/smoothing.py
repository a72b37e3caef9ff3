"""Smoothed inference: Monte-Carlo sampling of a noisy classifier and its votes.

The smoothed classifier (Nemcovsky et al. 2019, Cohen et al. 2019) is
``argmax_c sum_s v(f(x + eta_s; W_s), c)`` over ``n`` Monte-Carlo samples, for a voting
function ``v``. This module draws the samples and accumulates the votes; the statistics of
Cohen et al.'s PREDICT / CERTIFY live in :mod:`smoothjax.certify`.

Sampling semantics (fixed, so that results never depend on chunking or device count):

* Sample ``s`` (global index ``0 .. n-1``) has the key ``fold_in(key, s)``. Following the
  model's key layout, ``fold_in(fold_in(key, s), 0)`` is the input-noise slot; image ``i`` (its
  *global* dataset index, see ``indices``) gets the input noise
  ``sigma * normal(fold_in(fold_in(fold_in(key, s), 0), i))``.
* Weight / activation noise is drawn once per sample and per *noise block* of
  ``noise_block`` images (default :data:`DEFAULT_NOISE_BLOCK` = 256): image ``i`` of sample
  ``s`` runs the model with the key ``fold_in(fold_in(key, s), 1 + i // noise_block)`` (the
  ``1 +`` keeps it off the input-noise slot 0). Images of one block share a draw, images of
  different blocks get independent draws, so the accuracy of a large evaluation averages over
  many draws (the std over repeats is not inflated by one shared draw) while each forward pass
  still uses a single draw (image chunks never straddle a block). ``noise_block=0`` is the
  reference implementation's granularity: one draw, key ``fold_in(key, s)``, shared by every
  image of the evaluation.
* Results are therefore identical whether images or samples are chunked, sharded over
  devices, or not (hard-vote counts bit for bit; float vote sums up to summation order).
* Models with weight / activation noise run one forward pass per sample on a batch of images
  (weight-noise draws are looped with ``lax.scan``, never ``vmap``-ped: a vmapped kernel
  becomes a grouped convolution, about 10x slower on CPU). Models with input noise only batch
  images x samples into one forward pass.
* Votes are accumulated on the fly for every requested prefix ``n`` of the same ``n_max``
  samples (one pass gives the whole accuracy-vs-n curve, for every vote at once); memory is
  flat in ``n``.
* Samples are sharded over all devices with a one-axis mesh ``("samples",)`` and
  :func:`jax.shard_map`; each device accumulates its own partial votes, summed once per image
  chunk.
* Multi-host (tested with two CPU processes): in every process call
  ``jax.distributed.initialize(coordinator_address=..., num_processes=..., process_id=...)``
  (on CPU first ``jax.config.update("jax_cpu_collectives_implementation", "gloo")``), then
  call :func:`sample_votes` with the same arguments everywhere: :func:`sample_mesh` spans the
  devices of all processes, the inputs are replicated with
  ``jax.make_array_from_process_local_data``, and every process gets the full counts, equal to
  a one-process run (``smoothjax.evaluation`` writes its files from process 0 only).

Top-5: for the float votes, the 5 classes with the largest vote sums. For ``hard`` the
reference implementation's ``monte_carlo_predict`` rule: every sample votes with its own top-5
ranking, one histogram per rank (an integer accumulator of width ``5 C`` per image and prefix,
``VoteCounts.rank_counts``), and the smoothed top-5 is picked rank by rank
(:func:`hard_topk_from_ranks`); at ``n = 1`` it is the base model's top-5. (Ranking classes
by their argmax counts instead puts classes without a vote in class-id order, so an image whose
label got no vote would count as top-5 correct whenever its label is a low id.)

Votes (Nemcovsky et al. 2019): ``hard`` (majority of argmaxes, ties -> lowest class id), ``soft``
(mean softmax, the paper's eq. 13), ``soft_logits`` (mean logits, the reference implementation),
``weighted`` (rank weights ``w(r) = 2^-r``), ``weighted_topK`` (``w(r) = 1[r < K]``), or any
:class:`Vote` / :func:`weighted_vote` with a user weight function.

Example:
  >>> import jax, smoothjax
  >>> from smoothjax import smoothing
  >>> model = smoothjax.models.build_model("resnet20", key=0)
  >>> x = jax.numpy.zeros((2, 32, 32, 3))
  >>> out = smoothing.sample_votes(jax.random.key(0), model, x, sigma=0.12, num_samples=4,
  ...                              prefixes=(1, 2, 4), votes=("hard", "soft"))
  >>> out["hard"].shape  # (prefixes, images, classes)
  (3, 2, 10)

References:
  Nemcovsky et al., "Smoothed Inference for Improving Adversarial Robustness", arXiv 1911.07198.
  Cohen, Rosenfeld, Kolter, "Certified Adversarial Robustness via Randomized Smoothing", ICML 2019.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from smoothjax import models as models_lib
from smoothjax import noise as noise_lib
from smoothjax._topk import (hard_topk_from_ranks, rank_contributions, rank_histograms,
                             topk_correct_from_ranks)
from smoothjax._utils import as_key as _as_key
from smoothjax._utils import pad_rows

LogitsFn = Callable[[jax.Array, jax.Array], jax.Array]  # logits_fn(x, key) -> logits

__all__ = [
    "AXIS",
    "DEFAULT_NOISE_BLOCK",
    "noise_blocks",
    "VOTE_NAMES",
    "DEFAULT_VOTES",
    "Vote",
    "get_vote",
    "hard_vote",
    "soft_vote",
    "soft_logits_vote",
    "weighted_vote",
    "rank_weights_exp2",
    "rank_weights_topk",
    "ranks",
    "VoteCounts",
    "sample_mesh",
    "noisy_logits",
    "split_model",
    "resolve_sigma",
    "sample_votes",
    "sample_counts",
    "vote_predictions",
    "topk_correct",
    "TOPK_RANKS",
    "rank_contributions",
    "rank_histograms",
    "hard_topk_from_ranks",
    "topk_correct_from_ranks",
    "NoisyLogits",
    "PerImageNoiseLogits",
    "SmoothedProbs",
    "smoothed_probs_fn",
    "make_logits_fn",
    "make_smoothed_probs_fn",
]

AXIS = "samples"
DEFAULT_NOISE_BLOCK = 256  # images per weight / activation-noise draw (see the module docstring)
VOTE_NAMES = ("hard", "soft", "soft_logits", "weighted")
DEFAULT_VOTES = VOTE_NAMES
TOPK_RANKS = 5  # ranks of the hard vote's per-rank histograms (its top-5)


# --------------------------------------------------------------------------------------------
# Votes
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Vote:
  """A voting function: per-sample class contributions, summed over samples.

  Attributes:
    name: the vote's name (a key of :func:`sample_votes`'s result).
    fn: ``logits (..., C) -> contributions (..., C)`` for one sample.
    integer: contributions are integers (counts are accumulated exactly in int32).
  """

  name: str
  fn: Callable[[jax.Array], jax.Array]
  integer: bool = False


def _hard(logits):
  # argmax takes the first maximum: ties go to the lowest class id (as torch's argmax does).
  return jax.nn.one_hot(jnp.argmax(logits, -1), logits.shape[-1], dtype=jnp.int32)


def _soft(logits):
  return jax.nn.softmax(logits.astype(jnp.float32), -1)


def _soft_logits(logits):
  return logits.astype(jnp.float32)


hard_vote = Vote("hard", _hard, integer=True)
soft_vote = Vote("soft", _soft)
soft_logits_vote = Vote("soft_logits", _soft_logits)


def ranks(logits: jax.Array) -> jax.Array:
  """Rank of every class (0 = largest logit; ties -> the lower class id ranks first)."""
  order = jnp.argsort(-logits, axis=-1, stable=True)
  return jnp.argsort(order, axis=-1, stable=True)


def rank_weights_exp2(r: jax.Array) -> jax.Array:
  """The reference's rank weights ``w(r) = 2^-r``."""
  return jnp.exp2(-r.astype(jnp.float32))


def rank_weights_topk(k: int) -> Callable[[jax.Array], jax.Array]:
  """Top-k indicator rank weights ``w(r) = 1[r < k]`` (the paper's top-k weighting)."""
  if k < 1:
    raise ValueError(f"top-k weights need k >= 1, got {k}")

  def w(r):
    return (r < k).astype(jnp.float32)

  w.__name__ = f"top{k}"
  return w


def weighted_vote(weights: Callable[[jax.Array], jax.Array] = rank_weights_exp2, *,
                  name: str = "weighted") -> Vote:
  """Rank-weighted vote: each sample gives the class of rank ``r`` the weight ``w(r)``.

  Args:
    weights: ``w``, a function of an integer rank array (0 = most probable) returning weights;
      evaluated once on ``arange(C)``. Default ``2^-r`` (the reference).
    name: the vote's name.
  """

  def fn(logits):
    c = logits.shape[-1]
    w = jnp.asarray(weights(jnp.arange(c)), jnp.float32).reshape(c)
    return w[ranks(logits)]

  return Vote(name, fn)


_WEIGHTED = weighted_vote()
_VOTES = {"hard": hard_vote, "soft": soft_vote, "soft_logits": soft_logits_vote,
          "weighted": _WEIGHTED}


@functools.lru_cache(maxsize=None)
def _topk_vote(k: int) -> Vote:
  return weighted_vote(rank_weights_topk(k), name=f"weighted_top{k}")


def get_vote(vote: str | Vote) -> Vote:
  """Resolves a vote name (``hard``, ``soft``, ``soft_logits``, ``weighted``, ``weighted_topK``).

  Raises:
    ValueError: on an unknown name.
  """
  if isinstance(vote, Vote):
    return vote
  if vote in _VOTES:
    return _VOTES[vote]
  if isinstance(vote, str) and vote.startswith("weighted_top") and vote[12:].isdigit():
    return _topk_vote(int(vote[12:]))
  raise ValueError(f"unknown vote {vote!r}; expected one of {', '.join(VOTE_NAMES)} "
                   "or weighted_topK (e.g. weighted_top3)")


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


class VoteCounts(dict):
  """Accumulated votes: ``{vote name: array (len(prefixes), num_images, num_classes)}``.

  ``self[name][k]`` sums the contributions of samples ``0 .. prefixes[k] - 1``. Hard votes are
  int32 counts; the others float32 sums (divide by ``n`` for means: the argmax is the same).
  ``rank_counts["hard"]`` (when :func:`sample_votes` counted it) holds the hard vote's per-rank
  histograms ``(len(prefixes), num_images, min(5, C), C)``: how many of the first ``n``
  samples ranked class ``c`` at rank ``r`` (``rank_counts["hard"][..., 0, :]`` is
  ``self["hard"]``); the hard vote's :meth:`top5` is picked from them rank by rank.
  """

  def __init__(self, votes: Mapping[str, np.ndarray], prefixes: Sequence[int],
               rank_counts: Mapping[str, np.ndarray] | None = None):
    super().__init__(votes)
    self.prefixes = tuple(int(p) for p in prefixes)
    self.rank_counts = dict(rank_counts or {})

  def predictions(self, vote: str) -> np.ndarray:
    """Smoothed predictions ``(len(prefixes), num_images)`` (ties -> lowest class id)."""
    return vote_predictions(self[vote])

  def accuracy(self, vote: str, labels) -> np.ndarray:
    """Top-1 accuracy per prefix."""
    return (self.predictions(vote) == np.asarray(labels)[None]).mean(-1)

  def top5(self, vote: str, labels) -> np.ndarray:
    """Top-5 accuracy per prefix.

    Float votes: the 5 classes with the largest sums. The hard vote: the rank-by-rank top-5 of
    its per-rank histograms (:func:`hard_topk_from_ranks`), which needs ``rank_counts``.

    Raises:
      ValueError: the hard vote without its per-rank histograms.
    """
    if vote in self.rank_counts:
      return np.asarray(topk_correct_from_ranks(
          jnp.asarray(self.rank_counts[vote]), jnp.asarray(labels), k=None)).mean(-1)
    if np.issubdtype(np.asarray(self[vote]).dtype, np.integer) and vote == "hard":
      raise ValueError("the hard vote's top-5 needs its per-rank histograms (rank_counts; "
                       "sample_votes(..., hard_ranks=True) counts them)")
    return topk_correct(self[vote], labels, k=5).mean(-1)


def vote_predictions(votes) -> np.ndarray:
  """Argmax over the last axis, ties -> lowest class id."""
  return np.argmax(np.asarray(votes), axis=-1)


def topk_correct(votes, labels, *, k: int = 5) -> np.ndarray:
  """Whether the label is among the ``k`` classes with the most votes (ties -> lower class id).

  For float vote sums. The hard vote's top-k is :func:`topk_correct_from_ranks` of its per-rank
  histograms (argmax counts give classes without a vote a class-id order).

  Args:
    votes: ``(..., N, C)`` accumulated votes.
    labels: ``(N,)`` integer labels.
    k: how many classes count.

  Returns:
    Boolean array ``votes.shape[:-1]``.
  """
  votes = np.asarray(votes)
  labels = np.asarray(labels)
  v_y = np.take_along_axis(votes, np.broadcast_to(labels[..., None], votes.shape[:-1] + (1,)),
                           -1)
  cls = np.arange(votes.shape[-1])
  # Classes ranked before the label: strictly more votes, or as many and a lower class id.
  before = (votes > v_y) | ((votes == v_y) & (cls < labels[..., None]))
  return before.sum(-1) < k


# --------------------------------------------------------------------------------------------
# The noisy forward pass
# --------------------------------------------------------------------------------------------


def split_model(model) -> tuple[nnx.GraphDef, nnx.State]:
  """``(graphdef, state)`` of an NNX model (``nnx.split``), or the pair itself."""
  if isinstance(model, tuple):
    return model
  return nnx.split(model)


def resolve_sigma(cfg: models_lib.ModelConfig, sigma, sigma_space) -> tuple[float, str]:
  """``(sigma, sigma_space)``: the model's own input noise when ``sigma`` is ``None``, checked.

  Raises:
    ValueError: an unknown ``sigma_space`` or a negative / non-finite ``sigma``.
  """
  if sigma is None:
    sigma = cfg.noise.input_sigma
    sigma_space = sigma_space or cfg.noise.sigma_space
  sigma_space = sigma_space or "pixel"
  if sigma_space not in ("pixel", "normalized"):
    raise ValueError(f"sigma_space must be 'pixel' or 'normalized', got {sigma_space!r}")
  sigma = float(sigma)
  if not sigma >= 0 or not math.isfinite(sigma):
    raise ValueError(f"sigma must be a finite number >= 0, got {sigma}")
  return sigma, sigma_space


def _input_noise(kin: jax.Array, x: jax.Array, index: jax.Array, scale: jax.Array) -> jax.Array:
  """``x + scale * normal(fold_in(kin, index))`` per image; ``index`` has ``x.shape[:-3]``."""
  flat_idx = jnp.reshape(index, (-1,))
  keys = jax.vmap(lambda i: jax.random.fold_in(kin, i))(flat_idx)
  eta = jax.vmap(lambda k: jax.random.normal(k, x.shape[-3:], x.dtype))(keys)
  return x + noise_lib.channels_last(scale.astype(x.dtype), x.ndim) * eta.reshape(x.shape)


def _forward(model, x: jax.Array, key: jax.Array, model_noise: bool) -> jax.Array:
  """Eval-mode logits of a batch ``x`` (already noisy); ``key`` drives the model's own noise."""
  if model_noise:
    return model(x, key=key, sigma=0, train=False)
  return model(x, noise=False, train=False)


def noisy_logits(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array, key: jax.Array,
                 index: jax.Array, sigma, *, sigma_space: str = "pixel",
                 model_noise: bool | None = None, input_noise: bool = True) -> jax.Array:
  """Logits of one Monte-Carlo sample for a batch of images (pure, jittable).

  Args:
    graphdef, state: the model (``nnx.split``).
    x: ``(B, H, W, 3)`` images in [0, 1].
    key: the sample's key (``fold_in(run_key, s)``); drives the model's weight / activation
      noise; ``fold_in(key, 0)`` folded with each image's ``index`` drives its input noise.
    index: ``(B,)`` integer array: each image's global index.
    sigma: input-noise std in ``sigma_space`` units (a scalar, may be traced).
    sigma_space: ``"pixel"`` or ``"normalized"``.
    model_noise: whether to run the model's own weight / activation noise (default: whether
      the model has any).
    input_noise: ``False`` skips the input noise (for ``sigma == 0``).

  Returns:
    Logits ``(B, num_classes)``.
  """
  model = nnx.merge(graphdef, state)
  cfg = model.config
  if model_noise is None:
    model_noise = cfg.noise.any_model_noise
  if input_noise:
    scale = noise_lib.input_noise_scale(sigma, sigma_space, cfg.std)
    x = _input_noise(jax.random.fold_in(key, 0), x, index, scale)
  return _forward(model, x, key, model_noise)


def graphdef_config(graphdef: nnx.GraphDef, state: nnx.State) -> models_lib.ModelConfig:
  """The :class:`ModelConfig` of a split model."""
  return nnx.merge(graphdef, state).config


# --------------------------------------------------------------------------------------------
# Sharded chunk runner
# --------------------------------------------------------------------------------------------


def sample_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A one-axis mesh ``("samples",)`` over ``devices`` (default: all devices, every host)."""
  devices = list(jax.devices() if devices is None else devices)
  return jax.make_mesh((len(devices),), (AXIS,), devices=devices,
                       axis_types=(jax.sharding.AxisType.Explicit,))


@functools.lru_cache(maxsize=64)
def _chunk_runner(graphdef, mesh, votes: tuple[Vote, ...], *, steps: int, group: int,
                  model_noise: bool, input_noise: bool, sigma_space: str,
                  unroll: int, key_impl: str, blocked: bool = False):
  """Jitted ``(state, x, index, key_data, sigma, start, prefixes, block, acc) -> acc``.

  ``blocked``: the model-noise key of sample ``s`` is ``fold_in(fold_in(key, s), 1 + block)``
  (the chunk's noise block) instead of ``fold_in(key, s)``.

  Each device runs ``steps`` forward passes of ``group`` samples (group > 1 only without model
  noise: images x samples in one batch) for the global samples
  ``start + device * steps * group + j``; ``acc`` holds one partial sum per device.
  """
  per_device = steps * group
  P = jax.sharding.PartitionSpec

  def local(state, x, index, key_data, sigma, start, prefixes, block, acc):
    key = jax.random.wrap_key_data(key_data, impl=key_impl)
    model = nnx.merge(graphdef, state)
    scale = noise_lib.input_noise_scale(sigma, sigma_space, model.config.std)
    base = start + jax.lax.axis_index(AXIS) * per_device

    def body(acc, j):
      s = base + j * group + jnp.arange(group)  # global sample indices of this step
      keys = jax.vmap(lambda si: jax.random.fold_in(key, si))(s)
      if group == 1:
        xn = x
        if input_noise:
          xn = _input_noise(jax.random.fold_in(keys[0], 0), x, index, scale)
        mkey = jax.random.fold_in(keys[0], 1 + block) if blocked else keys[0]
        logits = _forward(model, xn, mkey, model_noise)[None]
      else:
        # No model noise: samples differ only by their input noise; one images x samples batch.
        xg = jnp.broadcast_to(x, (group,) + x.shape)
        xn = jax.vmap(lambda k, xx: _input_noise(jax.random.fold_in(k, 0), xx, index, scale))(
            keys, xg)
        logits = _forward(model, xn.reshape((-1,) + x.shape[1:]), None, False)
        logits = logits.reshape((group, x.shape[0], logits.shape[-1]))
      mask = s[None, :] < prefixes[:, None]  # (K, group)
      new = []
      for v, a in zip(votes, acc):
        c = v.fn(logits)  # (group, B, C)
        m = mask.astype(c.dtype)
        new.append(a + jnp.sum(m[:, :, None, None] * c[None], axis=1)[None])
      return tuple(new), None

    acc, _ = jax.lax.scan(body, acc, jnp.arange(steps), unroll=unroll)
    return acc

  rep = P()
  fn = jax.shard_map(local, mesh=mesh,
                     in_specs=(rep, rep, rep, rep, rep, rep, rep, rep, P(AXIS)),
                     out_specs=P(AXIS), check_vma=False)
  return jax.jit(fn, donate_argnums=(8,))


@functools.lru_cache(maxsize=64)
def _deterministic_runner(graphdef, votes: tuple[Vote, ...]):
  """Jitted ``(state, x, prefixes) -> acc``: no noise at all, every sample is the same."""

  def f(state, x, prefixes):
    logits = models_lib.apply(graphdef, state, x, noise=False)
    out = []
    for v in votes:
      c = v.fn(logits)
      out.append(prefixes.astype(c.dtype)[:, None, None] * c[None])
    return tuple(out)

  return jax.jit(f)


@functools.lru_cache(maxsize=64)
def _reducer(mesh):
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(lambda acc: tuple(a.sum(0) for a in acc), out_shardings=rep)


def _put(mesh, tree):
  """Replicates a pytree of host values on every device of ``mesh`` (also across hosts)."""
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  if sharding.is_fully_addressable:
    return jax.device_put(tree, sharding)
  # Multi-host: every process holds the same value and contributes its own devices' copies.
  return jax.tree.map(lambda v: jax.make_array_from_process_local_data(sharding, np.asarray(v)),
                      tree)


@functools.lru_cache(maxsize=64)
def _zeros(mesh, shape: tuple[int, ...], dtype) -> Callable[[], jax.Array]:
  """Zeros sharded over the samples axis (created on the devices, also across hosts)."""
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))
  return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)


def _fetch(a: jax.Array) -> np.ndarray:
  """Host copy of a replicated array (its local shard: the whole value, also multi-host)."""
  return np.asarray(a.addressable_data(0))


def _check_plan(num_samples, prefixes, votes) -> tuple[list[int], int, tuple[Vote, ...]]:
  """Sorted prefixes, ``n_max`` and the :class:`Vote` objects of a :func:`sample_votes` call."""
  if prefixes is None:
    if num_samples is None:
      raise ValueError("pass num_samples or prefixes")
    prefixes = (num_samples,)
  prefixes = sorted({int(p) for p in prefixes})
  if not prefixes or prefixes[0] < 1:
    raise ValueError(f"sample counts must be positive integers, got {prefixes}")
  n_max = int(num_samples) if num_samples is not None else prefixes[-1]
  if n_max < prefixes[-1]:
    raise ValueError(f"num_samples={n_max} is smaller than the largest prefix {prefixes[-1]}")
  vote_objs = tuple(get_vote(v) for v in votes)
  names = [v.name for v in vote_objs]
  if len(set(names)) != len(names):
    raise ValueError(f"duplicate votes {names}")
  return prefixes, n_max, vote_objs


def _check_noise_block(noise_block) -> int:
  if isinstance(noise_block, bool) or not isinstance(noise_block, (int, np.integer)) \
      or noise_block < 0:
    raise ValueError(f"noise_block must be an integer >= 0 (0: one draw for all images), got "
                     f"{noise_block!r}")
  return int(noise_block)


def noise_blocks(indices, noise_block: int = DEFAULT_NOISE_BLOCK) -> np.ndarray:
  """The weight / activation-noise block of every image: ``index // noise_block``.

  Images with the same block id share their model-noise draws in :func:`sample_votes`;
  ``noise_block=0`` puts every image in block 0 (one shared draw). These are the independent
  units of :func:`smoothjax.stats.accuracy_ci` for a model with weight / activation noise.

  Example:
    >>> noise_blocks(np.arange(6), 4).tolist()
    [0, 0, 0, 0, 1, 1]
  """
  noise_block = _check_noise_block(noise_block)
  idx = np.asarray(indices, np.int64)
  if noise_block == 0:
    return np.zeros(idx.shape, np.int64)
  return idx // noise_block


def _chunk_plan(indices: np.ndarray, chunk: int, blocks: np.ndarray | None
                ) -> list[tuple[np.ndarray, int]]:
  """``[(positions, block)]``: image chunks of at most ``chunk``, none straddling a block."""
  num = len(indices)
  if blocks is None:
    return [(np.arange(lo, min(lo + chunk, num)), 0) for lo in range(0, num, chunk)]
  uniq, first, inverse = np.unique(blocks, return_index=True, return_inverse=True)
  plan = []
  for u in np.argsort(first, kind="stable"):  # blocks in the order of their first image
    pos = np.flatnonzero(inverse == u)
    plan.extend((pos[lo:lo + chunk], int(uniq[u])) for lo in range(0, len(pos), chunk))
  return plan


def sample_votes(key, model, x, *, sigma=None, sigma_space: str | None = None,
                 num_samples: int | None = None, prefixes: Iterable[int] | None = None,
                 votes: Sequence[str | Vote] = DEFAULT_VOTES, batch_size: int = 256,
                 indices=None, mesh: jax.sharding.Mesh | None = None,
                 steps_per_call: int = 4, unroll: int | bool = 1,
                 model_noise: bool | None = None,
                 noise_block: int = DEFAULT_NOISE_BLOCK,
                 progress: Callable[[int], Any] | None = None,
                 hard_ranks: bool = True) -> VoteCounts:
  """Monte-Carlo votes of a smoothed classifier, for every prefix ``n`` in one pass.

  Args:
    key: PRNG key (or int seed) of this evaluation.
    model: an NNX model, or its ``(graphdef, state)``.
    x: ``(N, H, W, 3)`` images in [0, 1] (float, or uint8 0..255).
    sigma: Gaussian input-noise std in ``sigma_space`` units; ``None`` = the model's own
      ``config.noise.input_sigma``.
    sigma_space: ``"pixel"`` (default) or ``"normalized"`` (after per-channel normalisation).
    num_samples: ``n_max`` (default ``max(prefixes)``).
    prefixes: sample counts ``n`` to report (default ``(num_samples,)``); all are prefixes of
      the same ``n_max`` samples.
    votes: vote names or :class:`Vote` objects.
    batch_size: images x samples per forward pass: the image chunk is ``min(N, batch_size)``
      images; without model noise, ``batch_size // chunk`` samples share a forward pass.
    indices: ``(N,)`` global indices of the images (default ``arange(N)``); they select each
      image's input noise, so a subset of a dataset gets the same noise as in the full run.
    mesh: a one-axis ``("samples",)`` mesh (default: :func:`sample_mesh` over all devices).
    steps_per_call: forward passes per device per jitted call (one progress update each).
    unroll: ``lax.scan`` unroll of those steps. Measured on a 2-core CPU (ResNet-20 with CNI-W,
      128-256 images per forward): ``unroll=1`` runs as fast as the unrolled loop and as a
      plain jitted forward (the convolutions dominate; the in-loop slowdown of jax#12868 does
      not show at these batch sizes) and compiles 2-3x faster, hence the default.
    model_noise: run the model's own weight / activation noise (default: when it has any).
    noise_block: images per weight / activation-noise draw: image ``i`` of sample ``s`` uses
      the model key ``fold_in(fold_in(key, s), 1 + i // noise_block)`` (its global index
      ``i``), and image chunks are cut at block boundaries so that every forward pass uses one
      draw. ``0``: one draw ``fold_in(key, s)`` shared by all images (the reference's
      granularity; correlates the images' results, which inflates the spread over repeats at
      small ``n``). Irrelevant without model noise.
    progress: called with the number of image-samples done after each call.
    hard_ranks: with the ``hard`` vote, also count its per-rank histograms
      (``VoteCounts.rank_counts["hard"]``, ``min(5, C)`` times the counts' memory) for its
      top-5; the counts are the same either way.

  Returns:
    :class:`VoteCounts`: ``{vote: (len(prefixes), N, num_classes)}`` numpy arrays.

  Raises:
    ValueError: on a bad sigma, sample count, prefix or vote.
  """
  key = _as_key(key)
  graphdef, state = split_model(model)
  cfg = graphdef_config(graphdef, state)
  sigma, sigma_space = resolve_sigma(cfg, sigma, sigma_space)
  prefixes, n_max, vote_objs = _check_plan(num_samples, prefixes, votes)
  vote_objs, ranks_k, widths = _rank_histogram_votes(vote_objs, cfg.num_classes, hard_ranks)
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if model_noise is None:
    model_noise = cfg.noise.any_model_noise
  noise_block = _check_noise_block(noise_block)

  x, indices = _images_and_indices(x, indices)
  num = x.shape[0]
  c = cfg.num_classes
  pref = np.asarray(prefixes, np.int32)
  out = {v.name: np.zeros((len(pref), num, widths[v.name] * c),
                          np.int32 if v.integer else np.float32) for v in vote_objs}
  if num == 0:
    return _vote_counts(out, prefixes, ranks_k, c)

  chunk = min(num, batch_size)
  deterministic = (sigma == 0) and not model_noise
  if deterministic:
    _deterministic_votes(graphdef, state, vote_objs, x, pref, chunk, out,
                         progress=progress, n_max=n_max)
    return _vote_counts(out, prefixes, ranks_k, c)

  blocked = bool(model_noise) and noise_block > 0
  blocks = noise_blocks(indices, noise_block) if blocked else None
  if blocked:  # a chunk never holds more images than the largest block
    chunk = min(chunk, int(np.max(np.unique(blocks, return_counts=True)[1])))
  plan = _chunk_plan(indices, chunk, blocks)
  mesh = sample_mesh() if mesh is None else mesh
  n_dev = mesh.devices.size
  per_dev_needed = -(-n_max // n_dev)
  group = 1 if model_noise else max(1, min(batch_size // chunk, per_dev_needed))
  steps = max(1, min(steps_per_call, -(-per_dev_needed // group)))
  per_call = n_dev * steps * group
  # (an int: True == 1 as a cache key)
  unroll = steps if unroll is True else max(1, min(int(unroll), steps))
  run = _chunk_runner(graphdef, mesh, vote_objs, steps=steps, group=group,
                      model_noise=bool(model_noise), input_noise=sigma != 0,
                      sigma_space=sigma_space, unroll=unroll,
                      key_impl=str(jax.random.key_impl(key)), blocked=blocked)
  reduce = _reducer(mesh)
  state_d = _put(mesh, state)
  key_d = _put(mesh, jax.random.key_data(key))
  sigma_d = _put(mesh, np.float32(sigma))
  pref_d = _put(mesh, pref)
  for pos, block in plan:
    m = len(pos)
    contiguous = pos[-1] - pos[0] + 1 == m
    sel = slice(int(pos[0]), int(pos[0]) + m) if contiguous else pos
    xb = _put(mesh, pad_rows(np.asarray(x[sel], np.float32), chunk))
    ib = _put(mesh, pad_rows(indices[sel], chunk))
    bd = _put(mesh, np.int32(block))
    acc = tuple(_zeros(mesh, (n_dev, len(pref), chunk, widths[v.name] * c),
                       np.int32 if v.integer else np.float32)() for v in vote_objs)
    for start in range(0, n_max, per_call):
      acc = run(state_d, xb, ib, key_d, sigma_d, _put(mesh, np.int32(start)), pref_d, bd, acc)
      if progress is not None:
        jax.block_until_ready(acc)
        progress(m * min(per_call, n_max - start))
    res = reduce(acc)
    for v, r in zip(vote_objs, res):
      out[v.name][:, sel] = _fetch(r)[:, :m]
  return _vote_counts(out, prefixes, ranks_k, c)


@functools.lru_cache(maxsize=8)
def _hard_ranks_vote(k: int) -> Vote:
  """The hard vote as per-rank one-hot rows, flattened: ``(..., C) -> (..., k * C)``."""

  def fn(logits):
    r = rank_contributions(logits, k=k)
    return r.reshape(r.shape[:-2] + (k * logits.shape[-1],))

  return Vote("hard", fn, integer=True)


def _rank_histogram_votes(vote_objs, num_classes: int, hard_ranks: bool):
  """``(votes, ranks_k, widths)``: the hard vote as per-rank histograms when ``hard_ranks``.

  The hard vote is then accumulated as ``ranks_k`` histograms flattened to width
  ``ranks_k * C``; rank 0's histogram is the hard counts (the same first-maximum tie rule).
  """
  ranks_k = min(TOPK_RANKS, num_classes) if hard_ranks else 0
  if ranks_k:
    vote_objs = tuple(_hard_ranks_vote(ranks_k) if v is hard_vote else v for v in vote_objs)
  ranked = ranks_k and any(v is _hard_ranks_vote(ranks_k) for v in vote_objs)
  ranks_k = ranks_k if ranked else 0
  widths = {v.name: (ranks_k if ranks_k and v is _hard_ranks_vote(ranks_k) else 1)
            for v in vote_objs}
  return vote_objs, ranks_k, widths


def _images_and_indices(x, indices):
  """Images as floats in [0, 1] (uint8 scaled) and their int32 global indices (default 0..N-1)."""
  x = np.asarray(x) if not isinstance(x, jax.Array) else x
  if x.dtype == np.uint8:
    x = np.asarray(x, np.float32) / 255.0
  num = x.shape[0]
  if indices is None:
    indices = np.arange(num, dtype=np.int32)
  indices = np.asarray(indices, np.int32)
  if indices.shape != (num,):
    raise ValueError(f"indices must have shape ({num},), got {indices.shape}")
  return x, indices


def _deterministic_votes(graphdef, state, vote_objs, x, pref, chunk: int, out: dict, *,
                         progress, n_max: int) -> None:
  """A noise-free model without input noise: one forward pass per chunk gives every sample."""
  run = _deterministic_runner(graphdef, vote_objs)
  num = x.shape[0]
  for lo in range(0, num, chunk):
    xb = pad_rows(np.asarray(x[lo:lo + chunk], np.float32), chunk)
    res = run(state, xb, pref)
    hi = min(lo + chunk, num)
    for v, r in zip(vote_objs, res):
      out[v.name][:, lo:hi] = np.asarray(r)[:, :hi - lo]
    if progress is not None:
      progress((hi - lo) * n_max)


def _vote_counts(out: dict, prefixes, ranks_k: int, c: int) -> VoteCounts:
  rank_counts = {}
  if ranks_k and "hard" in out:
    r = out["hard"].reshape(out["hard"].shape[:-1] + (ranks_k, c))
    rank_counts["hard"] = r
    out = dict(out, hard=np.ascontiguousarray(r[..., 0, :]))
  return VoteCounts(out, prefixes, rank_counts)


def sample_counts(key, model, x, *, sigma=None, sigma_space: str | None = None,
                  num_samples: int, batch_size: int = 256, indices=None,
                  mesh: jax.sharding.Mesh | None = None,
                  progress: Callable[[int], Any] | None = None, **kw) -> np.ndarray:
  """Hard-vote counts ``(N, num_classes)`` (int) of ``num_samples`` noisy predictions per image.

  The ``sample_noise`` of Cohen et al.; see :func:`sample_votes` for the arguments.
  """
  votes = sample_votes(key, model, x, sigma=sigma, sigma_space=sigma_space,
                       num_samples=num_samples, votes=("hard",), batch_size=batch_size,
                       indices=indices, mesh=mesh, progress=progress, hard_ranks=False, **kw)
  return votes["hard"][0]


# --------------------------------------------------------------------------------------------
# Pure functions for attacks
# --------------------------------------------------------------------------------------------


@jax.tree_util.register_pytree_node_class
class PerImageNoiseLogits:
  """``logits_fn(x, key) -> logits``: one noisy forward pass, input noise drawn per image.

  ``key`` drives all of the model's noise including the Gaussian input noise at ``sigma``:
  image ``b`` of the batch gets ``normal(fold_in(fold_in(key, 0), b))``, as in
  :func:`sample_votes`, so an image's noise does not depend on the rest of its batch (unlike
  ``smoothjax.attacks.BatchNoiseLogits``, the model's own one draw per batch). A pytree (see
  :func:`noisy_logits`, its function form): the parameters and ``sigma`` are leaves, so jitted
  attacks take them as arguments (no recompilation per checkpoint or sigma, no baked-in
  constants).
  """

  def __init__(self, graphdef, state, sigma, sigma_space: str, model_noise: bool,
               input_noise: bool):
    self.graphdef, self.state, self.sigma = graphdef, state, sigma
    self.sigma_space, self.model_noise, self.input_noise = sigma_space, model_noise, input_noise

  def __call__(self, x: jax.Array, key: jax.Array) -> jax.Array:
    key = _as_key(key)
    idx = jnp.arange(x.shape[0], dtype=jnp.int32)
    return noisy_logits(self.graphdef, self.state, x, key, idx, self.sigma,
                        sigma_space=self.sigma_space, model_noise=self.model_noise,
                        input_noise=self.input_noise)

  @property
  def noiseless(self) -> bool:
    """Neither input nor model noise: every sample is the same forward pass."""
    return not self.input_noise and not self.model_noise

  def tree_flatten(self):
    return (self.state, self.sigma), (self.graphdef, self.sigma_space, self.model_noise,
                                      self.input_noise)

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(aux[0], children[0], children[1], *aux[1:])


@jax.tree_util.register_pytree_node_class
class SmoothedProbs:
  """``probs_fn(x, key) -> (B, C)``: the mean vote of ``num_samples`` samples of ``logits_fn``.

  ``logits_fn(x, key)`` is any noisy model function (:class:`PerImageNoiseLogits`,
  ``smoothjax.attacks.BatchNoiseLogits``, a closure). Sample ``s`` runs
  ``logits_fn(x, fold_in(key, s))``; its votes (``vote.fn`` of its logits, e.g. ``"hard"``: the
  argmax as a one-hot, ``"soft"``: the softmax) are summed over samples in one ``lax.scan`` (the
  image batch inside) and divided by ``num_samples`` (``reduction="sum"``), or, with
  ``reduction="stack"``, stacked ``(num_samples, B, C)`` and averaged (the two differ in the last
  bits of soft votes; :func:`smoothed_probs_fn` stacks, as the attacks always have,
  :func:`make_smoothed_probs_fn` sums, as the evaluation always has). A ``logits_fn`` whose
  ``noiseless`` attribute is true is run once. A pytree: a pytree ``logits_fn`` keeps its array
  leaves (jitted attacks take them as arguments), an opaque one (a closure) is static.
  """

  def __init__(self, logits_fn: LogitsFn, num_samples: int, vote: str | Vote = "hard",
               unroll: int = 1, reduction: str = "sum"):
    if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
      raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    if reduction not in ("sum", "stack"):
      raise ValueError(f"reduction must be 'sum' or 'stack', got {reduction!r}")
    self.logits_fn, self.num_samples, self.vote, self.unroll = (logits_fn, int(num_samples),
                                                                get_vote(vote), unroll)
    self.reduction = reduction

  def __call__(self, x: jax.Array, key: jax.Array) -> jax.Array:
    key = _as_key(key)
    f = self.logits_fn
    if getattr(f, "noiseless", False):  # no noise at all: every sample is the same
      return self.vote.fn(f(x, key)).astype(jnp.float32)
    if self.reduction == "stack":
      def one(_, s):
        return None, self.vote.fn(f(x, jax.random.fold_in(key, s))).astype(jnp.float32)

      _, votes = jax.lax.scan(one, None, jnp.arange(self.num_samples), unroll=self.unroll)
      return jnp.mean(votes, 0)  # (n, B, C): small

    def body(acc, s):
      return acc + self.vote.fn(f(x, jax.random.fold_in(key, s))).astype(jnp.float32), None

    c = jax.eval_shape(f, x, key).shape[-1]
    acc, _ = jax.lax.scan(body, jnp.zeros((x.shape[0], c), jnp.float32),
                          jnp.arange(self.num_samples), unroll=self.unroll)
    return acc / self.num_samples

  def tree_flatten(self):
    return (self.logits_fn,), (self.num_samples, self.vote, self.unroll, self.reduction)

  @classmethod
  def tree_unflatten(cls, aux, children):
    return cls(children[0], *aux)


def smoothed_probs_fn(logits_fn: LogitsFn, *, num_samples: int, vote: str | Vote = "hard",
                      unroll: int = 1) -> SmoothedProbs:
  """The smoothed prediction of ``logits_fn`` (:class:`SmoothedProbs`, the ``num_samples``
  votes stacked, then averaged), e.g. for NAttack."""
  return SmoothedProbs(logits_fn, num_samples, vote, unroll, reduction="stack")


NoisyLogits = PerImageNoiseLogits  # its former name


def make_logits_fn(model, *, sigma=None, sigma_space: str | None = None) -> PerImageNoiseLogits:
  """``logits_fn(x, key) -> logits`` (:class:`PerImageNoiseLogits`): one noisy forward pass.

  Pure and differentiable; ``key`` drives all of the model's noise including the input noise
  at ``sigma`` (in ``sigma_space`` units; default: the model's own input noise).
  """
  graphdef, state = split_model(model)
  cfg = graphdef_config(graphdef, state)
  sigma, sigma_space = resolve_sigma(cfg, sigma, sigma_space)
  return PerImageNoiseLogits(graphdef, state, np.float32(sigma), sigma_space,
                             cfg.noise.any_model_noise, sigma != 0)


def make_smoothed_probs_fn(model, *, sigma=None, sigma_space: str | None = None,
                           num_samples: int, vote: str | Vote = "hard",
                           unroll: int = 1) -> SmoothedProbs:
  """``probs_fn(x, key) -> (B, C)`` vote frequencies of a ``num_samples``-sample prediction.

  For score-based black-box attacks such as NAttack (:class:`SmoothedProbs`, jittable). Sample
  ``s`` uses ``fold_in(key, s)`` as in :func:`sample_votes` (image ``b`` of the batch has index
  ``b``). For ``hard``: the fraction of samples voting each class.
  """
  return SmoothedProbs(make_logits_fn(model, sigma=sigma, sigma_space=sigma_space), num_samples,
                       vote, unroll)
