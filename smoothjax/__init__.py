"""smoothjax: smoothed inference (Monte-Carlo voting over noisy classifiers) in JAX/Flax NNX.

Submodules:
  noise        input / PNI / CNI noise pieces
  models       CIFAR ResNets and Wide-ResNets with noise, pure apply functions
"""

from smoothjax import models
from smoothjax import noise
from smoothjax.models import ModelConfig, build_model
from smoothjax.noise import NoiseConfig, parse_noise

__version__ = "0.1.0"
