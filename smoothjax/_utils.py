"""Small helpers shared by the modules of smoothjax (one copy each; not public API)."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import os
import pathlib
import sys
import tempfile
import traceback
from typing import IO, Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np


def as_key(key) -> jax.Array:
  """A typed PRNG key from a typed key, raw ``uint32`` key data or an int seed.

  Raises:
    ValueError: anything else.
  """
  if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
    return jax.random.key(int(key))
  if not isinstance(key, (jax.Array, np.ndarray)):
    raise ValueError(f"key must be a jax.random.key(...) or an int seed, got {type(key)}")
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return jax.random.wrap_key_data(key)
  return key


def pad_rows(a: np.ndarray, size: int, *, fill: str = "zeros") -> np.ndarray:
  """``a`` padded along its first axis to ``size`` rows.

  Args:
    a: the array (``len(a) <= size``).
    size: the number of rows wanted.
    fill: ``"zeros"`` or ``"edge"`` (repeats the last row: a real input, e.g. an image an
      attack can work on, so that early stopping over the batch is not held up by padding).
  """
  if a.shape[0] == size:
    return a
  if fill == "edge":
    pad = np.repeat(a[-1:], size - a.shape[0], axis=0)
  else:
    pad = np.zeros((size - a.shape[0],) + a.shape[1:], a.dtype)
  return np.concatenate([a, pad])


def first_line(e: BaseException) -> str:
  """The first line of an exception's message (its type name when the message is empty)."""
  text = str(e).strip()
  return text.splitlines()[0] if text else type(e).__name__


def print_error_details(e: BaseException, file: IO | None = None) -> None:
  """Prints ``e``'s full traceback and cause chain, a context hidden by ``from None`` included.

  What the command lines print after their one-line error with ``--verbose``.
  """
  file = sys.stderr if file is None else file
  traceback.print_exception(type(e), e, e.__traceback__, file=file)
  hidden = e.__context__ if e.__suppress_context__ else None
  if hidden is not None:
    print("\nthe error above replaced:", file=file)
    traceback.print_exception(type(hidden), hidden, hidden.__traceback__, file=file)


def _call_soon_threadsafe_unless_closed(self, callback, *args, **kw):
  if self.is_closed():
    return None  # the loop is gone: its callback could never run
  return _ORIGINAL_CALL_SOON_THREADSAFE(self, callback, *args, **kw)


_ORIGINAL_CALL_SOON_THREADSAFE = asyncio.BaseEventLoop.call_soon_threadsafe
_ORIGINAL_UNRAISABLEHOOK = sys.unraisablehook


def _in_orbax(filename: str) -> bool:
  return f"{os.sep}orbax{os.sep}" in filename


def _is_orbax_read(obj: Any) -> bool:
  code = getattr(obj, "cr_code", None)  # a coroutine
  return code is not None and _in_orbax(code.co_filename)


def _raised_in_orbax(exc: BaseException | None) -> bool:
  tb = getattr(exc, "__traceback__", None)
  return any(_in_orbax(frame.filename) for frame in traceback.extract_tb(tb))


def _drop_orbax_unretrieved(record: logging.LogRecord) -> bool:
  """A ``logging`` filter: False (drop) for asyncio's "exception was never retrieved" record of
  a future whose exception was raised in orbax (a restore that already failed and said so)."""
  exc = record.exc_info[1] if record.exc_info else None
  return not ("exception was never retrieved" in str(record.msg) and _raised_in_orbax(exc))


def _drop_orbax_unraisable(unraisable) -> None:
  if _is_orbax_read(unraisable.object):
    return  # an abandoned read of a restore that already failed (and said so)
  _ORIGINAL_UNRAISABLEHOOK(unraisable)


def quiet_closed_event_loops() -> None:
  """Drops callbacks scheduled on a closed asyncio event loop instead of raising.

  When orbax's restore of a damaged checkpoint fails on one array, its event loop closes while
  TensorStore is still reading the others; each of those reads then completes on a TensorStore
  thread by calling ``loop.call_soon_threadsafe``, whose ``RuntimeError('Event loop is closed')``
  TensorStore prints as a traceback (hundreds of lines, at any time afterwards). The callbacks
  could never run. Likewise orbax's abandoned read coroutines, garbage-collected with their
  exception ("Exception ignored in: <coroutine object _read_array_index_and_device_put>", printed
  by ``sys.unraisablehook``), are dropped; other unraisable exceptions still print. So are the
  ``asyncio`` logger's "exception was never retrieved" records of futures (e.g. orbax's
  ``asyncio.gather`` of the other reads) whose exception was raised in orbax; other asyncio
  records still log. The command lines install this (unless ``--verbose``) so that a damaged
  checkpoint gives their one-line error only. Process-wide; idempotent.
  """
  asyncio.BaseEventLoop.call_soon_threadsafe = _call_soon_threadsafe_unless_closed
  sys.unraisablehook = _drop_orbax_unraisable
  logger = logging.getLogger("asyncio")
  if _drop_orbax_unretrieved not in logger.filters:
    logger.addFilter(_drop_orbax_unretrieved)


def parse_fraction(text: str) -> float:
  """``"8/255"``, ``"0.5"`` or ``"1e-3"`` as a float (``fractions.Fraction`` syntax).

  Raises:
    ValueError: not a number.
  """
  try:
    return float(fractions.Fraction(str(text).strip()))
  except (ValueError, ZeroDivisionError):
    raise ValueError(f"{text!r} is not a number (fractions like 8/255 are fine)") from None


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
  """Opens a temporary file beside ``path`` that replaces ``path`` when the block succeeds.

  The file is flushed and synced before the rename, so a killed process leaves either the
  old file or the new one, never half of one; on an error the temporary file is removed.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  """Writes ``text`` to ``path`` atomically (see :func:`atomic_open`)."""
  with atomic_open(path) as f:
    f.write(text)


_REQUIRED = object()


def config_value(cfg: Any, name: str, default: Any = _REQUIRED) -> Any:
  """``cfg.name`` of a ConfigDict, dict or object.

  Configs are built from ``train/configs/base.py``, the one place their defaults are set, so
  a missing field is an error unless the caller gives a ``default`` (a typed config's own, as
  in ``Objective.from_config``).

  Raises:
    ValueError: the field is missing and no default was given.
  """
  if isinstance(cfg, Mapping):
    if name in cfg:
      return cfg[name]
  elif cfg is not None and hasattr(cfg, name):
    return getattr(cfg, name)
  if default is _REQUIRED:
    raise ValueError(f"the config has no field {name!r} (build configs from "
                     "train/configs/base.py's get_config())")
  return default
