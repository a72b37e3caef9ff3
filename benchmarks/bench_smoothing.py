"""Benchmark of smoothed inference (issue 3): Monte-Carlo throughput, one-pass curves, memory.

Run (about 15-20 minutes on an idle 2-core CPU; ``--quick``, compile-bound, about 4 minutes)::

  python -m benchmarks.bench_smoothing            # full settings, writes results/smoothing.json
  python -m benchmarks.bench_smoothing --quick    # small settings, results/smoothing_quick.json

What it measures, all in the same process / run:

1. ``matmul``: fp32 matmul GFLOP/s (the roofline; ResNet-20 = 40.6 M multiply-adds per image).
2. ``plain``: a plain jitted ResNet-20 forward pass (no noise), images/s at batch 256.
3. ``jax_mc``: Monte-Carlo throughput of a noisy ResNet-20 (Gaussian input noise sigma = 0.12 +
   CNI-W weight noise), n = 512 samples of 256 images, hard vote: image-samples/s, its ratio to
   ``plain`` (target >= 0.9) and its fraction of the matmul roofline.
4. ``torch_loop``: a PyTorch loop written like the reference implementation (256 images, n
   full-batch noisy forwards with CNI-W-like noise drawn on the weights every pass, a vote
   histogram): image-samples/s; ratio jax_mc / torch_loop (target >= 1).
5. ``curve``: the accuracy-vs-n curve n = 1, 2, 4, ..., 512 (10 points, 3 votes) in one pass vs
   one n = 512 evaluation (target <= 1.15x).
6. ``grid``: a sigma x n grid (sigma = 0, 0.05, ..., 0.5; n = 1, 2, 4, ..., 512), one pass per
   sigma vs every grid point evaluated separately as the reference does (target >= 1.8x; 2x is
   the ceiling). Run on fewer images (``--grid_images``); the ratio does not depend on it.
7. ``rss``: peak resident memory of a subprocess counting n = 1,000 vs n = 100,000 samples of
   one image (ResNet-20, input noise): flat in n.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import time

import numpy as np

from benchmarks._common import best_time, write_results

REPO = pathlib.Path(__file__).resolve().parents[1]

RESNET20_MACS = 40.6e6  # multiply-adds per 32x32 image (convolutions + head)


def _timeit(fn, *, repeats=1):
  return best_time(fn, repeats)


def bench_matmul(size: int) -> float:
  import jax
  import jax.numpy as jnp
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
  f = jax.jit(lambda a, b: a @ b)
  f(a, b).block_until_ready()
  t = _timeit(lambda: f(a, b).block_until_ready(), repeats=7)
  return 2 * size ** 3 / t / 1e9


def bench_plain(images: int, iters: int) -> float:
  import jax
  from flax import nnx
  from smoothjax import models
  graphdef, state = nnx.split(models.build_model("resnet20", key=0))
  x = jax.random.uniform(jax.random.key(0), (images, 32, 32, 3))
  f = jax.jit(lambda s, x: models.apply(graphdef, s, x, noise=False))
  f(state, x).block_until_ready()

  def run():
    for _ in range(iters):
      f(state, x).block_until_ready()

  return images * iters / _timeit(run, repeats=2)


def _images(n):
  return np.random.RandomState(0).rand(n, 32, 32, 3).astype(np.float32)


def bench_jax_mc(model, x, n, *, votes=("hard",), prefixes=None, sigma=0.12,
                 repeats=1) -> float:
  from smoothjax import smoothing
  kw = dict(sigma=sigma, votes=votes, batch_size=len(x))
  # compile first: the same program shapes (number of prefixes, 4 steps per call), few samples
  warm = None if prefixes is None else list(range(1, len(prefixes))) + [max(4, len(prefixes))]
  smoothing.sample_votes(0, model, x, num_samples=4 if warm is None else None, prefixes=warm,
                         **kw)
  return _timeit(lambda: smoothing.sample_votes(1, model, x, num_samples=n, prefixes=prefixes,
                                                **kw), repeats=repeats)


def bench_torch_loop(images: int, n: int, sigma: float = 0.12, threads: int | None = None
                     ) -> float:
  """The reference's evaluation loop: n full-batch noisy forwards, vote histogram."""
  import torch
  import torch.nn.functional as F

  from tests import torch_reference
  torch.set_num_threads(threads or os.cpu_count())
  dev = "cuda" if torch.cuda.is_available() else "cpu"

  torch.manual_seed(0)
  model = torch_reference.cni_resnet20((0.491, 0.482, 0.447), (0.247, 0.243, 0.262), dev)
  x = torch.rand(images, 3, 32, 32, device=dev)

  def run(num):
    hist = torch.zeros(images, 10, device=dev)
    with torch.no_grad():
      for _ in range(num):
        xn = x + sigma * torch.randn_like(x)  # the model normalises
        pred = model(xn).argmax(1)
        hist += F.one_hot(pred, 10)
    if dev == "cuda":
      torch.cuda.synchronize()
    return hist

  run(2)  # warm-up
  return images * n / _timeit(lambda: run(n))


def rss_child(n: int, batch: int) -> None:
  """Subprocess mode: count n samples of one image, print peak RSS (MiB) as JSON."""
  from smoothjax import models, smoothing
  model = models.build_model("resnet20", key=0)
  x = _images(1)
  t = time.perf_counter()
  counts = smoothing.sample_counts(0, model, x, sigma=0.25, num_samples=n, batch_size=batch)
  dt = time.perf_counter() - t
  assert counts.sum() == n
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
  print(json.dumps({"n": n, "peak_rss_mib": rss, "seconds": dt}))


def bench_rss(ns, batch) -> list[dict]:
  out = []
  for n in ns:
    r = subprocess.run([sys.executable, "-m", "benchmarks.bench_smoothing", f"--rss_child={n}",
                        f"--rss_batch={batch}"], cwd=REPO, capture_output=True, text=True,
                       check=True)
    out.append(json.loads(r.stdout.strip().splitlines()[-1]))
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="small settings (a smoke run)")
  p.add_argument("--images", type=int, default=None, help="images of the MC runs (256)")
  p.add_argument("--n", type=int, default=None, help="samples of the MC runs (512)")
  p.add_argument("--torch_n", type=int, default=None, help="passes of the torch loop (64)")
  p.add_argument("--grid_images", type=int, default=None, help="images of the grid (16)")
  p.add_argument("--skip", default="", help="comma-separated sections to skip "
                 "(torch,curve,grid,rss)")
  p.add_argument("--out", default=None)
  p.add_argument("--rss_child", type=int, default=None, help=argparse.SUPPRESS)
  p.add_argument("--rss_batch", type=int, default=1000, help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  if a.rss_child is not None:
    rss_child(a.rss_child, a.rss_batch)
    return 0
  q = a.quick
  images = a.images or (32 if q else 256)
  n = a.n or (32 if q else 512)
  torch_n = a.torch_n or (4 if q else 64)
  grid_images = a.grid_images or (8 if q else 16)
  sigmas = [0.0, 0.25, 0.5] if q else [round(0.05 * i, 2) for i in range(11)]
  rss_ns = [1_000, 10_000] if q else [1_000, 100_000]
  skip = set(filter(None, a.skip.split(",")))
  out_path = pathlib.Path(a.out or REPO / "benchmarks" / "results" /
                          ("smoothing_quick.json" if q else "smoothing.json"))

  import jax
  from smoothjax import models
  res: dict = {"settings": {"quick": q, "images": images, "n": n, "torch_n": torch_n,
                            "grid_images": grid_images, "grid_sigmas": sigmas},
               "env": {"jax": jax.__version__, "backend": jax.default_backend(),
                       "devices": len(jax.devices()), "cpus": os.cpu_count(),
                       "machine": platform.processor() or platform.machine()}}
  rows = []

  def log(name, value, note=""):
    rows.append((name, value, note))
    print(f"{name:<44} {value:>14} {note}", flush=True)

  gflops = bench_matmul(1024 if q else 2048)
  roof = gflops * 1e9 / (2 * RESNET20_MACS)
  res["matmul_gflops"] = gflops
  res["roofline_img_per_s"] = roof
  log("fp32 matmul", f"{gflops:.1f} GFLOP/s", f"-> ResNet-20 roofline {roof:.0f} img/s")

  plain = bench_plain(images, 2 if q else 4)
  res["plain_img_per_s"] = plain
  log(f"plain jitted forward (batch {images})", f"{plain:.0f} img/s")

  noisy = models.build_model("resnet20", noise="cni_w", key=0)
  x = _images(images)
  reps = 3 if q else 1  # quick runs are short: best of 3
  t_single = bench_jax_mc(noisy, x, n, repeats=reps)
  mc = images * n / t_single
  res["jax_mc"] = {"samples_per_s": mc, "seconds": t_single, "ratio_vs_plain": mc / plain,
                   "roofline_fraction": mc / roof}
  log(f"JAX MC input+CNI-W (n={n}, {images} img)", f"{mc:.0f} smp/s",
      f"x{mc / plain:.2f} of plain (target >= 0.9), {100 * mc / roof:.0f}% of roofline")

  if "torch" not in skip:
    # torch's best thread count (all cores, or 1: on a busy machine OpenMP spinning can make
    # many threads much slower than one)
    per_threads = {t: bench_torch_loop(images, torch_n, threads=t)
                   for t in sorted({1, os.cpu_count() or 1})}
    best_t = max(per_threads, key=per_threads.get)
    tl = per_threads[best_t]
    res["torch_loop"] = {"samples_per_s": tl, "threads": best_t, "passes": torch_n,
                         "per_threads": per_threads, "ratio_jax_vs_torch": mc / tl}
    log(f"PyTorch reference-style loop ({torch_n} passes)", f"{tl:.0f} smp/s",
        f"{best_t} thread(s); JAX/torch x{mc / tl:.2f} (target >= 1)")

  if "curve" not in skip:
    prefixes = [2 ** i for i in range(int(np.log2(n)) + 1)]
    if len(prefixes) > 10:
      prefixes = prefixes[-10:]
    t_curve = bench_jax_mc(noisy, x, n, votes=("hard", "soft", "weighted"), prefixes=prefixes,
                           repeats=reps)
    res["curve"] = {"points": prefixes, "votes": 3, "seconds": t_curve,
                    "single_seconds": t_single, "ratio": t_curve / t_single}
    log(f"curve {len(prefixes)} n x 3 votes / one n={n}", f"x{t_curve / t_single:.3f}",
        "(target <= 1.15)")

  if "grid" not in skip:
    from smoothjax import smoothing
    gx = _images(grid_images)
    ns = [2 ** i for i in range(int(np.log2(n)) + 1)]
    kw = dict(votes=("hard", "soft", "weighted"), batch_size=grid_images)
    for p_ in (ns, [1], [2], [4]):  # compile every program shape used below
      smoothing.sample_votes(0, noisy, gx, sigma=0.1, prefixes=p_, **kw)
    t_one = t_sep = 0.0
    for s in sigmas:  # interleaved, so that a change of machine load hits both alike
      t = time.perf_counter()
      smoothing.sample_votes(1, noisy, gx, sigma=s, prefixes=ns, **kw)
      t_one += time.perf_counter() - t
      t = time.perf_counter()
      for m in ns:
        smoothing.sample_votes(1, noisy, gx, sigma=s, prefixes=(m,), **kw)
      t_sep += time.perf_counter() - t
    res["grid"] = {"sigmas": sigmas, "ns": ns, "images": grid_images, "one_pass_seconds": t_one,
                   "separate_seconds": t_sep, "speedup": t_sep / t_one,
                   "ceiling": sum(ns) / max(ns)}
    log(f"sigma x n grid ({len(sigmas)}x{len(ns)}, {grid_images} img) speed-up",
        f"x{t_sep / t_one:.2f}", f"(target >= 1.8; ceiling {sum(ns) / max(ns):.2f})")

  if "rss" not in skip:
    rss = bench_rss(rss_ns, 1000)
    res["rss"] = rss
    for r in rss:
      log(f"peak RSS, n={r['n']:,} (1 image)", f"{r['peak_rss_mib']:.0f} MiB",
          f"{r['seconds']:.1f} s")

  write_results(out_path, res)
  return 0


if __name__ == "__main__":
  sys.exit(main())
