"""``python -m train --config=train/configs/NAME.py --workdir=DIR [--config.a.b=value ...]``.

The code of ``python -m train`` (``train/__main__.py``) and of the ``smoothjax-train`` console
script: a thin command line over :func:`smoothjax.training.train_and_evaluate`: it reads an
``ml_collections`` config file (overrides with ``--config.a.b=value``), trains, and resumes
from the workdir's latest checkpoint when rerun with the same command.

Exit status: 0 on success; 1 when the loss became non-finite (the message names the last good
checkpoint); 2 on bad input (one line on stderr naming the problem; ``--verbose`` adds the
full traceback). Resuming from a damaged latest checkpoint falls back to the newest intact one
(the damaged ones are moved to ``workdir/damaged/``, with a one-line warning each).
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from absl import flags
from ml_collections import config_flags

from smoothjax._utils import first_line, print_error_details, quiet_closed_event_loops

__all__ = ["main", "parse_flags"]


def parse_flags(argv: Sequence[str]) -> flags.FlagValues:
  """Parses ``argv`` (without the program name) into fresh flag values (no global state)."""
  fv = flags.FlagValues()
  argv = ["train", *argv]
  # The --config.a.b overrides are defined from the argument list itself (sys_argv).
  config_flags.DEFINE_config_file("config", None, "ml_collections config file (a preset of "
                                  "train/configs/)", flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  flags.DEFINE_string("workdir", None, "the run's directory (checkpoints, config.json, "
                      "metrics.jsonl); rerun to resume", flag_values=fv)
  flags.DEFINE_bool("verbose", False, "on an error, also print its full traceback and causes "
                    "(and let libraries' background errors through)", flag_values=fv)
  flags.DEFINE_string("compilation_cache", _default_cache(), "JAX's persistent compilation "
                      "cache directory (reruns and resumed runs skip XLA compilation); '' to "
                      "disable", flag_values=fv)
  fv(argv)
  if fv.config is None:
    raise flags.Error("--config=train/configs/NAME.py is required")
  if not fv.workdir:
    raise flags.Error("--workdir=DIR is required")
  return fv


def _default_cache() -> str:
  root = os.environ.get("SMOOTHJAX_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "smoothjax")
  return os.path.join(root, "jax_compilation_cache")


def _enable_compilation_cache(path: str) -> None:
  import jax  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_compilation_cache_dir", path)
  # Cache every program: on a busy CPU even the model's small initialisers take ~0.5 s each.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line; returns the exit status."""
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    fv = parse_flags(argv)
  except (flags.Error, ValueError, TypeError, AttributeError, KeyError, OSError) as e:
    print(f"python -m train: {first_line(e)}", file=sys.stderr)
    return 2

  from smoothjax import training  # pylint: disable=g-import-not-at-top

  if not fv.verbose:
    quiet_closed_event_loops()
  if fv.compilation_cache:
    _enable_compilation_cache(fv.compilation_cache)

  try:
    training.train_and_evaluate(fv.config, fv.workdir)
  except training.NonFiniteLossError as e:
    print(f"python -m train: {e}", file=sys.stderr)
    return 1
  except ValueError as e:  # DatasetError, CheckpointError and config errors are ValueErrors
    print(f"python -m train: {first_line(e)}", file=sys.stderr)
    if fv.verbose:
      print_error_details(e)
    return 2
  except KeyboardInterrupt:
    print("python -m train: interrupted; rerun the same command to resume", file=sys.stderr)
    return 130
  return 0


if __name__ == "__main__":
  sys.exit(main())
