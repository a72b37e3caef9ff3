"""smoothjax: smoothed inference (Monte-Carlo voting over noisy classifiers) in JAX/Flax NNX.

Submodules:
  noise        Gaussian input noise, PNI (weights, activations), CNI colored weight noise
  models       CIFAR ResNets and Wide-ResNets with noise; pure ``apply`` / ``apply_train``
  classifier   the model interface (``Classifier``) and ``FunctionClassifier`` for any classifier
  batchnorm    BatchNorm statistics of noisy models: between/within-draw variance, recalibration
  data         CIFAR through tfds, ``.npz`` and image-folder / tar sources; augmentation; batches
  checkpoints  orbax checkpoints; safe import of PyTorch checkpoints (reference, akamaster)
  smoothing    Monte-Carlo sampling, votes, one-pass accuracy-vs-n curves, sharded over devices
  certify      Cohen et al. PREDICT (abstain) and CERTIFY
  attacks      FGSM, PGD, EPGD, SmoothAdv, PGD-s, transfer, NAttack, sanity checks
  training     training objectives, optimisers and the resumable training loop
  evaluation   the driver behind ``python -m evaluate``
  plots        accuracy-vs-n, accuracy-vs-sigma, certified-accuracy, attack-vs-compute plots
  cli          the command lines (``python -m train``, ``python -m evaluate``)

The layout is described in docs/architecture.md.

Example:
  >>> import jax, smoothjax
  >>> model = smoothjax.build_model("resnet20", noise="cni_w", key=0)
  >>> model(jax.numpy.zeros((1, 32, 32, 3)), key=jax.random.key(1)).shape
  (1, 10)
"""

import importlib

from smoothjax import classifier
from smoothjax import models
from smoothjax import noise
from smoothjax.classifier import Classifier, FunctionClassifier
from smoothjax.models import ModelConfig, build_model
from smoothjax.noise import NoiseConfig, parse_noise

__version__ = "0.1.0"

_LAZY = ("batchnorm", "data", "checkpoints", "smoothing", "certify", "attacks", "training",
         "evaluation", "plots", "metrics", "cli", "pretrained", "quickstart")


def __getattr__(name):
  # Heavier submodules (orbax, tfds, scipy, matplotlib) load on first use.
  if name in _LAZY:
    return importlib.import_module(f"smoothjax.{name}")
  raise AttributeError(f"module 'smoothjax' has no attribute {name!r}")


__all__ = ["Classifier", "FunctionClassifier", "ModelConfig", "NoiseConfig", "build_model",
           "parse_noise", "classifier", "models", "noise", *_LAZY]
