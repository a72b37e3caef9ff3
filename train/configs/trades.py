"""TRADES training (Zhang et al. 2019): CNI-W ResNet-20 trained with beta = 6 ("CNI-W+T").

Command::

  python -m train --config=train/configs/trades.py --workdir=runs/trades
  # fine-tune an existing model instead of training from scratch:
  python -m train --config=train/configs/trades.py --workdir=runs/trades_ft \\
      --config.init_from=runs/resnet20_cni_w --config.train.epochs=30 --config.optim.lr=0.01 \\
      --config.optim.schedule=constant

Loss CE(f(x), y) + beta KL(f(x) || f(x_adv)) with x_adv maximising the KL term (k = 10, step
2/255, eps 8/255, start x + 0.001 N(0, I)), beta = 6 (``--config.objective.beta=1`` for the
other reported setting); the reference's optimisation (400 epochs, milestones 100/200/300,
clip 0.05). ``model.noise`` selects the noise (cni_w by default; pni_w for PNI-W+T).

Expected runtime: 10 attack gradients + 2 training passes per example: ~1.3x resnet20_madry.
Expected result: higher clean accuracy than Madry training at similar robustness (TRADES
paper); smoothed CNI-W+T in the paper's Table 4.
"""

from train.configs import base


def get_config():
  c = base.get_config()
  c.model.noise = "cni_w"
  c.objective.update(name="trades", beta=6.0, eps=8 / 255, steps=10, step_size=2 / 255)
  c.train.checkpoint_every_steps = 2000
  c.train.val_limit = 1000
  return c
