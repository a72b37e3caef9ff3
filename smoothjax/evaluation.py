"""The evaluation driver behind ``python -m evaluate`` (callable from a notebook too).

One evaluation = a checkpoint, a dataset split, a list of sigmas, a list of sample counts ``n``
and votes; optionally an attack and Cohen et al.'s certification. For every sigma and repeat
(a *point*), the smoothed votes for every ``n`` and every vote come from one Monte-Carlo pass
of ``max(n)`` samples (:func:`smoothjax.smoothing.sample_votes`); adversarial examples are
crafted once per point and voted on for every ``n``.

Workdir layout (README's evaluation section)::

  results.json, results.csv   flat records (one per vote x n x sigma x attack, + certify rows)
  provenance.json             what produced them (smoothjax version / git commit, library
                              versions, devices, command line, time; smoothjax.provenance)
  plots/*.png                 accuracy vs n (per vote), accuracy vs sigma, certified accuracy
  certify.tsv                 per-image CERTIFY output (index, label, predict, radius, correct)
  sanity_checks.json          gradient-masking checks (``--sanity_checks``)
  points/<fingerprint>/       resume state: one JSON file per finished point

Every file is written atomically (temporary file + ``os.replace``), so a killed run leaves only
finished points behind; rerunning the same command skips them (the fingerprint covers every
setting that changes the results: a different command never reuses stale points).

Multi-host (``jax.distributed``): every process runs the same command; process 0 writes the
files, so the workdir must be on a filesystem all processes share (resume reads it everywhere).

Keys: ``root = key(seed)``; repeat ``r`` evaluates with ``fold_in(fold_in(root, 0), r)``
(clean votes: ``fold_in(., 0)``, attack: ``fold_in(., 1)``, votes on adversarial examples:
``fold_in(., 2)``, sanity checks: ``fold_in(., 3)``), the same for every sigma (common random
numbers make curves smooth in sigma); certification uses ``fold_in(root, 1)``. Every vote pass
draws the model's weight / activation noise per block of ``noise_block`` images
(:func:`smoothjax.smoothing.sample_votes`); the attacks draw it once per craft batch.

Statistics: every accuracy record carries a 95% confidence interval (``accuracy_ci_low``,
``accuracy_ci_high``, ``accuracy_ci_method``; :func:`smoothjax.stats.accuracy_ci`, default
block-level Clopper-Pearson with an effective sample size, Korn & Graubard 1998) over the
independent units of :func:`ci_blocks`; the points keep every vote's per-image correctness
(:func:`load_correct`, :func:`paired_difference`).

Example (a notebook)::

  from smoothjax import evaluation
  settings = evaluation.EvalSettings(
      checkpoint="../shared/weights/siam/resnet20_regular_model_best.pth.tar",
      dataset="npz:../shared/data/cifar10_lossless_3k.npz", limit=200,
      sigmas=(0.12,), ns=(1, 4, 16, 64), workdir="runs/eval_siam")
  records = evaluation.run(settings)
"""

from __future__ import annotations

import csv
import dataclasses
import fractions
import hashlib
import io
import json
import math
import pathlib
import sys
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np

from smoothjax import attacks
from smoothjax import certify as certify_lib
from smoothjax import models as models_lib
from smoothjax import noise as noise_lib
from smoothjax import provenance as provenance_lib
from smoothjax import smoothing
from smoothjax import stats
from smoothjax._utils import atomic_write_text, first_line
from smoothjax.attacks import PRESETS as APGD_PRESETS
from smoothjax.attacks._nattack import DEFAULT_CONFIRM as NATTACK_CONFIRM
from smoothjax.attacks._nattack import budget_columns as nattack_budget_columns

__all__ = [
    "EvaluationError",
    "ATTACKS",
    "SPLITS",
    "CERTIFY_RADII",
    "DEFAULT_NS",
    "EvalSettings",
    "parse_float",
    "parse_float_list",
    "parse_int_list",
    "parse_normalization",
    "validate",
    "prepare",
    "run",
    "ci_blocks",
    "load_correct",
    "paired_difference",
]

ATTACKS = ("none", "fgsm", "pgd", "epgd", "smoothadv", "pgd_s", "transfer", "nattack",
           "apgd_ce", "apgd_dlr", "autoattack_rand")
_APGD_ATTACKS = ("apgd_ce", "apgd_dlr", "autoattack_rand")
SPLITS = ("test", "train", "val", "train_full")
NORMS = ("linf", "l2")
CERTIFY_RADII = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0, 1.25, 1.5, 2.0)
DEFAULT_NS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_MULTI_SAMPLE_ATTACKS = ("epgd", "smoothadv", "pgd_s")
RECORD_FIELDS = ("vote", "n", "sigma", "sigma_space", "attack", "eps", "steps",
                 "attack_samples", "accuracy", "accuracy_std", "top5", "repeats", "num_images",
                 "seed", "checkpoint", "accuracy_ci_low", "accuracy_ci_high",
                 "accuracy_ci_method", "noise_block")
CI_LEVEL = 0.95  # level of the accuracy_ci_low / accuracy_ci_high of every record
_VERSION = 2  # bump when the meaning of saved points changes (2: noise blocks, per-image bits)


class EvaluationError(ValueError):
  """Bad evaluation input (flag value, checkpoint, dataset); the message names the problem."""


# ------------------------------------------------------------------------------------ parsing


def parse_float(s: Any, *, name: str = "value") -> float:
  """A float, also written as a fraction (``8/255``).

  Raises:
    EvaluationError: not a finite number.
  """
  if isinstance(s, (int, float)) and not isinstance(s, bool):
    v = float(s)
  else:
    text = str(s).strip()
    try:
      if "/" in text:
        num, den = text.split("/")
        v = float(fractions.Fraction(num.strip()) / fractions.Fraction(den.strip()))
      else:
        v = float(text)
    except (ValueError, ZeroDivisionError):
      raise EvaluationError(f"{name}: {s!r} is not a number (fractions like 8/255 are fine)"
                            ) from None
  if not math.isfinite(v):
    raise EvaluationError(f"{name}: {s!r} is not a finite number")
  return v


def parse_float_list(s: Any, *, name: str = "value") -> tuple[float, ...]:
  """Comma-separated floats (fractions allowed)."""
  if isinstance(s, (list, tuple)):
    items = list(s)
  else:
    items = [p for p in str(s).split(",")]
  if not items or any(str(p).strip() == "" for p in items):
    raise EvaluationError(f"{name}: {s!r} is not a comma-separated list of numbers")
  return tuple(parse_float(p, name=name) for p in items)


def parse_int_list(s: Any, *, name: str = "value") -> tuple[int, ...]:
  """Comma-separated positive integers.

  Raises:
    EvaluationError: an item is not a positive integer.
  """
  items = list(s) if isinstance(s, (list, tuple)) else str(s).split(",")
  out = []
  for p in items:
    text = str(p).strip()
    try:
      v = int(text)
    except ValueError:
      v = None
    if v is None or v < 1:
      raise EvaluationError(f"{name}: {s!r} must be a comma-separated list of positive integers "
                            f"({text!r} is not one)")
    out.append(v)
  if not out:
    raise EvaluationError(f"{name}: empty list")
  return tuple(out)


def parse_normalization(spec: str | None):
  """``auto`` (-> ``"auto"``) or ``MEAN_R,MEAN_G,MEAN_B,STD_R,STD_G,STD_B`` -> (mean, std)."""
  if spec is None or (isinstance(spec, str) and spec.strip().lower() == "auto"):
    return "auto"
  if isinstance(spec, str) and spec.strip().lower() in ("cohen", "smoothadv"):
    return spec.strip().lower()  # Cohen-format files' families (checkpoints.model_from_cohen)
  if isinstance(spec, str) and spec.strip().lower() in ("reference", "akamaster"):
    return {"reference": models_lib.REFERENCE_NORMALIZATION,
            "akamaster": models_lib.AKAMASTER_NORMALIZATION}[spec.strip().lower()]
  if isinstance(spec, (tuple, list)) and len(spec) == 2:
    values = [float(v) for part in spec for v in part]
  else:
    try:
      values = [parse_float(v, name="normalization") for v in str(spec).split(",")]
    except EvaluationError:
      values = []
  if len(values) != 6 or min(values[3:]) <= 0:
    raise EvaluationError(
        f"normalization: {spec!r} must be 'auto' or six numbers MEAN_R,MEAN_G,MEAN_B,STD_R,"
        "STD_G,STD_B with positive stds")
  return tuple(values[:3]), tuple(values[3:])


# ----------------------------------------------------------------------------------- settings


@dataclasses.dataclass
class EvalSettings:
  """Everything one evaluation needs (the flags of ``python -m evaluate``).

  Attributes:
    checkpoint: PyTorch file, train workdir or orbax step directory.
    arch, noise, normalization, step: passed to :func:`smoothjax.checkpoints.load_model`.
    dataset, data_dir, split, limit: the images (:func:`smoothjax.data.load_dataset`); the
      first ``limit`` images of ``split``.
    sigmas, sigma_space: Gaussian input-noise stds and their unit (``pixel`` / ``normalized``).
    ns: sample counts (all from one pass of ``max(ns)``).
    votes: vote names (:func:`smoothjax.smoothing.get_vote`).
    repeats, seed: independent evaluations (mean / std) and the base seed.
    batch_size: images x samples per forward pass.
    noise_block: images per weight / activation-noise draw (image ``i`` uses the draw of block
      ``i // noise_block``; ``0``: one draw shared by all images, the reference's granularity);
      see :func:`smoothjax.smoothing.sample_votes`. The blocks are also the independent units
      of the records' confidence intervals.
    certify, n0, certify_n, alpha: Cohen et al.'s CERTIFY.
    attack, eps, norm, steps, step_size, attack_samples, restarts, source_checkpoint,
      sanity_checks: the attack (``smoothjax.attacks``).
    nattack_population, nattack_iterations: NAttack's budget. The defaults (100 x 100) are
      CPU-sized, far below Li et al.'s 300 x 500 (the defaults of
      :func:`smoothjax.attacks.nattack`); every NAttack record says which it ran
      (``nattack_li2019_budget``).
    nattack_n: Monte-Carlo samples of each NAttack query (one smoothed prediction); ``0``: the
      smallest ``n`` of ``ns`` that is >= 8, else the largest (also the ``n`` of
      ``autoattack_rand``'s smoothed judge). The attacked images are then scored like the
      clean ones, for every ``n``, with fresh noise.
    nattack_confirm: fresh re-queries that must all misclassify a candidate before NAttack
      counts it a success (:func:`smoothjax.attacks.nattack`'s ``confirm``; ``0``: the first
      misclassified query stops, as before).
    apgd_preset: the budget of the APGD attacks (``smoothjax.APGD_PRESETS``: ``cpu`` 20
      steps x 4 EOT draws, ``standard`` 100 steps x 1 draw, ``rand`` AutoAttack's
      ``version='rand'``, 100 steps, 1 restart, 20 draws); it sets ``steps`` and
      ``attack_samples`` when they are not given.
    fixed_noise: SmoothAdv's fixed noise draws across steps (Salman et al.); ``None``: on for
      ``attack="smoothadv"`` (``pgd_s`` is the fresh-draw variant).
    final_draws: R independent evaluations of the attacked images (independent keys);
      ``accuracy`` is their mean and ``accuracy_all_draws`` the conservative score (an image
      counts only if the smoothed classifier is right in all R).
    sanity_nattack: add the NAttack-vs-white-box comparison to the sanity checks (costly:
      population x iterations x n forward passes per image; always on for ``attack="nattack"``).
    workdir: output directory.
    progress: show tqdm progress bars on stderr.
  """

  checkpoint: str = ""
  arch: str | None = None
  noise: str | None = None
  normalization: Any = "auto"
  step: int | None = None
  dataset: str = "cifar10"
  data_dir: str | None = None
  split: str = "test"
  limit: int | None = None
  sigmas: Sequence[float] = (0.0,)
  sigma_space: str = "pixel"
  ns: Sequence[int] = DEFAULT_NS
  votes: Sequence[str] = smoothing.VOTE_NAMES
  repeats: int = 1
  seed: int = 0
  batch_size: int = 256
  noise_block: int = smoothing.DEFAULT_NOISE_BLOCK
  certify: bool = False
  n0: int = 100
  certify_n: int = 100_000
  alpha: float = 0.001
  attack: str = "none"
  eps: float = 8 / 255
  norm: str = "linf"
  steps: int | None = None
  step_size: float | None = None
  attack_samples: int | None = None
  restarts: int = 1
  source_checkpoint: str | None = None
  nattack_population: int = 100
  nattack_iterations: int = 100
  nattack_n: int = 0
  nattack_confirm: int = NATTACK_CONFIRM
  sanity_checks: bool = False
  sanity_nattack: bool = False
  apgd_preset: str = "cpu"
  fixed_noise: bool | None = None
  final_draws: int = 1
  workdir: str = "runs/evaluate"
  progress: bool = True


def validate(s: EvalSettings) -> EvalSettings:
  """Checks and normalises the settings without touching the disk (except reading nothing).

  Returns:
    A normalised copy (sorted unique ``ns`` and ``sigmas``, resolved attack defaults).

  Raises:
    EvaluationError: the first bad setting, named.
  """
  s = dataclasses.replace(s)
  if not s.checkpoint:
    raise EvaluationError("checkpoint: required (--checkpoint=PATH)")
  if s.arch is not None and s.arch not in models_lib.ARCHS:
    raise EvaluationError(f"arch: unknown architecture {s.arch!r}; expected one of "
                          f"{', '.join(models_lib.ARCHS)}")
  if s.noise is not None:
    try:
      noise_lib.parse_noise(s.noise)
    except ValueError as e:
      raise EvaluationError(f"noise: {e}") from None
  s.normalization = parse_normalization(s.normalization)
  sig = parse_float_list(s.sigmas, name="sigma")
  bad = [v for v in sig if v < 0]
  if bad:
    raise EvaluationError(f"sigma: must be >= 0, got {bad[0]:g}")
  s.sigmas = tuple(sorted(set(sig)))
  if s.sigma_space not in ("pixel", "normalized"):
    raise EvaluationError(f"sigma_space: {s.sigma_space!r} must be 'pixel' or 'normalized'")
  s.ns = tuple(sorted(set(parse_int_list(s.ns, name="n"))))
  votes = [v.strip() for v in s.votes] if not isinstance(s.votes, str) else [
      v.strip() for v in s.votes.split(",")]
  for v in votes:
    try:
      smoothing.get_vote(v)
    except ValueError as e:
      raise EvaluationError(f"vote: {e}") from None
  if not votes or len(set(votes)) != len(votes):
    raise EvaluationError(f"vote: {s.votes!r} must list distinct votes")
  s.votes = tuple(votes)
  for name in ("repeats", "batch_size", "n0", "certify_n", "restarts", "nattack_population",
               "nattack_iterations", "final_draws"):
    v = getattr(s, name)
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
      raise EvaluationError(f"{name}: must be a positive integer, got {v!r}")
  for name, zero in (("noise_block", "one draw for all images"),
                     ("nattack_n", "the smallest --n >= 8"), ("nattack_confirm", "none")):
    v = getattr(s, name)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
      raise EvaluationError(f"{name}: must be an integer >= 0 (0: {zero}), got {v!r}")
  if s.limit is not None and (not isinstance(s.limit, int) or s.limit < 1):
    raise EvaluationError(f"limit: must be a positive integer, got {s.limit!r}")
  if s.step is not None and (not isinstance(s.step, int) or s.step < 0):
    raise EvaluationError(f"step: must be a non-negative integer, got {s.step!r}")
  if not isinstance(s.seed, int):
    raise EvaluationError(f"seed: must be an integer, got {s.seed!r}")
  if s.split not in SPLITS:
    raise EvaluationError(f"split: unknown split {s.split!r}; expected one of {', '.join(SPLITS)}")
  s.alpha = parse_float(s.alpha, name="alpha")
  if not 0 < s.alpha < 1:
    raise EvaluationError(f"alpha: must be in (0, 1), got {s.alpha:g}")
  if s.certify and not any(v > 0 for v in s.sigmas):
    raise EvaluationError("certify: needs Gaussian input noise, i.e. at least one sigma > 0")
  if s.attack not in ATTACKS:
    raise EvaluationError(f"attack: unknown attack {s.attack!r}; expected one of "
                          f"{', '.join(ATTACKS)}")
  s.eps = parse_float(s.eps, name="eps")
  if s.eps < 0:
    raise EvaluationError(f"eps: must be >= 0, got {s.eps:g}")
  if s.norm not in NORMS:
    raise EvaluationError(f"norm: {s.norm!r} must be linf or l2")
  if s.step_size is not None:
    s.step_size = parse_float(s.step_size, name="step_size")
    if s.step_size <= 0:
      raise EvaluationError(f"step_size: must be > 0, got {s.step_size:g}")
  if s.apgd_preset not in APGD_PRESETS:
    raise EvaluationError(f"apgd_preset: {s.apgd_preset!r} must be one of "
                          f"{', '.join(APGD_PRESETS)}")
  if s.attack in _APGD_ATTACKS:
    preset = APGD_PRESETS[s.apgd_preset]
    if s.steps is None:
      s.steps = preset["steps"]
    if s.attack_samples is None:
      s.attack_samples = preset["eot_samples"]
  if s.fixed_noise is None:
    s.fixed_noise = s.attack == "smoothadv"
  if not isinstance(s.fixed_noise, bool):
    raise EvaluationError(f"fixed_noise: must be true or false, got {s.fixed_noise!r}")
  if s.fixed_noise and s.attack != "smoothadv":
    raise EvaluationError("fixed_noise: only --attack=smoothadv keeps its noise draws fixed")
  if s.steps is None:
    s.steps = 1 if s.attack == "fgsm" else 7
  if not isinstance(s.steps, int) or s.steps < 1:
    raise EvaluationError(f"steps: must be a positive integer, got {s.steps!r}")
  if s.attack_samples is None:
    s.attack_samples = 8 if s.attack in _MULTI_SAMPLE_ATTACKS else 1
  if not isinstance(s.attack_samples, int) or s.attack_samples < 1:
    raise EvaluationError(f"attack_samples: must be a positive integer, got {s.attack_samples!r}")
  if s.attack == "transfer" and not s.source_checkpoint:
    raise EvaluationError("source_checkpoint: --attack=transfer needs --source_checkpoint=PATH")
  if s.sanity_checks and s.attack == "none":
    raise EvaluationError("sanity_checks: needs an attack (--attack=pgd, ...)")
  if s.source_checkpoint and s.attack != "transfer" and not s.sanity_checks:
    raise EvaluationError("source_checkpoint: used only by --attack=transfer and by "
                          "--sanity_checks (its transfer check); neither is on")
  if s.sanity_nattack and not s.sanity_checks:
    raise EvaluationError("sanity_nattack: needs --sanity_checks")
  if not s.workdir:
    raise EvaluationError("workdir: required")
  return s


def _nattack_samples(s: EvalSettings) -> int:
  """Samples per NAttack query: ``nattack_n``, or (0) the smallest n >= 8, else the largest."""
  if s.nattack_n:
    return s.nattack_n
  big = [n for n in s.ns if n >= 8]
  return min(big) if big else max(s.ns)


def _nattack_columns(s: EvalSettings) -> dict:
  """The NAttack settings of its records: budget, query n, confirmation, Li et al.'s or not."""
  return dict(nattack_budget_columns(s.nattack_population, s.nattack_iterations,
                                     s.nattack_confirm), nattack_n=_nattack_samples(s))


def _attack_columns(s: EvalSettings) -> dict:
  """The ``attack``, ``eps``, ``steps``, ``attack_samples`` of adversarial rows."""
  if s.attack == "nattack":
    steps, samples = s.nattack_iterations, _nattack_samples(s)
  elif s.attack == "fgsm":
    steps, samples = 1, s.attack_samples
  else:
    steps, samples = s.steps, s.attack_samples
  cols = {"attack": s.attack, "eps": s.eps, "steps": steps, "attack_samples": samples,
          "restarts": s.restarts, "final_draws": s.final_draws}
  if s.attack in _APGD_ATTACKS:
    cols.update(apgd_preset=s.apgd_preset, eot_samples=samples)
  if s.attack == "smoothadv":
    cols["fixed_noise"] = s.fixed_noise
  if s.attack == "nattack":
    cols.update(_nattack_columns(s))
  return cols


# ----------------------------------------------------------------------------- prepared state


@dataclasses.dataclass
class Prepared:
  """Validated settings with the model, source model, images and labels loaded."""

  settings: EvalSettings
  model: Any
  info: dict
  x: np.ndarray
  y: np.ndarray
  num_classes: int
  source_model: Any = None
  fingerprint: str = ""


def _load_model(path: str, s: EvalSettings, what: str):
  from smoothjax import checkpoints  # pylint: disable=import-outside-toplevel
  try:
    return checkpoints.load_model(path, arch=s.arch, noise=s.noise,
                                  normalization=s.normalization, step=s.step)
  except (ValueError, OSError) as e:
    raise EvaluationError(f"{what}: {first_line(e)}") from None


def prepare(settings: EvalSettings) -> Prepared:
  """Validates everything and loads the checkpoint(s) and the images; writes nothing.

  Raises:
    EvaluationError: any bad setting, missing / bad checkpoint, unknown / bad dataset.
  """
  s = validate(settings)
  model, info = _load_model(s.checkpoint, s, "checkpoint")
  source = None  # the transfer attack's source, also the sanity checks' transfer source
  if s.source_checkpoint:
    source, _ = _load_model(s.source_checkpoint, dataclasses.replace(s, step=None),
                            "source_checkpoint")
  from smoothjax import data as data_lib  # pylint: disable=import-outside-toplevel
  try:
    ds = data_lib.load_dataset(s.dataset, data_dir=s.data_dir)
    if isinstance(ds, data_lib.LazySource):
      x, y = _load_lazy(ds, s)
    else:
      x, y = ds.split(s.split)
  except (ValueError, OSError) as e:
    raise EvaluationError(f"dataset: {first_line(e)}") from None
  if s.limit is not None:
    x, y = x[:s.limit], y[:s.limit]
  num_classes = model.config.num_classes
  if len(y) and int(np.max(y)) >= num_classes:
    raise EvaluationError(f"dataset: labels go up to {int(np.max(y))}, but the model has "
                          f"{num_classes} classes")
  if x.ndim != 4 or x.shape[-1] != 3:
    raise EvaluationError(f"dataset: expected NHWC RGB images, got shape {x.shape}")
  p = Prepared(s, model, info, x, y, num_classes, source)
  p.fingerprint = _fingerprint(p)
  return p


_LAZY_MAX_BYTES = 2 << 30  # decoded uint8 images an evaluation may hold at once


def _load_lazy(source, s: EvalSettings) -> tuple[np.ndarray, np.ndarray]:
  """The first ``limit`` images of an ImageNet-size source (its spec names the split), decoded.

  An evaluation holds its images in memory; a whole ImageNet validation set (about 7.5 GB
  decoded) does not fit, so past 2 GiB this asks for ``--limit`` (or, for certification of a
  whole set, :func:`smoothjax.data.certify_source`, which decodes batch by batch).
  """
  if s.split != EvalSettings.split:
    raise EvaluationError(f"split: an ImageNet-size source takes its split from the dataset spec "
                          f"(imagenet_folder:PATH::SPLIT or imagenet:SPLIT), got --split={s.split}")
  n = len(source) if s.limit is None else min(s.limit, len(source))
  per_image = source.crop * source.crop * 3
  if n * per_image > _LAZY_MAX_BYTES:
    raise EvaluationError(
        f"dataset: {n} images of {source.crop}x{source.crop} would take "
        f"{n * per_image / 2**30:.1f} GiB decoded; pass --limit (at most "
        f"{_LAZY_MAX_BYTES // per_image}) or certify the whole set with "
        "smoothjax.data.certify_source, which decodes batch by batch")
  return source.load(np.arange(n))


def _runs_nattack(s: EvalSettings) -> bool:
  return s.attack == "nattack" or (s.sanity_checks and s.sanity_nattack)


def _state_digest(model) -> str | None:
  """SHA-256 prefix of a model's parameters and statistics (its ``nnx.State`` leaves, in order).

  The model's identity in the fingerprint: the same weights loaded from another path, a fresh
  clone or a copied checkpoint (new mtime) resume the same points; changed weights never do.
  """
  if model is None:
    return None
  h = hashlib.sha256()
  for leaf in jax.tree_util.tree_leaves(smoothing.split_model(model)[1]):
    if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    a = np.ascontiguousarray(np.asarray(leaf))
    h.update(f"{a.dtype}{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


def _fingerprint(p: Prepared) -> str:
  s = p.settings
  d = {
      "version": _VERSION, "model": _state_digest(p.model),
      "source_model": _state_digest(p.source_model), "step": p.info.get("step"),
      "model_config": p.info.get("model_config"), "dataset": s.dataset, "split": s.split,
      "num_images": int(len(p.y)),
      "images": hashlib.sha256(np.ascontiguousarray(p.x).tobytes()).hexdigest()[:16],
      "sigma_space": s.sigma_space, "ns": list(s.ns), "votes": list(s.votes), "seed": s.seed,
      "noise_block": s.noise_block,
      "attack": [s.attack, s.eps, s.norm, s.steps, s.step_size, s.attack_samples, s.restarts,
                 s.nattack_population, s.nattack_iterations]
      + ([s.apgd_preset] if s.attack in _APGD_ATTACKS else [])
      + ([s.fixed_noise] if s.attack == "smoothadv" else [])
      + ([s.final_draws] if s.final_draws != 1 else [])
      + ([s.nattack_n] if s.nattack_n else [])
      + ([s.nattack_confirm] if _runs_nattack(s) else [])
      if s.attack != "none" else "none",
      "sanity_checks": [s.sanity_checks, s.sanity_nattack],
  }
  return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------- output


def _read_json(path: pathlib.Path):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


class _Progress:
  """tqdm bar over image-samples, showing images done."""

  def __init__(self, enabled: bool, num_images: int, num_samples: int, desc: str):
    self.bar = None
    self.n = max(num_samples, 1)
    self.num_images = num_images
    self.done = 0
    if enabled:
      from tqdm import tqdm  # pylint: disable=import-outside-toplevel
      self.bar = tqdm(total=num_images * num_samples, desc=desc, unit="sample",
                      unit_scale=True, file=sys.stderr, leave=False, dynamic_ncols=True)

  @property
  def callback(self) -> "_Progress | None":
    """``self`` when a bar is shown, else ``None`` (sampling then never waits for the device)."""
    return self if self.bar is not None else None

  def __call__(self, k: int) -> None:
    self.done += k
    if self.bar is not None:
      self.bar.set_postfix_str(f"images {min(self.done // self.n, self.num_images)}/"
                               f"{self.num_images}", refresh=False)
      self.bar.update(k)

  def close(self):
    if self.bar is not None:
      self.bar.close()


def _is_writer() -> bool:
  return jax.process_index() == 0


# ------------------------------------------------------------------------------------ running


def _vote_summary(votes: smoothing.VoteCounts, y: np.ndarray) -> dict:
  """Per vote: accuracy and top-5 per prefix, and the per-image correctness ``(K, N)`` bits."""
  out = {}
  for name in votes:
    correct = votes.predictions(name) == np.asarray(y)[None]
    out[name] = {"accuracy": correct.mean(-1).tolist(), "top5": votes.top5(name, y).tolist(),
                 "correct": stats.encode_bits(correct)}
  return out


def _draws_summary(draws: Sequence[smoothing.VoteCounts], y: np.ndarray) -> dict:
  """Scores of R independent evaluations of the same (attacked) images.

  ``accuracy`` and ``top5`` are the means over the draws; ``accuracy_all_draws`` counts an
  image as correct only if the smoothed prediction is right in every draw (a conservative
  score for randomized defenses: one lucky draw does not make an image robust). ``correct``
  keeps the first draw's per-image bits (as :func:`_vote_summary`) for the records' intervals
  and :func:`load_correct`.
  """
  y = np.asarray(y)
  out = {}
  for name in draws[0]:
    correct = np.stack([d.predictions(name) == y[None] for d in draws])  # (R, prefixes, N)
    out[name] = {"accuracy": correct.mean((0, 2)).tolist(),
                 "top5": np.mean([d.top5(name, y) for d in draws], 0).tolist(),
                 "accuracy_all_draws": correct.all(0).mean(-1).tolist(),
                 "correct": stats.encode_bits(correct[0])}
  return out


def _eval_point(p: Prepared, sigma: float, r: int, log: Callable[[str], None]) -> dict:
  s = p.settings
  root = jax.random.key(s.seed)
  rep = jax.random.fold_in(jax.random.fold_in(root, 0), r)
  x = np.asarray(p.x, np.float32) / np.float32(255)
  idx = np.arange(len(x), dtype=np.int32)
  n_max = max(s.ns)
  common = dict(sigma=sigma, sigma_space=s.sigma_space, prefixes=s.ns, votes=s.votes,
                batch_size=s.batch_size, indices=idx, noise_block=s.noise_block)

  def votes(key_index, images, label, draw=0):
    bar = _Progress(s.progress, len(images), n_max, f"σ={sigma:g} r{r} {label}")
    # Draw 0 of the attacked images uses fold_in(rep, 2); the extra final draws j >= 1 use
    # fold_in(fold_in(rep, 4), j), independent of it and of each other.
    k = (jax.random.fold_in(rep, key_index) if draw == 0
         else jax.random.fold_in(jax.random.fold_in(rep, 4), draw))
    try:
      return smoothing.sample_votes(k, p.model, images, progress=bar.callback, **common)
    finally:
      bar.close()

  t0 = time.time()
  clean = votes(0, x, "clean")
  out = {"sigma": sigma, "repeat": r, "clean": _vote_summary(clean, p.y),
         "seconds": {"clean": time.time() - t0}}
  if s.attack == "none":
    return out
  t0 = time.time()
  logits_fn = smoothing.make_logits_fn(p.model, sigma=sigma, sigma_space=s.sigma_space)
  source_fn = (smoothing.make_logits_fn(p.source_model, sigma=sigma, sigma_space=s.sigma_space)
               if p.source_model is not None else None)
  probs_fn = smoothing.make_smoothed_probs_fn(
      p.model, sigma=sigma, sigma_space=s.sigma_space, num_samples=_nattack_samples(s))
  log(f"crafting {s.attack} examples (σ={sigma:g}, repeat {r}) on {len(x)} images")
  extra_kw = {"fixed_noise": True} if s.fixed_noise else {}
  if s.attack == "nattack":
    extra_kw["confirm"] = s.nattack_confirm
  x_adv = attacks.craft(
      s.attack, logits_fn, x, p.y, key=jax.random.fold_in(rep, 1), eps=s.eps, norm=s.norm,
      steps=s.steps, step_size=s.step_size, samples=s.attack_samples, restarts=s.restarts,
      source_logits_fn=source_fn, smoothed_probs_fn=probs_fn, population=s.nattack_population,
      iterations=s.nattack_iterations, batch_size=s.batch_size, **extra_kw)
  x_adv = np.asarray(x_adv, np.float32)
  out["seconds"]["craft"] = time.time() - t0
  t0 = time.time()
  draws = [votes(2, x_adv, s.attack if j == 0 else f"{s.attack} draw {j + 1}", draw=j)
           for j in range(s.final_draws)]
  out["adv"] = _draws_summary(draws, p.y)
  out["seconds"]["adv"] = time.time() - t0
  if s.sanity_checks and r == 0:
    first = s.votes[0]

    def accuracy_fn(xa):
      v = smoothing.sample_votes(jax.random.fold_in(rep, 2), p.model, np.asarray(xa),
                                 sigma=sigma, sigma_space=s.sigma_space, prefixes=(n_max,),
                                 votes=(first,), batch_size=s.batch_size, indices=idx,
                                 noise_block=s.noise_block, hard_ranks=False)
      return float(v.accuracy(first, p.y)[0])

    extra = {"norm": s.norm, "batch_size": s.batch_size, "warn": False,
             "nattack_population": s.nattack_population,
             "nattack_iterations": s.nattack_iterations, "nattack_confirm": s.nattack_confirm}
    checks = attacks.run_sanity_checks(
        logits_fn, x, p.y, key=jax.random.fold_in(rep, 3), eps=s.eps, steps=s.steps,
        step_size=s.step_size, accuracy_fn=accuracy_fn, source_logits_fn=source_fn,
        smoothed_probs_fn=probs_fn if _runs_nattack(s) else None, **extra)
    out["sanity_checks"] = [
        dict(c, sigma=sigma, **(_nattack_columns(s) if "nattack_population" in c else {}))
        for c in checks]
  return out


def _certify_point(p: Prepared, sigma: float) -> dict:
  s = p.settings
  key = jax.random.fold_in(jax.random.key(s.seed), 1)
  x = np.asarray(p.x, np.float32) / np.float32(255)
  bar = _Progress(s.progress, len(x), s.n0 + s.certify_n, f"σ={sigma:g} certify")
  t0 = time.time()
  try:
    res = certify_lib.certify(key, p.model, x, sigma=sigma, sigma_space=s.sigma_space,
                              n0=s.n0, num_samples=s.certify_n, alpha=s.alpha,
                              batch_size=s.batch_size, indices=np.arange(len(x)),
                              noise_block=s.noise_block, progress=bar.callback)
  finally:
    bar.close()
  dt = (time.time() - t0) / max(len(x), 1)
  return {"sigma": sigma, "predict": res.predict.tolist(), "radius": res.radius.tolist(),
          "label": np.asarray(p.y).tolist(), "correct": res.correct(p.y).astype(int).tolist(),
          "p_a": res.p_a.tolist(), "seconds_per_image": dt}


def _mean_std(values) -> tuple[float, float]:
  a = np.asarray(values, np.float64)
  # std over repeats: the sample standard deviation (ddof=1), 0 for a single repeat.
  return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def _has_model_noise(model) -> bool:
  cfg = getattr(model, "config", None)
  return bool(getattr(getattr(cfg, "noise", None), "any_model_noise", False))


def _craft_batch_size(s: EvalSettings, num: int) -> int:
  """Images per :func:`smoothjax.attacks.craft` call (one noise draw each), as craft cuts them."""
  bs = s.batch_size
  if s.attack == "nattack":
    bs = max(1, min(s.batch_size, 8192 // (s.nattack_population + 1)))
  return max(1, min(bs, num))


def ci_blocks(p: Prepared, kind: str = "clean") -> np.ndarray:
  """The independent units of an evaluation's confidence intervals: a block id per image.

  Images share weight / activation-noise draws within a noise block
  (:func:`smoothjax.smoothing.noise_blocks` of ``settings.noise_block``); adversarial examples
  (``kind="adv"``) also share the draws of their craft batch, so those blocks are merged with
  the attack's batches (:func:`smoothjax.stats.merge_blocks`). A model with input noise only
  has independent images (a block per image).
  """
  s = p.settings
  idx = np.arange(len(p.y))
  noisy = _has_model_noise(p.model)
  blocks = smoothing.noise_blocks(idx, s.noise_block) if noisy else idx
  if kind == "adv" and (noisy or (s.attack == "transfer"
                                  and _has_model_noise(p.source_model))):
    blocks = stats.merge_blocks(blocks, idx // _craft_batch_size(s, len(idx)))
  return blocks


def _ci(correct, blocks) -> dict:
  """``accuracy_ci_low``, ``accuracy_ci_high``, ``accuracy_ci_method`` of ``(R, N)`` bits."""
  if correct is None or len(blocks) == 0:
    return {"accuracy_ci_low": None, "accuracy_ci_high": None,
            "accuracy_ci_method": "unavailable"}
  return stats.accuracy_ci(correct, block_ids=blocks, level=CI_LEVEL).as_record("accuracy")


def _correct_bits(reps: list[dict], vote: str) -> np.ndarray | None:
  """``(R, K, N)`` per-image correctness of a vote over repeats (None: points without bits)."""
  if not all("correct" in rp[vote] for rp in reps):
    return None
  return np.stack([stats.decode_bits(rp[vote]["correct"]) for rp in reps])


def _provenance_columns(prov: dict | None) -> dict:
  if not prov:
    return {}
  info = prov.get("smoothjax", {})
  return {"smoothjax_version": info.get("version"), "git_commit": info.get("commit")}


def _records(p: Prepared, points: dict, certs: dict, prov: dict | None = None) -> list[dict]:
  s = p.settings
  base = {"sigma_space": s.sigma_space, "repeats": s.repeats, "num_images": int(len(p.y)),
          "seed": s.seed, "checkpoint": s.checkpoint, "noise_block": s.noise_block,
          **_provenance_columns(prov)}
  recs = []
  kinds = [("clean", {"attack": "none", "eps": 0, "steps": 0, "attack_samples": 0})]
  if s.attack != "none":
    kinds.append(("adv", _attack_columns(s)))
  for kind, cols in kinds:
    blocks = ci_blocks(p, kind)
    for sigma in s.sigmas:
      reps = [points[(sigma, r)][kind] for r in range(s.repeats)]
      for vote in s.votes:
        bits = _correct_bits(reps, vote)
        for k, n in enumerate(s.ns):
          acc, acc_std = _mean_std([rp[vote]["accuracy"][k] for rp in reps])
          t5, t5_std = _mean_std([rp[vote]["top5"][k] for rp in reps])
          rec = {"vote": vote, "n": n, "sigma": sigma, **cols, "accuracy": acc,
                 "accuracy_std": acc_std,
                 **_ci(None if bits is None else bits[:, k], blocks),
                 "top5": t5, **base, "top5_std": t5_std,
                 "dataset": s.dataset, "split": s.split}
          if kind == "adv":
            rec["norm"] = s.norm
            rec["accuracy_all_draws"], _ = _mean_std(
                [rp[vote].get("accuracy_all_draws", rp[vote]["accuracy"])[k] for rp in reps])
          recs.append(rec)
  cert_blocks = ci_blocks(p, "clean")
  for sigma in sorted(certs):
    c = certs[sigma]
    radius = np.asarray(c["radius"])
    correct = np.asarray(c["correct"], bool)
    abstain = float((np.asarray(c["predict"]) == certify_lib.ABSTAIN).mean())
    accs = certify_lib.certified_accuracy(radius, correct, CERTIFY_RADII)
    for rad, acc in zip(CERTIFY_RADII, accs):
      ci = _ci((correct & (radius >= rad))[None], cert_blocks)
      recs.append({"vote": "certify", "n": s.certify_n, "n0": s.n0, "alpha": s.alpha,
                   "radius": rad, "sigma": sigma, "attack": "none", "eps": 0, "steps": 0,
                   "attack_samples": 0, "accuracy": float(acc), "accuracy_std": 0.0, **ci,
                   "abstain": abstain, "top5": None, **dict(base, repeats=1),
                   "dataset": s.dataset, "split": s.split,
                   "seconds_per_image": c.get("seconds_per_image")})
  return recs


def _csv(records: list[dict]) -> str:
  fields = list(RECORD_FIELDS)
  for r in records:
    for k in r:
      if k not in fields:
        fields.append(k)
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
  w.writeheader()
  for r in records:
    w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
  return buf.getvalue()


def _write_outputs(p: Prepared, records: list[dict], certs: dict, checks: list[dict]) -> None:
  from smoothjax import plots  # pylint: disable=import-outside-toplevel
  s = p.settings
  wd = pathlib.Path(s.workdir)
  atomic_write_text(wd / "results.json", json.dumps(records, indent=1) + "\n")
  atomic_write_text(wd / "results.csv", _csv(records))
  rows = [r for r in records if r["vote"] != "certify"]
  for vote in s.votes:
    plots.plot_accuracy_vs_n(rows, wd / "plots" / f"accuracy_vs_n_{vote}.png", vote=vote)
  plots.plot_accuracy_vs_sigma(rows, wd / "plots" / "accuracy_vs_sigma.png")
  if certs:
    lines = ["index\tlabel\tpredict\tradius\tcorrect\tsigma\ttime"]
    for sigma in sorted(certs):
      c = certs[sigma]
      for i, (lab, pr, rad, cor) in enumerate(zip(c["label"], c["predict"], c["radius"],
                                                    c["correct"])):
        lines.append(f"{i}\t{lab}\t{pr}\t{rad:.4f}\t{cor}\t{sigma:g}\t"
                     f"{c.get('seconds_per_image', 0):.4f}")
    atomic_write_text(wd / "certify.tsv", "\n".join(lines) + "\n")
    plots.plot_certified_accuracy(
        {sg: (c["radius"], c["correct"]) for sg, c in certs.items()},
        wd / "plots" / "certified_accuracy.png")
  if s.sanity_checks:
    atomic_write_text(wd / "sanity_checks.json", json.dumps(checks, indent=1) + "\n")


def _points_dir(workdir, fingerprint: str | None) -> pathlib.Path:
  """The resume directory of a workdir's evaluation (the newest one when several exist)."""
  root = pathlib.Path(workdir) / "points"
  if fingerprint is not None:
    return root / fingerprint
  dirs = sorted((d for d in root.glob("*") if (d / "blocks.json").exists()),
                key=lambda d: (d / "blocks.json").stat().st_mtime)
  if not dirs:
    raise EvaluationError(f"{workdir}: no evaluation with per-image results (points/*/"
                          "blocks.json); run python -m evaluate there first")
  return dirs[-1]


def load_correct(workdir, *, sigma: float, vote: str, n: int, kind: str = "clean",
                 fingerprint: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Per-image correctness of a finished evaluation, for :mod:`smoothjax.stats`.

  Args:
    workdir: the evaluation's ``--workdir``.
    sigma, vote, n: which accuracy (``n`` one of the evaluated sample counts).
    kind: ``"clean"`` or ``"adv"`` (the attacked images).
    fingerprint: which evaluation under ``workdir/points`` (default: the newest).

  Returns:
    ``(correct, blocks)``: ``(R, N)`` booleans over repeats and images, and the ``(N,)`` block
    ids (:func:`ci_blocks`) to pass as ``block_ids``.

  Raises:
    EvaluationError: no such evaluation, sigma, vote, n or kind.
  """
  pdir = _points_dir(workdir, fingerprint)
  settings = _read_json(pdir / "settings.json") or {}
  blocks = _read_json(pdir / "blocks.json") or {}
  ns = list(settings.get("ns", []))
  if n not in ns:
    raise EvaluationError(f"n: {n} was not evaluated in {pdir} (ns: {ns})")
  if kind not in blocks:
    raise EvaluationError(f"kind: {kind!r} not in {pdir} (have: {sorted(blocks)})")
  out = []
  for r in range(int(settings.get("repeats", 1))):
    pt = _read_json(pdir / f"sigma_{_sigma_name(float(sigma))}_r{r}.json")
    if pt is None or vote not in pt.get(kind, {}) or "correct" not in pt[kind][vote]:
      raise EvaluationError(f"no {kind} {vote!r} results at sigma={sigma:g}, repeat {r} in "
                            f"{pdir}")
    out.append(stats.decode_bits(pt[kind][vote]["correct"])[ns.index(n)])
  return np.stack(out), np.asarray(blocks[kind], np.int64)


def paired_difference(workdir, *, sigma: float, a: tuple[str, int], b: tuple[str, int],
                      kind: str = "clean", fingerprint: str | None = None,
                      **kw) -> stats.PairedDifference:
  """Paired comparison of two accuracies of one evaluation, e.g. hard vs soft at ``n = 8``.

  Both come from the same Monte-Carlo samples, so the difference is tested on the per-block
  differences (:func:`smoothjax.stats.paired_difference`, blocks of :func:`ci_blocks`).

  Args:
    workdir, sigma, kind, fingerprint: as for :func:`load_correct`.
    a, b: ``(vote, n)`` of the two accuracies.
    **kw: passed to :func:`smoothjax.stats.paired_difference` (``level``, ``method``, ...).

  Returns:
    :class:`smoothjax.stats.PairedDifference`: ``acc(a) - acc(b)``, its interval and p-value.

  Example::

    d = evaluation.paired_difference("runs/eval", sigma=0.12, a=("hard", 8), b=("soft", 8))
    print(d.diff, d.low, d.high, d.p_value)
  """
  ca, blocks = load_correct(workdir, sigma=sigma, vote=a[0], n=a[1], kind=kind,
                            fingerprint=fingerprint)
  cb, _ = load_correct(workdir, sigma=sigma, vote=b[0], n=b[1], kind=kind,
                       fingerprint=fingerprint)
  return stats.paired_difference(ca, cb, block_ids=blocks, **kw)


def _sigma_name(sigma: float) -> str:
  return repr(float(sigma)).replace(".", "p").replace("-", "m")


def run(settings: EvalSettings | Prepared, *, log: Callable[[str], None] | None = None
        ) -> list[dict]:
  """Runs (or resumes) an evaluation and writes its outputs to ``settings.workdir``.

  Args:
    settings: the settings (validated and loaded here first; nothing is written before that
      succeeds), or the result of :func:`prepare`.
    log: where to print messages (default: stderr).

  Returns:
    The records of ``results.json``.

  Raises:
    EvaluationError: bad input (before anything is written).
  """
  if log is None:
    def log(msg):
      print(msg, file=sys.stderr, flush=True)
  p = settings if isinstance(settings, Prepared) else prepare(settings)
  s = p.settings
  writer = _is_writer()
  pdir = pathlib.Path(s.workdir) / "points" / p.fingerprint
  if writer:
    pdir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(pdir / "settings.json",
                  json.dumps(dataclasses.asdict(s), indent=1, default=str) + "\n")
    kinds = ("clean",) if s.attack == "none" else ("clean", "adv")
    atomic_write_text(pdir / "blocks.json", json.dumps(
        {k: ci_blocks(p, k).tolist() for k in kinds}) + "\n")
  points: dict = {}
  checks: list[dict] = []
  skipped = 0
  for sigma in s.sigmas:
    for r in range(s.repeats):
      path = pdir / f"sigma_{_sigma_name(sigma)}_r{r}.json"
      pt = _read_json(path)
      if pt is not None and pt.get("sigma") == sigma and pt.get("repeat") == r:
        skipped += 1
      else:
        pt = _eval_point(p, sigma, r, log)
        if writer:
          atomic_write_text(path, json.dumps(pt) + "\n")
      points[(sigma, r)] = pt
      for c in pt.get("sanity_checks", []):
        checks.append(c)
        if not c.get("passed", True):
          log(f"warning: sanity check {c.get('check')} failed at σ={sigma:g}: "
              f"{c.get('detail', '')}")
  certs: dict = {}
  if s.certify:
    for sigma in s.sigmas:
      if sigma <= 0:
        log("note: certification skipped at σ=0 (needs Gaussian input noise)")
        continue
      path = pdir / (f"certify_{_sigma_name(sigma)}_n0{s.n0}_n{s.certify_n}_"
                     f"a{s.alpha:g}.json")
      c = _read_json(path)
      if c is not None and c.get("sigma") == sigma:
        skipped += 1
      else:
        c = _certify_point(p, sigma)
        if writer:
          atomic_write_text(path, json.dumps(c) + "\n")
      certs[sigma] = c
  if skipped:
    log(f"resumed: {skipped} finished point(s) reused from {pdir}")
  prov = provenance_lib.provenance()
  records = _records(p, points, certs, prov)
  if writer:
    atomic_write_text(pathlib.Path(s.workdir) / "provenance.json",
                      json.dumps(prov, indent=1) + "\n")
    _write_outputs(p, records, certs, checks)
  return records
