"""ResNet-20 CNI-W fine-tuned from a noise-free fast-AT parent (the paper's route to CNI-W).

Command::

  python -m train --config=train/configs/resnet20_cniw_at.py --workdir=runs/resnet20_cniw_at \\
      --config.init_from=runs/fast_at

The parent is a noise-free ResNet-20 trained with ``resnet20_fast_at.py``; its parameters are
copied and CNI-W (Zheltonozhskii et al. 2020) is added on every conv (alpha_d = 0.0625, rank-5
F with N(0, 0.01^2) entries; element-wise PNI on the head), then the model trains with the
same fast-AT objective (FGSM from a random start, step 1.25 eps, eps = 8/255; Wong et al.
2020) at a constant learning rate 0.02 for 5 epochs.

BatchNorm: each training pass splits its batch of 128 into 8 groups of 16 with their own
noise draw and pools BatchNorm's statistics over all of them (``objective.noise_draws=8``,
:func:`smoothjax.batchnorm.pooled_draws_forward`), and the FGSM examples are crafted the same
way. With one draw per batch (``--config.objective.noise_draws=1``), BatchNorm's batch
statistics remove each draw's per-channel offsets in training and nothing removes them at
evaluation (a one-epoch pre-flight of that setting predicted one class in eval mode; whether
pooling draws prevents it over a full run is not yet measured, see below).
``--config.objective.train_bn=frozen`` (running statistics throughout, never updated) is the
other remedy.

Data: as ``resnet20_fast_at.py`` (the JPEG CIFAR-10 tar beside the checkout, else tfds).
Expected runtime: on 2 busy CPU cores a step took ~5 s with 8 draws (grouped convolutions)
against ~2.5 s with one: roughly 2 s per 128 images more; minutes on one GPU.

Measured (100 steps from a fast-AT parent at step 2,000 of resnet20_fast_at, on the 1,800
lossless training images, accuracy on the first 500 lossless test images, noise on, mean of
4 draws; "batch" = the same weights with one-draw batch statistics, "pooled" = 4 draws pooled
as in training): 8 draws: eval 0.292, pooled 0.344, batch 0.426, noise off 0.416; one draw:
eval 0.334, pooled 0.296, batch 0.431, noise off 0.452. So at this length neither collapses
and 8 draws does not yet give a better eval-mode model; its training-mode numbers track the
eval-mode ones (5 points apart against 10), which the logged train accuracy of a long run
relies on. Learned scales after 100 steps barely move from their initial values (alpha_d
mean 0.061, F rms 0.0106). Frozen BatchNorm (``train_bn=frozen``) diverged at lr 0.02 without
clipping (NaN at step 16); with ``optim.clip_norm=0.05``: eval 0.234 after 40 steps, the noise
scales unmoved. One epoch of this preset from the finished ``pretrained:resnet20_at`` (val 68.5%
clean / 37.5% PGD-10) on the JPEG training split (351 steps, ~4 s/step on 2 shared cores):
adversarial training accuracy 0.15-0.20, validation (2,000 held-out images, eval mode) 20.9% clean
at n = 1, 26.1% smoothed at n = 8, PGD-10 18.6%: no one-class collapse, but CNI-W at this
initialisation (noise std ~0.9x the weights') costs most of the parent's accuracy. Next to try: the
later CNI initialisation (``--config.model.cni_alpha_init=0.01 --config.model.cni_f_init=1e-4``) or
a noise warm-up.
"""

from train.configs import resnet20_fast_at


def get_config():
  c = resnet20_fast_at.get_config()
  c.init_required = True
  c.model.update(noise="cni_w", cni_alpha_init=0.0625, cni_f_init=0.01, cni_f_dist="normal")
  c.optim.update(lr=0.02, schedule="constant", milestones=(), alpha_decay=0.0,
                 factor_decay=0.0)
  c.objective.update(noise_draws=8, train_bn="batch")
  c.train.update(epochs=5, checkpoint_every_steps=500)
  return c
