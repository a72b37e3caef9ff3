"""Shared settings of the fine-tuning presets (not a preset itself).

Fine-tuning starts from an adversarially trained CNI-W ResNet-20 (``resnet20_cni_w.py``; any
train workdir, orbax step directory or PyTorch file via ``--config.init_from=PATH``) with the
reference's optimiser at a small constant learning rate. The paper fine-tunes "for up to [N]
epochs" (the number was lost in the text conversion): 30 epochs at lr 0.01 is our choice.
"""

from train.configs import base


def get_config():
  c = base.get_config()
  c.init_required = True
  c.model.noise = "cni_w"
  c.optim.update(lr=0.01, schedule="constant", milestones=())
  c.objective.update(name="adversarial", attack="pgd", eps=8 / 255, steps=7, step_size=2 / 255,
                     adv_weight=0.5)
  c.train.update(epochs=30, checkpoint_every_steps=1000, val_limit=1000)
  return c
