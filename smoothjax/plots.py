"""PNG plots of evaluation results (matplotlib, headless).

* :func:`plot_accuracy_vs_n`: smoothed accuracy against the number of samples ``n`` for one vote,
  a line per (sigma, attack), error bars = std over repeats (the paper's main plot), shaded
  band = the records' confidence interval (``accuracy_ci_low`` .. ``accuracy_ci_high``, see
  :func:`smoothjax.stats.accuracy_ci`) where available.
* :func:`plot_accuracy_vs_sigma`: accuracy against sigma at the largest ``n``, a line per
  (vote, attack), with the same error bars and bands.
* :func:`plot_attack_vs_compute`: accuracy against attack compute k * m (the paper's Fig. 0.B.3),
  from :func:`smoothjax.attacks.attack_vs_compute`'s rows.
* :func:`plot_certified_accuracy`: Cohen et al.'s certified accuracy against the L2 radius, a
  line per sigma, from the per-image radii, with a Clopper-Pearson band.

All take the flat records of ``results.json`` (dicts) and write one PNG atomically.
"""

from __future__ import annotations

import os
import pathlib
from typing import Iterable, Mapping, Sequence

import numpy as np

__all__ = ["plot_accuracy_vs_n", "plot_accuracy_vs_sigma", "plot_certified_accuracy",
           "plot_attack_vs_compute"]


def _pyplot():
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg", force=True)
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def _save(fig, path) -> None:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp")
  fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
  os.replace(tmp, path)


def _finish(plt, fig, ax, path, *, xlabel: str, ylabel: str, title: str, legend: bool) -> None:
  """Labels, grid and legend of a one-axes plot, then saves (atomically) and closes it."""
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  if legend:
    ax.legend(fontsize=7)
  _save(fig, path)
  plt.close(fig)


def _band(ax, xs, rows, color) -> None:
  """Shades the records' confidence interval (``accuracy_ci_low`` .. ``_high``) where present."""
  band = [(x, r.get("accuracy_ci_low"), r.get("accuracy_ci_high")) for x, r in zip(xs, rows)]
  band = [b for b in band if b[1] is not None and b[2] is not None
          and np.isfinite(b[1]) and np.isfinite(b[2])]
  if band:
    ax.fill_between([b[0] for b in band], [100 * b[1] for b in band],
                    [100 * b[2] for b in band], alpha=0.18, linewidth=0, color=color)


def _label(sigma, space, attack) -> str:
  s = f"σ={sigma:g}" + (" (norm.)" if space == "normalized" else "")
  return s if attack == "none" else f"{s}, {attack}"


def plot_accuracy_vs_n(records: Iterable[Mapping], path, *, vote: str, title: str = "") -> None:
  """Accuracy vs n of one vote: a line per (sigma, attack)."""
  plt = _pyplot()
  rows = [r for r in records if r["vote"] == vote]
  fig, ax = plt.subplots(figsize=(6, 4))
  keys = sorted({(r["sigma"], r["sigma_space"], r["attack"]) for r in rows},
                key=lambda k: (k[2] != "none", k[2], k[0]))
  for sigma, space, attack in keys:
    sel = sorted((r for r in rows if (r["sigma"], r["sigma_space"], r["attack"]) ==
                  (sigma, space, attack)), key=lambda r: r["n"])
    n = [r["n"] for r in sel]
    acc = [100 * r["accuracy"] for r in sel]
    std = [100 * r["accuracy_std"] for r in sel]
    line = ax.errorbar(n, acc, yerr=std, marker="o", ms=3, capsize=2,
                       linestyle="-" if attack == "none" else "--",
                       label=_label(sigma, space, attack))
    _band(ax, n, sel, line[0].get_color())
  ax.set_xscale("log", base=2)
  _finish(plt, fig, ax, path, xlabel="number of samples n", ylabel="accuracy (%)",
          title=title or f"smoothed accuracy vs n ({vote} vote)", legend=bool(keys))


def plot_accuracy_vs_sigma(records: Iterable[Mapping], path, *, title: str = "") -> None:
  """Accuracy vs sigma at each line's largest n: a line per (vote, attack)."""
  plt = _pyplot()
  rows = [r for r in records if r["vote"] != "certify"]
  fig, ax = plt.subplots(figsize=(6, 4))
  keys = sorted({(r["vote"], r["attack"]) for r in rows}, key=lambda k: (k[1] != "none", k))
  n_max = max((r["n"] for r in rows), default=0)
  for vote, attack in keys:
    sel = sorted((r for r in rows if r["vote"] == vote and r["attack"] == attack
                  and r["n"] == n_max), key=lambda r: r["sigma"])
    sig = [r["sigma"] for r in sel]
    line = ax.errorbar(sig, [100 * r["accuracy"] for r in sel],
                       yerr=[100 * r["accuracy_std"] for r in sel], marker="o", ms=3, capsize=2,
                       linestyle="-" if attack == "none" else "--",
                       label=vote if attack == "none" else f"{vote}, {attack}")
    _band(ax, sig, sel, line[0].get_color())
  space = rows[0]["sigma_space"] if rows else "pixel"
  _finish(plt, fig, ax, path,
          xlabel=f"σ ({'[0,1] pixels' if space == 'pixel' else 'normalised units'})",
          ylabel="accuracy (%)", title=title or f"smoothed accuracy vs σ (n={n_max})",
          legend=bool(keys))


def plot_certified_accuracy(per_sigma: Mapping[float, tuple[Sequence[float], Sequence[bool]]],
                            path, *, title: str = "") -> None:
  """Certified accuracy vs L2 radius ([0, 1] pixels): ``{sigma: (radii, correct)}``.

  The band is the 95% Clopper-Pearson interval over the images at each radius (CERTIFY draws
  its input noise per image, so the images' outcomes are independent for a model without
  weight or activation noise; a model-noise block shared by several images makes it narrower
  than the truth).
  """
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  r_max = 0.0
  for sigma in sorted(per_sigma):
    radius, correct = (np.asarray(a) for a in per_sigma[sigma])
    if radius.size:
      r_max = max(r_max, float(radius.max()))
  grid = np.linspace(0, max(r_max * 1.05, 0.1), 200)
  from smoothjax import stats  # pylint: disable=import-outside-toplevel
  for sigma in sorted(per_sigma):
    radius, correct = (np.asarray(a) for a in per_sigma[sigma])
    correct = correct.astype(bool)
    if not radius.size:
      ax.plot(grid, np.zeros_like(grid), label=f"σ={sigma:g}")
      continue
    hits = correct[None, :] & (radius[None, :] >= grid[:, None])
    line, = ax.plot(grid, 100 * hits.mean(1), label=f"σ={sigma:g}")
    cis = [stats.accuracy_ci(h, block_ids=np.arange(len(h))) for h in hits]
    ax.fill_between(grid, [100 * c.low for c in cis], [100 * c.high for c in cis], alpha=0.18,
                    linewidth=0, color=line.get_color())
  _finish(plt, fig, ax, path, xlabel="L2 radius ([0,1] pixels)",
          ylabel="certified accuracy (%)",
          title=title or "certified accuracy (Cohen et al. CERTIFY)", legend=bool(per_sigma))


def plot_attack_vs_compute(rows: Sequence[dict], path, *, title: str | None = None) -> None:
  """Plots accuracy against compute k * m (PNG via matplotlib's Agg).

  One line per attack and number of samples m (k varies along it; PGD has m = 1), one colour
  per line. Rows with a ``"label"`` (e.g. ``"n=1"``, ``"n=64"``: the smoothing the examples
  were scored with) get one panel per label, side by side on a shared accuracy axis, so that
  the lines of one scoring are compared with each other. SmoothAdv lines say whether its noise
  draws were fixed across steps (``"fixed_noise"``; rows without it: fresh draws, i.e. PGD-s).
  Rows with ``accuracy_ci_low`` / ``accuracy_ci_high`` get their confidence interval as a band.
  """
  plt = _pyplot()

  curves: dict[tuple, list[dict]] = {}
  for r in rows:
    attack = r["attack"]
    if attack == "smoothadv":  # fixed draws (Salman et al.) or fresh ones (= pgd_s)
      attack += " fixed noise" if r.get("fixed_noise", False) else " fresh noise"
    curves.setdefault((attack, r["samples"], r.get("label") or ""), []).append(r)
  series = sorted({(a, m) for a, m, _ in curves}, key=lambda am: (am[0] != "pgd", am))
  labels = sorted({lbl for _, _, lbl in curves},
                  key=lambda s: (len(s), s))  # "n=1" before "n=64"
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  markers = ["o", "s", "^", "D", "v"]
  fig, axes = plt.subplots(1, len(labels), figsize=(1.0 + 4.2 * len(labels), 4.2), sharey=True,
                           squeeze=False)
  for (a, m, lbl), rs in sorted(curves.items()):
    ax = axes[0, labels.index(lbl)]
    rs = sorted(rs, key=lambda r: r["compute"])
    i = series.index((a, m))
    color = colors[i % len(colors)]
    # PGD dashed and on top: PGD-s at m = 1 is the same attack and may hide it
    ax.plot([r["compute"] for r in rs], [100 * r["accuracy"] for r in rs],
            marker=markers[i // len(colors) % len(markers)], color=color,
            linestyle="--" if a == "pgd" else "-", zorder=3 if a == "pgd" else 2,
            label=a if a == "pgd" else f"{a}, m={m}")
    _band(ax, [r["compute"] for r in rs], rs, color)
  for ax, lbl in zip(axes[0], labels):
    ax.set_xscale("log", base=2)
    ax.set_xlabel("attack compute k·m (gradient evaluations)")
    ax.grid(True, alpha=0.3)
    if lbl:
      ax.set_title(f"scored at {lbl}", fontsize="medium")
  axes[0, 0].set_ylabel("accuracy under attack (%)")
  legend = {}  # every series once, whichever panel drew it
  for ax in axes[0]:
    legend.update((name, h) for h, name in zip(*ax.get_legend_handles_labels()))
  axes[0, -1].legend(legend.values(), legend.keys(), fontsize="small", loc="upper left",
                     bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
  fig.suptitle(title or "Attack vs compute")
  fig.tight_layout()
  _save(fig, path)
  plt.close(fig)
