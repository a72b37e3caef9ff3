"""One command for an accelerator: every benchmark at GPU sizes, each beside its PyTorch baseline.

Runs, one after another in subprocesses (each writes its own JSON, collected into one file):

1. ``smoothing``: ``bench_smoothing.py``: Monte-Carlo throughput of a noisy ResNet-20 vs a
   PyTorch loop written like the reference, the one-pass curve and the sigma x n grid;
2. ``attacks``: ``bench_attacks.py``: PGD-7 / EPGD / NAttack vs PyTorch eager loops;
3. ``train``: ``bench_train.py``: clean and PGD-7 training steps vs PyTorch eager;
4. ``certify``: ``bench_certify.py``: Cohen et al.'s CERTIFY of a CIFAR ResNet-110 at
   N = 100,000 on a few images vs a loop written like their ``core.py``;
5. ``certify_reduced``: ``bench_certify.py --precision=bf16 --compare_fp32``: the shift of
   certified accuracy at every radius under bf16 matmuls / convolutions (target < 1 point).

The sizes are meant to finish in under 6 minutes on one modern GPU (``--budget_s``, default 345
s, bounds the whole run: a benchmark that would start with too little time left is skipped, one
that runs past the remaining time is stopped, and both are reported). Without a GPU (JAX finds
none) it says so, writes the JSON with every benchmark marked skipped, and exits 0 in seconds;
a benchmark whose PyTorch baseline cannot see the GPU is run with that noted.

Usage (from the repository root)::

  python -m benchmarks.gpu_suite                       # writes benchmarks/results/gpu_suite.json
  python -m benchmarks.gpu_suite --only=certify,smoothing --budget_s=600
  python -m benchmarks.gpu_suite --dry_run             # print the commands, run nothing
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"

# name -> (module under benchmarks/, GPU-size flags, minimum seconds worth starting with)
SUITE = {
    "smoothing": ("bench_smoothing",
                  ["--images=1024", "--n=256", "--torch_n=64", "--grid_images=64", "--skip=rss"],
                  40),
    "attacks": ("bench_attacks", ["--batch=512", "--reps=3"], 30),
    "train": ("bench_train", ["--batch=512", "--steps=20"], 30),
    "certify": ("bench_certify",
                ["--arch=resnet110", "--images=4", "--n0=100", "--n=100000", "--batch=1000"],
                60),
    "certify_reduced": ("bench_certify",
                        ["--arch=resnet110", "--images=100", "--n0=100", "--n=10000",
                         "--batch=1000", "--precision=bf16", "--compare_fp32", "--no_torch"],
                        45),
}


def _probe() -> dict:
  """What accelerators JAX and PyTorch see (JAX in a subprocess: a clean, bounded start)."""
  code = ("import json, jax\n"
          "print(json.dumps({'backend': jax.default_backend(), "
          "'devices': [str(d) for d in jax.devices()]}))\n")
  out = {"jax_backend": None, "jax_devices": [], "torch_cuda": False, "probe_error": None}
  try:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       check=False)
    if r.returncode == 0:
      d = json.loads(r.stdout.strip().splitlines()[-1])
      out["jax_backend"], out["jax_devices"] = d["backend"], d["devices"]
    else:
      out["probe_error"] = (r.stderr.strip().splitlines() or ["?"])[-1]
  except (subprocess.TimeoutExpired, ValueError, IndexError) as e:
    out["probe_error"] = f"{type(e).__name__}: {e}"
  try:
    import torch  # pylint: disable=g-import-not-at-top
    out["torch_cuda"] = bool(torch.cuda.is_available())
  except ImportError:
    out["torch_cuda"] = False
  return out


def commands(names, outdir: pathlib.Path) -> dict[str, list[str]]:
  """The command line of each benchmark of ``names`` (its JSON goes to ``outdir``)."""
  return {name: [sys.executable, "-m", f"benchmarks.{SUITE[name][0]}", *SUITE[name][1],
                 f"--out={outdir / (name + '.json')}"] for name in names}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default=str(BENCH / "results" / "gpu_suite.json"))
  p.add_argument("--only", default=",".join(SUITE), help=f"subset of {','.join(SUITE)}")
  p.add_argument("--budget_s", type=float, default=345.0, help="wall-clock bound of the run")
  p.add_argument("--dry_run", action="store_true", help="print the commands and exit")
  a = p.parse_args(argv)
  t0 = time.monotonic()
  names = [n for n in a.only.split(",") if n]
  unknown = [n for n in names if n not in SUITE]
  if unknown:
    p.error(f"unknown benchmarks {unknown}; choose from {', '.join(SUITE)}")
  out_path = pathlib.Path(a.out)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    cmds = commands(names, pathlib.Path(tmp))
    if a.dry_run:
      for name, cmd in cmds.items():
        print(f"{name}: {' '.join(cmd[1:])}")
      return 0
    env_info = _probe()
    result = {"env": env_info, "budget_s": a.budget_s, "results": {}, "skipped": {}}
    gpu = env_info["jax_backend"] == "gpu"
    if not gpu:
      why = (f"no GPU found (JAX backend: {env_info['jax_backend'] or 'unavailable'}"
             + (f"; {env_info['probe_error']}" if env_info["probe_error"] else "") + ")")
      print(f"gpu_suite: {why}: skipping {', '.join(names)}")
      result["skipped"] = {n: why for n in names}
      out_path.write_text(json.dumps(result, indent=1) + "\n")
      print(f"wrote {out_path}")
      return 0
    print(f"gpu_suite: JAX on {', '.join(env_info['jax_devices'])}; PyTorch CUDA: "
          f"{env_info['torch_cuda']}", flush=True)
    if not env_info["torch_cuda"]:
      result["note"] = ("PyTorch sees no CUDA device: its baselines ran on the CPU, so the "
                        "ratios are not GPU-to-GPU")
      print(f"gpu_suite: {result['note']}")
    env = dict(os.environ, XLA_PYTHON_CLIENT_MEM_FRACTION="0.5")  # room for PyTorch beside JAX
    for name, cmd in cmds.items():
      left = a.budget_s - (time.monotonic() - t0)
      if left < SUITE[name][2]:
        result["skipped"][name] = f"time budget: {left:.0f} s left, needs >= {SUITE[name][2]} s"
        print(f"gpu_suite: skip {name}: {result['skipped'][name]}", flush=True)
        continue
      print(f"gpu_suite: {name}: {' '.join(cmd[1:])}", flush=True)
      t = time.monotonic()
      try:
        r = subprocess.run(cmd, cwd=REPO, env=env, timeout=left, capture_output=True, text=True,
                           check=False)
      except subprocess.TimeoutExpired:
        result["skipped"][name] = f"stopped at the time budget after {time.monotonic() - t:.0f} s"
        print(f"gpu_suite: {name}: {result['skipped'][name]}", flush=True)
        continue
      dt = time.monotonic() - t
      sys.stdout.write(r.stdout)
      jpath = pathlib.Path(cmd[-1].split("=", 1)[1])
      if r.returncode != 0 or not jpath.is_file():
        tail = (r.stderr.strip().splitlines() or ["?"])[-1]
        result["skipped"][name] = f"failed (exit {r.returncode}): {tail}"
        print(f"gpu_suite: {name}: {result['skipped'][name]}", flush=True)
        continue
      result["results"][name] = {"seconds": dt, "command": " ".join(cmd[1:-1]),
                                 **json.loads(jpath.read_text())}
  result["total_s"] = time.monotonic() - t0
  out_path.write_text(json.dumps(result, indent=1) + "\n")
  print(f"gpu_suite: done in {result['total_s']:.0f} s; ran {', '.join(result['results']) or '-'}"
        + (f"; skipped {', '.join(result['skipped'])}" if result["skipped"] else ""))
  print(f"wrote {out_path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
