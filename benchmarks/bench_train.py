"""Benchmark of training (issue 5): ResNet-20 SGD steps, JAX vs PyTorch eager, same run.

Run (about 6 minutes on a 2-core CPU; ``--quick`` well under a minute)::

  python -m benchmarks.bench_train            # batch 128, writes results/train.json
  python -m benchmarks.bench_train --quick    # batch 32, a few steps, results/train_quick.json

What it measures (images per second of one optimizer step, the same ResNet-20 on both sides:
reference layout, option-B shortcuts, no noise; SGD Nesterov 0.9, lr 0.1, weight decay 1e-4,
gradient-norm clipping 0.05 -- the reference's optimisation; no data augmentation on either
side, so the numbers compare the compute of a step):

1. ``clean``: one cross-entropy training step.
2. ``pgd7``: one Madry adversarial training step as the reference does it: PGD-7
   (eps 8/255, step 2/255, random start) on the model in eval mode, then
   ``0.5 CE(adv) + 0.5 CE(clean)`` with two train-mode forward passes.

JAX runs :func:`smoothjax.training.make_train_step` (one jitted, donated step; compilation is
excluded). PyTorch runs an eager loop written like the reference implementation
(``torch.set_num_threads(os.cpu_count())``). The ratio JAX / PyTorch is printed per mode.
``--noise=pni_w`` (or ``cni_w``) benchmarks the noisy models on the JAX side (PyTorch stays
plain). XLA flags can be tried through the ``XLA_FLAGS`` environment variable.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# PyTorch, written like the reference implementation.


def bench_torch(mode: str, batch: int, steps: int, warmup: int) -> float:
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(0)
  from tests import torch_reference  # pylint: disable=g-import-not-at-top
  model = torch_reference.CifarResNetTorch(20, 10, family="reference",
                                          mean=(0.491, 0.482, 0.447), std=(0.247, 0.243, 0.262))
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                        weight_decay=1e-4)
  x = torch.rand(batch, 3, 32, 32)
  y = torch.randint(0, 10, (batch,))
  eps, alpha = 8 / 255, 2 / 255

  def pgd(x, y):
    model.eval()
    xa = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(7):
      xa.requires_grad_(True)
      loss = F.cross_entropy(model(xa), y)
      g, = torch.autograd.grad(loss, xa)
      xa = torch.min(torch.max(xa.detach() + alpha * g.sign(), x - eps), x + eps).clamp(0, 1)
    model.train()
    return xa.detach()

  def step():
    if mode == "pgd7":
      xa = pgd(x, y)
      loss = 0.5 * F.cross_entropy(model(xa), y) + 0.5 * F.cross_entropy(model(x), y)
    else:
      loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
    opt.step()

  model.train()
  for _ in range(warmup):
    step()
  t = time.perf_counter()
  for _ in range(steps):
    step()
  return steps * batch / (time.perf_counter() - t)


# ------------------------------------------------------------------------------------------------
# JAX.


def bench_jax(mode: str, batch: int, steps: int, warmup: int, noise: str) -> tuple[float, float]:
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from smoothjax import models, training  # pylint: disable=g-import-not-at-top
  from train.configs import base  # pylint: disable=g-import-not-at-top

  model = models.build_model("resnet20", noise=noise, key=0)
  labels = training.param_labels(model)
  g, p, r = nnx.split(model, nnx.Param, ...)
  p, r = nnx.to_pure_dict(p), nnx.to_pure_dict(r)
  sched = training.make_schedule(kind="constant", lr=0.1, steps_per_epoch=100, total_steps=100)
  tx = training.make_optimizer(base.get_config().optim, labels=labels, schedule=sched)
  obj = (training.Objective(name="adversarial", attack="pgd", steps=7, adv_weight=0.5)
         if mode == "pgd7" else training.Objective())
  mesh = training.make_mesh(1)
  step = training.make_train_step(graphdef=g, objective=obj, tx=tx, schedule=sched, mesh=mesh,
                                  augment=False)
  p, r, ts, key = training.replicate((p, r, training.init_train_state(tx, p),
                                      jax.random.key(0)), mesh)
  rng = np.random.RandomState(0)
  bat = jax.sharding.NamedSharding(mesh, jax.P(training.BATCH_AXIS))
  xb = jax.device_put(rng.randint(0, 256, (batch, 32, 32, 3)).astype(np.uint8), bat)
  yb = jax.device_put(rng.randint(0, 10, batch).astype(np.int32), bat)
  t = time.perf_counter()
  p, r, ts, m = step(p, r, ts, key, xb, yb)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t
  for _ in range(max(warmup - 1, 0)):
    p, r, ts, m = step(p, r, ts, key, xb, yb)
  jax.block_until_ready(m)
  t = time.perf_counter()
  for _ in range(steps):
    p, r, ts, m = step(p, r, ts, key, xb, yb)
  jax.block_until_ready((p, m))
  return steps * batch / (time.perf_counter() - t), compile_s


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--quick", action="store_true", help="batch 32, 2 timed steps")
  ap.add_argument("--batch", type=int, default=None)
  ap.add_argument("--steps", type=int, default=None, help="timed steps per measurement")
  ap.add_argument("--modes", default="clean,pgd7")
  ap.add_argument("--noise", default="none", help="JAX model noise (none, pni_w, cni_w)")
  ap.add_argument("--no_torch", action="store_true")
  ap.add_argument("--out", default=None, help="results JSON (default benchmarks/results/...)")
  args = ap.parse_args(argv)
  batch = args.batch or (32 if args.quick else 128)
  modes = [m for m in args.modes.split(",") if m]
  for m in modes:
    if m not in ("clean", "pgd7"):
      ap.error(f"unknown mode {m!r}; expected clean, pgd7")

  import jax  # pylint: disable=g-import-not-at-top

  rows = []
  for mode in modes:
    steps = args.steps or (2 if args.quick else (10 if mode == "clean" else 3))
    jax_ips, compile_s = bench_jax(mode, batch, steps, 2, args.noise)
    row = {"mode": mode, "batch": batch, "steps": steps, "noise": args.noise,
           "jax_images_per_s": round(jax_ips, 1), "jax_compile_s": round(compile_s, 1)}
    if not args.no_torch:
      try:
        torch_ips = bench_torch(mode, batch, steps, 1)
        row["torch_images_per_s"] = round(torch_ips, 1)
        row["ratio_jax_over_torch"] = round(jax_ips / torch_ips, 3)
      except ImportError:
        row["torch_images_per_s"] = None
    rows.append(row)
    print(json.dumps(row), flush=True)

  print(f"\nResNet-20 training step, batch {batch}, {jax.devices()[0].device_kind} "
        f"({os.cpu_count()} CPUs), XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print(f"{'mode':8s} {'JAX img/s':>10s} {'torch img/s':>12s} {'JAX/torch':>10s}")
  for row in rows:
    t = row.get("torch_images_per_s")
    print(f"{row['mode']:8s} {row['jax_images_per_s']:10.1f} "
          f"{(f'{t:.1f}' if t else '-'):>12s} "
          f"{(str(row.get('ratio_jax_over_torch', '-'))):>10s}")
  out = pathlib.Path(args.out) if args.out else (
      REPO / "benchmarks" / "results" / ("train_quick.json" if args.quick else "train.json"))
  out.parent.mkdir(parents=True, exist_ok=True)
  meta = {"platform": platform.platform(), "cpus": os.cpu_count(),
          "device": jax.devices()[0].device_kind, "jax": jax.__version__,
          "xla_flags": os.environ.get("XLA_FLAGS", ""), "time": time.time()}
  out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
