"""ResNet-20 CNI-W fine-tuned from a noise-free fast-AT parent (the paper's route to CNI-W).

Command::

  python -m train --config=train/configs/resnet20_cniw_at.py --workdir=runs/resnet20_cniw_at \\
      --config.init_from=pretrained:resnet20_at

The parent's parameters are copied and CNI-W (Zheltonozhskii et al. 2020) is added on every conv
at CNI's later initialisation (alpha_d = 0.01, rank-5 F with N(0, 1e-4^2) entries and the
"noise decay" L2 penalty 1e-3 on F; element-wise PNI on the head), then the model trains with
the parent's fast-AT objective (FGSM from a random start, step 1.25 eps, eps = 8/255; Wong et
al. 2020) for 2 epochs: SGD momentum 0.9, cosine learning rate from 0.01, gradient-norm
clipping 1.0, BatchNorm **frozen** (``objective.train_bn=frozen``: every training pass uses
the parent's running statistics, as evaluation does, and never updates them).

Why frozen BatchNorm. One weight-noise draw is shared by a batch (the reference's granularity),
and because post-ReLU inputs have a non-zero mean, even i.i.d. weight noise shifts every
channel's mean coherently within a draw. Batch statistics remove that shift in training;
running statistics cannot at evaluation. Measured on this recipe with BatchNorm in batch mode
(``train_bn=batch``, lr 0.02, one epoch = 351 steps; 500 lossless test images, 4 draws):
eval mode 29.9%, the same weights with batch statistics 56.7%, noise off 62.4%; BatchNorm
recalibrated over 16 draws (``smoothjax.batchnorm.recalibrate``) 37.7%; validation (2,000
images) 29.0% at n = 1, 38.6% at n = 8. Frozen BatchNorm trains the model exactly as it is
evaluated: a 60-step pre-flight (lr 0.01, clip 1.0) gave 50.8% at n = 1 / 63.2% at n = 8 on 500
validation images. Earlier tries (alpha_d = 0.0625, F = 0.01; 8 pooled draws per batch; frozen
BatchNorm at lr 0.02 without clipping, which diverged) are in the git history of this file.

Data: as ``resnet20_fast_at.py`` (the JPEG CIFAR-10 tar beside the checkout, else tfds).
Expected runtime: ~3 s per step on 2 CPU cores (702 steps: ~35-45 minutes); minutes on a GPU.
"""

from train.configs import resnet20_fast_at


def get_config():
  c = resnet20_fast_at.get_config()
  c.init_required = True
  c.model.update(noise="cni_w", cni_alpha_init=0.01, cni_f_init=1e-4, cni_f_dist="normal")
  c.optim.update(lr=0.01, schedule="cosine", milestones=(), alpha_decay=0.0,
                 factor_decay=1e-3, clip_norm=1.0)
  c.objective.update(noise_draws=1, train_bn="frozen")
  c.train.update(epochs=2, checkpoint_every_steps=100, keep=2)
  return c
