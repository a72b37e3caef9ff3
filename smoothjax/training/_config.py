"""The config boundary of training: ``config.model`` / ``config.data`` into typed objects.

Every default is set once, in ``train/configs/base.py``; the functions here read the fields a
config built from it has, and validate them once.
"""

from __future__ import annotations

from typing import Any

from smoothjax import checkpoints as ckpt_lib
from smoothjax import data as data_lib
from smoothjax import models as models_lib
from smoothjax import noise as noise_lib
from smoothjax._utils import config_value as _get
from smoothjax.training._objectives import Objective

BEST_METRICS = ("accuracy", "smoothed_accuracy", "pgd_accuracy")

def model_config_from(cfg: Any, *, num_classes: int | None = None) -> models_lib.ModelConfig:
  """Builds a :class:`~smoothjax.models.ModelConfig` from ``config.model``.

  Args:
    cfg: ``config.model`` with ``arch``, ``noise`` (a ``--noise`` spec such as ``"cni_w"``),
      ``shortcut``, ``num_classes`` (0: the dataset's), ``normalization`` (``"reference"``,
      ``"akamaster"`` or six numbers), and the noise settings ``input_sigma``, ``sigma_space``,
      ``pni_granularity``, ``pni_alpha_init``, ``cni_rank``, ``cni_alpha_init``, ``cni_f_init``,
      ``cni_f_dist``.
    num_classes: the dataset's number of classes (used when ``cfg.num_classes`` is 0).

  Raises:
    ValueError: an unknown architecture, noise spec, normalisation, or a class count that
      contradicts the dataset.
  """
  overrides = {}
  for name in ("input_sigma", "sigma_space", "pni_granularity", "pni_alpha_init", "cni_rank",
               "cni_alpha_init", "cni_f_init", "cni_f_dist"):
    value = _get(cfg, name)
    if value is not None:
      overrides[name] = value
  spec = str(_get(cfg, "noise"))
  if ":" in spec:  # pni_w:channel names the granularity itself
    overrides.pop("pni_granularity", None)
  noise = noise_lib.parse_noise(spec, **overrides)
  n = int(_get(cfg, "num_classes") or 0)
  if n and num_classes and n != num_classes:
    raise ValueError(f"config.model.num_classes={n} but the dataset has {num_classes} classes")
  n = n or num_classes or 10
  mean, std = ckpt_lib.parse_normalization(_get(cfg, "normalization"))
  return models_lib.ModelConfig(arch=str(_get(cfg, "arch")), num_classes=n,
                                shortcut=str(_get(cfg, "shortcut")), noise=noise,
                                mean=mean, std=std)



def load_training_data(cfg: Any) -> data_lib.Dataset:
  """Loads ``config.data`` (``dataset``, ``data_dir``, ``cache_dir``, ``validation_size``).

  ``dataset`` is any :func:`smoothjax.data.load_dataset` spec (``cifar10``, ``cifar100``,
  ``npz:PATH``, ``folder:PATH`` e.g. ``folder:../shared/data/cifar10_jpeg75.tar``) or
  ``synthetic[:N]`` (generated images, for runs without data). ``validation_size < 0`` takes
  the default rule (5,000 images, or 10% of a smaller training set).
  """
  spec = str(_get(cfg, "dataset"))
  vs = int(_get(cfg, "validation_size"))
  vs = None if vs < 0 else vs
  return data_lib.load_dataset(spec, data_dir=_get(cfg, "data_dir") or None,
                               cache_dir=_get(cfg, "cache_dir") or None, validation_size=vs)



def _check_config(config: Any) -> None:
  t = config.train
  if int(config.data.batch_size) < 1:
    raise ValueError(f"data.batch_size must be >= 1, got {config.data.batch_size}")
  if str(t.best_metric) not in BEST_METRICS:
    raise ValueError(f"train.best_metric must be one of {', '.join(BEST_METRICS)}, got "
                     f"{t.best_metric!r}")
  if t.best_metric == "pgd_accuracy" and int(t.val_pgd_examples) <= 0:
    raise ValueError("train.best_metric='pgd_accuracy' needs train.val_pgd_examples > 0")
  if int(t.keep) < 1:
    raise ValueError(f"train.keep must be >= 1, got {t.keep}")
  objective = Objective.from_config(config.objective)
  if int(config.data.batch_size) % objective.noise_draws:
    raise ValueError(f"objective.noise_draws={objective.noise_draws} must divide "
                     f"data.batch_size={config.data.batch_size}")
  model_config_from(config.model)
  if (bool(_get(config, "init_required")) and not str(_get(config, "init_from"))
      and not str(_get(config, "resume_from", ""))):
    raise ValueError("this preset fine-tunes a trained model: pass "
                     "--config.init_from=PATH (a train workdir, orbax step directory or "
                     "PyTorch file)")

