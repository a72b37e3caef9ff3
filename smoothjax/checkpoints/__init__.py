"""Checkpoints: PyTorch import of CIFAR ResNets, and orbax checkpoints of smoothjax models.

Modules: ``_torch`` (safe PyTorch import), ``_cohen`` (Cohen et al.'s and SmoothAdv's
randomized-smoothing checkpoints: :func:`model_from_cohen`), ``_orbax`` (:class:`TrainCheckpointer`,
:func:`save_model`, :func:`load_model`) and ``_common`` (:class:`CheckpointError`,
:func:`parse_normalization`).

Two kinds of files are read:

* **PyTorch files** (``.pth``, ``.pth.tar``, ``.th``) of the CIFAR ResNets in the wild: the
  paper's reference implementation (option-B shortcut ``layerL.B.downsample.0/1``, head ``fc``)
  and akamaster's widely used weights (option-A zero-padding shortcut, ``module.`` prefix, head
  ``linear``), and Cohen et al.'s / Salman et al.'s (SmoothAdv) randomized-smoothing checkpoints
  (``Sequential(normalize_layer, model)``, keys ``1.``...; :func:`model_from_cohen`). They are
  read with ``torch.load(..., weights_only=True)`` only: a file whose
  pickle would run code is refused (:class:`CheckpointError`), never loaded with
  ``weights_only=False``. :func:`model_from_torch` detects the family, depth, shortcut and number
  of classes from the state dict and converts the layouts (conv OIHW -> HWIO, linear
  (out, in) -> (in, out), BatchNorm weight/bias/running_mean/running_var -> scale/bias/mean/var).
  The reference's noisy models come with their noise: PNI-W ``alpha`` and CNI-W ``alphad_w`` /
  ``alphaf_w`` (over the flattened OIHW weight, permuted to the HWIO kernel's order).
* **orbax checkpoints** written by smoothjax. A train workdir looks like::

    workdir/config.json             # written by the trainer
    workdir/checkpoints/<step>/     # the last `keep` checkpoints
    workdir/best/<step>/            # the single best-by-validation checkpoint

  and every step directory holds the items ``model`` (the model state as a pure dict of arrays),
  ``train`` (any pytree: optimizer state, step, data position, PRNG keys), and ``meta`` (JSON:
  ``model_config`` = :meth:`smoothjax.models.ModelConfig.to_dict`, step, metrics, ...).
  :func:`save_model` writes one step directory with ``model`` and ``meta`` only.

orbax writes a checkpoint into ``<step>.orbax-checkpoint-tmp-<timestamp>`` and renames it when
complete, so a run killed while saving leaves a temporary directory that is never taken for a
checkpoint (and is deleted by the next :class:`TrainCheckpointer`).

Example:
  >>> model, info = load_model("../shared/weights/akamaster/resnet20-12fca82f.th")  # doctest: +SKIP
  >>> info["family"], info["model_config"]["arch"]                                  # doctest: +SKIP
  ('akamaster', 'resnet20')
"""

from smoothjax.checkpoints._cohen import ARCHS as COHEN_ARCHS
from smoothjax.checkpoints._cohen import FAMILIES as COHEN_FAMILIES
from smoothjax.checkpoints._cohen import (cohen_normalization, is_cohen_checkpoint,
                                          load_cohen_file, model_from_cohen)
from smoothjax.checkpoints._cohen import detect_layout as detect_cohen_layout
from smoothjax.checkpoints._common import (FAMILIES, TORCH_SUFFIXES, CheckpointError,
                                           parse_normalization)
from smoothjax.checkpoints._orbax import (TrainCheckpointer, load_model, model_state_dict,
                                          restore_train_checkpoint, save_model, train_step_dir)
from smoothjax.checkpoints._torch import detect_family, load_torch_state_dict, model_from_torch

__all__ = [
    "CheckpointError",
    "FAMILIES",
    "TORCH_SUFFIXES",
    "load_torch_state_dict",
    "detect_family",
    "parse_normalization",
    "model_from_torch",
    "TrainCheckpointer",
    "save_model",
    "load_model",
    "model_state_dict",
    "restore_train_checkpoint",
    "train_step_dir",
    "COHEN_ARCHS",
    "COHEN_FAMILIES",
    "cohen_normalization",
    "detect_cohen_layout",
    "is_cohen_checkpoint",
    "load_cohen_file",
    "model_from_cohen",
]
