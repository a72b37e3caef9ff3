"""Datasets (CIFAR-10/100 via tfds, ``.npz`` files, image folders), augmentation, batching.

Modules: ``_dataset`` (:class:`Dataset`, :func:`from_arrays`, synthetic data), ``_sources``
(tfds, npz, folder + decode cache, :func:`load_dataset`), ``_cifar_download`` (the official CIFAR
archives without TensorFlow: :func:`load_cifar`, :func:`download_cifar_archive`), ``_imagenet``
(ImageNet-size sources decoded lazily in batches: :func:`load_imagenet`, :func:`certify_source`)
and ``_pipeline`` (:func:`to_float`, :func:`augment`, :func:`train_batches`).

Dataset specs (``python -m evaluate --dataset=SPEC``), all loaded by :func:`load_dataset`:

* ``cifar10`` / ``cifar100``: a copy prepared by tensorflow-datasets if there is one (reading it
  needs no TensorFlow: ``tfds.data_source``, array_record format); otherwise (or without tfds)
  the official python archive, downloaded once into ``$SMOOTHJAX_CACHE/downloads/``, verified
  and decoded without TensorFlow (:func:`load_cifar`). Offline, with neither, a one-line
  :class:`DatasetError` comes within seconds, naming the tfds directory, where to put the
  archive and the offline options below.
* ``tfds:NAME``: any prepared tfds dataset with ``image``/``label`` features and ``train`` and/or
  ``test`` splits (prepare it with ``tfds build NAME --file_format=array_record``).
* ``imagenet_folder:PATH[::SPLIT]`` / ``imagenet[:SPLIT]``: ImageNet-size data as a lazy source
  (:class:`ImageFolderSource` of ``PATH/val/<wnid>/*.JPEG``, :class:`TfdsImageNetSource` of a
  prepared tfds ``imagenet2012``), not a :class:`Dataset`: images are decoded (resize 256, centre
  crop 224) one batch at a time (:meth:`LazySource.batches`, :func:`certify_source`).
* ``synthetic[:N]``: N (default 3000) generated, learnable 32x32 images (runs without data).
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
50,000 images) form the validation split, never the test split.

Training input pipeline: :func:`train_batches` yields uint8 batches in a deterministic,
resumable order (the permutation of epoch ``e`` comes from ``fold_in(key, e)``), :func:`to_float`
scales them to [0, 1] and :func:`augment` applies the standard CIFAR augmentation (random crop
with 4-pixel zero padding and horizontal flip) on the accelerator, jittable::

  ds = load_dataset("npz:../shared/data/cifar10_lossless_3k.npz")
  x, y = ds.split("train")
  for step, xb, yb in train_batches(x, y, batch_size=128, key=jax.random.key(0), start_step=s):
    xb = augment(jax.random.fold_in(aug_key, step), to_float(xb))
"""

from smoothjax.data._cifar_download import ARCHIVES as CIFAR_ARCHIVES
from smoothjax.data._cifar_download import download_archive as download_cifar_archive
from smoothjax.data._cifar_download import load_cifar
from smoothjax.data._dataset import (CIFAR10_CLASSES, CIFAR100_CLASSES, IMAGE_EXTENSIONS,
                                     Dataset, DatasetError, default_cache_dir,
                                     default_validation_size, from_arrays)
from smoothjax.data._imagenet import (ImageFolderSource, LazySource, TfdsImageNetSource,
                                      certify_source, load_imagenet, resize_center_crop)
from smoothjax.data._pipeline import (augment, epoch_permutation, steps_per_epoch, to_float,
                                      train_batches)
from smoothjax.data._sources import load_dataset

__all__ = [
    "DatasetError",
    "Dataset",
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "IMAGE_EXTENSIONS",
    "load_dataset",
    "load_cifar",
    "download_cifar_archive",
    "CIFAR_ARCHIVES",
    "LazySource",
    "ImageFolderSource",
    "TfdsImageNetSource",
    "load_imagenet",
    "certify_source",
    "resize_center_crop",
    "from_arrays",
    "default_validation_size",
    "default_cache_dir",
    "to_float",
    "augment",
    "train_batches",
    "steps_per_epoch",
    "epoch_permutation",
]
