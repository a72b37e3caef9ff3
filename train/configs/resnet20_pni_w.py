"""ResNet-20 PNI-W (learnable element-wise weight noise), adversarially trained (PGD-7).

Command::

  python -m train --config=train/configs/resnet20_pni_w.py --workdir=runs/resnet20_pni_w

The reference recipe of ``resnet20_madry.py`` on a model with PNI-W noise (He et al. 2019):
``W + alpha * std(W) * N(0, 1)`` on every conv and linear kernel, alpha element-wise (the
reference's choice; ``--config.model.pni_granularity=layer|channel`` for the PNI paper's
variants), initialised to 0.25 and trained with the weights but excluded from weight decay
(``optim.alpha_decay = 0``, as PNI does). Validation reports one-pass and soft-smoothed (n = 8)
accuracy; the best checkpoint is the best one-pass clean accuracy.

Expected runtime: as resnet20_madry (about 10% more for the noise). Expected result (PNI
paper's repository, ResNet-20 PGD-7): element-wise PNI-W about 81% clean / 49% PGD
(layer-wise 85/46, channel-wise 85/48).
"""

from train.configs import base


def get_config():
  c = base.get_config()
  c.model.noise = "pni_w"
  c.model.pni_granularity = "element"
  c.model.pni_alpha_init = 0.25
  c.optim.alpha_decay = 0.0
  c.objective.update(name="adversarial", attack="pgd", eps=8 / 255, steps=7, step_size=2 / 255,
                     adv_weight=0.5)
  c.train.checkpoint_every_steps = 2000
  c.train.val_limit = 1000
  return c
