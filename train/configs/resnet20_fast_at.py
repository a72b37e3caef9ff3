"""ResNet-20 "fast" adversarial training (Wong, Rice & Kolter 2020), affordable on a CPU.

Command::

  python -m train --config=train/configs/resnet20_fast_at.py --workdir=runs/fast_at
  python -m evaluate --checkpoint=runs/fast_at --attack=pgd --eps=8/255 --steps=20 \\
      --dataset=folder:../shared/data/cifar10_jpeg75.tar

Data: the JPEG CIFAR-10 tar ``folder:../shared/data/cifar10_jpeg75.tar`` when it exists beside
the checkout (45,000 train / 5,000 validation / 10,000 test; decoded once into the cache),
else ``cifar10`` (tfds). Model: ResNet-20 (no noise; ``--config.model.noise=pni_w`` trains a
noisy one). Each step: FGSM from a uniform random start in [-eps, eps] with step 1.25 eps
(eps = 8/255), crafted with BatchNorm in train mode (batch statistics) as Wong et al. do,
trained on the adversarial examples only; SGD momentum 0.9 (no Nesterov),
weight decay 5e-4, batch 128, one-cycle learning rate 0 -> 0.2 -> 0 over 15 epochs (peak at
40%), no gradient clipping. Catastrophic overfitting (PGD accuracy collapsing to ~0 while FGSM
accuracy soars) is caught by PGD-10 accuracy on 512 held-out validation images every epoch;
``best/`` keeps the snapshot with the best PGD accuracy.

Expected runtime: each step costs about two clean training steps: roughly 1.5-3 hours on
2 CPU cores (estimate from the benchmarked step throughput), 2-4 minutes on one GPU.
Expected result (not yet measured here): Wong et al. report 45% PGD-50 / 83% clean for a
PreAct ResNet-18; the much smaller ResNet-20 on JPEG images should land around 35-40% PGD /
65-72% clean.
"""

from train.configs import base


def get_config():
  c = base.get_config()
  tar = base.shared_data("cifar10_jpeg75.tar")
  c.data.dataset = f"folder:{tar}" if tar.exists() else "cifar10"
  c.data.batch_size = 128
  c.model.noise = "none"
  c.optim.update(lr=0.2, nesterov=False, weight_decay=5e-4, clip_norm=0.0, schedule="onecycle",
                 milestones=(), peak_fraction=0.4)
  c.objective.update(name="fast", eps=8 / 255, step_size=10 / 255)
  c.train.update(epochs=15, checkpoint_every_steps=500, best_metric="pgd_accuracy",
                 val_pgd_examples=512, val_pgd_steps=10, val_limit=2000)
  return c
