"""The quick start: what smoothjax is for, in one offline command of under three minutes.

:func:`run` evaluates a pretrained noisy ResNet-20 (default: :data:`smoothjax.pretrained.DEFAULT`)
on the CIFAR-10 test sample shipped with the package (:func:`smoothjax.pretrained.sample_path`,
the first 500 test images): the smoothed classifier's accuracy for n = 1, 2, 4, ..., 64 Monte-Carlo
samples and every vote, on clean images and under PGD-7 at eps = 8/255 (L-inf), through the same
driver as ``python -m evaluate`` (:func:`smoothjax.evaluation.run`). It prints a table and writes
``results.json``, ``results.csv``, ``table.txt`` and ``plots/*.png`` to the workdir. A rerun in
the same workdir reuses the finished work.

Command line::

  python -m smoothjax.quickstart                       # the defaults, into runs/quickstart
  python -m smoothjax.quickstart --checkpoint=PATH --limit=100 --workdir=runs/mine

From Python::

  from smoothjax import quickstart
  result = quickstart.run("runs/quickstart")
  print(result.table)
"""

from __future__ import annotations

import argparse
import dataclasses
import fractions
import os
import pathlib
import sys
import textwrap
import time
from typing import Any, Iterable, Mapping, Sequence, TextIO

from smoothjax import pretrained

__all__ = ["DEFAULT_NS", "QuickstartResult", "run", "format_table", "format_eps", "main"]

DEFAULT_NS = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_WORKDIR = "runs/quickstart"


@dataclasses.dataclass
class QuickstartResult:
  """What :func:`run` did.

  Attributes:
    records: the records of ``results.json`` (see :func:`smoothjax.evaluation.run`).
    table: the printed table (:func:`format_table`).
    workdir: the output directory.
    files: the files written (results, table, plots).
    seconds: wall time of the run.
    settings: the :class:`smoothjax.evaluation.EvalSettings` it ran with.
  """

  records: list
  table: str
  workdir: pathlib.Path
  files: list
  seconds: float
  settings: Any


def format_eps(eps: float) -> str:
  """An attack radius in readable units: ``8/255`` when it is a multiple of 1/255."""
  k = float(eps) * 255
  if abs(k - round(k)) < 1e-6:
    return f"{round(k)}/255"
  f = fractions.Fraction(float(eps)).limit_denominator(1000)
  return f"{f.numerator}/{f.denominator}" if abs(float(f) - eps) < 1e-9 else f"{eps:.4g}"


def _attack_label(r: Mapping) -> str:
  if r.get("attack", "none") == "none":
    return "clean"
  name = {"pgd": "PGD", "epgd": "EPGD", "fgsm": "FGSM", "smoothadv": "SmoothAdv",
          "pgd_s": "PGD-s", "nattack": "NAttack", "transfer": "transfer"}.get(
              r["attack"], r["attack"])
  steps = r.get("steps")
  if steps and r["attack"] not in ("fgsm", "nattack"):
    name = f"{name}-{steps}"
  label = f"{name}, eps={format_eps(r.get('eps', 0))}"
  if r.get("norm", "linf") != "linf":
    label += f" ({r['norm']})"
  if (r.get("attack_samples") or 1) > 1:
    label += f", m={r['attack_samples']}"
  return label


def format_table(records: Iterable[Mapping], *, votes: Sequence[str] | None = None,
                 percent: bool = True) -> str:
  """The accuracy records of an evaluation as text tables: rows n, columns votes.

  One table per (sigma, sigma_space), with one block per attack (``clean`` first), so that it
  fits 80 columns. Certification records are left out. With repeats, cells are ``mean±std``.

  Args:
    records: records of ``results.json`` (:func:`smoothjax.evaluation.run`).
    votes: the vote columns, in order (default: the votes of the records, in their order).
    percent: accuracies in percent (default) or as fractions.

  Returns:
    The tables, separated by a blank line (``""`` without accuracy records).

  Example::

    accuracy (%) of the smoothed classifier, input noise sigma=0 (pixel units), 500 images
    clean
       n  hard  soft  soft_logits  weighted
       1  33.4  33.4         33.4      33.4
    ...
    PGD-7, eps=8/255
       n  hard  soft  soft_logits  weighted
       1  13.0  13.0         13.0      13.0
  """
  rows = [r for r in records if r.get("vote") != "certify"]
  if not rows:
    return ""
  if votes is None:
    votes = []
    for r in rows:
      if r["vote"] not in votes:
        votes.append(r["vote"])
  scale = 100.0 if percent else 1.0
  groups: dict = {}
  for r in rows:
    groups.setdefault((r["sigma"], r.get("sigma_space", "pixel")), []).append(r)
  out = []
  for (sigma, space), grp in sorted(groups.items()):
    attacks = []
    for r in sorted(grp, key=lambda r: r.get("attack", "none") != "none"):
      a = _attack_label(r)
      if a not in attacks:
        attacks.append(a)
    cell = {(r["n"], _attack_label(r), r["vote"]): r for r in grp}
    ns = sorted({r["n"] for r in grp})
    repeats = max(int(r.get("repeats") or 1) for r in grp)

    def fmt(r):
      if r is None:
        return "-"
      s = f"{scale * r['accuracy']:.1f}" if percent else f"{r['accuracy']:.3f}"
      if repeats > 1:
        s += f"±{scale * r['accuracy_std']:.1f}" if percent else f"±{r['accuracy_std']:.3f}"
      return s

    unit = "pixel units" if space == "pixel" else "normalised units"
    num = grp[0].get("num_images")
    lines = [f"accuracy{' (%)' if percent else ''} of the smoothed classifier, input noise "
             f"sigma={sigma:g} ({unit})" + (f", {num} images" if num else "")
             + (f", mean±std over {repeats} repeats" if repeats > 1 else "")]
    for a in attacks:
      body = [[fmt(cell.get((n, a, v))) for v in votes] for n in ns]
      widths = [max([len(v)] + [len(b[j]) for b in body]) for j, v in enumerate(votes)]
      lines.append(a)
      lines.append(f"{'n':>4}" + "".join(f"  {v:>{w}}" for v, w in zip(votes, widths)))
      lines += [f"{n:>4}" + "".join(f"  {c:>{w}}" for c, w in zip(b, widths))
                for n, b in zip(ns, body)]
    out.append("\n".join(lines))
  return "\n\n".join(out)


def _attack_columns(s) -> dict:
  """The attack columns of the records that (validated) evaluation settings give."""
  return {"attack": s.attack, "eps": s.eps, "steps": s.steps,
          "attack_samples": s.attack_samples, "norm": s.norm}


def _default_checkpoint() -> str:
  return pretrained.PREFIX + pretrained.DEFAULT


def run(workdir: str | os.PathLike = DEFAULT_WORKDIR, *, checkpoint: str | None = None,
        limit: int | None = 500, ns: Sequence[int] = DEFAULT_NS,
        votes: Sequence[str] | None = None, sigma: float | None = None,
        attack: str = "pgd", eps: float = 8 / 255, steps: int = 7, dataset: str | None = None,
        batch_size: int = 256, seed: int = 0, progress: bool = True,
        out: TextIO | None = None) -> QuickstartResult:
  """Runs the quick start: accuracy vs n for every vote, clean and under attack.

  Args:
    workdir: the output directory (created).
    checkpoint: ``pretrained:NAME``, a train workdir, an orbax step directory or a PyTorch file
      (default: ``pretrained:`` :data:`smoothjax.pretrained.DEFAULT`).
    limit: the first ``limit`` images (default 500, the whole shipped sample; ``None``: all).
    ns: Monte-Carlo sample counts (all from one pass of ``max(ns)`` samples).
    votes: the votes (default: every vote of :data:`smoothjax.smoothing.VOTE_NAMES`).
    sigma: Gaussian input-noise std (default: the model's own ``input_sigma``, in its
      ``sigma_space``).
    attack: ``pgd`` (default), any attack of ``python -m evaluate``, or ``none``.
    eps: the attack radius in [0, 1] pixel units (default 8/255).
    steps: attack steps (default 7; the step size is the attack's default, eps/4 for PGD).
    dataset: a ``--dataset`` spec (default: the shipped sample, offline).
    batch_size: images x samples per forward pass.
    seed: the evaluation seed.
    progress: progress bars on stderr.
    out: where to print (default: stdout).

  Returns:
    A :class:`QuickstartResult`.

  Raises:
    smoothjax.evaluation.EvaluationError: a bad setting, checkpoint or dataset.
  """
  from smoothjax import checkpoints  # pylint: disable=import-outside-toplevel
  from smoothjax import evaluation  # pylint: disable=import-outside-toplevel
  from smoothjax import smoothing  # pylint: disable=import-outside-toplevel
  out = sys.stdout if out is None else out
  t0 = time.time()
  name = checkpoint or _default_checkpoint()
  try:
    path = pretrained.resolve(name)
  except pretrained.PretrainedError as e:
    raise evaluation.EvaluationError(f"checkpoint: {e}") from None
  try:
    model, info = checkpoints.load_model(path)
  except (ValueError, OSError) as e:
    raise evaluation.EvaluationError(f"checkpoint: {e}") from None
  noise = model.config.noise
  sigma_space = noise.sigma_space if sigma is None else "pixel"
  sigma = noise.input_sigma if sigma is None else sigma
  settings = evaluation.EvalSettings(
      checkpoint=name, dataset=dataset or pretrained.sample_spec(), split="test", limit=limit,
      sigmas=(sigma,), sigma_space=sigma_space, ns=tuple(ns),
      votes=tuple(votes or smoothing.VOTE_NAMES), seed=seed, batch_size=batch_size,
      attack=attack, eps=eps, steps=steps, workdir=str(workdir), progress=progress)
  prepared = evaluation.prepare(settings)
  s = prepared.settings
  card = pretrained.card(name) if pretrained.is_pretrained(name) else {}
  what = card.get("description") or f"{model.config.arch}, noise {noise.spec}"
  data = ("the CIFAR-10 test sample shipped with smoothjax" if dataset is None else s.dataset)
  num = len(prepared.y)
  attack_txt = ("clean images only" if s.attack == "none" else
                f"clean and under {_attack_label(_attack_columns(s))}, crafted once "
                "against the noisy model and voted on for every n")
  intro = (f"smoothjax quick start: {name} ({what}), on {num} images of {data}; n = "
           f"{', '.join(map(str, s.ns))}; votes {', '.join(s.votes)}; {attack_txt}.")
  print(textwrap.fill(intro, width=100, subsequent_indent="  "), file=out, flush=True)
  records = evaluation.run(prepared, log=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
  table = format_table(records, votes=s.votes)
  wd = pathlib.Path(s.workdir)
  (wd / "table.txt").write_text(table + "\n", encoding="utf-8")
  files = [wd / "results.json", wd / "results.csv", wd / "table.txt",
           *sorted((wd / "plots").glob("*.png"))]
  seconds = time.time() - t0
  print("", file=out)
  print(table, file=out)
  print("", file=out)
  print(f"done in {seconds:.0f} s. Files in {wd}/:", file=out)
  for f in files:
    print(f"  {f.relative_to(wd)}", file=out)
  ck = name if pretrained.is_pretrained(name) else "PATH"
  print(f"""
next steps:
  full CIFAR-10 test set (10,000 images; downloads CIFAR-10 once):
    python -m evaluate --checkpoint={ck} --dataset=cifar10 --n={','.join(map(str, s.ns))} \\
        --attack=pgd --eps=8/255 --steps=7 --workdir=runs/cifar10_full
  your own model (a train workdir, an orbax step directory or a PyTorch .pth file):
    python -m evaluate --checkpoint=PATH --dataset=cifar10 --workdir=runs/mine
  train one:  python -m train --config=train/configs/smoke.py --workdir=runs/smoke
  pretrained models: {', '.join(pretrained.list())} (--checkpoint=pretrained:NAME)""",
        file=out, flush=True)
  return QuickstartResult(records=records, table=table, workdir=wd, files=files,
                          seconds=seconds, settings=s)


def main(argv: Sequence[str] | None = None) -> int:
  """``python -m smoothjax.quickstart``; returns the exit status (0 ok, 2 bad input).

  The flags have the names and meanings of ``python -m evaluate``'s, with the quick start's
  defaults.
  """
  from smoothjax import evaluation  # pylint: disable=import-outside-toplevel

  def flag_bool(v):
    return str(v).strip().lower() in ("1", "true", "yes", "on")

  p = argparse.ArgumentParser(
      prog="python -m smoothjax.quickstart", allow_abbrev=False,
      description=("Evaluates a shipped pretrained model on the shipped CIFAR-10 sample "
                   "(offline): accuracy vs n for every vote, clean and under PGD-7 at 8/255."))
  p.add_argument("--workdir", default=DEFAULT_WORKDIR, help=f"default {DEFAULT_WORKDIR}")
  p.add_argument("--checkpoint", default=None,
                 help=f"default pretrained:{pretrained.DEFAULT}; also pretrained:NAME "
                      f"({', '.join(pretrained.list())}), a train workdir, a step dir, a .pth")
  p.add_argument("--dataset", default=None, help="default: the shipped sample")
  p.add_argument("--limit", type=int, default=500, help="default 500")
  p.add_argument("--n", default=",".join(map(str, DEFAULT_NS)), help="default 1,2,...,64")
  p.add_argument("--vote", default=None, help="default: every vote")
  p.add_argument("--sigma", default=None, help="default: the model's own input noise")
  p.add_argument("--attack", default="pgd", help="default pgd (none: clean only)")
  p.add_argument("--eps", default="8/255")
  p.add_argument("--steps", type=int, default=7)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--batch_size", type=int, default=256)
  p.add_argument("--progress", type=flag_bool, nargs="?", const=True, default=True)
  args = p.parse_args(argv)
  try:
    run(args.workdir, checkpoint=args.checkpoint, dataset=args.dataset, limit=args.limit,
        ns=evaluation.parse_int_list(args.n, name="n"),
        votes=None if args.vote is None else [v.strip() for v in args.vote.split(",")],
        sigma=None if args.sigma is None else evaluation.parse_float(args.sigma, name="sigma"),
        attack=args.attack, eps=evaluation.parse_float(args.eps, name="eps"), steps=args.steps,
        seed=args.seed, batch_size=args.batch_size, progress=args.progress)
  except evaluation.EvaluationError as e:
    print(f"quickstart: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
