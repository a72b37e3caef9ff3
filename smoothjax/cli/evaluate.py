"""``python -m evaluate``: evaluate a smoothed classifier (flags and records: README.md).

Examples::

  # clean accuracy of the reference's ResNet-20 (no noise), sigma = 0, one sample
  python -m evaluate --checkpoint=../shared/weights/siam/resnet20_regular_model_best.pth.tar \\
      --dataset=npz:../shared/data/cifar10_lossless_3k.npz --sigma=0 --n=1 --workdir=runs/siam0

  # the accuracy-vs-n curve at sigma = 0.12 (one pass of 256 samples), every vote, 3 repeats
  python -m evaluate --checkpoint=... --dataset=npz:... --sigma=0.12 \\
      --n=1,2,4,8,16,32,64,128,256 --repeats=3 --limit=200 --workdir=runs/siam_curve

  # Cohen et al. certification
  python -m evaluate --checkpoint=... --sigma=0.25 --certify --n0=100 --certify_n=10000 \\
      --limit=100 --workdir=runs/cert

Without ``--checkpoint``, ``python -m evaluate`` is the quick start (``python -m
smoothjax.quickstart``): a shipped pretrained model on the shipped CIFAR-10 sample, offline.

Bad input prints one line on stderr and exits with status 2, before anything is written.
``evaluate/__main__.py`` and the ``smoothjax-evaluate`` console script call :func:`main`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

__all__ = ["build_parser", "settings_from_args", "main"]

_DESCRIPTION = """\
Smoothed inference (Nemcovsky et al.) of a CIFAR classifier: accuracy of the Monte-Carlo
smoothed classifier for every sample count n in --n (all from one pass of max(n) samples) and
every vote, for each input-noise sigma, optionally under an attack, and Cohen et al.'s
certification. Writes results.json, results.csv, plots/*.png (and certify.tsv,
sanity_checks.json) to --workdir; a rerun of the same command resumes from finished points.
Flags take the form --flag=value; lists are comma-separated; fractions like 8/255 are accepted
wherever a float is."""

_EPILOG = """\
examples:
  # the quick start (no flags): a shipped pretrained model on the shipped CIFAR-10 sample
  python -m evaluate
  # clean accuracy of the reference implementation's ResNet-20 (sigma = 0, one sample)
  python -m evaluate --checkpoint=../shared/weights/siam/resnet20_regular_model_best.pth.tar \\
      --dataset=npz:../shared/data/cifar10_lossless_3k.npz --sigma=0 --n=1 --workdir=runs/siam0
  # accuracy vs n at sigma = 0.12 (normalised units, as the reference), every vote, 3 repeats
  python -m evaluate --checkpoint=... --dataset=... --sigma=0.12 --sigma_space=normalized \\
      --n=1,2,4,8,16,32,64,128,256 --repeats=3 --limit=200 --workdir=runs/curve
  # PGD-7 at 8/255 against the smoothed classifier
  python -m evaluate --checkpoint=runs/cniw --attack=pgd --eps=8/255 --steps=7 --workdir=...
  # Cohen et al. certification
  python -m evaluate --checkpoint=... --sigma=0.25 --certify --certify_n=10000 --limit=100 \\
      --workdir=runs/cert

exit status: 0 on success; 2 on bad input (one line on stderr, nothing written)."""


class _Parser(argparse.ArgumentParser):
  """argparse with one-line errors (exit status 2)."""

  def error(self, message):  # noqa: D401
    self.exit(2, f"evaluate: error: {message}\n")


def _bool(s: str) -> bool:
  t = str(s).strip().lower()
  if t in ("1", "true", "yes", "on"):
    return True
  if t in ("0", "false", "no", "off"):
    return False
  raise argparse.ArgumentTypeError(f"{s!r} is not a boolean (true/false)")


def _int(s: str) -> int:
  try:
    return int(s)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None


def _list(value) -> str:
  return value if isinstance(value, str) else ",".join(str(v) for v in value)


def build_parser() -> argparse.ArgumentParser:
  """The argument parser of ``python -m evaluate``.

  Its defaults are :class:`smoothjax.evaluation.EvalSettings`' (the one place they are set).
  """
  from smoothjax import evaluation  # pylint: disable=import-outside-toplevel
  from smoothjax.attacks._nattack import LI2019_BUDGET  # pylint: disable=import-outside-toplevel
  d = {f.name: f.default for f in dataclasses.fields(evaluation.EvalSettings)}
  budget = (f"the default {d['nattack_population']} x {d['nattack_iterations']} is a CPU-sized "
            f"budget far below Li et al.'s {LI2019_BUDGET[0]} x {LI2019_BUDGET[1]} (the default "
            f"of smoothjax.attacks.nattack); records say which ran (nattack_li2019_budget)")
  p = _Parser(prog="python -m evaluate", description=_DESCRIPTION, epilog=_EPILOG,
              formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
  _model_and_data_flags(p, d)
  _smoothing_and_certify_flags(p, d)
  _attack_flags(p, d, budget)
  _output_flags(p, d)
  return p


def _model_and_data_flags(p: argparse.ArgumentParser, d: dict) -> None:
  g = p.add_argument_group("model")
  g.add_argument("--checkpoint", default=d["checkpoint"], metavar="PATH",
                 help="pretrained:NAME, a PyTorch file (.pth, .pth.tar, .th; reference, "
                      "akamaster, Cohen or SmoothAdv layout), a train workdir (best checkpoint "
                      "if kept, else latest) or an orbax step dir; omit for the quick start "
                      "(python -m smoothjax.quickstart: a shipped model on the shipped sample)")
  g.add_argument("--step", type=_int, default=d["step"], metavar="N",
                 help="step of a train workdir (default: best, else latest)")
  g.add_argument("--arch", default=d["arch"], metavar="NAME",
                 help="resnet20|32|44|56|110, wrn34_10, wrn28_4: only when the checkpoint does "
                      "not say")
  g.add_argument("--noise", default=d["noise"], metavar="SPEC",
                 help="model noise when the checkpoint does not record it: none (default for "
                      "PyTorch files), pni_w, pni_a, cni_w, combined with '+'")
  g.add_argument("--normalization", default=d["normalization"], metavar="NAME",
                 help="auto (from the checkpoint family; cohen for Cohen-format files), "
                      "reference, akamaster, cohen|smoothadv (Cohen et al.'s NormalizeLayer | "
                      "SmoothAdv's InputCenterLayer, for Cohen-format files) or MEAN_R,MEAN_G,"
                      "MEAN_B,STD_R,STD_G,STD_B")
  g = p.add_argument_group("data")
  g.add_argument("--dataset", default=d["dataset"], metavar="SPEC",
                 help="cifar10 (default), cifar100 (a prepared tfds copy, else the official "
                      "archive, downloaded once; no TensorFlow needed), npz:PATH, folder:PATH "
                      "(dir or .tar), synthetic[:N], imagenet_folder:PATH[::SPLIT] or "
                      "imagenet[:SPLIT] (ImageNet-size: the first --limit images are decoded)")
  g.add_argument("--data_dir", default=d["data_dir"], metavar="DIR", help="tfds data directory")
  g.add_argument("--split", default=d["split"], metavar="NAME", help="test (default) or train")
  g.add_argument("--limit", type=_int, default=d["limit"], metavar="N",
                 help="only the first N images of the split")


def _smoothing_and_certify_flags(p: argparse.ArgumentParser, d: dict) -> None:
  g = p.add_argument_group("smoothing")
  g.add_argument("--sigma", default=_list(d["sigmas"]), metavar="LIST",
                 help="Gaussian input-noise stds (default 0), in --sigma_space units")
  g.add_argument("--sigma_space", default=d["sigma_space"], choices=("pixel", "normalized"),
                 help="pixel: [0,1] pixel units (Cohen et al., default); normalized: after the "
                      "per-channel normalisation (the reference implementation)")
  g.add_argument("--n", default=_list(d["ns"]), metavar="LIST",
                 help="Monte-Carlo sample counts, all from one pass of max(n) samples "
                      "(default 1,2,4,...,512)")
  g.add_argument("--vote", default=_list(d["votes"]), metavar="LIST",
                 help="hard (majority of argmax), soft (mean softmax, the paper), soft_logits "
                      "(mean logits, the reference), weighted (rank weights 2^-r), "
                      "weighted_topK; default: the first four")
  g.add_argument("--repeats", type=_int, default=d["repeats"], metavar="R",
                 help="independent evaluations: accuracy = mean, accuracy_std = sample std")
  g.add_argument("--seed", type=_int, default=d["seed"], metavar="S")
  g.add_argument("--batch_size", type=_int, default=d["batch_size"], metavar="B",
                 help="images x samples per forward pass (default 256)")
  g.add_argument("--noise_block", type=_int, default=d["noise_block"], metavar="N",
                 help="images per weight/activation-noise draw: image i uses the draw of "
                      "block i // N (default 256); 0: one draw shared by all images (the "
                      "reference's granularity)")
  g = p.add_argument_group("certification (Cohen et al.)")
  g.add_argument("--certify", type=_bool, nargs="?", const=True, default=d["certify"],
                 help="run CERTIFY at every sigma > 0; radii are L2 in [0,1] pixel units")
  g.add_argument("--n0", type=_int, default=d["n0"], help="selection samples (default 100)")
  g.add_argument("--certify_n", type=_int, default=d["certify_n"],
                 help="estimation samples (default 100000)")
  g.add_argument("--alpha", default=d["alpha"], help="failure probability (default 0.001)")


def _attack_flags(p: argparse.ArgumentParser, d: dict, budget: str) -> None:
  g = p.add_argument_group("attack")
  g.add_argument("--attack", default=d["attack"], metavar="NAME",
                 help="none (default), fgsm, pgd, epgd, smoothadv (Salman et al.: fixed noise "
                      "draws), pgd_s, transfer, nattack, apgd_ce, apgd_dlr, autoattack_rand "
                      "(Croce & Hein's APGD-CE / APGD-DLR with EOT gradients, and their "
                      "per-image worst case judged by the smoothed classifier)")
  g.add_argument("--eps", default=d["eps"], metavar="E",
                 help="attack radius in [0,1] pixel units (default 8/255)")
  g.add_argument("--norm", default=d["norm"], metavar="linf|l2")
  g.add_argument("--steps", type=_int, default=d["steps"], metavar="K",
                 help="attack iterations (default 7; fgsm 1; APGD: --apgd_preset's)")
  g.add_argument("--step_size", default=d["step_size"], metavar="A",
                 help="step size in [0,1] pixel units (default: the attack's, eps/4 for PGD)")
  g.add_argument("--attack_samples", type=_int, default=d["attack_samples"], metavar="M",
                 help="noise draws per gradient (default 8 for epgd/smoothadv/pgd_s; APGD: "
                      "--apgd_preset's EOT draws; else 1)")
  g.add_argument("--restarts", type=_int, default=d["restarts"], metavar="R")
  g.add_argument("--apgd_preset", default=d["apgd_preset"], choices=("cpu", "standard", "rand"),
                 help="budget of apgd_ce/apgd_dlr/autoattack_rand, the defaults of --steps and "
                      "--attack_samples: cpu (default) = 20 steps x 4 EOT draws, 1 restart; "
                      "standard = 100 steps x 1 draw (deterministic models); rand = AutoAttack's "
                      "version='rand': 100 steps, 1 restart, 20 EOT draws")
  g.add_argument("--fixed_noise", type=_bool, nargs="?", const=True, default=d["fixed_noise"],
                 help="keep SmoothAdv's noise draws fixed across steps (default: true for "
                      "smoothadv, as Salman et al.; pgd_s draws fresh noise)")
  g.add_argument("--final_draws", type=_int, default=d["final_draws"], metavar="R",
                 help="evaluate the attacked images R times with independent keys: accuracy "
                      "is the mean, accuracy_all_draws counts an image only if all R are "
                      "right (default 1)")
  g.add_argument("--source_checkpoint", default=d["source_checkpoint"], metavar="PATH",
                 help="transfer: the model the examples are crafted on; with --sanity_checks "
                      "(any attack): the source of their transfer check")
  g.add_argument("--nattack_population", type=_int, default=d["nattack_population"],
                 metavar="P",
                 help=f"NAttack candidates per iteration (default {d['nattack_population']}); "
                      f"{budget}")
  g.add_argument("--nattack_iterations", type=_int, default=d["nattack_iterations"],
                 metavar="T",
                 help=f"NAttack iterations (default {d['nattack_iterations']}); {budget}")
  g.add_argument("--nattack_n", type=_int, default=d["nattack_n"], metavar="N",
                 help="Monte-Carlo samples of each NAttack query (one smoothed prediction; also "
                      "autoattack_rand's judge); 0 (default): the smallest --n >= 8, else the "
                      "largest --n. The attacked images are scored afresh at every --n")
  g.add_argument("--nattack_confirm", type=_int, default=d["nattack_confirm"], metavar="C",
                 help="NAttack counts a misclassified candidate as a success only if C fresh "
                      f"re-queries all misclassify it too (default {d['nattack_confirm']}); "
                      "otherwise it keeps searching. 0: the first misclassified query stops")
  g.add_argument("--sanity_checks", type=_bool, nargs="?", const=True,
                 default=d["sanity_checks"],
                 help="run the gradient-masking checks of smoothjax.attacks (large eps, more "
                      "steps, FGSM vs PGD, transfer with --source_checkpoint) at the first "
                      "repeat of every sigma; written to workdir/sanity_checks.json")
  g.add_argument("--sanity_nattack", type=_bool, nargs="?", const=True,
                 default=d["sanity_nattack"],
                 help="also compare NAttack (--nattack_* budget) with white-box PGD in the "
                      "sanity checks (costly; always on with --attack=nattack)")


def _output_flags(p: argparse.ArgumentParser, d: dict) -> None:
  g = p.add_argument_group("output")
  g.add_argument("--workdir", required=True, metavar="DIR",
                 help="results.json, results.csv, plots/*.png, certify.tsv, resume state")
  g.add_argument("--progress", type=_bool, nargs="?", const=True, default=d["progress"],
                 help="progress bars on stderr (default true)")
  g.add_argument("--verbose", action="store_true",
                 help="on an error, also print its full traceback and causes (and let "
                      "libraries' background errors through)")


def settings_from_args(args: argparse.Namespace):
  """Parsed flags -> :class:`smoothjax.evaluation.EvalSettings` (validated later)."""
  from smoothjax import evaluation  # pylint: disable=import-outside-toplevel
  return evaluation.EvalSettings(
      checkpoint=args.checkpoint, arch=args.arch, noise=args.noise,
      normalization=args.normalization, step=args.step, dataset=args.dataset,
      data_dir=args.data_dir, split=args.split, limit=args.limit,
      sigmas=evaluation.parse_float_list(args.sigma, name="sigma"),
      sigma_space=args.sigma_space, ns=evaluation.parse_int_list(args.n, name="n"),
      votes=tuple(v.strip() for v in _list(args.vote).split(",")), repeats=args.repeats,
      seed=args.seed, batch_size=args.batch_size, noise_block=args.noise_block,
      certify=args.certify, n0=args.n0,
      certify_n=args.certify_n, alpha=evaluation.parse_float(args.alpha, name="alpha"),
      attack=args.attack, eps=evaluation.parse_float(args.eps, name="eps"), norm=args.norm,
      steps=args.steps,
      step_size=(None if args.step_size is None
                 else evaluation.parse_float(args.step_size, name="step_size")),
      attack_samples=args.attack_samples, restarts=args.restarts,
      source_checkpoint=args.source_checkpoint, nattack_population=args.nattack_population,
      nattack_iterations=args.nattack_iterations, nattack_n=args.nattack_n,
      nattack_confirm=args.nattack_confirm, sanity_checks=args.sanity_checks,
      sanity_nattack=args.sanity_nattack, apgd_preset=args.apgd_preset,
      fixed_noise=args.fixed_noise, final_draws=args.final_draws,
      workdir=args.workdir, progress=args.progress)


def _fmt(values) -> str:
  return "?" if values is None else ",".join(f"{float(v):.4g}" for v in values)


def _is_quickstart(argv) -> bool:
  """No ``--checkpoint`` and no ``-h`` / ``--help``: the quick start."""
  return not any(a in ("-h", "--help") or a == "--checkpoint" or a.startswith("--checkpoint=")
                 for a in argv)


def _note_dropped_input_noise(model, argv) -> None:
  """One stderr line when the model carries input noise that ``--sigma``'s default drops.

  ``--sigma`` replaces the model's own input noise, and its default is 0 (the contract's), so a
  CNI-I+W model evaluated without ``--sigma`` runs without the noise it was trained with.
  """
  from smoothjax import smoothing  # pylint: disable=import-outside-toplevel
  cfg = smoothing.graphdef_config(*model) if isinstance(model, tuple) else model.config
  own = float(cfg.noise.input_sigma)
  if own > 0 and not any(a == "--sigma" or a.startswith("--sigma=") for a in argv):
    print(f"evaluate: note: the model carries Gaussian input noise σ={own:g} "
          f"({cfg.noise.sigma_space}); --sigma (default 0) replaces it, so this run has none: "
          f"pass --sigma={own:g} to keep it", file=sys.stderr, flush=True)


def main(argv=None) -> int:
  """Runs ``python -m evaluate``; returns the exit status (0 ok, 2 bad input).

  Without ``--checkpoint`` (and without ``--help``) it runs the quick start
  (:func:`smoothjax.quickstart.main`, which takes the same flags with its own defaults).
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  if _is_quickstart(argv):
    from smoothjax import quickstart  # pylint: disable=import-outside-toplevel
    return quickstart.main(argv)
  args = build_parser().parse_args(argv)
  # pylint: disable-next=import-outside-toplevel
  from smoothjax._utils import print_error_details, quiet_closed_event_loops
  if not args.verbose:
    quiet_closed_event_loops()
  from smoothjax import evaluation  # pylint: disable=import-outside-toplevel
  try:
    settings = settings_from_args(args)
    prepared = evaluation.prepare(settings)
  except evaluation.EvaluationError as e:
    print(f"evaluate: error: {e}", file=sys.stderr)
    if args.verbose:
      print_error_details(e)
    return 2
  s = prepared.settings
  info = prepared.info or {}
  norm = info.get("normalization") or {}
  if norm:
    print(f"model: {info.get('checkpoint', s.checkpoint)} ({info.get('family', '?')}, "
          f"{info.get('arch', '?')}); normalization: {norm.get('source', '?')} (mean "
          f"{_fmt(norm.get('mean'))}, std {_fmt(norm.get('std'))})", flush=True)
  _note_dropped_input_noise(prepared.model, argv)
  records = evaluation.run(prepared)
  n_max = max(s.ns)
  for r in records:
    if r["vote"] == "certify":
      continue
    if r["n"] == n_max and r["vote"] == s.votes[0]:
      print(f"σ={r['sigma']:g} {r['attack']:>9} {r['vote']:>11} n={r['n']:<6} "
            f"accuracy={100 * r['accuracy']:.2f}% ± {100 * r['accuracy_std']:.2f} "
            f"top5={100 * r['top5']:.2f}%")
  for r in records:
    if r["vote"] == "certify" and r["radius"] in (0.0, 0.25, 0.5):
      print(f"σ={r['sigma']:g} certified accuracy at radius {r['radius']:g}: "
            f"{100 * r['accuracy']:.2f}% (abstain {100 * r['abstain']:.1f}%)")
  print(f"wrote {len(records)} records to {s.workdir}/results.json")
  return 0


if __name__ == "__main__":
  sys.exit(main())
