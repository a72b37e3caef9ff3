"""Adversarial attacks on randomized classifiers, as compiled ``lax.scan`` loops.

Modules: ``_common`` (names, losses, threat-model geometry), ``_logits`` (model functions),
``_pgd`` (the PGD family), ``_nattack``, ``_craft`` (the dispatcher), ``_checks`` (sanity checks,
attack vs compute); the command line is :mod:`smoothjax.cli.attacks`.

Every attack takes a ``logits_fn(x, key) -> logits``: a pure function of images ``x`` in [0, 1]
pixel units (any layout; NHWC for the smoothjax models) and of a key that drives *all* of the
model's noise (weight / activation noise and the Gaussian input noise at the evaluated sigma),
for example ``smoothjax.smoothing.make_logits_fn(model, sigma=0.12)`` or
:func:`model_logits_fn`. Against a noisy model an attack that differentiates one noisy forward
pass per step sees a random gradient: PGD does exactly that (the reference's
setting), EPGD, SmoothAdv and PGD-s average over ``samples`` draws per step.

White box:

* :func:`fgsm` -- one signed gradient step (Goodfellow et al. 2015; with ``random_start``, the
  "fast" FGSM of Wong et al. 2020).
* :func:`pgd` -- Madry et al.'s projected gradient descent, L-inf or L2, uniform random start,
  restarts keeping the strongest example, targeted option, the reference's accumulated-gradient
  quirk as an option, and any per-example loss (TRADES' KL is :func:`trades_adversary`).
* :func:`epgd` -- expectation PGD (Nemcovsky et al., eq. 25): each step's loss is the mean over
  ``m`` noise draws of the per-example cross-entropy.
* :func:`smoothadv` -- Salman et al.'s attack on the smoothed soft classifier: loss
  ``-log(mean_m softmax_y)`` (average before the log); ``fixed_noise=True`` keeps the ``m``
  draws fixed across steps, as Salman et al. do.
* :func:`pgd_s` -- PGD against the soft-smoothed classifier (the paper's Table 2): the
  cross-entropy of the mean softmax over ``m`` fresh draws per step. It is the same loss as
  SmoothAdv's, so ``pgd_s(...)`` equals ``smoothadv(..., fixed_noise=False)`` by construction.

Auto-PGD (Croce & Hein 2020; ``_apgd``): :func:`apgd` (APGD-CE / APGD-DLR with an EOT gradient
over ``eot_samples`` draws), :func:`autoattack_rand` (the per-image worst case of both,
AutoAttack's ``version='rand'``), :func:`eot_gradient`, :func:`dlr_loss`, the budgets
:data:`PRESETS` (``cpu``: 20 steps x 4 draws; ``standard``: 100 steps, 1 draw; ``rand``: 100
steps, 1 restart, 20 draws) and :class:`APGDInfo`.

Black box: :func:`nattack` (Li et al. 2019, NES search in tanh space with a population
evaluated in one call per iteration; against a randomized target a success must be confirmed by
``confirm`` fresh re-queries) and transfer (:func:`craft` with ``name="transfer"``:
PGD crafted on a source model). :func:`craft` is the dispatcher of ``python -m evaluate
--attack=NAME``; :func:`run_sanity_checks` runs Athalye et al.'s gradient-masking checklist;
:func:`attack_vs_compute` (and :func:`smoothjax.plots.plot_attack_vs_compute`) give the
paper's Fig. 0.B.3.

Keys (fixed, so that results never depend on batching inside one call): ``k_restarts, k_select
= split(key)``; restart ``r`` uses ``fold_in(k_restarts, r)``, split into ``(k_start, k_steps,
k_fixed)``; step ``t`` uses ``k_t = fold_in(k_steps, t)`` and its noise draw ``j`` (0 <= j < m)
runs the model with ``fold_in(k_t, j)`` (``fold_in(k_fixed, j)`` with fixed noise). PGD is the
``m = 1`` case of EPGD, so ``epgd(..., samples=1)`` equals ``pgd(...)`` for the same key.

Draws inside a step are looped with ``lax.scan`` (``draws="loop"``, default), each draw shared
by the whole batch: ``vmap`` over weight-noise draws turns every convolution into a grouped
convolution (about 10x slower on CPU). ``draws="vmap"`` is offered for models with input noise
only. Steps are a ``lax.scan`` with ``unroll=1`` by default: with
:func:`smoothjax.models.conv2d`'s custom VJP, convolutions inside scan bodies run as fast as
unrolled code on XLA:CPU and compile time stays flat in the number of steps (measured in
``benchmarks/bench_attacks.py``).

References:
  Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018.
  Nemcovsky et al., "Smoothed Inference for Improving Adversarial Robustness", arXiv 1911.07198.
  Salman et al., "Provably Robust Deep Learning via Adversarially Trained Smoothed
  Classifiers", NeurIPS 2019.
  Li et al., "NATTACK: Learning the Distributions of Adversarial Examples", ICML 2019.
  Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy", ICML 2019.
  Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
  parameter-free attacks", ICML 2020.
  Athalye, Carlini, Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018.
  Wong, Rice, Kolter, "Fast is better than free", ICLR 2020.
"""

from smoothjax.attacks._apgd import PRESETS, APGDInfo, apgd, autoattack_rand, dlr_loss, eot_gradient
from smoothjax.attacks._checks import attack_vs_compute, run_sanity_checks
from smoothjax.attacks._common import (ATTACKS, NORMS, GradientMaskingWarning, LogitsFn,
                                       cross_entropy, kl_divergence)
from smoothjax.attacks._craft import craft
from smoothjax.attacks._logits import BatchNoiseLogits, ModelLogits, model_logits_fn
from smoothjax.attacks._nattack import nattack
from smoothjax.attacks._pgd import epgd, fgsm, pgd, pgd_s, smoothadv, trades_adversary
from smoothjax.plots import plot_attack_vs_compute
from smoothjax.smoothing import SmoothedProbs, smoothed_probs_fn

__all__ = [
    "ATTACKS",
    "NORMS",
    "GradientMaskingWarning",
    "LogitsFn",
    "BatchNoiseLogits",
    "ModelLogits",
    "model_logits_fn",
    "SmoothedProbs",
    "smoothed_probs_fn",
    "cross_entropy",
    "kl_divergence",
    "fgsm",
    "pgd",
    "epgd",
    "smoothadv",
    "pgd_s",
    "trades_adversary",
    "nattack",
    "apgd",
    "autoattack_rand",
    "eot_gradient",
    "dlr_loss",
    "PRESETS",
    "APGDInfo",
    "craft",
    "run_sanity_checks",
    "attack_vs_compute",
    "plot_attack_vs_compute",
]
