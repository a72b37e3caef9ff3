"""The GPU benchmark suite: CPU fallback in seconds, and flags that its benchmarks accept."""

import json
import os
import pathlib
import re
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
SUITE = [sys.executable, "-m", "benchmarks.gpu_suite"]  # run from the repository root


def test_without_gpu_it_skips_everything_and_exits_0(tmp_path):
  out = tmp_path / "suite.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  t = time.monotonic()
  r = subprocess.run([*SUITE, f"--out={out}"], env=env, cwd=REPO,
                     capture_output=True, text=True, timeout=120, check=False)
  assert r.returncode == 0, r.stderr
  assert time.monotonic() - t < 60
  assert "no GPU found" in r.stdout
  d = json.loads(out.read_text())
  assert d["results"] == {}
  assert set(d["skipped"]) == {"smoothing", "attacks", "train", "certify", "certify_reduced"}
  assert all("no GPU" in why for why in d["skipped"].values())


def test_benchmark_flags_exist():
  from benchmarks import gpu_suite  # pylint: disable=g-import-not-at-top
  for name, (script, flags, _) in gpu_suite.SUITE.items():
    src = (REPO / "benchmarks" / f"{script}.py").read_text()
    for flag in flags + ["--out=x"]:
      opt = flag.split("=", 1)[0]
      assert re.search(rf"add_argument\(\s*\"{opt}\"", src), f"{name}: {script} lacks {opt}"


def test_dry_run_lists_commands():
  r = subprocess.run([*SUITE, "--dry_run", "--only=certify"], cwd=REPO,
                     capture_output=True, text=True, timeout=60,
                       check=False)
  assert r.returncode == 0
  assert "-m benchmarks.bench_certify --arch=resnet110" in r.stdout and "--n=100000" in r.stdout
