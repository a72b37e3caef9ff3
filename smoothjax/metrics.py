"""Metric writers: JSON lines (always) and TensorBoard (only when a writer is installed).

CLU's default writer pulls in TensorFlow; a JSON-lines file needs nothing and is easy to read
back (``pandas.read_json(path, lines=True)`` or :func:`read_metrics`).

Every line of ``metrics.jsonl`` is one flat JSON object ``{"step": int, "split": str, ...}``
with scalar values.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import time
from typing import Any, Mapping

import numpy as np

__all__ = ["MetricWriter", "read_metrics"]


def _scalar(v: Any) -> Any:
  if isinstance(v, (bool, str)) or v is None:
    return v
  v = np.asarray(v)
  if v.ndim:
    raise ValueError(f"metric values must be scalars, got an array of shape {v.shape}")
  v = v.item()
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)  # JSON has no NaN/Inf; keep them readable
  return v


def _tensorboard_writer(logdir: pathlib.Path):
  """A TensorBoard SummaryWriter if one is installed (tensorboardX or torch + tensorboard)."""
  if importlib.util.find_spec("tensorboardX") is not None:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  elif (importlib.util.find_spec("tensorboard") is not None
        and importlib.util.find_spec("torch") is not None):
    from torch.utils.tensorboard import SummaryWriter  # pylint: disable=g-import-not-at-top
  else:
    return None  # checked without importing: importing torch alone takes seconds
  try:
    return SummaryWriter(str(logdir))
  except Exception:  # pylint: disable=broad-except
    return None


class MetricWriter:
  """Appends scalar metrics to ``workdir/metrics.jsonl`` (and TensorBoard where installed).

  Args:
    workdir: the run's directory.
    resume_step: when resuming from a checkpoint of this step, lines of later steps (written
      by the killed run after its last checkpoint) are dropped first, so the file stays one
      consistent history. ``None``: keep the file as it is.
    tensorboard: also write TensorBoard event files under ``workdir/tensorboard`` if a writer
      is installed.
  """

  def __init__(self, workdir: str | os.PathLike, *, resume_step: int | None = None,
               tensorboard: bool = True):
    self.path = pathlib.Path(workdir) / "metrics.jsonl"
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if resume_step is not None and self.path.exists():
      kept = [r for r in read_metrics(self.path) if int(r.get("step", 0)) <= resume_step]
      tmp = self.path.with_suffix(".jsonl.tmp")
      with open(tmp, "w") as f:
        for r in kept:
          f.write(json.dumps(r) + "\n")
      os.replace(tmp, self.path)
    self._f = open(self.path, "a", buffering=1)
    self._tb = _tensorboard_writer(self.path.parent / "tensorboard") if tensorboard else None

  def write(self, step: int, metrics: Mapping[str, Any], *, split: str = "train") -> None:
    """Writes one line ``{"step", "split", "time", **metrics}``."""
    row = {"step": int(step), "split": split, "time": round(time.time(), 3)}
    row.update({k: _scalar(v) for k, v in metrics.items()})
    self._f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in row.items():
        if k not in ("step", "split", "time") and isinstance(v, (int, float)):
          self._tb.add_scalar(f"{split}/{k}", v, int(step))

  def flush(self) -> None:
    self._f.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if not self._f.closed:
      self._f.close()
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
  """Reads a ``metrics.jsonl`` file (a workdir is accepted too); a torn last line is skipped."""
  path = pathlib.Path(path)
  if path.is_dir():
    path = path / "metrics.jsonl"
  rows = []
  if not path.exists():
    return rows
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue  # a line cut short by a killed process
  return rows
