"""ResNet-20 CNI-W (colored weight noise), adversarially trained (PGD-7): the paper's base model.

Command::

  python -m train --config=train/configs/resnet20_cni_w.py --workdir=runs/resnet20_cni_w

The reference recipe (400 epochs, milestones 100/200/300, clip 0.05, SGD Nesterov lr 0.1,
weight decay 1e-4, batch 256, PGD-7 eps 8/255 step 2/255, w = 0.5) on a CNI-W model
(Zheltonozhskii et al. 2020): per layer ``W + sqrt(|std(W) alpha_d|) n_d + F n_f`` with
rank-5 F, the reference's scales alpha_d = 0.0625, F = 0.01, and element-wise PNI on the
final linear layer. F starts with random N(0, 0.01^2) entries (``cni_f_dist="normal"``): the
reference's constant F (``--config.model.cni_f_dist=constant``) shifts every weight of a layer
alike per draw, which BatchNorm's running statistics cannot follow (an eval-mode model that
predicts one class). The diagonal term at alpha_d = 0.0625 still gives each draw
per-channel offsets that BatchNorm's batch statistics remove in training and nothing removes at
evaluation; ``--config.objective.noise_draws=8`` (8 draws per batch, BatchNorm statistics pooled
over them) trains under the evaluation's normalisation (see ``resnet20_cniw_at.py``).
alpha_d and F train without weight
decay; the later CNI code's initialisation and "noise decay" are
``--config.model.cni_alpha_init=0.01
--config.model.cni_f_init=1e-4 --config.optim.factor_decay=1e-3``.

This is the starting point of epgd_finetune.py, highk_pgd_finetune.py, cni_iw_finetune.py,
smoothadv_finetune.py and trades.py (``--config.init_from=runs/resnet20_cni_w``).

Expected runtime: as resnet20_madry (CNI noise adds about 20%). Expected result: about 80-85%
clean / ~50% PGD-7 for the base classifier; smoothing (n = 512) adds several points under
attack (paper, Table 4; exact numbers lost in the text conversion).
"""

from train.configs import base


def get_config():
  c = base.get_config()
  c.model.noise = "cni_w"
  c.model.cni_alpha_init = 0.0625
  c.model.cni_f_init = 0.01
  c.optim.alpha_decay = 0.0
  c.optim.factor_decay = 0.0
  c.objective.update(name="adversarial", attack="pgd", eps=8 / 255, steps=7, step_size=2 / 255,
                     adv_weight=0.5)
  c.train.checkpoint_every_steps = 2000
  c.train.val_limit = 1000
  return c
