"""CIFAR-10 / CIFAR-100 from the official python archives, without TensorFlow.

tensorflow-datasets reads a *prepared* CIFAR copy without TensorFlow, but preparing one needs
TensorFlow. This module is the fallback for ``--dataset=cifar10|cifar100`` when tfds has no
prepared copy (or is not installed): it downloads the archive that the dataset's authors publish
(Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009;
https://www.cs.toronto.edu/~kriz/cifar.html),
verifies it, and decodes it into the arrays every other source of :mod:`smoothjax.data` gives.

* **Download** (:func:`download_archive`): into a temporary file in the cache directory, with a
  tqdm progress bar; an interrupted transfer is resumed with an HTTP ``Range`` request when the
  server supports it, else restarted (``retries`` more attempts). The file is checked against
  the published MD5 *and* SHA-256 before it is moved into place with ``os.replace``, so the cache
  holds either the verified archive or nothing: a truncated or corrupt download leaves no file.
* **Where**: ``<cache_dir>/downloads/cifar-10-python.tar.gz`` (or ``cifar-100-python.tar.gz``),
  ``cache_dir`` defaulting to :func:`smoothjax.data.default_cache_dir` (``$SMOOTHJAX_CACHE`` or
  ``~/.cache/smoothjax``). Offline, put the archive there by hand (any copy with the right
  checksum; it is verified before use).
* **Decoding** (:func:`read_archive`): the archive members are Python pickles of dicts of
  bytes, lists and NumPy arrays. They are read straight from the tar (never extracted), only
  after the archive's checksums verified, and with a restricted unpickler that resolves no
  global except NumPy's array reconstructors (``ndarray``, ``dtype``, ``_reconstruct``,
  ``_frombuffer``) and ``_codecs.encode``, so even a file that passed the checksum can run no
  other code. Images become uint8 NHWC ``(N, 32, 32, 3)`` (the rows hold the red, green and
  blue planes in turn), labels int64 (CIFAR-100: the 100 ``fine_labels``).
* **Cache of the decoded arrays**: ``<cache_dir>/cifar10-python-<sha256 prefix>.npz`` (a plain
  ``.npz``, loaded with ``allow_pickle=False``), written atomically; later loads read it without
  touching the archive.

:func:`load_cifar` ties these together and returns a :class:`smoothjax.data.Dataset` (validation
split = the last 5,000 training images, as for every source).

Example:
  >>> from smoothjax import data
  >>> ds = data.load_cifar("cifar10")  # doctest: +SKIP
  >>> ds.x_train.shape, ds.x_val.shape, ds.x_test.shape  # doctest: +SKIP
  ((45000, 32, 32, 3), (5000, 32, 32, 3), (10000, 32, 32, 3))
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import io
import logging
import os
import pathlib
import pickle
import socket
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from typing import Any

import numpy as np

from smoothjax.data import _dataset as _data
from smoothjax.data import _sources

__all__ = [
    "Archive",
    "ARCHIVES",
    "archive_path",
    "download_archive",
    "read_archive",
    "load_arrays",
    "load_cifar",
]

_log = logging.getLogger(__name__)

_CHUNK = 1 << 20
# The decoded-array cache layout; bump when the arrays stored change.
_CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Archive:
  """An official CIFAR python archive and its layout.

  Attributes:
    name: the dataset spec (``"cifar10"`` or ``"cifar100"``).
    url: download address.
    filename: the archive's file name in the cache.
    md5: the MD5 published on the dataset's page (and used by torchvision).
    sha256: the SHA-256 of the same file (used by torchvision's prototype datasets and Keras).
    folder: the top folder inside the archive.
    train_members: member names of the training batches, in order.
    test_members: member names of the test batches.
    meta_member: the member holding the class names.
    label_key: the label list's key in every batch (CIFAR-100: the fine labels).
    names_key: the class-name list's key in the meta member.
  """

  name: str
  url: str
  filename: str
  md5: str
  sha256: str
  folder: str
  train_members: tuple[str, ...]
  test_members: tuple[str, ...]
  meta_member: str
  label_key: str
  names_key: str


ARCHIVES: dict[str, Archive] = {
    "cifar10": Archive(
        name="cifar10",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        filename="cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        sha256="6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
        folder="cifar-10-batches-py",
        train_members=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_members=("test_batch",),
        meta_member="batches.meta",
        label_key="labels",
        names_key="label_names"),
    "cifar100": Archive(
        name="cifar100",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        filename="cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        sha256="85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7",
        folder="cifar-100-python",
        train_members=("train",),
        test_members=("test",),
        meta_member="meta",
        label_key="fine_labels",
        names_key="fine_label_names"),
}


def _archive(name: str) -> Archive:
  if name not in ARCHIVES:
    raise _data.DatasetError(f"no official archive for {name!r}; expected one of "
                             f"{', '.join(ARCHIVES)}")
  return ARCHIVES[name]


def _cache_root(cache_dir: str | os.PathLike | None) -> pathlib.Path:
  if cache_dir is None:
    return _data.default_cache_dir()
  return pathlib.Path(cache_dir).expanduser()


def archive_path(name: str, cache_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Where the archive of ``name`` is kept: ``<cache_dir>/downloads/<filename>``.

  Args:
    name: ``"cifar10"`` or ``"cifar100"``.
    cache_dir: default :func:`smoothjax.data.default_cache_dir`.

  Returns:
    The path (it need not exist).
  """
  return _cache_root(cache_dir) / "downloads" / _archive(name).filename


# ---------------------------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------------------------


def _digests(path: pathlib.Path) -> tuple[str, str]:
  md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      md5.update(chunk)
      sha.update(chunk)
  return md5.hexdigest(), sha.hexdigest()


def _checksum_problem(path: pathlib.Path, md5: str | None, sha256: str | None) -> str | None:
  """``None`` if ``path`` matches the given checksums, else what differs."""
  got_md5, got_sha = _digests(path)
  if md5 is not None and got_md5 != md5.lower():
    return f"md5 {got_md5}, expected {md5}"
  if sha256 is not None and got_sha != sha256.lower():
    return f"sha256 {got_sha}, expected {sha256}"
  return None


def _manual_hint(url: str, md5: str, dest: pathlib.Path) -> str:
  return (f"Download {url} (md5 {md5}) where internet is available and put it at {dest}, "
          f"or use an offline source (--dataset=npz:PATH or --dataset=folder:PATH)")


def _unreachable(url: str, timeout: float) -> str | None:
  """Why the host of an http(s) ``url`` cannot be reached (``None``: reachable, or unknown).

  A quick TCP connect, so that an offline machine fails within ``timeout`` seconds instead of
  the download's longer read timeout. Skipped when a proxy is configured for the scheme (the
  host itself may then be unreachable while the download works).
  """
  parts = urllib.parse.urlsplit(url)
  if parts.scheme not in ("http", "https") or not parts.hostname:
    return None
  if urllib.request.getproxies().get(parts.scheme) and not urllib.request.proxy_bypass(
      parts.hostname):
    return None
  port = parts.port or (443 if parts.scheme == "https" else 80)
  try:
    with socket.create_connection((parts.hostname, port), timeout=timeout):
      return None
  except OSError as e:
    return f"{parts.hostname}:{port} is not reachable: {e}"


class _Truncated(Exception):
  """A transfer ended before all announced bytes arrived (retried)."""


def _transfer(url: str, tmp: pathlib.Path, *, timeout: float, progress: bool, desc: str) -> None:
  """Appends the rest of ``url`` to ``tmp`` (a Range request if ``tmp`` is not empty)."""
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

  have = tmp.stat().st_size
  request = urllib.request.Request(url, headers={"User-Agent": "smoothjax"})
  if have:
    request.add_header("Range", f"bytes={have}-")
  with urllib.request.urlopen(request, timeout=timeout) as resp:
    status = getattr(resp, "status", None)
    if have and status != 206:  # the server ignored the Range request: start over
      have = 0
    length = resp.headers.get("Content-Length")
    total = have + int(length) if length and length.isdigit() else None
    received = have
    with open(tmp, "ab" if have else "wb") as f, tqdm(
        total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
        disable=not progress, leave=False) as bar:
      while True:
        try:
          chunk = resp.read(_CHUNK)
        except (http.client.IncompleteRead, http.client.HTTPException, OSError) as e:
          raise _Truncated(f"connection lost after {received} bytes ({e})") from e
        if not chunk:
          break
        f.write(chunk)
        received += len(chunk)
        bar.update(len(chunk))
  if total is not None and received != total:
    raise _Truncated(f"received {received} of {total} bytes")


def download_archive(name: str, *, cache_dir: str | os.PathLike | None = None,
                     url: str | None = None, md5: str | None = None,
                     sha256: str | None = None, download: bool = True, retries: int = 3,
                     timeout: float = 30.0, connect_timeout: float = 5.0,
                     progress: bool = True) -> pathlib.Path:
  """Returns the verified archive of ``name``, downloading it first if needed.

  An archive already at :func:`archive_path` is used when its checksums match; one that does
  not match is replaced by a fresh download (it is overwritten only once the download
  verified). The download goes to a temporary file beside the destination; an interrupted
  transfer is resumed (HTTP ``Range``) or restarted up to ``retries`` times; the file is
  verified and then renamed into place, so a failure leaves nothing in the cache.

  Args:
    name: ``"cifar10"`` or ``"cifar100"``.
    cache_dir: default :func:`smoothjax.data.default_cache_dir`.
    url: download address (default: the official one in :data:`ARCHIVES`; any URL urllib
      opens, e.g. a mirror or ``file://``).
    md5: expected MD5 (default: the published one). With ``url`` given and no checksum, the
      published checksums still apply.
    sha256: expected SHA-256 (default: the published one).
    download: if False, only an archive already in the cache is accepted.
    retries: further attempts after a truncated transfer.
    timeout: socket timeout in seconds of the download (connect and each read).
    connect_timeout: an http(s) host that does not accept a connection within this many
      seconds counts as offline (the error comes at once; skipped behind a proxy).
    progress: show a tqdm progress bar (on stderr).

  Returns:
    The path of the verified archive.

  Raises:
    smoothjax.data.DatasetError: unknown ``name``; no cached archive and ``download=False``;
      the host unreachable (offline), an HTTP error, a transfer still truncated after
      ``retries`` retries, or a checksum mismatch. The one-line message says how to get the
      archive by hand and where to put it.
  """
  arc = _archive(name)
  url = url or arc.url
  md5 = arc.md5 if md5 is None else md5
  sha256 = arc.sha256 if sha256 is None else sha256
  dest = archive_path(name, cache_dir)
  hint = _manual_hint(url, md5, dest)

  stale = None
  if dest.is_file():
    stale = _checksum_problem(dest, md5, sha256)
    if stale is None:
      return dest
    _log.warning("%s fails its checksum (%s); downloading it again", dest, stale)
  if not download:
    what = f"{dest} fails its checksum ({stale})" if stale else f"no archive at {dest}"
    raise _data.DatasetError(f"{name}: {what} and downloading is off. {hint}")
  why = _unreachable(url, connect_timeout)
  if why is not None:
    raise _data.DatasetError(f"{name}: cannot download {url} ({why}; offline?). {hint}")

  try:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    os.close(fd)
  except OSError as e:
    raise _data.DatasetError(f"{name}: cannot write to the cache {dest.parent} ({e}); set "
                             f"$SMOOTHJAX_CACHE to a writable directory") from e
  tmp = pathlib.Path(tmp_name)
  try:
    _log.info("downloading %s to %s", url, dest)
    for attempt in range(retries + 1):
      try:
        _transfer(url, tmp, timeout=timeout, progress=progress, desc=arc.filename)
        break
      except _Truncated as e:
        if attempt == retries:
          raise _data.DatasetError(
              f"{name}: the download of {url} was cut short {retries + 1} times (last: {e}). "
              f"Retry later. {hint}") from None
        _log.warning("download of %s interrupted (%s); retrying", url, e)
      except urllib.error.HTTPError as e:
        raise _data.DatasetError(f"{name}: downloading {url} failed: HTTP {e.code} {e.reason}. "
                                 f"{hint}") from None
      except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise _data.DatasetError(f"{name}: cannot download {url} ({reason}; offline?). "
                                 f"{hint}") from None
    problem = _checksum_problem(tmp, md5, sha256)
    if problem is not None:
      raise _data.DatasetError(f"{name}: the file downloaded from {url} is corrupt or not the "
                               f"official archive ({problem}); nothing was kept. {hint}")
    os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
    os.replace(tmp, dest)
  finally:
    if tmp.exists():
      tmp.unlink()
  return dest


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def _numpy_globals() -> dict[tuple[str, str], Any]:
  # The reconstructors this NumPy itself pickles arrays with (``numpy.core`` in NumPy 1,
  # ``numpy._core`` in NumPy 2); the official batches name NumPy 1's module.
  reconstruct = np.zeros(1).__reduce__()[0]
  frombuffer = np.zeros(1).__reduce_ex__(5)[0]
  allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
             ("_codecs", "encode"): __import__("codecs").encode}
  for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    allowed[(mod, "_reconstruct")] = reconstruct
  for mod in ("numpy.core.numeric", "numpy._core.numeric"):
    allowed[(mod, "_frombuffer")] = frombuffer
  return allowed


class _BatchUnpickler(pickle.Unpickler):
  """Unpickles CIFAR batches: NumPy arrays and builtins only, no other global."""

  _allowed = None

  def find_class(self, module, name):
    if _BatchUnpickler._allowed is None:
      _BatchUnpickler._allowed = _numpy_globals()
    obj = _BatchUnpickler._allowed.get((module, name))
    if obj is None:
      raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
    return obj


def _unpickle(blob: bytes, what: str) -> dict:
  try:
    # encoding="bytes": the batches were pickled by Python 2; its str become bytes.
    obj = _BatchUnpickler(io.BytesIO(blob), encoding="bytes").load()
  except Exception as e:  # pickle raises many types on malformed input
    raise _data.DatasetError(f"cannot read the CIFAR batch {what}: {e}") from e
  if not isinstance(obj, dict):
    raise _data.DatasetError(f"CIFAR batch {what} is a {type(obj).__name__}, not a dict")
  return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _batch_arrays(batch: dict, arc: Archive, what: str) -> tuple[np.ndarray, np.ndarray]:
  if "data" not in batch or arc.label_key not in batch:
    raise _data.DatasetError(f"CIFAR batch {what} has no 'data'/'{arc.label_key}' entries "
                             f"({sorted(map(str, batch))})")
  x = np.asarray(batch["data"])
  y = np.asarray(batch[arc.label_key], dtype=np.int64).reshape(-1)
  if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or len(x) != len(y):
    raise _data.DatasetError(f"CIFAR batch {what}: data {x.dtype} {x.shape} and {len(y)} labels; "
                             f"expected uint8 (N, 3072) and N labels")
  # Each row is the 32x32 red plane, then green, then blue (row-major): NCHW -> NHWC.
  return np.ascontiguousarray(x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)), y


def read_archive(path: str | os.PathLike, name: str) -> dict[str, np.ndarray]:
  """Decodes an official CIFAR python archive, read directly from the ``.tar.gz``.

  The caller vouches for the file: :func:`load_arrays` calls this only on an archive whose
  checksums verified. The batches are unpickled with a restricted unpickler (NumPy array
  reconstruction only) all the same.

  Args:
    path: the ``.tar.gz`` (official member names, see :data:`ARCHIVES`).
    name: ``"cifar10"`` or ``"cifar100"``.

  Returns:
    ``{"x_train", "y_train", "x_test", "y_test", "class_names"}``: uint8 NHWC images (training
    batches concatenated in order), int64 labels, and the class names of the meta member.

  Raises:
    smoothjax.data.DatasetError: not a readable tar, a missing member, or a malformed batch.
  """
  arc = _archive(name)
  wanted = {f"{arc.folder}/{m}": m for m in (*arc.train_members, *arc.test_members,
                                             arc.meta_member)}
  blobs: dict[str, bytes] = {}
  try:
    with tarfile.open(path, "r:*") as tar:
      for member in tar:
        key = wanted.get(member.name.lstrip("./"))
        if key is not None and member.isfile():
          blobs[key] = tar.extractfile(member).read()
  except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
    raise _data.DatasetError(f"{name}: cannot read the archive {path}: {e}") from e
  missing = [f"{arc.folder}/{m}" for m in wanted.values() if m not in blobs]
  if missing:
    raise _data.DatasetError(f"{name}: the archive {path} lacks {', '.join(missing)}")

  out: dict[str, np.ndarray] = {}
  for split, members in (("train", arc.train_members), ("test", arc.test_members)):
    parts = [_batch_arrays(_unpickle(blobs[m], m), arc, m) for m in members]
    out[f"x_{split}"] = np.concatenate([x for x, _ in parts])
    out[f"y_{split}"] = np.concatenate([y for _, y in parts])
  meta = _unpickle(blobs[arc.meta_member], arc.meta_member)
  names = meta.get(arc.names_key)
  if names is None:
    raise _data.DatasetError(f"{name}: {arc.meta_member} has no {arc.names_key!r}")
  out["class_names"] = np.asarray(
      [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names], dtype=str)
  return out


def _arrays_cache_path(root: pathlib.Path, name: str, sha256: str) -> pathlib.Path:
  return root / f"{name}-python-v{_CACHE_VERSION}-{sha256[:16]}.npz"


def load_arrays(name: str, *, cache_dir: str | os.PathLike | None = None,
                **download_kwargs: Any) -> dict[str, np.ndarray]:
  """The decoded arrays of ``name``, from the decoded cache or the verified archive.

  Args:
    name: ``"cifar10"`` or ``"cifar100"``.
    cache_dir: default :func:`smoothjax.data.default_cache_dir`.
    **download_kwargs: passed to :func:`download_archive` (``url``, ``md5``, ``sha256``,
      ``download``, ``retries``, ``timeout``, ``progress``).

  Returns:
    The dict of :func:`read_archive`.

  Raises:
    smoothjax.data.DatasetError: as :func:`download_archive` and :func:`read_archive`.
  """
  arc = _archive(name)
  sha = download_kwargs.get("sha256") or arc.sha256
  root = _cache_root(cache_dir)
  cached = _arrays_cache_path(root, name, sha)
  arrays = _sources._cache_read(cached)  # pylint: disable=protected-access
  if arrays is not None:
    return arrays
  path = download_archive(name, cache_dir=cache_dir, **download_kwargs)
  arrays = read_archive(path, name)
  _sources._cache_write(cached, arrays)  # pylint: disable=protected-access
  return arrays


def load_cifar(name: str, *, cache_dir: str | os.PathLike | None = None,
               validation_size: int | None = None, **download_kwargs: Any) -> "_data.Dataset":
  """CIFAR-10 or CIFAR-100 as a :class:`smoothjax.data.Dataset`, from the official archive.

  Args:
    name: ``"cifar10"`` or ``"cifar100"``.
    cache_dir: default :func:`smoothjax.data.default_cache_dir`.
    validation_size: training images (the last ones) held out for validation (default
      :func:`smoothjax.data.default_validation_size`: 5,000).
    **download_kwargs: passed to :func:`download_archive`.

  Returns:
    The dataset (uint8 NHWC images, int32 labels, as every source of :mod:`smoothjax.data`).

  Raises:
    smoothjax.data.DatasetError: as :func:`download_archive` and :func:`read_archive`.
  """
  arrays = load_arrays(name, cache_dir=cache_dir, **download_kwargs)
  return _data.from_arrays(
      name=name, x_train=arrays["x_train"], y_train=arrays["y_train"],
      x_test=arrays["x_test"], y_test=arrays["y_test"],
      class_names=tuple(str(c) for c in arrays["class_names"]),
      validation_size=validation_size)
