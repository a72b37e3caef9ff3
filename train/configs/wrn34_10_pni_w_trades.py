"""Wide-ResNet-34-10 PNI-W trained with TRADES ("PNI-W+T"), CIFAR-10 or CIFAR-100.

Command::

  python -m train --config=train/configs/wrn34_10_pni_w_trades.py --workdir=runs/wrn_pni_t
  python -m train --config=train/configs/wrn34_10_pni_w_trades.py:cifar100 --workdir=...

As wrn34_10_pni_w.py, with the TRADES loss CE(f(x), y) + 6 KL(f(x) || f(x_adv)) (k = 10, step
2/255, eps 8/255) instead of Madry's.

Expected runtime: ~1.3x wrn34_10_pni_w.py. Expected result: the paper's smoothed PNI-W+T is
comparable to the previous state of the art in adversarial accuracy on CIFAR-10 (Fig. 1(a)).
"""

from train.configs import wrn34_10_pni_w


def get_config(arg: str | None = None):
  c = wrn34_10_pni_w.get_config(arg)
  c.objective.update(name="trades", beta=6.0, eps=8 / 255, steps=10, step_size=2 / 255)
  return c
