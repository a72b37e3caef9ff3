"""Run provenance: what produced a result (code version, libraries, devices, command, time).

:func:`provenance` returns a flat, JSON-serialisable dict to store beside results (e.g. a
``provenance`` entry of ``results.json``) so that a number can be traced back to the code and
the setup that produced it. It holds no personal data: no host name, user name, environment
variables or paths other than those on the command line itself.

Example:
  >>> from smoothjax import provenance
  >>> info = provenance.provenance(["evaluate", "--n=16"], devices=False)
  >>> info["argv"], info["smoothjax"]["version"] is not None
  (['evaluate', '--n=16'], True)
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys
from typing import Any, Sequence

__all__ = ["PACKAGES", "provenance", "git_info", "package_versions", "device_info"]

# Distribution names whose versions are recorded (absent ones are recorded as None).
PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "scipy", "orbax-checkpoint")
_GIT_TIMEOUT_S = 10


def _git(repo: pathlib.Path, *args: str) -> str | None:
  try:
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                         timeout=_GIT_TIMEOUT_S, check=False,
                         env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
  except (OSError, subprocess.SubprocessError):  # no git, a hung git, ...
    return None
  if out.returncode != 0:
    return None
  return out.stdout.strip()


def git_info(package_dir: str | os.PathLike | None = None) -> dict:
  """The git commit of the checkout the package is imported from.

  Only a repository whose work tree contains the package directory itself counts (an installed
  copy inside some unrelated repository, e.g. a virtual environment in a project, gives None).

  Args:
    package_dir: the package's directory (default: this ``smoothjax`` package).

  Returns:
    ``{"commit": str | None, "dirty": bool | None}``; ``dirty``: uncommitted changes to
    tracked files of the checkout. Never raises.
  """
  none = {"commit": None, "dirty": None}
  try:
    pkg = pathlib.Path(package_dir or pathlib.Path(__file__).resolve().parent).resolve()
    top = _git(pkg, "rev-parse", "--show-toplevel")
    if not top:
      return none
    pkg.relative_to(pathlib.Path(top).resolve())  # ValueError if it is not inside
    # The package must be tracked there, not just lie inside (ignored) in the tree.
    if not _git(pkg, "ls-files", "--", str(pkg / "__init__.py")):
      return none
    commit = _git(pkg, "rev-parse", "HEAD")
    if not commit:
      return none
    status = _git(pkg, "status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}
  except (OSError, ValueError):
    return none


def _version(dist: str) -> str | None:
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    pass
  mod = sys.modules.get(dist.replace("-", "_"))
  return getattr(mod, "__version__", None) if mod is not None else None


def package_versions(packages: Sequence[str] = PACKAGES) -> dict:
  """``{distribution: version or None}`` for the given distribution names."""
  return {p: _version(p) for p in packages}


def device_info() -> dict:
  """The JAX devices: platform, kinds, counts (initialises the JAX backend).

  Returns:
    ``{"platform", "kinds", "count", "local_count", "process_count", "process_index"}``, or
    ``{"error": "..."}`` when the backend cannot start. Device ids and host names are left out.
  """
  try:
    import jax  # pylint: disable=import-outside-toplevel
    devs = jax.devices()
    kinds = sorted({d.device_kind for d in devs})
    return {"platform": devs[0].platform if devs else None, "kinds": kinds,
            "count": len(devs), "local_count": jax.local_device_count(),
            "process_count": jax.process_count(), "process_index": jax.process_index()}
  except Exception as e:  # pylint: disable=broad-except
    return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}


def provenance(argv: Sequence[str] | None = None, *, devices: bool = True) -> dict[str, Any]:
  """Everything needed to trace a result back to its code and setup; JSON-serialisable.

  Args:
    argv: the command line (default ``sys.argv``).
    devices: include :func:`device_info` (initialises JAX's backend if not done yet).

  Returns:
    A dict::

      {"smoothjax": {"version", "commit", "dirty"},
       "packages": {"jax", "jaxlib", "flax", "optax", "numpy", "scipy", "orbax-checkpoint"},
       "python": "3.x.y", "platform": "Linux-x86_64" (system and machine only),
       "devices": {"platform", "kinds", "count", "local_count", "process_count",
                   "process_index"},
       "argv": [...], "command": "shell-quoted command line",
       "time_utc": "2026-12-01T22:00:00Z"}

    Missing pieces (no git, a package not installed) are ``None``; it never raises on them.
  """
  argv = list(sys.argv if argv is None else argv)
  argv = [str(a) for a in argv]
  try:
    import smoothjax  # pylint: disable=import-outside-toplevel
    version = getattr(smoothjax, "__version__", None)
  except ImportError:
    version = None
  info = {
      "smoothjax": {"version": version, **git_info()},
      "packages": package_versions(),
      "python": platform.python_version(),
      "platform": f"{platform.system()}-{platform.machine()}",
      "argv": argv,
      "command": shlex.join(argv),
      "time_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
  }
  if devices:
    info["devices"] = device_info()
  json.dumps(info)  # fail here, not when the results are written
  return info
