"""Tables and plots of docs/reproduction.md from the evaluation records under results/.

Usage (from the repository root)::

  python docs/reproduction/report.py            # writes docs/reproduction/*.png, prints tables

Every ``results/NAME.json`` is the ``results.json`` of one ``python -m evaluate`` run (the
command that made it is in ``docs/reproduction.md``), or, for ``attack_vs_compute*.json``, the
output of ``python -m smoothjax.attacks``; ``results/NAME/points/`` is the ``points/`` folder of
a headline evaluation's workdir (per-image correctness, for the paired differences). Missing
files are skipped with a note, so the report grows as the evaluations finish.
"""

from __future__ import annotations

import itertools
import json
import pathlib
import sys

import numpy as np

from smoothjax import plots

HERE = pathlib.Path(__file__).resolve().parent
RESULTS = HERE / "results"
VOTES = ("hard", "soft", "weighted")  # the paper's three votes (prediction, soft, weighted)
MODELS = {"cniw": "resnet20_cniw_at", "cniiw": "resnet20_cniiw_at", "at": "resnet20_at"}


def load(name: str) -> list[dict] | None:
  path = RESULTS / f"{name}.json"
  if not path.exists():
    print(f"[report] {path.name}: not yet measured, skipped", file=sys.stderr)
    return None
  return json.loads(path.read_text())


def metrics(name: str) -> tuple[list[dict], list[dict]] | None:
  """A run's ``metrics.jsonl`` copied to ``results/NAME.jsonl``: its (train, val) records."""
  path = RESULTS / f"{name}.jsonl"
  if not path.exists():
    print(f"[report] {path.name}: not yet measured, skipped", file=sys.stderr)
    return None
  rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  return ([r for r in rows if r["split"] == "train"], [r for r in rows if r["split"] == "val"])


def attack_name(r: dict) -> str:
  if r["attack"] == "none":
    return "clean"
  return f"{'PGD-s' if r['attack'] == 'pgd_s' else r['attack'].upper()}-{r['steps']}"


def table(records: list[dict], *, sigma: float, ns, votes=VOTES) -> str:
  """Markdown: a row per (attack, vote), a column per n; mean ± std over the repeats."""
  rows = [r for r in records if np.isclose(r["sigma"], sigma)]
  attacks = sorted({attack_name(r) for r in rows}, key=lambda a: (a != "clean", a))
  head = "| attack | vote | " + " | ".join(f"n = {n}" for n in ns) + " |"
  lines = [head, "|" + " --- |" * (len(ns) + 2)]
  for a in attacks:
    for v in votes:
      cells = []
      for n in ns:
        hit = [r for r in rows if attack_name(r) == a and r["vote"] == v and r["n"] == n]
        if not hit:
          cells.append("")
          continue
        r = hit[0]
        cell = f"{100 * r['accuracy']:.1f}"
        if r["repeats"] > 1:
          cell += f" ± {100 * r['accuracy_std']:.1f}"
        cells.append(cell)
      lines.append(f"| {a} | {v} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


HEADLINE = (("resnet20_cniw_at", "head_cniw"), ("resnet20_cniiw_at", "head_cniiw"),
            ("resnet20_at", "head_at"), ("resnet20_at_seed1", "head_seed1"))


def headline_table(runs=HEADLINE, *, n: int = 32, votes=VOTES) -> str | None:
  """Markdown: a row per (model, sigma) of the headline evaluations; clean and PGD at n = 1 and n.

  Each cell is the accuracy in %; the n = 1 and hard-vote cells carry the 95% interval of the
  record (``accuracy_ci_low`` / ``accuracy_ci_high``: over the independent weight-noise blocks of
  a noisy model, Clopper-Pearson for a deterministic one).
  """
  def cell(rs, attack, vote, k, ci=False):
    hit = [r for r in rs if (r["attack"] == "none") == (attack == "none") and r["vote"] == vote
           and r["n"] == k]
    if not hit:
      return ""
    r = hit[0]
    text = f"{100 * r['accuracy']:.1f}"
    if ci and r.get("accuracy_ci_low") is not None:
      text += f" [{100 * r['accuracy_ci_low']:.1f}, {100 * r['accuracy_ci_high']:.1f}]"
    return text

  lines = []
  for model, name in runs:
    rs = load(name)
    if not rs:
      continue
    for s in sorted({r["sigma"] for r in rs}):
      at_s = [r for r in rs if np.isclose(r["sigma"], s)]
      row = [f"`{model}`", f"{s:g}", f"{at_s[0]['num_images']:,}"]
      for attack in ("none", "pgd"):
        row.append(cell(at_s, attack, "hard", 1, ci=True))
        row.append(" / ".join(cell(at_s, attack, v, n, ci=v == "hard") for v in votes))
      lines.append("| " + " | ".join(row) + " |")
  if not lines:
    return None
  vs = " / ".join(votes)
  head = (f"| model | σ | images | clean, n = 1 | clean, n = {n} ({vs}) | PGD-20, n = 1 | "
          f"PGD-20, n = {n} ({vs}) |")
  return "\n".join([head, "|" + " --- |" * 7] + lines)


def gains_table(runs=HEADLINE, *, n: int = 32) -> str | None:
  """Markdown: paired differences on the same images and samples (``stats.paired_difference``).

  Reads the per-image correctness that each headline evaluation keeps under its workdir's
  ``points/`` (copied to ``results/NAME/points``): the smoothing gain ``n`` vs 1 (hard vote)
  and soft / weighted vs hard at ``n``, with a paired 95% interval over the noise blocks.
  """
  from smoothjax import evaluation, stats  # pylint: disable=import-outside-toplevel

  def diff(workdir, s, kind, a, b):
    ca, blocks = evaluation.load_correct(workdir, sigma=s, vote=a[0], n=a[1], kind=kind)
    cb, _ = evaluation.load_correct(workdir, sigma=s, vote=b[0], n=b[1], kind=kind)
    d = stats.paired_difference(ca, cb, block_ids=blocks)
    return f"{100 * d.diff:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"

  lines = []
  for model, name in runs:
    workdir = RESULTS / name
    rs = load(name)
    if not rs or not (workdir / "points").is_dir():
      continue
    for s in sorted({r["sigma"] for r in rs}):
      row = [f"`{model}`", f"{s:g}"]
      for kind in ("clean", "adv"):
        row.append(diff(workdir, s, kind, ("hard", n), ("hard", 1)))
        row += [diff(workdir, s, kind, (v, n), ("hard", n)) for v in ("soft", "weighted")]
      lines.append("| " + " | ".join(row) + " |")
  if not lines:
    return None
  head = (f"| model | σ | clean: n = {n} − n = 1 (hard) | clean: soft − hard "
          f"| clean: weighted − hard | PGD-20: n = {n} − n = 1 (hard) | PGD-20: soft − hard "
          "| PGD-20: weighted − hard |")
  return "\n".join([head, "|" + " --- |" * 8] + lines)


def reproducibility_table(runs=HEADLINE, *, first: int = 1000) -> str | None:
  """Markdown: each headline run, cut to its first ``first`` images, against its model card.

  The cards' ``accuracy_jpeg`` numbers come from evaluations with ``--limit=1000``; the noise and
  attack keys follow the image index, so the 10,000-image run's points restricted to the same
  images must give them back exactly (every vote, n = 1 and 32, clean and PGD).
  """
  from smoothjax import evaluation, pretrained  # pylint: disable=import-outside-toplevel
  lines = []
  for model, name in runs:
    if not (RESULTS / name / "points").is_dir():
      continue
    results = pretrained.card(model)["accuracy_jpeg"]["results"]
    compared, worst = 0, 0.0
    for sig, by_kind in results.items():
      s = float(sig.split("=")[1])
      if not any(np.isclose(r["sigma"], s) for r in load(name)):
        continue  # a card's sigma that the headline run did not evaluate
      for attack, by_n in by_kind.items():
        kind = "clean" if attack == "clean" else "adv"
        for key, by_vote in by_n.items():
          for vote, acc in by_vote.items():
            if vote not in VOTES:
              continue
            c, _ = evaluation.load_correct(RESULTS / name, sigma=s, vote=vote,
                                           n=int(key.split("=")[1]), kind=kind)
            worst = max(worst, abs(c[:, :first].mean() - acc))
            compared += 1
    lines.append(f"| `{model}` | {compared} | {100 * worst:.2f} |")
  if not lines:
    return None
  head = (f"| model | card numbers compared | largest difference on the first {first:,} images "
          "(points) |")
  return "\n".join([head, "| --- | --- | --- |"] + lines)


VERSUS = ((("resnet20_cniw_at", "head_cniw", 0.0), ("resnet20_at", "head_at", 0.0)),
          (("resnet20_cniw_at", "head_cniw", 0.05), ("resnet20_at", "head_at", 0.03)),
          (("resnet20_cniiw_at", "head_cniiw", 0.05), ("resnet20_at", "head_at", 0.03)))


def versus_table(pairs=VERSUS, *, n: int = 32, vote: str = "hard") -> str | None:
  """Markdown: a smoothed noisy model against the noise-free parent, paired by test image.

  Each model is attacked white-box on its own; the pairing is by image, and the interval's
  blocks merge both models' blocks (``stats.merge_blocks``).
  """
  from smoothjax import evaluation, stats  # pylint: disable=import-outside-toplevel
  lines = []
  for (ma, na, sa), (mb, nb, sb) in pairs:
    if not all((RESULTS / name / "points").is_dir() for name in (na, nb)):
      continue
    row = [f"`{ma}` σ = {sa:g}, n = {n}", f"`{mb}` σ = {sb:g}, n = {n}"]
    for kind in ("clean", "adv"):
      ca, ba = evaluation.load_correct(RESULTS / na, sigma=sa, vote=vote, n=n, kind=kind)
      cb, bb = evaluation.load_correct(RESULTS / nb, sigma=sb, vote=vote, n=n, kind=kind)
      d = stats.paired_difference(ca, cb, block_ids=stats.merge_blocks(ba, bb))
      row.append(f"{100 * d.diff:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]")
    lines.append("| " + " | ".join(row) + " |")
  if not lines:
    return None
  head = (f"| smoothed noisy model | noise-free parent | clean: difference ({vote}) "
          "| PGD-20: difference |")
  return "\n".join([head, "|" + " --- |" * 4] + lines)


# accuracy vs n on 1,000 images, 3 repeats: each model's PGD-20 and PGD-7 runs (results/NAME)
CURVES = {"cniw": ("cniw_n1000_pgd20", "cniw_n1000_pgd7"),
          "cniiw": ("cniiw_n1000_pgd20", "cniiw_n1000_pgd7"),
          "at": ("at_n1000_pgd20", "at_n1000_pgd7")}


def curve_records(names) -> list[dict]:
  """The measured runs of one model's curves, one list (clean records from each run)."""
  return [r for name in names if (RESULTS / f"{name}.json").exists() for r in load(name)]


def smoothing_table(curves=CURVES) -> str | None:
  """Markdown: the effect of smoothing, the largest ``n`` vs 1, per vote, from the curves' points.

  Per repeat, the accuracy at ``n`` minus that at ``n = 1`` on the same images and samples
  (one pass scores every ``n``); the cells give mean ± std over the repeats, and the paired 95%
  interval (``stats.paired_difference``, block t over the weight-noise blocks).
  """
  from smoothjax import evaluation, stats  # pylint: disable=import-outside-toplevel
  lines = []
  for key, names in curves.items():
    seen = set()
    for name in names:
      workdir = RESULTS / name
      rs = load(name) if (RESULTS / f"{name}.json").exists() else None
      if not rs or not (workdir / "points").is_dir():
        continue
      sigma, n = rs[0]["sigma"], max(r["n"] for r in rs)
      for kind in ("clean", "adv"):
        rows = [r for r in rs if (r["attack"] == "none") == (kind == "clean")]
        label = "clean" if kind == "clean" else attack_name(rows[0])
        if label in seen:  # every run rescored the clean images: keep the first
          continue
        seen.add(label)
        for vote in VOTES:
          c1, blocks = evaluation.load_correct(workdir, sigma=sigma, vote="hard", n=1, kind=kind)
          cn, _ = evaluation.load_correct(workdir, sigma=sigma, vote=vote, n=n, kind=kind)
          a1, an = 100 * c1.mean(axis=1), 100 * cn.mean(axis=1)
          d = stats.paired_difference(cn, c1, block_ids=blocks)
          lines.append(
              f"| `{MODELS[key]}` | {sigma:g} | {label} | {vote} | {n} "
              f"| {a1.mean():.1f} ± {a1.std(ddof=1):.1f} "
              f"| {an.mean():.1f} ± {an.std(ddof=1):.1f} "
              f"| {(an - a1).mean():+.1f} ± {(an - a1).std(ddof=1):.1f} "
              f"| [{100 * d.low:+.1f}, {100 * d.high:+.1f}] |")
  if not lines:
    return None
  head = ("| model | σ | attack | vote at n | n | n = 1 (hard) | at n | difference (mean ± std) "
          "| paired 95% interval |")
  return "\n".join([head, "|" + " --- |" * 9] + lines)


# PGD against the smoothed classifier (m = 8 draws per step) and plain PGD, the same 1,000
# images, seed and repeats as the CNI-W curves (results/NAME)
PGD_S = ("cniw_n1000_pgd7", "cniw_n1000_pgd20", "cniw_pgds4", "cniw_pgds8")


def pgd_s_table(names=PGD_S, *, n: int = 32, baseline: str = "cniw_n1000_pgd20") -> str | None:
  """Markdown: each attack's accuracy at n = 1 and ``n`` (three votes), and, per repeat, its
  difference to the ``baseline`` attack at ``n`` (hard vote) on the same images: mean ± std
  over the repeats and the paired 95% interval (block t over the merged noise blocks)."""
  from smoothjax import evaluation, stats  # pylint: disable=import-outside-toplevel
  if not all((RESULTS / f"{name}.json").exists() for name in (baseline, *names)):
    return None
  sigma = 0.0
  cb, bb = evaluation.load_correct(RESULTS / baseline, sigma=sigma, vote="hard", n=n, kind="adv")
  base = attack_name(next(r for r in load(baseline) if r["attack"] != "none"))
  lines = []
  for name in names:
    rs = [r for r in load(name) if r["attack"] != "none"]
    k, m = rs[0]["steps"], rs[0]["attack_samples"]

    def cell(vote, at, rs=rs):
      r = next(r for r in rs if r["vote"] == vote and r["n"] == at)
      return f"{100 * r['accuracy']:.1f} ± {100 * r['accuracy_std']:.1f}"

    ca, ba = evaluation.load_correct(RESULTS / name, sigma=sigma, vote="hard", n=n, kind="adv")
    d = stats.paired_difference(ca, cb, block_ids=stats.merge_blocks(ba, bb))
    diff = 100 * (ca.mean(axis=1) - cb.mean(axis=1))
    lines.append(f"| {attack_name(rs[0])} | {m} | {k * m} | {cell('hard', 1)} | "
                 + " | ".join(cell(v, n) for v in VOTES)
                 + f" | {diff.mean():+.1f} ± {diff.std(ddof=1):.1f} "
                 f"[{100 * d.low:+.1f}, {100 * d.high:+.1f}] |")
  head = (f"| attack | m | gradients k·m | n = 1 | n = {n} hard | n = {n} soft | n = {n} weighted "
          f"| − {base} at n = {n} (hard) |")
  return "\n".join([head, "|" + " --- |" * 8] + lines)


def without_ci(r: dict) -> dict:
  """A record without its confidence interval (see :func:`relabel` for why plots drop it)."""
  return {k: v for k, v in r.items() if not k.startswith("accuracy_ci")}


def relabel(records: list[dict]) -> list[dict]:
  """Records of the three votes whose ``attack`` names its steps (PGD-7 and PGD-20 apart).

  The confidence intervals are left out of the plots: with one weight-noise draw per block of
  256 images, 200-1,000 images make 1-4 blocks and the block intervals span tens of points
  (they are in the JSON files); the error bars are the standard deviation over repeats.
  """
  out = []
  for r in records:
    if r["vote"] not in VOTES:
      continue
    r = without_ci(r)
    name = attack_name(r)
    r["attack"] = "none" if name == "clean" else name
    out.append(r)
  return out


def votes_plot(records: list[dict], path: pathlib.Path, *, sigma: float, title: str) -> None:
  """Accuracy vs n, one line per (vote, attack): the three-vote comparison."""
  plt = plots._pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  rows = [r for r in records if np.isclose(r["sigma"], sigma)]
  styles = {"hard": "-", "soft": "--", "weighted": ":"}
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  attacks = sorted({attack_name(r) for r in rows}, key=lambda a: (a != "clean", a))
  for i, a in enumerate(attacks):
    for v in VOTES:
      sel = sorted((r for r in rows if attack_name(r) == a and r["vote"] == v),
                   key=lambda r: r["n"])
      if sel:
        ax.errorbar([r["n"] for r in sel], [100 * r["accuracy"] for r in sel],
                    yerr=[100 * r["accuracy_std"] for r in sel], marker="o", ms=2, capsize=2,
                    linestyle=styles[v], color=colors[i % len(colors)], label=f"{a}, {v}")
  ax.set_xscale("log", base=2)
  plots._finish(plt, fig, ax, path, xlabel="number of samples n", ylabel="accuracy (%)",
                title=title, legend=True)


def training_plot(path: pathlib.Path) -> None:
  """CNI-W fine-tuning curves: BatchNorm frozen (the preset) against batch mode (abandoned)."""
  runs = {"frozen BatchNorm (preset)": "cniw_train_frozen_bn",
          "batch-mode BatchNorm (stopped at step 580)": "cniw_train_batch_bn"}
  plt = plots._pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for i, (label, name) in enumerate(runs.items()):
    run = metrics(name)
    if run is None:
      continue
    tr, va = run
    ax.plot([r["step"] for r in tr], [100 * r["adv_accuracy"] for r in tr], color=colors[i],
            alpha=0.5, label=f"{label}: FGSM training accuracy")
    ax.plot([r["step"] for r in va], [100 * r["accuracy"] for r in va], "o-", color=colors[i],
            label=f"{label}: validation, eval mode, n = 1")
  ax.axhline(68.45, color="gray", linestyle=":", label="parent resnet20_at, validation")
  ax.set_ylim(25, 72)
  ax.legend(fontsize="x-small", loc="lower right")
  plots._finish(plt, fig, ax, path, xlabel="training step (batch 128)", ylabel="accuracy (%)",
                title="CNI-W fine-tuning from resnet20_at", legend=False)


def seed1_plot(path: pathlib.Path) -> None:
  """Model 4's PGD-2 run: training accuracy and the per-epoch validation (clean, PGD-10)."""
  run = metrics("seed1_train")
  if run is None:
    return
  tr, va = run
  plt = plots._pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot([r["step"] for r in tr], [100 * r["adv_accuracy"] for r in tr], alpha=0.5,
          label="PGD-2 training accuracy")
  ax.plot([r["step"] for r in va], [100 * r["accuracy"] for r in va], "o-",
          label="validation, clean")
  ax.plot([r["step"] for r in va], [100 * r["pgd_accuracy"] for r in va], "s-",
          label="validation, PGD-10")
  plots._finish(plt, fig, ax, path, xlabel="training step (batch 128)", ylabel="accuracy (%)",
                title="resnet20_at_seed1: PGD-2 adversarial training", legend=True)


def certify_plot(path: pathlib.Path) -> None:
  """Certified accuracy vs L2 radius from a ``certify.tsv`` of ``python -m evaluate --certify``."""
  f = RESULTS / "cniiw_certify.tsv"
  if not f.exists():
    print(f"[report] {f.name}: not yet measured, skipped", file=sys.stderr)
    return
  lines = [line.split("\t") for line in f.read_text().splitlines()[1:] if line.strip()]
  per_sigma: dict[float, tuple[list[float], list[bool]]] = {}
  for _, _, _, radius, correct, sigma, _ in lines:
    radii, hits = per_sigma.setdefault(float(sigma), ([], []))
    radii.append(float(radius))
    hits.append(correct in ("True", "1"))
  plots.plot_certified_accuracy(per_sigma, path, title="resnet20_cniiw_at: certified accuracy "
                                f"(CERTIFY, {len(lines)} images, n = 10,000)")


def main() -> None:
  head = headline_table()
  if head:
    print("## Headline: all JPEG test images, one evaluation per model\n" + head + "\n")
  gains = gains_table()
  if gains:
    print("## Headline: paired differences (points, 95% interval over noise blocks)\n" + gains
          + "\n")
  versus = versus_table()
  if versus:
    print("## Headline: noisy models against the noise-free parent (paired by image)\n" + versus
          + "\n")
  repro = reproducibility_table()
  if repro:
    print("## Headline runs against the model cards (first 1,000 images)\n" + repro + "\n")
  training_plot(HERE / "cniw_training.png")
  seed1_plot(HERE / "seed1_training.png")
  certify_plot(HERE / "cniiw_certify.png")
  smoothing = smoothing_table()
  if smoothing:
    print("## The effect of smoothing, the largest n vs n = 1 (1,000 images, 3 repeats)\n"
          + smoothing + "\n")
  pgd_s = pgd_s_table()
  if pgd_s:
    print("## PGD-s against PGD, resnet20_cniw_at, σ = 0 (1,000 images, 3 repeats)\n" + pgd_s
          + "\n")
  for key, names in CURVES.items():
    rs = curve_records(names)
    if not rs:
      continue
    model, sigma = MODELS[key], rs[0]["sigma"]
    ns = sorted({r["n"] for r in rs})
    print(f"## {model}, sigma = {sigma:g} (1,000 images)\n" + table(rs, sigma=sigma, ns=ns) + "\n")
    seen, recs = set(), []
    for r in relabel(rs):
      k = (r["attack"], r["vote"], r["n"])
      if k not in seen:  # clean records appear in both runs: keep the first
        seen.add(k)
        recs.append(r)
    plots.plot_accuracy_vs_n(recs, HERE / f"{key}_accuracy_vs_n.png", vote="soft",
                             title=f"{model}: smoothed accuracy vs n (soft vote, σ = {sigma:g}, "
                             "1,000 images)")
    if key == "cniw":
      votes_plot([r for r in rs if r["attack"] == "none" or r["steps"] == 20],
                 HERE / "cniw_votes.png", sigma=sigma,
                 title="resnet20_cniw_at: the three votes (clean and PGD-20)")
  for name in ("cniw_sigma", "cniiw_sigma", "at_sigma"):
    rs = load(name)
    if rs:
      ns = sorted({r["n"] for r in rs})
      for s in sorted({r["sigma"] for r in rs}):
        print(f"## {name}, sigma = {s:g}\n" + table(rs, sigma=s, ns=ns) + "\n")
      model = MODELS[name.split("_")[0]]
      plots.plot_accuracy_vs_sigma(relabel(rs), HERE / f"{name}.png",
                                   title=f"{model}: accuracy vs σ (n = {max(ns)})")
  for path in sorted(RESULTS.glob("*.json")):  # the single evaluations: every sigma and n
    name = path.stem
    if name.startswith(("cniw_n_", "attack_vs", "head_")) or "_n1000_" in name \
        or name.endswith(("_sigma", "_checks")):
      continue
    rs = json.loads(path.read_text())
    ns = sorted({r["n"] for r in rs})
    for s in sorted({r["sigma"] for r in rs}):
      print(f"## {name}, sigma = {s:g}\n" + table(rs, sigma=s, ns=ns) + "\n")
  for path in sorted(RESULTS.glob("*_checks.json")):
    print(f"## {path.stem} (gradient-masking checks)")
    for c in json.loads(path.read_text()):
      print(f"- {c['check']}: {'passed' if c['passed'] else 'FAILED'} ({c['detail']})")
    print()
  by_limit: dict[int, list[dict]] = {}  # attack vs compute, one figure per image count
  for path in sorted(RESULTS.glob("attack_vs_compute*.json")):
    data = json.loads(path.read_text())
    by_limit.setdefault(data["settings"]["limit"], []).extend(map(without_ci, data["rows"]))
  for limit, rows in sorted(by_limit.items()):
    name = "attack_vs_compute.png" if limit == 200 else f"attack_vs_compute_{limit}.png"
    plots.plot_attack_vs_compute(rows, HERE / name, title="resnet20_cniw_at: attack vs compute "
                                 f"({limit:,} images, hard vote)")
    labels = sorted({r["label"] for r in rows}, key=lambda lbl: int(lbl.split("=")[1]))
    print(f"## Attack vs compute ({limit:,} images; hard vote)\n| attack | k | m | compute | "
          + " | ".join(labels) + " |\n|" + " --- |" * (4 + len(labels)))
    for (a, k, m), group in itertools.groupby(rows, lambda r: (r["attack"], r["steps"],
                                                              r["samples"])):
      acc = {r["label"]: f"{100 * r['accuracy']:.1f}" for r in group}
      print(f"| {a} | {k} | {m} | {k * m} | " + " | ".join(acc.get(lbl, "") for lbl in labels)
            + " |")
    print()


if __name__ == "__main__":
  main()
