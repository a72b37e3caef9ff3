"""``python -m smoothjax.cli.attacks``: accuracy against attack compute k * m (Fig. 0.B.3).

Also ``python -m smoothjax.attacks``. Writes a PNG and a JSON of the rows of
:func:`smoothjax.attacks.attack_vs_compute`.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Sequence

import jax
import numpy as np

from smoothjax import attacks, plots, stats
from smoothjax._utils import parse_fraction

__all__ = ["main"]

_ATTACKS = ("pgd", "epgd", "smoothadv", "pgd_s")  # those attack_vs_compute runs


def _fraction(text: str) -> float:
  try:
    return parse_fraction(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None


def _budgets(text: str) -> list[tuple[int, int]]:
  out = []
  for part in text.split(","):
    k, sep, m = part.strip().partition("x")
    if not (sep and k.isdigit() and m.isdigit() and int(k) >= 1 and int(m) >= 1):
      raise argparse.ArgumentTypeError(f"budget {part!r} must be KxM, e.g. 4x8 (k steps, m "
                                       "samples)")
    out.append((int(k), int(m)))
  return out


def main(argv: Sequence[str] | None = None) -> int:
  """``python -m smoothjax.cli.attacks``: accuracy vs attack compute k*m (Fig. 0.B.3), PNG + JSON.

  Example (the SIAM ResNet-20 with Gaussian input noise of std 0.05 pixels)::

    python -m smoothjax.cli.attacks \\
      --checkpoint=../shared/weights/siam/resnet20_regular_model_best.pth.tar \\
      --dataset=npz:../shared/data/cifar10_lossless_3k.npz --limit=200 --sigma=0.05 \\
      --eps=2/255 --n=1,32 --out=docs/attack_vs_compute.png
  """
  ap = argparse.ArgumentParser(prog="python -m smoothjax.cli.attacks",
                               description="Accuracy against attack compute k*m (PGD, EPGD, "
                               "SmoothAdv, PGD-s), with and without smoothing.")
  ap.add_argument("--checkpoint", required=True, help="as python -m evaluate --checkpoint")
  ap.add_argument("--noise", default=None, help="the model's noise when the file has none")
  ap.add_argument("--dataset", default="cifar10")
  ap.add_argument("--limit", type=int, default=200)
  ap.add_argument("--sigma", type=_fraction, default=None,
                  help="input-noise std (default: the model's own)")
  ap.add_argument("--sigma_space", choices=("pixel", "normalized"), default="pixel")
  ap.add_argument("--eps", type=_fraction, default=8 / 255)
  ap.add_argument("--norm", choices=attacks.NORMS, default="linf")
  ap.add_argument("--step_size", type=_fraction, default=None)
  ap.add_argument("--budgets", type=_budgets,
                  default=_budgets("1x1,2x1,4x1,8x1,16x1,1x4,2x4,4x4"))
  ap.add_argument("--attacks", default="pgd,epgd,smoothadv,pgd_s",
                  help="comma-separated, of pgd, epgd, smoothadv (Salman et al.'s fixed draws), "
                  "pgd_s (PGD on the soft-smoothed classifier, fresh draws); each attack's "
                  "key follows its position in the list")
  ap.add_argument("--n", default="1,32", help="smoothing sample counts scored (hard vote)")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--batch_size", type=int, default=256)
  ap.add_argument("--out", default="attack_vs_compute.png")
  args = ap.parse_args(argv)

  from smoothjax import checkpoints, data, smoothing  # heavier imports, CLI only

  try:
    ns = tuple(sorted({int(v) for v in args.n.split(",")}))
    if min(ns) < 1:
      raise ValueError
  except ValueError:
    ap.error(f"--n must be positive integers, got {args.n!r}")
  names = tuple(a.strip() for a in args.attacks.split(","))
  unknown = [a for a in names if a not in _ATTACKS]
  if unknown or len(set(names)) != len(names):
    ap.error(f"--attacks must be distinct names among {', '.join(_ATTACKS)}; got "
             f"{args.attacks!r}")
  try:
    model, _ = checkpoints.load_model(args.checkpoint, noise=args.noise)
    ds = data.load_dataset(args.dataset)
  except ValueError as e:  # CheckpointError, DatasetError
    print(f"error: {e}", file=sys.stderr)
    return 2
  x, y = ds.split("test")
  x = np.asarray(data.to_float(x[: args.limit]))
  y = np.asarray(y[: args.limit])
  key = jax.random.key(args.seed)
  logits_fn = smoothing.make_logits_fn(model, sigma=args.sigma, sigma_space=args.sigma_space)

  def accuracy_fn(xa):
    votes = smoothing.sample_votes(jax.random.fold_in(key, 1), model, xa, sigma=args.sigma,
                                   sigma_space=args.sigma_space, prefixes=ns, votes=("hard",),
                                   batch_size=args.batch_size)
    correct = votes.predictions("hard") == y[None, :]  # (len(ns), images)
    blocks = smoothing.noise_blocks(np.arange(len(y)))  # the blocks sample_votes drew with
    return {f"n={n}": stats.accuracy_ci(c, block_ids=blocks) for n, c in zip(ns, correct)}

  rows = attacks.attack_vs_compute(logits_fn, x, y, key=jax.random.fold_in(key, 0), eps=args.eps,
                           budgets=args.budgets, attacks=names,
                           accuracy_fn=accuracy_fn, step_size=args.step_size, norm=args.norm,
                           batch_size=args.batch_size)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  sigma = "model's own" if args.sigma is None else f"{args.sigma:g} ({args.sigma_space})"
  plots.plot_attack_vs_compute(rows, out, title=f"eps={args.eps:.4g} {args.norm}, sigma={sigma}, "
                         f"{len(x)} images")
  for r in rows:
    print(f"{r['attack']:10s} k={r['steps']:<3d} m={r['samples']:<3d} compute={r['compute']:<4d}"
          f" {r.get('label', ''):8s} accuracy={100 * r['accuracy']:.1f}%")
  settings = {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(args).items()}
  out.with_suffix(".json").write_text(json.dumps({"settings": settings, "rows": rows},
                                                 indent=1) + "\n")
  print(f"wrote {out} and {out.with_suffix('.json')}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
