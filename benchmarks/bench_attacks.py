"""Attack throughput: smoothjax (JAX, compiled scans) vs PyTorch eager loops like the reference.

Measures, on a CNI-W ResNet-20 (random weights: only speed matters) with a batch of 256:

* PGD-7 (one noise draw per step) and EPGD (m = 8 draws per step, 7 steps), images/s, JAX
  with ``lax.scan`` ``unroll=1`` and fully unrolled steps, against PyTorch eager loops written
  like the reference (PyTorch EPGD runs its m draws one after another);
* NAttack with a population of 300 against an 8-sample smoothed (hard-vote) target: the whole
  population is scored in one compiled call per iteration (checked by counting traces).

Writes ``benchmarks/results/attacks.json`` and prints the JAX / PyTorch ratios.

Usage (from the repository root)::

  python -m benchmarks.bench_attacks            # full run: about 15-20 min on 2 CPU cores
  python -m benchmarks.bench_attacks --quick    # smoke run: tiny batch and budgets, ~2 min

Runs on whatever JAX and PyTorch find (CPU, or a GPU when both see one).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks._common import best_time, write_results
from smoothjax import attacks
from smoothjax import models

REPO = pathlib.Path(__file__).resolve().parents[1]

EPS = 8 / 255


def _torch_attack(model, x, y, *, eps, steps, step_size, samples):
  """PGD (samples = 1) / EPGD, reference style: eager loop, the m draws one after another."""
  import torch
  import torch.nn.functional as F
  x_adv = (x + (torch.rand_like(x) * 2 - 1) * eps).clamp(0, 1)
  for _ in range(steps):
    g = torch.zeros_like(x)
    for _ in range(samples):
      xr = x_adv.detach().requires_grad_(True)
      loss = F.cross_entropy(model(xr), y)
      g += torch.autograd.grad(loss, xr)[0]
    x_adv = x_adv.detach() + step_size * (g / samples).sign()
    x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
  return x_adv


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def bench_jax(logits_fn, x, y, *, name, steps, samples, unroll, reps):
  kw = dict(eps=EPS, steps=steps, step_size=EPS / 4, unroll=unroll)
  if samples == 1:
    run = lambda k: attacks.pgd(logits_fn, x, y, key=k, **kw).block_until_ready()
  else:
    run = lambda k: attacks.epgd(logits_fn, x, y, key=k, samples=samples,
                                 **kw).block_until_ready()
  t = time.perf_counter()
  run(jax.random.key(0))
  first = time.perf_counter() - t
  counter = iter(range(1, 1000))
  sec = best_time(lambda: run(jax.random.key(next(counter))), reps)
  return {"attack": name, "framework": "jax", "steps": steps, "samples": samples,
          "unroll": unroll, "compile_plus_first_run_s": round(first, 3),
          "seconds": round(sec, 3), "images_per_s": round(len(x) / sec, 2)}


def bench_torch(model, x, y, *, name, steps, samples, reps, device):
  import torch
  xt = torch.from_numpy(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))).to(device)
  yt = torch.from_numpy(np.asarray(y).astype(np.int64)).to(device)

  def run():
    _torch_attack(model, xt, yt, eps=EPS, steps=steps, step_size=EPS / 4, samples=samples)
    if device != "cpu":
      torch.cuda.synchronize()

  run()  # warm-up
  sec = best_time(run, reps)
  return {"attack": name, "framework": "torch", "steps": steps, "samples": samples,
          "seconds": round(sec, 3), "images_per_s": round(len(x) / sec, 2),
          "threads": torch.get_num_threads()}


def bench_nattack(logits_fn, *, population, images, iterations, votes):
  traces = []

  def counted(x, key):
    traces.append(x.shape)
    return logits_fn(x, key)

  probs = attacks.smoothed_probs_fn(counted, num_samples=votes, vote="hard")
  x = np.random.RandomState(1).rand(images, 32, 32, 3).astype(np.float32)
  y = np.arange(images) % 10
  # The NES loop's throughput, as measured before success confirmation existed: confirm=0
  # (the re-queries, confirm x images per iteration that has a candidate, are not counted).
  kw = dict(eps=EPS, population=population, iterations=iterations, confirm=0)
  t = time.perf_counter()
  xa, _ = attacks.nattack(probs, x, y, key=jax.random.key(0), **kw)
  xa.block_until_ready()
  first = time.perf_counter() - t
  t = time.perf_counter()
  xa, succ = attacks.nattack(probs, x, y, key=jax.random.key(1), **kw)
  xa.block_until_ready()
  sec = time.perf_counter() - t
  # Traces: one model call inside the while-loop body (the whole population at once) and one
  # for the final check of the mean image.
  population_calls = [s for s in traces if s[0] == (population + 1) * images]
  return {"population": population, "images": images, "iterations": iterations,
          "smoothing_samples": votes, "compile_plus_first_run_s": round(first, 3),
          "seconds": round(sec, 3),
          "seconds_per_iteration": round(sec / iterations, 4),
          "image_forwards_per_s": round((population + 1) * images * votes * iterations / sec, 1),
          "population_traced_as_one_call": len(population_calls) == 1,
          "traced_call_shapes": [list(s) for s in traces],
          "successes": int(np.sum(np.asarray(succ)))}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="tiny smoke run")
  ap.add_argument("--batch", type=int, default=None)
  ap.add_argument("--reps", type=int, default=None)
  ap.add_argument("--torch_threads", type=int, default=None,
                  help="torch.set_num_threads (default: PyTorch's own choice)")
  ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "attacks.json"))
  args = ap.parse_args(argv)
  quick = args.quick
  batch = args.batch or (8 if quick else 256)
  reps = args.reps or 1  # timed runs after the compiling one (the best is kept)
  steps = 2 if quick else 7
  samples = 2 if quick else 8
  pop, nat_images, nat_iters = (20, 1, 2) if quick else (300, 2, 3)

  import torch
  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.manual_seed(0)
  if args.torch_threads:
    torch.set_num_threads(args.torch_threads)

  model = models.build_model("resnet20", noise="cni_w", key=0)
  graphdef, state = nnx.split(model)
  logits_fn = attacks.model_logits_fn(graphdef, state)
  x = jnp.asarray(np.random.RandomState(0).rand(batch, 32, 32, 3).astype(np.float32))
  y = jnp.asarray(np.arange(batch) % 10)
  from tests import torch_reference
  tmodel = torch_reference.cni_resnet20(*models.REFERENCE_NORMALIZATION, device=device)

  rows = []

  def log(r):
    rows.append(r)
    print(json.dumps(r), flush=True)

  pgd_name, epgd_name = f"pgd{steps}", f"epgd{steps}_m{samples}"
  log(bench_torch(tmodel, x, y, name=pgd_name, steps=steps, samples=1, reps=reps,
                  device=device))
  for unroll in (1, steps):
    log(bench_jax(logits_fn, x, y, name=pgd_name, steps=steps, samples=1, unroll=unroll,
                  reps=reps))
  log(bench_torch(tmodel, x, y, name=epgd_name, steps=steps, samples=samples, reps=reps,
                  device=device))
  for unroll in (1, steps):
    log(bench_jax(logits_fn, x, y, name=epgd_name, steps=steps, samples=samples,
                  unroll=unroll, reps=reps))
  nat = bench_nattack(logits_fn, population=pop, images=nat_images, iterations=nat_iters,
                      votes=8)
  print(json.dumps(nat), flush=True)

  ratios = {}
  for name in (pgd_name, epgd_name):
    t = next(r for r in rows if r["attack"] == name and r["framework"] == "torch")
    for r in rows:
      if r["attack"] == name and r["framework"] == "jax":
        ratios[f"{name}_unroll{r['unroll']}"] = round(r["images_per_s"] / t["images_per_s"], 3)
  result = {
      "benchmark": "attacks", "quick": quick, "batch": batch, "eps": EPS, "reps": reps,
      "model": "resnet20 cni_w (random weights)",
      "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                  "jax_devices": [str(d) for d in jax.devices()], "torch_device": device},
      "versions": {"jax": jax.__version__, "torch": torch.__version__},
      "rows": rows, "nattack": nat, "jax_over_torch_images_per_s": ratios,
  }
  out = pathlib.Path(args.out)
  write_results(out, result)
  print("\nJAX / PyTorch images/s:")
  for k, v in ratios.items():
    print(f"  {k:24s} {v:6.2f}x")
  print(f"NAttack: population {pop} x {nat_images} images scored in one call per iteration: "
        f"{nat['population_traced_as_one_call']}; {nat['seconds_per_iteration']:.2f} s/iteration "
        f"({nat['image_forwards_per_s']:.0f} image-forwards/s)")
  return result


if __name__ == "__main__":
  main()
