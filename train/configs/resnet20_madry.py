"""ResNet-20, Madry adversarial training (PGD-7), the reference's recipe. Paper baseline.

Command::

  python -m train --config=train/configs/resnet20_madry.py --workdir=runs/resnet20_madry
  # offline, on the JPEG CIFAR-10 tar:
  python -m train --config=train/configs/resnet20_madry.py --workdir=runs/resnet20_madry \\
      --config.data.dataset=folder:../shared/data/cifar10_jpeg75.tar

Recipe (Madry et al. 2018): loss 0.5 CE(x_adv) + 0.5 CE(x), x_adv = PGD-7 (eps 8/255, step 2/255,
random start) on the model in eval mode; SGD Nesterov 0.9, lr 0.1, weight decay 1e-4, batch
256, 400 epochs, lr x0.1 at epochs 100/200/300, gradient-norm clipping 0.05; random crop +
flip; best checkpoint by clean validation accuracy (last 5,000 training images).

Expected runtime: 400 epochs x 45,000 images x ~9 forward-backward passes: about 5-6 days on
2 CPU cores (not practical: see resnet20_fast_at.py), roughly 2-4 hours on one modern GPU
(estimates, not measured). Expected result (PNI paper's vanilla adversarial training of
ResNet-20): about 84% clean / 39% PGD-7 test accuracy.
"""

from train.configs import base


def get_config():
  c = base.get_config()
  c.model.noise = "none"
  c.objective.update(name="adversarial", attack="pgd", eps=8 / 255, steps=7, step_size=2 / 255,
                     adv_weight=0.5)
  c.train.checkpoint_every_steps = 2000
  c.train.val_limit = 1000  # validation costs a few seconds per epoch
  return c
