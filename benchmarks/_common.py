"""Helpers shared by the benchmarks: best-of timing and the results file."""

from __future__ import annotations

import json
import pathlib
import time


def best_time(fn, repeats: int = 1) -> float:
  """The shortest wall time of ``repeats`` calls of ``fn()``, in seconds."""
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t)
  return best


def write_results(path, result) -> None:
  """Writes ``result`` as indented JSON to ``path`` (its folder created) and says so."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(result, indent=1) + "\n")
  print(f"wrote {path}")
