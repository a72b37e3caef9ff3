"""ImageNet-size evaluation data, decoded lazily in batches, and certification over it.

The ImageNet validation set decoded at once would need about 7.5 GB (50,000 x 224 x 224 x 3
bytes); the sources here list the images and decode only the batch asked for, so memory stays
flat in the dataset size as it does in the number of noise samples.

* :class:`ImageFolderSource` (``imagenet_folder:PATH``): an ImageNet-style tree
  ``PATH/<split>/<wnid>/*.JPEG`` (or ``PATH/<wnid>/*`` when ``PATH`` is the split itself), of
  any image sizes. Classes are numbered in sorted order of their folder names (torchvision's
  ``ImageFolder``: for ImageNet the usual 0..999 wnid order). Images are ordered by class, then
  by file name.
* :class:`TfdsImageNetSource` (``imagenet``): tfds ``imagenet2012`` when a prepared copy exists
  (``tfds.data_source``, random access, no TensorFlow at read time). Preparing it needs the
  manually downloaded archives; without a prepared copy :class:`DatasetError` says so at once.

Both apply the standard evaluation transform of Cohen et al.'s and torchvision's ImageNet code:
resize the shorter side to 256 (bilinear), centre-crop 224, giving ``uint8`` NHWC batches.

:func:`certify_source` runs :func:`smoothjax.certify.certify` batch by batch with the images'
global indices, so each image gets the noise of a single full run whatever the batching.

:func:`smoothjax.data.load_dataset` accepts the same specs and returns these sources.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from smoothjax.data._dataset import DatasetError

__all__ = [
  "IMAGE_EXTENSIONS",
  "ImageFolderSource",
  "LazySource",
  "TfdsImageNetSource",
  "certify_source",
  "load_imagenet",
  "resize_center_crop",
]

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
RESIZE = 256
CROP = 224


def resize_center_crop(img, resize: int = RESIZE, crop: int = CROP) -> np.ndarray:
  """torchvision's ``Resize(resize)`` + ``CenterCrop(crop)`` of a PIL image -> ``uint8`` HWC.

  The shorter side becomes ``resize`` (the longer ``int(resize * long / short)``), bilinear
  with PIL's antialiasing; the crop's offsets are ``round((size - crop) / 2)``.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  img = img.convert("RGB")
  w, h = img.size
  if (w <= h and w == resize) or (h <= w and h == resize):
    pass
  elif w < h:
    img = img.resize((resize, int(resize * h / w)), Image.BILINEAR)
  else:
    img = img.resize((int(resize * w / h), resize), Image.BILINEAR)
  w, h = img.size
  if w < crop or h < crop:
    raise DatasetError(f"image of {w}x{h} after the resize is smaller than the {crop} crop")
  top, left = round((h - crop) / 2.0), round((w - crop) / 2.0)
  return np.asarray(img.crop((left, top, left + crop, top + crop)), np.uint8)


class LazySource:
  """A lazily decoded evaluation set: ``len``, ``labels``, ``classes``, ``load``, ``batches``.

  Subclasses define ``labels``, ``classes`` and ``_decode(i)`` (one ``uint8`` HWC image).
  """

  labels: np.ndarray
  classes: tuple[str, ...]
  resize: int = RESIZE
  crop: int = CROP

  def __len__(self) -> int:
    return len(self.labels)

  @property
  def num_classes(self) -> int:
    return len(self.classes)

  def _decode(self, i: int) -> np.ndarray:
    raise NotImplementedError

  def load(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Decodes the images ``indices``: ``(uint8 (n, crop, crop, 3), int64 labels (n,))``."""
    idx = np.asarray(indices, np.int64).reshape(-1)
    x = np.zeros((len(idx), self.crop, self.crop, 3), np.uint8)
    for j, i in enumerate(idx):
      x[j] = self._decode(int(i))
    return x, self.labels[idx]

  def batches(self, batch_size: int, *, indices: Sequence[int] | None = None
              ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yields ``(indices, images, labels)`` batches, decoding one batch at a time."""
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    idx = np.arange(len(self)) if indices is None else np.asarray(indices, np.int64)
    for lo in range(0, len(idx), batch_size):
      b = idx[lo:lo + batch_size]
      x, y = self.load(b)
      yield b, x, y


class ImageFolderSource(LazySource):
  """An ImageNet-style folder ``root/<split>/<class>/<image>``, decoded lazily.

  Args:
    root: the tree's root (holding ``split``), or the split folder itself.
    split: ``"val"`` (default), ``"train"``, ...
    resize, crop: the evaluation transform (256 / 224).

  Attributes:
    files: image paths, by class then file name.
    labels: ``int64`` class ids.
    classes: sorted class folder names (wnids).

  Raises:
    DatasetError: no such folder, or no images in it.
  """

  def __init__(self, root: str | os.PathLike, split: str = "val", *, resize: int = RESIZE,
               crop: int = CROP):
    root = pathlib.Path(root).expanduser()
    base = root / split if (root / split).is_dir() else root
    if not base.is_dir():
      raise DatasetError(f"image folder {root} does not exist")
    classes = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    files, labels = [], []
    for c, name in enumerate(classes):
      imgs = sorted(f for f in (base / name).iterdir()
                    if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
      files += imgs
      labels += [c] * len(imgs)
    if not files:
      raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {base}/<class>/")
    self.root = base
    self.files = files
    self.labels = np.asarray(labels, np.int64)
    self.classes = tuple(classes)
    self.resize, self.crop = resize, crop

  def _decode(self, i: int) -> np.ndarray:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    try:
      with Image.open(self.files[i]) as img:
        return resize_center_crop(img, self.resize, self.crop)
    except (OSError, ValueError) as e:
      raise DatasetError(f"cannot decode {self.files[i]}: {e}") from e


class TfdsImageNetSource(LazySource):
  """tfds ``imagenet2012`` (a prepared copy), random access, decoded lazily.

  Args:
    split: ``"validation"`` (default) or ``"train"``.
    data_dir: tfds data directory (default tfds' own, ``$TFDS_DATA_DIR``).

  Raises:
    DatasetError: tensorflow-datasets missing, or no prepared copy of ``imagenet2012``.
  """

  def __init__(self, split: str = "validation", *, data_dir: str | os.PathLike | None = None,
               resize: int = RESIZE, crop: int = CROP):
    try:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise DatasetError("imagenet via tfds needs tensorflow-datasets") from e
    try:
      builder = tfds.builder("imagenet2012", data_dir=data_dir)
      prepared = builder.is_prepared() if hasattr(builder, "is_prepared") else (
          pathlib.Path(str(builder.data_path)).exists())
    except Exception as e:  # pylint: disable=broad-except
      raise DatasetError(f"tfds imagenet2012 unavailable: {type(e).__name__}: {e}") from e
    if not prepared:
      raise DatasetError(
          f"no prepared tfds imagenet2012 under {builder.data_dir}: prepare it (tfds build "
          "imagenet2012 --manual_dir=... --file_format=array_record) or use "
          "imagenet_folder:PATH with the val/<wnid>/*.JPEG tree")
    self._ds = tfds.data_source("imagenet2012", split=split, data_dir=data_dir)
    self.classes = tuple(builder.info.features["label"].names)
    # Labels are read without decoding images only if the source allows it; else on demand.
    self._labels = None
    self.resize, self.crop = resize, crop

  @property
  def labels(self) -> np.ndarray:  # type: ignore[override]
    if self._labels is None:
      self._labels = np.asarray([int(self._ds[i]["label"]) for i in range(len(self._ds))],
                                np.int64)
    return self._labels

  def __len__(self) -> int:
    return len(self._ds)

  def _decode(self, i: int) -> np.ndarray:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    return resize_center_crop(Image.fromarray(np.asarray(self._ds[i]["image"])), self.resize,
                              self.crop)


def load_imagenet(spec: str, *, data_dir: str | os.PathLike | None = None) -> LazySource:
  """The source of a dataset spec: ``imagenet_folder:PATH[:split]`` or ``imagenet[:split]``.

  ``imagenet_folder:PATH`` reads ``PATH/val`` (or ``PATH`` if it is the split itself);
  ``imagenet`` reads the tfds ``validation`` split.
  """
  if spec.startswith("imagenet_folder:"):
    rest = spec[len("imagenet_folder:"):]
    path, _, split = rest.partition("::")
    return ImageFolderSource(path, split or "val")
  if spec == "imagenet" or spec.startswith("imagenet:"):
    split = spec.partition(":")[2] or "validation"
    return TfdsImageNetSource(split, data_dir=data_dir)
  raise DatasetError(f"not an ImageNet spec: {spec!r} (imagenet_folder:PATH or imagenet)")


def certify_source(key, model, source: LazySource, *, sigma: float, indices=None,
                   batch_images: int = 16, progress: Callable[[int], Any] | None = None,
                   **certify_kw) -> tuple[Any, np.ndarray]:
  """CERTIFY over a lazily decoded source, ``batch_images`` images at a time.

  Memory is flat in the number of samples (``sample_counts`` loops over forward passes) and in
  the dataset size (one decoded batch at a time). Each image's noise follows its global index.

  Args:
    key: PRNG key (or int seed).
    model: an NNX model or ``(graphdef, state)``.
    source: an :class:`ImageFolderSource` / :class:`TfdsImageNetSource`.
    sigma: input noise (pixel units unless ``sigma_space`` says otherwise).
    indices: images to certify (default all).
    batch_images: images decoded and certified together.
    progress: called with the number of images done after each batch.
    **certify_kw: ``n0``, ``num_samples``, ``alpha``, ``batch_size``, ``sigma_space`` ...

  Returns:
    ``(result, labels)``: the concatenated :class:`smoothjax.certify.CertifyResult` and labels.
  """
  from smoothjax import certify as certify_lib  # pylint: disable=import-outside-toplevel
  parts, labels = [], []
  done = 0
  for idx, x, y in source.batches(batch_images, indices=indices):
    res = certify_lib.certify(key, model, x, sigma=sigma, indices=idx.astype(np.int32),
                              **certify_kw)
    parts.append(res)
    labels.append(y)
    done += len(idx)
    if progress is not None:
      progress(done)
  if not parts:
    raise DatasetError("no images to certify")
  fields = {f.name: np.concatenate([getattr(p, f.name) for p in parts])
            for f in dataclasses.fields(certify_lib.CertifyResult)}
  return certify_lib.CertifyResult(**fields), np.concatenate(labels)
