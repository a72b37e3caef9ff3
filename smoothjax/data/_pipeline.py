"""The training input pipeline: uint8 -> float, augmentation (jittable), resumable batches.

:func:`train_batches` yields uint8 batches in a deterministic, resumable order (the permutation of
epoch ``e`` comes from ``fold_in(key, e)``); :func:`to_float` scales them to [0, 1] and
:func:`augment` applies the standard CIFAR augmentation on the accelerator.
"""

from __future__ import annotations

import functools
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from smoothjax._utils import as_key as _as_key
from smoothjax.data._dataset import DatasetError

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
