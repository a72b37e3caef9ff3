"""The :class:`Dataset` type, its validation split, and datasets built from arrays.

``synthetic[:N]`` (generated images for runs without real data) is built here too.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import numpy as np

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
_SPLITS = ("train", "val", "test", "train_full")


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



def _load_synthetic(spec: str, validation_size: int | None) -> Dataset:
  """``synthetic[:N]``: N (default 3000) generated 32x32 images, learnable, deterministic.

  Each class has its own smooth colour pattern (a random low-frequency field); images are that
  pattern plus Gaussian pixel noise and a random brightness, so a small CNN learns it within a
  few epochs. The last N/3 images form the test split. For runs without any real data.
  """
  _, _, arg = spec.partition(":")
  try:
    n = int(arg) if arg else 3000
  except ValueError:
    raise DatasetError(f"bad dataset spec {spec!r}: expected synthetic[:N]") from None
  if n < 30:
    raise DatasetError(f"synthetic dataset needs N >= 30 images, got {n}")
  rng = np.random.default_rng(0)
  classes = 10
  coarse = rng.uniform(0, 1, (classes, 4, 4, 3))
  patterns = np.kron(coarse, np.ones((1, 8, 8, 1)))  # (10, 32, 32, 3) blocky colour fields
  y = rng.integers(0, classes, n)
  x = patterns[y] * rng.uniform(0.6, 1.0, (n, 1, 1, 1)) + rng.normal(0, 0.15, (n, 32, 32, 3))
  x = np.clip(np.round(x * 255), 0, 255).astype(np.uint8)
  cut = n - n // 3
  return from_arrays(name=spec, x_train=x[:cut], y_train=y[:cut], x_test=x[cut:],
                     y_test=y[cut:], num_classes=classes, validation_size=validation_size)

