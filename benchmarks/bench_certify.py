"""Benchmark of Cohen et al.'s CERTIFY (issue 10): smoothjax vs a PyTorch ``core.py``-style loop.

Both sides certify the same images with the same weights on the same machine in the same run:

* ``jax``: :func:`smoothjax.certify.certify` on all images at once (``batch`` images x samples
  per forward pass; compile time reported separately, after a warm-up on the same shapes);
* ``torch``: a loop written like the ``Smooth.certify`` of Cohen et al.'s ``core.py``: per
  image, ``ceil(num / batch)`` forward passes of ``x.repeat(b, 1, 1, 1) + randn_like * sigma``,
  ``argmax``, a per-prediction count loop, the Clopper-Pearson bound (SciPy's beta quantile, which
  equals their ``proportion_confint(method="beta")``; their ``binom_test`` import no longer exists
  in SciPy, so their file does not run as is).

Reported: s/image of each side and the speed-up torch / jax (target on a CPU: >= 1), and the
certified accuracy at each radius of both sides with their largest difference (target <= 2
points on 100 images: the two use different noise draws, so they agree only statistically).
``--precision=tf32|bf16`` runs the JAX side with reduced-precision matmuls / convolutions
(``jax.default_matmul_precision``; PyTorch: TF32 flags / bf16 autocast) and, with
``--compare_fp32``, also the JAX fp32 run, reporting the shift of certified accuracy at every
radius (target < 1 point). On a CPU, XLA computes in fp32 whatever the setting.

The model is Cohen et al.'s CIFAR-10 ResNet-110 (``--arch=resnet110``, default) or ResNet-20,
written in their checkpoint format by the PyTorch model of ``tests/torch_reference.py``
(random weights, random BatchNorm statistics) and imported with
:func:`smoothjax.checkpoints.model_from_cohen`; ``--weights=FILE`` uses a trained
checkpoint instead (Cohen-format or a reference-layout CIFAR ResNet, e.g. the project's
ResNet-20). Images: the first ``--images`` test images of ``--data`` (an ``.npz`` with
``x_test``/``y_test``), or uniform noise when absent.

Run (issue sizes, hours on a 2-core CPU: ResNet-110 costs ~0.25 GMAC per sample)::

  python -m benchmarks.bench_certify --images=100 --n0=100 --n=10000 --batch=400

A GPU run at Cohen et al.'s sizes (see benchmarks/gpu_suite.py)::

  python -m benchmarks.bench_certify --images=8 --n=100000 --batch=1000 --precision=bf16 \\
      --compare_fp32
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import pathlib
import platform
import sys
import tempfile
import time

import numpy as np

from benchmarks._common import write_results

REPO = pathlib.Path(__file__).resolve().parents[1]

RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
PRECISIONS = {"fp32": "highest", "tf32": "tensorfloat32", "bf16": "bfloat16"}
DEFAULT_DATA = REPO.parent / "shared" / "data" / "cifar10_lossless_3k.npz"


def _images(path, n):
  if path and pathlib.Path(path).is_file():
    d = np.load(path)
    x, y = d["x_test"][:n], d["y_test"][:n]
    return (x.astype(np.float32) / 255.0), y.astype(np.int64), str(path)
  rng = np.random.RandomState(0)
  return rng.rand(n, 32, 32, 3).astype(np.float32), rng.randint(0, 10, n), "uniform noise"


def _models(arch: str, weights: str | None, tmp: pathlib.Path):
  """The JAX model and the PyTorch Sequential(normalize, net) holding the same weights."""
  import torch
  from tests import torch_reference as tcm  # Cohen et al.'s key names

  from smoothjax import checkpoints
  from smoothjax.checkpoints import _cohen as cohen
  depth = int(arch.replace("resnet", ""))
  if weights is None:
    path = tmp / f"cohen_{arch}.pth.tar"
    tcm.save_cohen_checkpoint(path, tcm.cohen_model(f"cifar_{arch}", "cohen", seed=0),
                              f"cifar_{arch}")
    weights, source = str(path), "random init (Cohen format, written by the PyTorch model)"
  else:
    source = weights
  if cohen.is_cohen_checkpoint(weights):
    model, info = cohen.model_from_cohen(weights)
    _, raw = cohen.load_cohen_file(weights)
    prefix = cohen.detect_layout(raw)["prefix"]
    inner = {k[len(prefix):]: v for k, v in raw.items()}
  else:
    model, info = checkpoints.model_from_torch(weights)
    inner = {k.removeprefix("module."): v for k, v in
             checkpoints.load_torch_state_dict(weights).items()}
  depth = int(info["arch"].replace("resnet", ""))
  norm = info["normalization"]
  net = tcm.CifarResNet(depth, info["num_classes"])
  net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in inner.items()})
  tmodel = torch.nn.Sequential(tcm.NormalizeLayer(norm["mean"], norm["std"]), net).eval()
  return model, tmodel, {"arch": info["arch"], "weights": source, "normalization": norm}


class TorchSmooth:
  """Cohen et al.'s ``Smooth.certify``, written as their ``core.py`` does it."""

  ABSTAIN = -1

  def __init__(self, base_classifier, num_classes, sigma, device, autocast_bf16=False):
    self.base_classifier = base_classifier
    self.num_classes = num_classes
    self.sigma = sigma
    self.device = device
    self.autocast_bf16 = autocast_bf16

  def certify(self, x, n0, n, alpha, batch_size):
    from scipy.stats import norm
    self.base_classifier.eval()
    counts_selection = self._sample_noise(x, n0, batch_size)
    c_a = int(counts_selection.argmax())
    counts_estimation = self._sample_noise(x, n, batch_size)
    n_a = int(counts_estimation[c_a])
    p_a = self._lower_confidence_bound(n_a, n, alpha)
    if p_a < 0.5:
      return TorchSmooth.ABSTAIN, 0.0
    return c_a, self.sigma * norm.ppf(p_a)

  def _sample_noise(self, x, num, batch_size):
    import torch
    ctx = (torch.autocast(self.device, dtype=torch.bfloat16) if self.autocast_bf16
           else contextlib.nullcontext())
    with torch.no_grad(), ctx:
      counts = np.zeros(self.num_classes, dtype=int)
      for _ in range(math.ceil(num / batch_size)):
        this_batch_size = min(batch_size, num)
        num -= this_batch_size
        batch = x.repeat((this_batch_size, 1, 1, 1))
        noise = torch.randn_like(batch, device=self.device) * self.sigma
        predictions = self.base_classifier(batch + noise).argmax(1)
        counts += self._count_arr(predictions.cpu().numpy(), self.num_classes)
      return counts

  @staticmethod
  def _count_arr(arr, length):
    counts = np.zeros(length, dtype=int)
    for idx in arr:
      counts[idx] += 1
    return counts

  @staticmethod
  def _lower_confidence_bound(n_a, n, alpha):
    from scipy.stats import beta  # == proportion_confint(n_a, n, 2 * alpha, "beta")[0]
    return float(beta.ppf(alpha, n_a, n - n_a + 1)) if n_a > 0 else 0.0


def _best_threads(tmodel, x, batch) -> tuple[int, dict]:
  """PyTorch's faster CPU thread count: all cores or 1 (on a busy machine OpenMP spinning can
  make 2 threads several times slower than 1), timed on one forward pass of ``batch`` images."""
  import torch
  xb = torch.from_numpy(np.ascontiguousarray(x[:1].transpose(0, 3, 1, 2))).repeat(batch, 1, 1,
                                                                                   1)
  times = {}
  for t in sorted({1, os.cpu_count() or 1}):
    torch.set_num_threads(t)
    with torch.no_grad():
      tmodel(xb)
      s = time.perf_counter()
      tmodel(xb)
      times[t] = time.perf_counter() - s
  best = min(times, key=times.get)
  torch.set_num_threads(best)
  return best, times


def run_torch(tmodel, x, *, sigma, n0, n, alpha, batch, precision, threads=None):
  import torch
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  thread_times = {}
  if dev == "cpu":
    if threads:
      torch.set_num_threads(threads)
    else:
      _, thread_times = _best_threads(tmodel, x, batch)
  if dev == "cuda":
    torch.backends.cudnn.allow_tf32 = precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"
    torch.backends.cudnn.benchmark = True  # as Cohen et al.'s architectures.py
  tmodel = tmodel.to(dev)
  smooth = TorchSmooth(tmodel, 10, sigma, dev, autocast_bf16=precision == "bf16")
  xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(dev)
  smooth.certify(xt[0], 2, min(n, batch), alpha, batch)  # warm-up (cudnn autotune)
  preds, radii = [], []
  t = time.perf_counter()
  for i in range(len(x)):
    p, r = smooth.certify(xt[i], n0, n, alpha, batch)
    preds.append(p)
    radii.append(r)
  dt = time.perf_counter() - t
  return np.asarray(preds), np.asarray(radii), dt, {
      "device": dev, "threads": torch.get_num_threads(),
      "forward_s_per_threads": {str(k): v for k, v in thread_times.items()}}


def run_jax(model, x, *, sigma, n0, n, alpha, batch, precision, seed=0):
  import jax

  from smoothjax import certify
  kw = dict(sigma=sigma, alpha=alpha, batch_size=batch)
  chunk = min(len(x), batch)
  per_call = 4 * max(1, batch // chunk) * len(jax.devices())
  with jax.default_matmul_precision(PRECISIONS[precision]):
    t = time.perf_counter()  # compile both programs (n0 and n) on the same shapes
    certify.certify(seed + 1, model, x, n0=n0, num_samples=min(n, per_call), **kw)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    res = certify.certify(seed, model, x, n0=n0, num_samples=n, **kw)
    dt = time.perf_counter() - t
  return res.predict, res.radius, dt, {"compile_and_warmup_s": compile_s,
                                       "backend": jax.default_backend()}


def _cert_acc(pred, radius, labels):
  from smoothjax import certify
  return certify.certified_accuracy(radius, pred == labels, RADII)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--arch", default="resnet110", choices=("resnet20", "resnet110"))
  p.add_argument("--weights", default=None, help="a trained checkpoint (default: random init)")
  p.add_argument("--data", default=str(DEFAULT_DATA), help="npz with x_test/y_test")
  p.add_argument("--images", type=int, default=100)
  p.add_argument("--n0", type=int, default=100)
  p.add_argument("--n", type=int, default=10_000)
  p.add_argument("--batch", type=int, default=400)
  p.add_argument("--sigma", type=float, default=0.25)
  p.add_argument("--alpha", type=float, default=0.001)
  p.add_argument("--precision", default="fp32", choices=tuple(PRECISIONS))
  p.add_argument("--compare_fp32", action="store_true",
                 help="with --precision=tf32|bf16: also the JAX fp32 run, and the shift")
  p.add_argument("--no_torch", action="store_true")
  p.add_argument("--seed_control", action="store_true",
                 help="also rerun smoothjax with other noise draws: the spread of one "
                 "implementation, the yardstick of the jax-vs-torch difference")
  p.add_argument("--torch_threads", type=int, default=None,
                 help="PyTorch CPU threads (default: the faster of 1 and all cores)")
  p.add_argument("--repeats", type=int, default=1,
                 help="time both sides this many times, interleaved (jax, torch, jax, ...), and "
                 "keep each side's best: robust to a change of machine load")
  p.add_argument("--quick", action="store_true", help="ResNet-20, 4 images, n=200 (a smoke run)")
  p.add_argument("--out", default=None)
  a = p.parse_args(argv)
  if a.quick:
    a.arch, a.images, a.n0, a.n, a.batch = "resnet20", 4, 20, 200, 100
  out_path = pathlib.Path(a.out or REPO / "benchmarks" / "results" /
                          ("certify_quick.json" if a.quick else "certify.json"))

  import jax
  x, y, data_src = _images(a.data, a.images)
  with tempfile.TemporaryDirectory() as tmp:
    model, tmodel, model_info = _models(a.arch, a.weights, pathlib.Path(tmp))
  res = {"settings": {k: getattr(a, k) for k in ("arch", "images", "n0", "n", "batch", "sigma",
                                                   "alpha", "precision", "repeats")},
         "model": model_info, "data": data_src, "radii": list(RADII),
         "env": {"jax": jax.__version__, "backend": jax.default_backend(),
                 "devices": [str(d) for d in jax.devices()], "cpus": os.cpu_count(),
                 "machine": platform.processor() or platform.machine()}}

  def log(name, value, note=""):
    print(f"{name:<46} {value:>16} {note}", flush=True)

  common = dict(sigma=a.sigma, n0=a.n0, n=a.n, alpha=a.alpha, batch=a.batch)
  jp, jr, jt, jinfo = run_jax(model, x, precision=a.precision, **common)
  jax_times = [jt]
  jacc = _cert_acc(jp, jr, y)
  res["jax"] = {"s_per_image": jt / len(x), "seconds": jt, **jinfo,
                "certified_accuracy": jacc.tolist()}
  log(f"smoothjax CERTIFY ({a.arch}, n={a.n}, {a.precision})", f"{jt / len(x):.2f} s/img",
      f"compile+warm-up {jinfo['compile_and_warmup_s']:.1f} s")
  if a.precision != "fp32" and a.compare_fp32:
    fp, fr, ft, _ = run_jax(model, x, precision="fp32", **common)
    facc = _cert_acc(fp, fr, y)
    shift = 100 * np.abs(jacc - facc).max()
    res["jax_fp32"] = {"s_per_image": ft / len(x), "certified_accuracy": facc.tolist(),
                       "max_shift_points": shift, "speedup_reduced": ft / jt}
    log(f"  fp32 vs {a.precision}", f"x{ft / jt:.2f} faster",
        f"certified accuracy shift {shift:.1f} points (target < 1)")
  if a.seed_control:
    cp, cr, _, _ = run_jax(model, x, precision=a.precision, seed=1000, **common)
    cacc = _cert_acc(cp, cr, y)
    spread = 100 * np.abs(jacc - cacc).max()
    res["jax_other_seed"] = {"certified_accuracy": cacc.tolist(), "max_diff_points": spread}
    log("certified accuracy: max |jax - jax other seed|", f"{spread:.1f} points",
        "(Monte-Carlo spread of one implementation)")
  if not a.no_torch:
    tp, tr, tt, tinfo = run_torch(tmodel, x, precision=a.precision, threads=a.torch_threads,
                                  **common)
    torch_times = [tt]
    for _ in range(a.repeats - 1):  # interleaved repeats: same results, best time of each side
      jax_times.append(run_jax(model, x, precision=a.precision, **common)[2])
      torch_times.append(run_torch(tmodel, x, precision=a.precision, threads=a.torch_threads,
                                   **common)[2])
    jt, tt = min(jax_times), min(torch_times)
    res["jax"].update(s_per_image=jt / len(x), seconds=jt, all_seconds=jax_times)
    res["torch_all_seconds"] = torch_times
    tacc = _cert_acc(tp, tr, y)
    diff = 100 * np.abs(jacc - tacc).max()
    res["torch"] = {"s_per_image": tt / len(x), "seconds": tt, **tinfo,
                    "certified_accuracy": tacc.tolist()}
    res["speedup_jax_vs_torch"] = tt / jt
    res["max_certified_accuracy_diff_points"] = diff
    if a.repeats > 1:
      log(f"  best of {a.repeats} interleaved: smoothjax", f"{jt / len(x):.2f} s/img")
    log(f"PyTorch core.py-style CERTIFY ({tinfo['device']})", f"{tt / len(x):.2f} s/img",
        f"{tinfo['threads']} thread(s)")
    log("speed-up smoothjax / PyTorch", f"x{tt / jt:.2f}", "(target >= 1)")
    log("certified accuracy: max |jax - torch|", f"{diff:.1f} points",
        f"on {len(x)} images (target <= 2)")
  for i, r in enumerate(RADII):
    t_s = f"  torch {100 * res['torch']['certified_accuracy'][i]:5.1f}%" if "torch" in res else ""
    print(f"  radius {r:4.2f}: jax {100 * jacc[i]:5.1f}%{t_s}")
  write_results(out_path, res)
  return 0


if __name__ == "__main__":
  sys.exit(main())
