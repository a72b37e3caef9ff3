"""Smoke preset: a small noisy ResNet-20 trained in about two minutes on 2 CPU cores.

Command::

  python -m train --config=train/configs/smoke.py --workdir=/tmp/smoke
  python -m evaluate --checkpoint=/tmp/smoke --dataset=npz:../shared/data/cifar10_lossless_3k.npz

Data: ``../shared/data/cifar10_lossless_3k.npz`` when it exists (2,000 real CIFAR-10 training
images: 1,800 train / 200 validation), else 3,000 generated images (``synthetic``).
Model: ResNet-20 with PNI-W weight noise (element-wise alpha), standard cross-entropy, SGD
Nesterov lr 0.1 (cosine), batch 128, 8 epochs (112 steps), validation every epoch with
one-pass and soft-smoothed (n = 4) accuracy.

Expected runtime: ~2 min on 2 CPU cores (about 25 s of it compilation; a rerun reuses the
compilation cache), a few seconds on a GPU. Expected result: validation accuracy around
0.3-0.4 on the real images (far from converged: a smoke test, not a model), > 0.9 on the
synthetic data.
"""

from train.configs import base


def get_config():
  c = base.get_config()
  npz = base.shared_data("cifar10_lossless_3k.npz")
  c.data.dataset = f"npz:{npz}" if npz.exists() else "synthetic:3000"
  c.data.batch_size = 128
  c.model.noise = "pni_w"
  c.optim.lr = 0.1
  c.optim.clip_norm = 0.0
  c.optim.weight_decay = 5e-4
  c.optim.schedule = "cosine"
  c.optim.milestones = ()
  c.train.epochs = 8
  c.train.checkpoint_every_steps = 50
  c.train.keep = 2
  c.train.val_n = 4
  c.train.log_every_steps = 5
  return c
