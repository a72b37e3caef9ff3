"""Datasets (CIFAR-10/100 via tfds, ``.npz`` files, image folders), augmentation, batching.

Dataset specs (the ``--dataset`` flag of CONTRACT.md), all loaded by :func:`load_dataset`:

* ``cifar10`` / ``cifar100``: through tensorflow-datasets. Reading a *prepared* dataset needs no
  TensorFlow (``tfds.data_source``, array_record format). Preparing it (download + conversion)
  needs TensorFlow and internet; without them, or when the download host does not answer within
  3 s, :class:`DatasetError` is raised at once, naming the offline options below.
* ``tfds:NAME``: any prepared tfds dataset with ``image``/``label`` features and ``train`` and/or
  ``test`` splits (prepare it with ``tfds build NAME --file_format=array_record``).
* ``npz:PATH``: a NumPy archive with ``x_train``/``y_train`` and/or ``x_test``/``y_test``
  (uint8 NHWC with 3 channels; integer labels). An archive with only the test pair is an
  evaluation-only dataset. ``num_classes`` is ``len(class_names)`` if the archive holds a
  ``class_names`` array, else 100 if the file name contains ``cifar100``, else
  ``max(10, max label + 1)``.
* ``folder:PATH``: an image-folder tree ``<split>/<class>/<image>.{png,jpg,jpeg}`` (``split`` is
  ``train`` or ``test``; the tree may sit under one more folder), or a ``.tar`` (optionally
  compressed) of one. Classes are numbered in sorted order of their folder names. The images
  are decoded once with PIL and cached as an ``.npz`` in ``cache_dir`` (default
  ``$SMOOTHJAX_CACHE`` or ``~/.cache/smoothjax``), keyed by the source path, size and
  modification time; the source is never written to.

Image order of a folder split: a folder has no natural order, and sorting by class would put a
single class at the end of the training set (hence into the validation split) and at the front of
the test set (hence into ``--limit=N``). Images are therefore *class-interleaved*: sorted by file
name within each class, then merged so that every class is spread evenly over the split (image
``r`` of a class with ``n`` images sits at relative position ``(r + 1/2) / n``; ties by class id).
With balanced classes every prefix and every suffix is stratified, e.g. the CIFAR-10 validation
split holds the last 500 images of each class.

Validation: the last 5,000 training images (the last 10% when the training set has fewer than
50,000 images) form the validation split, never the test split (CONTRACT.md).

Training input pipeline: :func:`train_batches` yields uint8 batches in a deterministic,
resumable order (the permutation of epoch ``e`` comes from ``fold_in(key, e)``), :func:`to_float`
scales them to [0, 1] and :func:`augment` applies the standard CIFAR augmentation (random crop
with 4-pixel zero padding and horizontal flip) on the accelerator, jittable::

  ds = load_dataset("npz:../shared/data/cifar10_lossless_3k.npz")
  x, y = ds.split("train")
  for step, xb, yb in train_batches(x, y, batch_size=128, key=jax.random.key(0), start_step=s):
    xb = augment(jax.random.fold_in(aug_key, step), to_float(xb))
"""

from __future__ import annotations

import dataclasses
import fractions
import functools
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
import tempfile
import time
import zipfile
import zlib
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "DatasetError",
    "Dataset",
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "IMAGE_EXTENSIONS",
    "load_dataset",
    "from_arrays",
    "default_validation_size",
    "default_cache_dir",
    "to_float",
    "augment",
    "train_batches",
    "steps_per_epoch",
    "epoch_permutation",
]

_log = logging.getLogger(__name__)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone",
    "television", "tiger", "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale",
    "willow_tree", "wolf", "woman", "worm")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_FOLDER_SPLITS = ("train", "test")
_SPLITS = ("train", "val", "test", "train_full")
# tfds datasets smoothjax may download itself: name -> (host, port) probed before downloading.
_TFDS_DOWNLOAD_HOSTS = {"cifar10": ("www.cs.toronto.edu", 443),
                        "cifar100": ("www.cs.toronto.edu", 443)}
_CONNECT_TIMEOUT_S = 3.0
_CACHE_VERSION = 1
_OFFLINE_HINT = (
    "Offline alternatives: --dataset=npz:PATH (an .npz with x_train/y_train/x_test/y_test, "
    "uint8 NHWC images and integer labels; test arrays alone suffice for evaluation) or "
    "--dataset=folder:PATH (a directory train|test/<class>/*.png|jpg, or a .tar of one)")


class DatasetError(ValueError):
  """A dataset spec, file or split that cannot be used; the message says why."""


@dataclasses.dataclass
class Dataset:
  """An image-classification dataset held in host memory.

  Attributes:
    name: the spec it was loaded from (e.g. ``"cifar10"``, ``"npz:/path/file.npz"``).
    num_classes: number of classes; labels are in ``[0, num_classes)``.
    class_names: one name per class id.
    x_train, y_train: training images (uint8, NHWC) and labels (int32), validation removed.
    x_val, y_val: the validation split (the last images of the source's training set).
    x_test, y_test: the test split.
  """

  name: str
  num_classes: int
  class_names: tuple[str, ...]
  x_train: np.ndarray
  y_train: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(height, width, channels) of every image."""
    for x in (self.x_test, self.x_train, self.x_val):
      if x.ndim == 4:
        return tuple(x.shape[1:])
    raise DatasetError(f"dataset {self.name!r} has no image arrays")

  def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of one split.

    Args:
      name: ``"train"`` (validation removed), ``"val"``, ``"test"`` or ``"train_full"``
        (train followed by val: the source's whole training set in its original order).

    Returns:
      ``(x, y)``: uint8 NHWC images and int32 labels.

    Raises:
      DatasetError: unknown split name, or the split is empty (e.g. ``"train"`` of an
        evaluation-only file, ``"val"`` with ``validation_size=0``).
    """
    if name == "train":
      x, y = self.x_train, self.y_train
    elif name == "val":
      x, y = self.x_val, self.y_val
    elif name == "test":
      x, y = self.x_test, self.y_test
    elif name == "train_full":
      x = np.concatenate([self.x_train, self.x_val])
      y = np.concatenate([self.y_train, self.y_val])
    else:
      raise DatasetError(f"unknown split {name!r}; expected one of {', '.join(_SPLITS)}")
    if len(x) == 0:
      raise DatasetError(f"dataset {self.name!r} has no {name!r} images"
                         + (" (validation_size=0?)" if name == "val" else ""))
    return x, y


def default_validation_size(num_train: int) -> int:
  """Size of the validation split: 5,000 images, or 10% of a training set below 50,000."""
  return 5000 if num_train >= 50000 else num_train // 10


def default_cache_dir() -> pathlib.Path:
  """``$SMOOTHJAX_CACHE`` if set, else ``~/.cache/smoothjax``."""
  env = os.environ.get("SMOOTHJAX_CACHE")
  return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "smoothjax"


# ---------------------------------------------------------------------------------------------
# Validation and assembly
# ---------------------------------------------------------------------------------------------


def _check_images(x: Any, what: str) -> np.ndarray:
  x = np.asarray(x)
  if x.dtype != np.uint8:
    raise DatasetError(f"{what} must be uint8 pixels 0..255, got dtype {x.dtype}")
  if x.ndim != 4 or x.shape[-1] != 3:
    hint = (" (looks like NCHW: transpose to NHWC)" if x.ndim == 4 and x.shape[1] == 3 else "")
    raise DatasetError(f"{what} must be NHWC with 3 channels, got shape {x.shape}{hint}")
  return x


def _check_labels(y: Any, n: int, what: str) -> np.ndarray:
  y = np.asarray(y)
  if y.ndim == 2 and y.shape[1] == 1:
    y = y[:, 0]
  if y.dtype.kind not in "iu":
    raise DatasetError(f"{what} must be integer class ids, got dtype {y.dtype}")
  if y.shape != (n,):
    raise DatasetError(f"{what} must have shape ({n},) to match the images, got {y.shape}")
  if n and y.min() < 0:
    raise DatasetError(f"{what} has a negative label {int(y.min())}")
  return y.astype(np.int32)


def from_arrays(*, name: str, x_train: Any = None, y_train: Any = None, x_test: Any = None,
                y_test: Any = None, num_classes: int | None = None,
                class_names: tuple[str, ...] | list[str] | None = None,
                validation_size: int | None = None) -> Dataset:
  """Builds a :class:`Dataset` from arrays, checking them and splitting off validation.

  Args:
    name: the dataset's name.
    x_train, y_train: the source's full training set (uint8 NHWC, 3 channels; integer
      labels), or both ``None``.
    x_test, y_test: the test set, or both ``None``.
    num_classes: defaults to ``len(class_names)``, else ``max(10, max label + 1)``.
    class_names: defaults to the CIFAR-10 / CIFAR-100 names for 10 / 100 classes, else
      ``"0"``, ``"1"``, ...
    validation_size: number of training images (the last ones) held out as validation;
      default :func:`default_validation_size`.

  Returns:
    The dataset.

  Raises:
    DatasetError: wrong dtypes or shapes, labels out of range, no images at all, or a bad
      ``validation_size``.
  """
  arrays = {}
  for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
    if (x is None) != (y is None):
      raise DatasetError(f"{name}: x_{split} and y_{split} must be given together")
    if x is not None:
      x = _check_images(x, f"{name}: x_{split}")
      arrays[split] = (x, _check_labels(y, len(x), f"{name}: y_{split}"))
  if not arrays or all(len(x) == 0 for x, _ in arrays.values()):
    raise DatasetError(f"{name}: no images (neither a train nor a test split)")
  shapes = {x.shape[1:] for x, _ in arrays.values() if len(x)}
  if len(shapes) > 1:
    raise DatasetError(f"{name}: train and test images differ in shape: {sorted(shapes)}")
  shape = shapes.pop()

  max_label = max((int(y.max()) for _, y in arrays.values() if len(y)), default=-1)
  if num_classes is None:
    num_classes = len(class_names) if class_names is not None else max(10, max_label + 1)
  if class_names is None:
    class_names = {10: CIFAR10_CLASSES, 100: CIFAR100_CLASSES}.get(
        num_classes, tuple(str(i) for i in range(num_classes)))
  class_names = tuple(str(c) for c in class_names)
  if len(class_names) != num_classes:
    raise DatasetError(f"{name}: {len(class_names)} class names for {num_classes} classes")
  if max_label >= num_classes:
    raise DatasetError(f"{name}: label {max_label} out of range for {num_classes} classes")

  empty = (np.zeros((0,) + shape, np.uint8), np.zeros((0,), np.int32))
  x_full, y_full = arrays.get("train", empty)
  x_test, y_test = arrays.get("test", empty)
  n = len(x_full)
  if validation_size is None:
    validation_size = default_validation_size(n)
  if not isinstance(validation_size, (int, np.integer)) or isinstance(validation_size, bool):
    raise DatasetError(f"validation_size must be an int, got {validation_size!r}")
  if validation_size < 0 or (n and validation_size >= n) or (not n and validation_size):
    raise DatasetError(f"{name}: validation_size={validation_size} must be in [0, {n}) "
                       f"(the source has {n} training images)")
  cut = n - int(validation_size)
  return Dataset(name=name, num_classes=int(num_classes), class_names=class_names,
                 x_train=x_full[:cut], y_train=y_full[:cut],
                 x_val=x_full[cut:], y_val=y_full[cut:], x_test=x_test, y_test=y_test)


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
  tmp = None
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
    os.replace(tmp, path)
    tmp = None
  except OSError as e:
    _log.warning("could not write the dataset cache %s (%s); continuing without it", path, e)
  finally:
    if tmp is not None and os.path.exists(tmp):
      os.remove(tmp)


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


def _load_tfds(name: str, spec: str, data_dir, cache_dir, validation_size) -> Dataset:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  data_dir = None if data_dir is None else os.fspath(pathlib.Path(data_dir).expanduser())
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # tfds raises its own DatasetNotFoundError and friends
    raise DatasetError(f"{spec}: tensorflow-datasets cannot find dataset {name!r}: {e}") from e
  where = str(builder.data_dir)
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
    spec: ``cifar10``, ``cifar100``, ``tfds:NAME``, ``npz:PATH`` or ``folder:PATH``.
    data_dir: the tfds data directory (default: tfds' own, ``$TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``); unused by the other sources.
    cache_dir: where decoded images are cached (default :func:`default_cache_dir`).
    validation_size: how many of the last training images form the validation split
      (default :func:`default_validation_size`: 5,000, or 10% below 50,000 images).

  Returns:
    The :class:`Dataset`.

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
  if sep and rest:
    if kind == "tfds":
      return _load_tfds(rest, spec, data_dir, cache_dir, validation_size)
    if kind == "npz":
      return _load_npz(rest, validation_size)
    if kind == "folder":
      return _load_folder(rest, cache_dir, validation_size)
  raise DatasetError(f"unknown dataset spec {spec!r}; expected cifar10, cifar100, tfds:NAME, "
                     "npz:PATH or folder:PATH")


# ---------------------------------------------------------------------------------------------
# JAX side: scaling and augmentation
# ---------------------------------------------------------------------------------------------


# uint8 -> float32 lookup table computed by exact IEEE division (torchvision's ToTensor values);
# XLA would turn ``x / 255`` into a multiplication by the rounded reciprocal (off by 1 ulp).
_U8_TO_FLOAT = np.arange(256, dtype=np.float32) / np.float32(255)


def to_float(x) -> jax.Array:
  """uint8 images -> float32 in [0, 1] (the models' input unit), exactly ``x / 255``.

  Jittable.

  Raises:
    ValueError: ``x`` is not uint8 (scaling floats again would silently darken them).
  """
  x = jnp.asarray(x)
  if x.dtype != jnp.uint8:
    raise ValueError(f"to_float expects uint8 images, got {x.dtype}")
  return jnp.asarray(_U8_TO_FLOAT)[x]


def _augment_one(key, img, padding: int, flip: bool):
  h, w, c = img.shape
  k_crop, k_flip = jax.random.split(key)
  offset = jax.random.randint(k_crop, (2,), 0, 2 * padding + 1)
  padded = jnp.pad(img, ((padding, padding), (padding, padding), (0, 0)))
  out = jax.lax.dynamic_slice(padded, (offset[0], offset[1], 0), (h, w, c))
  if flip:
    out = jnp.where(jax.random.bernoulli(k_flip), out[:, ::-1], out)
  return out


def augment(key: jax.Array, x: jax.Array, *, index: jax.Array | None = None,
            padding: int = 4, flip: bool = True) -> jax.Array:
  """Standard CIFAR augmentation: random crop with zero padding, random horizontal flip.

  Each image is zero-padded by ``padding`` pixels on every side, a window of its original size
  is cut at a uniformly random offset in ``[0, 2 * padding]`` (both axes), and the result is
  mirrored left-right with probability 1/2 (torchvision's ``RandomCrop(32, padding=4)`` +
  ``RandomHorizontalFlip()``). Image ``i`` uses the key ``fold_in(key, index[i])``, so its
  augmentation does not depend on the rest of the batch (nor on sharding); ``index`` defaults
  to the position in the batch. Jittable (``padding`` and ``flip`` static).

  Args:
    key: a JAX random key (e.g. ``fold_in(aug_key, step)``).
    x: images, NHWC (float in [0, 1], or any dtype: padding uses zeros).
    index: optional int array of shape (N,), per-image ids (e.g. dataset indices).
    padding: zero padding in pixels (4 for CIFAR).
    flip: whether to apply random horizontal flips.

  Returns:
    Augmented images with the shape and dtype of ``x``.
  """
  x = jnp.asarray(x)
  if x.ndim != 4:
    raise ValueError(f"augment expects NHWC images, got shape {x.shape}")
  if padding < 0:
    raise ValueError(f"padding must be >= 0, got {padding}")
  n = x.shape[0]
  index = jnp.arange(n) if index is None else jnp.asarray(index)
  if index.shape != (n,):
    raise ValueError(f"index must have shape ({n},), got {index.shape}")
  return _augment_jit(key, x, index, padding=int(padding), flip=bool(flip))


@functools.partial(jax.jit, static_argnames=("padding", "flip"))
def _augment_jit(key, x, index, *, padding: int, flip: bool):
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, index)
  return jax.vmap(lambda k, img: _augment_one(k, img, padding, flip))(keys, x)


# ---------------------------------------------------------------------------------------------
# Host side: deterministic, resumable batches
# ---------------------------------------------------------------------------------------------


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Number of full batches per epoch (the ragged last batch is dropped)."""
  if batch_size <= 0:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  if num_examples < 0:
    raise ValueError(f"num_examples must be >= 0, got {num_examples}")
  return num_examples // batch_size


def _as_key(key) -> jax.Array:
  if isinstance(key, (int, np.integer)):
    return jax.random.key(int(key))
  return key


def epoch_permutation(key: jax.Array, epoch: int, num_examples: int) -> np.ndarray:
  """The example order of one epoch: ``permutation(fold_in(key, epoch), num_examples)``."""
  perm = jax.random.permutation(jax.random.fold_in(_as_key(key), epoch), num_examples)
  return np.asarray(jax.device_get(perm))


def train_batches(x: np.ndarray, y: np.ndarray, *, batch_size: int, key: jax.Array,
                  start_step: int = 0) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
  """Infinite iterator over shuffled training batches, resumable at any step.

  Epoch ``e = step // steps_per_epoch`` visits the examples in the order
  ``permutation(fold_in(key, e), N)``; step ``s`` takes the ``s % steps_per_epoch``-th full
  batch of that order (the ragged rest of each epoch is dropped). Everything is a function of
  ``(key, step)``, so starting at ``start_step=k`` yields exactly the batches an uninterrupted
  run yields from step ``k`` on (bit-exact kill-and-resume).

  Args:
    x: images (N, ...) (usually uint8 NHWC; they are indexed, not copied whole).
    y: labels (N,).
    batch_size: examples per batch.
    key: a JAX random key (an int seed is accepted too).
    start_step: the global step of the first batch.

  Returns:
    An iterator of ``(step, x_batch, y_batch)`` with numpy arrays.

  Raises:
    ValueError: mismatched lengths, negative ``start_step``, non-positive ``batch_size``.
    DatasetError: fewer examples than ``batch_size``.
  """
  if len(x) != len(y):
    raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}")
  spe = steps_per_epoch(len(x), batch_size)
  if spe == 0:
    raise DatasetError(f"batch_size={batch_size} exceeds the {len(x)} training examples")
  key = _as_key(key)

  def gen():
    step = int(start_step)
    epoch, perm = None, None
    while True:
      e, i = divmod(step, spe)
      if e != epoch:
        epoch, perm = e, epoch_permutation(key, e, len(x))
      idx = perm[i * batch_size:(i + 1) * batch_size]
      yield step, x[idx], y[idx]
      step += 1

  return gen()
