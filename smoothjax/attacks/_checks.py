"""Gradient-masking sanity checks (Athalye et al. 2018) and accuracy vs attack compute.

References:
  Athalye, Carlini, Wagner, "Obfuscated Gradients Give a False Sense of Security", ICML 2018.
  Nemcovsky et al., "Smoothed Inference for Improving Adversarial Robustness", arXiv 1911.07198.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Mapping, Sequence

import jax
import numpy as np

from smoothjax._utils import as_key as _as_key
from smoothjax.attacks._common import GradientMaskingWarning, LogitsFn
from smoothjax.attacks._craft import craft
from smoothjax.attacks._nattack import DEFAULT_CONFIRM, budget_columns

def _tolerance(acc: float, n: int) -> float:
  """Slack for comparing two accuracies on n images: two binomial standard errors, >= 2%."""
  return max(0.02, 2.0 * math.sqrt(max(acc * (1 - acc), 0.25 / max(n, 1)) / max(n, 1)))


def run_sanity_checks(logits_fn: LogitsFn, x, y, *, key, eps, steps: int = 7, step_size=None,
                      accuracy_fn: Callable[[np.ndarray], float],
                      source_logits_fn: LogitsFn | None = None, smoothed_probs_fn=None,
                      large_eps: float = 0.5, large_eps_max_accuracy: float = 0.1,
                      more_steps_factor: int = 4, norm: str = "linf", batch_size: int = 256,
                      nattack_population: int = 100, nattack_iterations: int = 50,
                      nattack_images: int = 16, nattack_confirm: int = DEFAULT_CONFIRM,
                      warn: bool = True) -> list[dict]:
  """Athalye et al.'s checklist against gradient masking, on PGD with the given settings.

  Checks (each a dict ``{"check", "passed", "detail"}`` plus the accuracies it compared):

  * ``large_eps``: accuracy under PGD at ``eps = large_eps`` (default 0.5) is at most
    ``large_eps_max_accuracy`` (unbounded attacks must reach ~0%).
  * ``more_steps``: PGD with ``more_steps_factor`` x the steps is not clearly better for the
    defender (its accuracy is at most the base PGD accuracy plus a tolerance).
  * ``fgsm_weaker``: FGSM (one step) is not clearly stronger than PGD.
  * ``white_box_vs_transfer`` (with ``source_logits_fn``): transfer PGD is not clearly
    stronger than white-box PGD.
  * ``white_box_vs_nattack`` (with ``smoothed_probs_fn``): NAttack is not clearly stronger than
    PGD on the first ``nattack_images`` images (NAttack queries ``population`` smoothed
    predictions per iteration: a full-size comparison would cost hours on a CPU). The other
    images keep their PGD examples, so ``accuracy_fn`` sees the two attacks differ only there.

  "Clearly" means by more than two binomial standard errors (and at least 2 points). A
  :class:`GradientMaskingWarning` is emitted for every failed check (``warn=True``).

  Args:
    logits_fn, x, y, key, eps, steps, step_size, norm, batch_size: the PGD under test
      (``step_size`` default ``eps / 4``).
    accuracy_fn: ``accuracy_fn(x_adv) -> float``, the defended (e.g. smoothed) accuracy of all
      of ``x``'s images.
    source_logits_fn, smoothed_probs_fn: enable the black-box comparisons.
    nattack_population, nattack_iterations, nattack_images, nattack_confirm: NAttack budget
      of the comparison (far below Li et al.'s 300 x 500 by default) and its ``confirm``; the
      record carries them (``nattack_population``, ``nattack_iterations``, ``nattack_confirm``,
      ``nattack_li2019_budget``).

  Returns:
    The list of check records.
  """
  key = _as_key(key)
  x = np.asarray(x, np.float32)
  y = np.asarray(y)
  n = len(x)
  step_size = eps / 4 if step_size is None else step_size
  common = dict(norm=norm, batch_size=batch_size)
  examples = {}

  def attack_acc(tag, name, fn, k, **kw):
    examples[tag] = craft(name, fn, x, y, key=jax.random.fold_in(key, k), **common, **kw)
    return float(accuracy_fn(examples[tag]))

  base = attack_acc("pgd", "pgd", logits_fn, 0, eps=eps, steps=steps, step_size=step_size)
  tol = _tolerance(base, n)
  checks = []

  big = attack_acc("pgd_large_eps", "pgd", logits_fn, 1, eps=large_eps, steps=max(steps, 10),
                   step_size=large_eps / 4)
  checks.append({"check": "large_eps", "passed": big <= large_eps_max_accuracy,
                 "detail": f"PGD-{max(steps, 10)} at eps={large_eps:g}: accuracy {big:.4f} "
                           f"(must be <= {large_eps_max_accuracy:g})",
                 "accuracy": big})
  more = attack_acc("pgd_more_steps", "pgd", logits_fn, 2, eps=eps,
                    steps=steps * more_steps_factor, step_size=step_size)
  checks.append({"check": "more_steps", "passed": more <= base + tol,
                 "detail": f"PGD-{steps * more_steps_factor} accuracy {more:.4f} vs PGD-{steps} "
                           f"{base:.4f} (must be <= {base + tol:.4f})",
                 "accuracy": more, "reference_accuracy": base})
  fg = attack_acc("fgsm", "fgsm", logits_fn, 3, eps=eps)
  checks.append({"check": "fgsm_weaker", "passed": fg >= base - tol,
                 "detail": f"FGSM accuracy {fg:.4f} vs PGD-{steps} {base:.4f} "
                           f"(must be >= {base - tol:.4f})",
                 "accuracy": fg, "reference_accuracy": base})
  if source_logits_fn is not None:
    tr = attack_acc("transfer", "transfer", None, 4, eps=eps, steps=steps, step_size=step_size,
                    source_logits_fn=source_logits_fn)
    checks.append({"check": "white_box_vs_transfer", "passed": tr >= base - tol,
                   "detail": f"transfer accuracy {tr:.4f} vs white-box PGD-{steps} {base:.4f} "
                             f"(must be >= {base - tol:.4f})",
                   "accuracy": tr, "reference_accuracy": base})
  if smoothed_probs_fn is not None:
    k = max(1, min(n, int(nattack_images)))
    mix = examples["pgd"].copy()
    mix[:k] = craft("nattack", None, x[:k], y[:k], key=jax.random.fold_in(key, 5), eps=eps,
                    smoothed_probs_fn=smoothed_probs_fn, population=nattack_population,
                    iterations=nattack_iterations, confirm=nattack_confirm, **common)
    # accuracy difference on the k images (the others are identical in both sets)
    diff = (float(accuracy_fn(mix)) - base) * n / k
    tol_k = _tolerance(0.5, k)
    checks.append({"check": "white_box_vs_nattack", "passed": diff >= -tol_k,
                   "detail": f"NAttack (population {nattack_population}, {nattack_iterations} "
                             f"iterations, {nattack_confirm} confirming re-queries) on the "
                             f"first {k} images: accuracy {diff:+.4f} vs white-box "
                             f"PGD-{steps} on them (must be >= {-tol_k:.4f})",
                   "accuracy_difference": diff, "images": k,
                   **budget_columns(nattack_population, nattack_iterations, nattack_confirm)})
  if warn:
    for c in checks:
      if not c["passed"]:
        warnings.warn(f"gradient-masking check {c['check']} failed: {c['detail']}",
                      GradientMaskingWarning, stacklevel=2)
  return checks


def attack_vs_compute(logits_fn: LogitsFn, x, y, *, key, eps,
                      budgets: Sequence[tuple[int, int]],
                      attacks: Sequence[str] = ("pgd", "epgd", "smoothadv"),
                      accuracy_fn: Callable[[np.ndarray], float], step_size=None,
                      norm: str = "linf", batch_size: int = 256, **kw) -> list[dict]:
  """Accuracy as a function of the attack's compute k * m (the paper's Fig. 0.B.3).

  Args:
    logits_fn, x, y, key, eps, norm, batch_size: as :func:`craft`.
    budgets: ``(k, m)`` pairs: k steps with m noise draws per step. PGD uses m = 1 (compute
      k); its duplicate budgets run once.
    attacks: any of ``pgd``, ``epgd``, ``smoothadv``, ``pgd_s``.
    accuracy_fn: ``accuracy_fn(x_adv) -> float`` (e.g. the smoothed accuracy at some n), or
      a ``{label: float}`` dict (e.g. ``{"n=1": ..., "n=64": ...}``): one row per label; a
      :class:`smoothjax.stats.Interval` in place of a float adds its bounds to the row
      (``accuracy_ci_low`` / ``accuracy_ci_high`` / ``accuracy_ci_method``).
    step_size: default ``eps / 4``.
    **kw: passed to :func:`craft`. ``fixed_noise`` applies to ``smoothadv`` only and defaults
      to ``True`` there (Salman et al.'s fixed draws; ``pgd_s`` is the fresh-draw variant).

  Returns:
    Records ``{"attack", "steps", "samples", "compute", "accuracy"}`` (plus ``"label"``; plus
    ``"fixed_noise"`` for ``smoothadv``), ``compute = k * m``.
  """
  key = _as_key(key)
  for a in attacks:
    if a not in ("pgd", "epgd", "smoothadv", "pgd_s"):
      raise ValueError(f"attack_vs_compute supports pgd, epgd, smoothadv, pgd_s; got {a!r}")
  fixed_noise = bool(kw.pop("fixed_noise", True))
  rows, seen = [], set()
  for ai, a in enumerate(attacks):
    kw_a = dict(kw, fixed_noise=fixed_noise) if a == "smoothadv" else kw
    for k, m in budgets:
      if int(k) < 1 or int(m) < 1:
        raise ValueError(f"budgets must be pairs of integers >= 1, got {(k, m)}")
      m_used = 1 if a == "pgd" else int(m)
      if (a, int(k), m_used) in seen:
        continue
      seen.add((a, int(k), m_used))
      xa = craft(a, logits_fn, x, y, key=jax.random.fold_in(key, ai), eps=eps, norm=norm,
                 steps=int(k), step_size=step_size, samples=m_used, batch_size=batch_size,
                 **kw_a)
      row = {"attack": a, "steps": int(k), "samples": m_used, "compute": int(k) * m_used}
      if a == "smoothadv":
        row["fixed_noise"] = fixed_noise
      acc = accuracy_fn(xa)
      if isinstance(acc, Mapping):  # several accuracies of the same examples (e.g. per n)
        rows.extend(dict(row, label=str(lbl), **_accuracy_fields(v)) for lbl, v in acc.items())
      else:
        rows.append(dict(row, **_accuracy_fields(acc)))
  return rows


def _accuracy_fields(acc) -> dict:
  """A float accuracy, or a :class:`smoothjax.stats.Interval` (its estimate and bounds)."""
  if hasattr(acc, "estimate"):  # unavailable bounds (nan) as None, as in evaluation records
    bound = lambda b: float(b) if math.isfinite(b) else None  # noqa: E731
    return {"accuracy": float(acc.estimate), "accuracy_ci_low": bound(acc.low),
            "accuracy_ci_high": bound(acc.high), "accuracy_ci_method": acc.method}
  return {"accuracy": float(acc)}

