"""Dataset sources: tfds (CIFAR-10/100), ``.npz`` files, image folders / tars with a decode cache.

:func:`load_dataset` reads a ``--dataset`` spec; see :mod:`smoothjax.data` for the formats.
"""

from __future__ import annotations

import fractions
import hashlib
import importlib.util
import io
import json
import logging
import os
import pathlib
import socket
import stat
import tarfile
import time
import zipfile
import zlib
from typing import Any

import numpy as np

from smoothjax._utils import atomic_open
from smoothjax.data._dataset import (CIFAR10_CLASSES, CIFAR100_CLASSES, IMAGE_EXTENSIONS,
                                     Dataset, DatasetError, _load_synthetic,
                                     default_cache_dir, from_arrays)

_log = logging.getLogger("smoothjax.data")

_FOLDER_SPLITS = ("train", "test")
# tfds datasets smoothjax may download itself: name -> (host, port) probed before downloading.
_TFDS_DOWNLOAD_HOSTS = {"cifar10": ("www.cs.toronto.edu", 443),
                        "cifar100": ("www.cs.toronto.edu", 443)}
_CONNECT_TIMEOUT_S = 3.0
_CACHE_VERSION = 1
_OFFLINE_HINT = (
    "Offline alternatives: --dataset=npz:PATH (an .npz with x_train/y_train/x_test/y_test, "
    "uint8 NHWC images and integer labels; test arrays alone suffice for evaluation) or "
    "--dataset=folder:PATH (a directory train|test/<class>/*.png|jpg, or a .tar of one)")



# ---------------------------------------------------------------------------------------------
# Cache of decoded arrays
# ---------------------------------------------------------------------------------------------


def _cache_path(cache_dir: pathlib.Path, kind: str, source: str, fingerprint: Any,
                stem: str | None = None) -> pathlib.Path:
  blob = json.dumps({"version": _CACHE_VERSION, "kind": kind, "source": source,
                     "fingerprint": fingerprint}, sort_keys=True)
  digest = hashlib.sha256(blob.encode()).hexdigest()[:20]
  stem = stem or pathlib.Path(source).name
  stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)
  return cache_dir / f"{kind}-{stem[:60]}-{digest}.npz"


def _cache_read(path: pathlib.Path) -> dict[str, np.ndarray] | None:
  if not path.is_file():
    return None
  try:
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    _log.warning("ignoring unreadable cache file %s (%s)", path, e)
    return None


def _cache_write(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
  """Writes atomically (temporary file + rename); failures only log a warning."""
  try:
    with atomic_open(path, "wb") as f:
      np.savez(f, **arrays)
  except OSError as e:
    _log.warning("could not write the dataset cache %s (%s); continuing without it", path, e)


def _resolve_cache_dir(cache_dir: str | os.PathLike | None, source: pathlib.Path
                       ) -> pathlib.Path:
  d = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
  d = d.resolve()
  src = source.resolve()
  if src.is_dir() and (d == src or src in d.parents):
    raise DatasetError(f"cache_dir {d} lies inside the dataset source {src}; "
                       "choose a cache directory outside it")
  return d


# ---------------------------------------------------------------------------------------------
# Image folders and tar files
# ---------------------------------------------------------------------------------------------


def _decode_image(data: bytes, what: str) -> np.ndarray:
  """Decodes PNG/JPEG bytes to a uint8 (H, W, 3) array (grey and palette images -> RGB)."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(io.BytesIO(data)) as im:
      if im.mode != "RGB":
        im = im.convert("RGB")
      return np.asarray(im, dtype=np.uint8)
  except (UnidentifiedImageError, OSError, ValueError) as e:
    raise DatasetError(f"cannot decode image {what}: {e}") from e


def _is_image(name: str) -> bool:
  base = name.rsplit("/", 1)[-1]
  return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def _parse_member(relpath: str, source: str) -> tuple[str, str, str]:
  parts = [p for p in relpath.replace("\\", "/").split("/") if p not in ("", ".")]
  if len(parts) < 3:
    raise DatasetError(f"folder:{source}: image {relpath!r} is not in a <split>/<class>/ "
                       "folder (expected train|test/<class>/<image>)")
  split, cls, fname = parts[-3:]
  if split not in _FOLDER_SPLITS:
    raise DatasetError(f"folder:{source}: unknown split folder {split!r} (in {relpath!r}); "
                       f"expected {' or '.join(_FOLDER_SPLITS)}")
  return split, cls, fname


def _interleave(items: list[tuple[str, str]], class_index: dict[str, int]) -> list[int]:
  """Order of (class, file) items: by file within a class, classes spread evenly (module doc)."""
  by_class: dict[str, list[int]] = {}
  for i, (cls, fname) in enumerate(items):
    by_class.setdefault(cls, []).append(i)
  keyed = []
  for cls, idx in by_class.items():
    idx.sort(key=lambda i: items[i][1])
    n = len(idx)
    keyed += [(fractions.Fraction(2 * r + 1, 2 * n), class_index[cls], i)
              for r, i in enumerate(idx)]
  keyed.sort()
  return [i for _, _, i in keyed]


def _assemble_folder(records: dict[str, list[tuple[str, str, np.ndarray]]], source: str
                     ) -> dict[str, np.ndarray]:
  classes = sorted({cls for recs in records.values() for cls, _, _ in recs})
  if not classes:
    raise DatasetError(f"folder:{source}: no images found (expected train|test/<class>/*."
                       f"{{{','.join(e[1:] for e in IMAGE_EXTENSIONS)}}})")
  class_index = {c: i for i, c in enumerate(classes)}
  shape = None
  out = {"class_names": np.asarray(classes, dtype=str)}
  for split in _FOLDER_SPLITS:
    recs = records.get(split, [])
    for cls, fname, img in recs:
      if shape is None:
        shape = img.shape
      elif img.shape != shape:
        raise DatasetError(f"folder:{source}: image {split}/{cls}/{fname} has shape {img.shape}, "
                           f"others {shape}; all images must have the same size")
    if not recs:
      continue
    order = _interleave([(cls, fname) for cls, fname, _ in recs], class_index)
    out[f"x_{split}"] = np.stack([recs[i][2] for i in order])
    out[f"y_{split}"] = np.asarray([class_index[recs[i][0]] for i in order], np.int32)
  return out


def _read_tar(path: pathlib.Path) -> dict[str, np.ndarray]:
  records: dict[str, list] = {}
  t0 = time.perf_counter()
  try:
    with tarfile.open(path, "r|*") as tar:  # streaming: one pass, no extraction to disk
      for member in tar:
        if not member.isfile() or not _is_image(member.name):
          continue
        split, cls, fname = _parse_member(member.name, str(path))
        data = tar.extractfile(member).read()
        records.setdefault(split, []).append((cls, fname, _decode_image(data, member.name)))
  except (tarfile.TarError, EOFError, zlib.error) as e:
    raise DatasetError(f"folder:{path}: cannot read the tar file: {e}") from e
  n = sum(len(r) for r in records.values())
  _log.info("decoded %d images from %s in %.1f s", n, path, time.perf_counter() - t0)
  return _assemble_folder(records, str(path))


def _list_folder(root: pathlib.Path) -> list[tuple[str, os.stat_result]]:
  files = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    for f in sorted(filenames):
      if _is_image(f):
        full = os.path.join(dirpath, f)
        files.append((os.path.relpath(full, root).replace(os.sep, "/"), os.stat(full)))
  return files


def _read_folder(root: pathlib.Path, files: list[tuple[str, os.stat_result]]
                 ) -> dict[str, np.ndarray]:
  records: dict[str, list] = {}
  t0 = time.perf_counter()
  for rel, _ in files:
    split, cls, fname = _parse_member(rel, str(root))
    data = (root / rel).read_bytes()
    records.setdefault(split, []).append((cls, fname, _decode_image(data, str(root / rel))))
  _log.info("decoded %d images from %s in %.1f s", len(files), root, time.perf_counter() - t0)
  return _assemble_folder(records, str(root))


def _load_folder(path_str: str, cache_dir, validation_size) -> Dataset:
  path = pathlib.Path(path_str).expanduser()
  if not path.exists():
    raise DatasetError(f"folder:{path_str}: no such file or directory")
  path = path.resolve()
  if path.is_dir():
    files = _list_folder(path)
    if not files:
      raise DatasetError(f"folder:{path_str}: no images found (expected train|test/<class>/"
                         "*.png|jpg)")
    fingerprint = [[rel, st.st_size, st.st_mtime_ns] for rel, st in files]
    read = lambda: _read_folder(path, files)  # noqa: E731
  elif path.is_file():
    if not tarfile.is_tarfile(path):
      raise DatasetError(f"folder:{path_str}: neither a directory nor a tar file")
    st = path.stat()
    fingerprint = [st.st_size, st.st_mtime_ns]
    read = lambda: _read_tar(path)  # noqa: E731
  else:
    raise DatasetError(f"folder:{path_str}: neither a directory nor a tar file")
  cache = _cache_path(_resolve_cache_dir(cache_dir, path), "folder", str(path), fingerprint)
  arrays = _cache_read(cache)
  if arrays is None:
    arrays = read()
    _cache_write(cache, arrays)
  return _from_cached(f"folder:{path_str}", arrays, validation_size)


def _from_cached(name: str, arrays: dict[str, np.ndarray], validation_size) -> Dataset:
  class_names = tuple(str(c) for c in arrays["class_names"])
  return from_arrays(name=name, x_train=arrays.get("x_train"), y_train=arrays.get("y_train"),
                     x_test=arrays.get("x_test"), y_test=arrays.get("y_test"),
                     class_names=class_names, validation_size=validation_size)


# ---------------------------------------------------------------------------------------------
# .npz files
# ---------------------------------------------------------------------------------------------


def _load_npz(path_str: str, validation_size) -> Dataset:
  path = pathlib.Path(path_str).expanduser()
  if not path.is_file():
    raise DatasetError(f"npz:{path_str}: no such file")
  try:
    with np.load(path, allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise DatasetError(f"npz:{path_str}: not a readable .npz file ({e})") from e
  pairs = [s for s in ("train", "test") if f"x_{s}" in arrays or f"y_{s}" in arrays]
  if not pairs:
    raise DatasetError(f"npz:{path_str}: needs arrays x_test/y_test (and/or x_train/y_train); "
                       f"found {sorted(arrays) or 'none'}")
  for s in pairs:
    for k in (f"x_{s}", f"y_{s}"):
      if k not in arrays:
        raise DatasetError(f"npz:{path_str}: has {'x' if k[0] == 'y' else 'y'}_{s} but no {k}")
  class_names = arrays.get("class_names")
  num_classes = None
  if class_names is not None:
    class_names = tuple(str(c) for c in np.asarray(class_names).reshape(-1))
  elif "cifar100" in path.name.lower():
    num_classes = 100
  return from_arrays(name=f"npz:{path_str}", x_train=arrays.get("x_train"),
                     y_train=arrays.get("y_train"), x_test=arrays.get("x_test"),
                     y_test=arrays.get("y_test"), num_classes=num_classes,
                     class_names=class_names, validation_size=validation_size)


# ---------------------------------------------------------------------------------------------
# tensorflow-datasets
# ---------------------------------------------------------------------------------------------


def _tensorflow_available() -> bool:
  return importlib.util.find_spec("tensorflow") is not None


def _host_reachable(host: str, port: int, timeout: float = _CONNECT_TIMEOUT_S) -> bool:
  try:
    with socket.create_connection((host, port), timeout=timeout):
      return True
  except OSError:
    return False


def _dir_fingerprint(d: pathlib.Path) -> list | None:
  if not d.is_dir():
    return None
  out = []
  for p in sorted(d.iterdir()):
    st = p.stat()
    if stat.S_ISREG(st.st_mode):
      out.append([p.name, st.st_size, st.st_mtime_ns])
  return out or None


def _read_tfds_split(source, split: str, name: str) -> tuple[np.ndarray, np.ndarray]:
  n = len(source)
  x = y = None
  for i in range(n):
    ex = source[i]
    if not isinstance(ex, dict) or "image" not in ex or "label" not in ex:
      keys = sorted(ex) if isinstance(ex, dict) else type(ex).__name__
      raise DatasetError(f"tfds dataset {name!r} has no 'image'/'label' features ({keys})")
    img = np.asarray(ex["image"])
    if x is None:
      x = np.empty((n,) + img.shape, img.dtype)
      y = np.empty((n,), np.int64)
    x[i] = img
    y[i] = int(ex["label"])
  if x is None:
    raise DatasetError(f"tfds dataset {name!r}: split {split!r} is empty")
  return x, y


def _load_official_cifar(name: str, spec: str, where: str, cache_dir,
                         validation_size) -> Dataset:
  """CIFAR from its official archive (no TensorFlow), when tfds has no prepared copy."""
  from smoothjax.data import _cifar_download  # pylint: disable=g-import-not-at-top
  try:
    return _cifar_download.load_cifar(name, cache_dir=cache_dir, validation_size=validation_size)
  except DatasetError as e:
    arc = _cifar_download.ARCHIVES[name]
    dest = _cifar_download.archive_path(name, cache_dir)
    why = " ".join(str(e).split())
    raise DatasetError(
        f"{spec}: the tfds dataset {name!r} is not prepared in {where}, and the official "
        f"archive {arc.filename} could not be fetched ({why}). Put {arc.filename} (md5 "
        f"{arc.md5}) at {dest}, or pass data_dir=DIR / set TFDS_DATA_DIR=DIR to a prepared tfds "
        f"copy, or use an offline source. {_OFFLINE_HINT}") from None


def _load_tfds(name: str, spec: str, data_dir, cache_dir, validation_size) -> Dataset:
  official = name in ("cifar10", "cifar100")
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    if not official:
      raise DatasetError(f"{spec}: tensorflow-datasets is not installed (pip install "
                         f"tensorflow-datasets). {_OFFLINE_HINT}") from None
    return _load_official_cifar(name, spec, "none (tensorflow-datasets is not installed)",
                                cache_dir, validation_size)

  data_dir = None if data_dir is None else os.fspath(pathlib.Path(data_dir).expanduser())
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # tfds raises its own DatasetNotFoundError and friends
    raise DatasetError(f"{spec}: tensorflow-datasets cannot find dataset {name!r}: {e}") from e
  where = str(builder.data_dir)
  if not builder.is_prepared() and official:
    return _load_official_cifar(name, spec, where, cache_dir, validation_size)
  if not builder.is_prepared():
    tf_ok = _tensorflow_available()
    host = _TFDS_DOWNLOAD_HOSTS.get(name)
    if not tf_ok:
      why = "TensorFlow, which tfds needs to prepare it, is not installed"
    elif host is None:
      why = f"smoothjax only downloads {', '.join(_TFDS_DOWNLOAD_HOSTS)} itself"
    elif not _host_reachable(*host):
      why = f"the download host {host[0]} is not reachable (offline?)"
    else:
      why = None
    if why is not None:
      raise DatasetError(
          f"{spec}: the tfds dataset {name!r} is not prepared in {where} and {why}. Prepare it "
          f"where TensorFlow and internet are available (`tfds build {name} "
          f"--file_format=array_record --data_dir=DIR`) and pass data_dir=DIR or set "
          f"TFDS_DATA_DIR=DIR, or use an offline source. {_OFFLINE_HINT}")
    _log.info("downloading and preparing %s into %s", name, where)
    try:
      builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
      builder.download_and_prepare()
    except Exception as e:
      raise DatasetError(f"{spec}: preparing the tfds dataset failed: {e}. {_OFFLINE_HINT}") from e
    where = str(builder.data_dir)

  info = builder.info
  known = list(info.splits.keys()) if info.splits else []
  splits = [s for s in _FOLDER_SPLITS if s in known] if known else list(_FOLDER_SPLITS)
  if not splits:
    raise DatasetError(f"{spec}: tfds dataset {name!r} has no train/test split ({known})")

  fingerprint = _dir_fingerprint(pathlib.Path(where))
  cache = None
  if fingerprint is not None:
    cache = _cache_path(_resolve_cache_dir(cache_dir, pathlib.Path(where)), "tfds",
                        str(pathlib.Path(where).resolve()), fingerprint, stem=name)
    arrays = _cache_read(cache)
    if arrays is not None:
      return _from_cached(spec, arrays, validation_size)

  try:
    sources = tfds.data_source(name, split=splits, data_dir=data_dir, download=False)
    arrays = {}
    for split, source in zip(splits, sources):
      arrays[f"x_{split}"], arrays[f"y_{split}"] = _read_tfds_split(source, split, name)
  except DatasetError:
    raise
  except Exception as e:
    if not _tensorflow_available():
      raise DatasetError(
          f"{spec}: cannot read the prepared tfds dataset in {where} without TensorFlow ({e}); "
          f"it must be prepared with --file_format=array_record. {_OFFLINE_HINT}") from e
    arrays = {}
    for split in splits:  # e.g. a tfrecord-prepared dataset: read it through TensorFlow
      d = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
      arrays[f"x_{split}"], arrays[f"y_{split}"] = d["image"], d["label"]

  label = info.features["label"] if "label" in info.features else None
  names = list(getattr(label, "names", None) or [])
  num_classes = getattr(label, "num_classes", None)
  canonical = {"cifar10": CIFAR10_CLASSES, "cifar100": CIFAR100_CLASSES}.get(name)
  if canonical is not None and (not names or all(n.isdigit() for n in names)):
    names = list(canonical)  # tfds knows CIFAR's class names only once the dataset is prepared
  if not names:
    names = [str(i) for i in range(num_classes or 0)]
  arrays["class_names"] = np.asarray(names, dtype=str)
  for split in splits:
    arrays[f"y_{split}"] = arrays[f"y_{split}"].astype(np.int32)
  if cache is not None:
    _cache_write(cache, arrays)
  return _from_cached(spec, arrays, validation_size)


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def load_dataset(spec: str, *, data_dir: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None,
                 validation_size: int | None = None) -> Dataset:
  """Loads a dataset from a spec (see the module docstring).

  Args:
    spec: ``cifar10``, ``cifar100``, ``tfds:NAME``, ``npz:PATH``, ``folder:PATH``,
      ``synthetic[:N]``, or ``imagenet_folder:PATH`` / ``imagenet`` (these two give a lazily
      decoded :class:`smoothjax.data.LazySource`, not a :class:`Dataset`).
    data_dir: the tfds data directory (default: tfds' own, ``$TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``); unused by the other sources.
    cache_dir: where decoded images are cached (default :func:`default_cache_dir`).
    validation_size: how many of the last training images form the validation split
      (default :func:`default_validation_size`: 5,000, or 10% below 50,000 images).

  Returns:
    The :class:`Dataset` (a ``LazySource`` for the ImageNet specs).

  Raises:
    DatasetError: unknown spec, missing or malformed source, a tfds dataset that is neither
      prepared nor preparable here (raised within seconds), bad ``validation_size``.
  """
  if not isinstance(spec, str) or not spec.strip():
    raise DatasetError(f"dataset spec must be a non-empty string, got {spec!r}")
  spec = spec.strip()
  kind, sep, rest = spec.partition(":")
  if not sep and spec in ("cifar10", "cifar100"):
    return _load_tfds(spec, spec, data_dir, cache_dir, validation_size)
  if kind == "synthetic":
    return _load_synthetic(spec, validation_size)
  if kind == "imagenet" or (kind == "imagenet_folder" and rest):
    from smoothjax.data import _imagenet  # pylint: disable=g-import-not-at-top
    return _imagenet.load_imagenet(spec, data_dir=data_dir)
  if sep and rest:
    if kind == "tfds":
      return _load_tfds(rest, spec, data_dir, cache_dir, validation_size)
    if kind == "npz":
      return _load_npz(rest, validation_size)
    if kind == "folder":
      return _load_folder(rest, cache_dir, validation_size)
  raise DatasetError(f"unknown dataset spec {spec!r}; expected cifar10, cifar100, tfds:NAME, "
                     "npz:PATH, folder:PATH, synthetic[:N], imagenet_folder:PATH or imagenet")

