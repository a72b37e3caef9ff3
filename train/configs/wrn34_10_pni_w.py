"""Wide-ResNet-34-10 PNI-W, adversarially trained (PGD-7), CIFAR-10 or CIFAR-100.

Command::

  python -m train --config=train/configs/wrn34_10_pni_w.py --workdir=runs/wrn_pni_c10
  python -m train --config=train/configs/wrn34_10_pni_w.py:cifar100 --workdir=runs/wrn_pni_c100

(``:DATASET`` after the file name is the config argument: ``cifar10`` (default), ``cifar100``,
or any dataset spec, e.g. ``folder:../shared/data/cifar10_jpeg75.tar``.)

PNI-W (element-wise alpha, 0.25, no weight decay on alpha) on a WRN-34-10; Madry loss
0.5 CE(PGD-7 adv) + 0.5 CE(clean), eps 8/255, step 2/255; SGD Nesterov lr 0.1, weight decay
2e-4 (the Madry/TRADES WRN setting), batch 128, 100 epochs (the paper's PNI-W WRN models),
lr x0.1 at epochs 75 and 90, clip 0.05; best checkpoint by clean validation accuracy.

Expected runtime: WRN-34-10 is ~60x ResNet-20's compute: impractical on a CPU; about 1-2 days
on one modern GPU (estimate). Expected result: the paper's smoothed PNI-W substantially
outperforms prior art on CIFAR-100 (Fig. 1(b)); base classifier roughly 85% clean / 55% PGD on
CIFAR-10 (typical WRN adversarial training numbers).
"""

from train.configs import base


def get_config(arg: str | None = None):
  c = base.get_config()
  c.data.dataset = arg or "cifar10"
  c.data.batch_size = 128
  c.model.arch = "wrn34_10"
  c.model.noise = "pni_w"
  c.optim.update(weight_decay=2e-4, alpha_decay=0.0, milestones=(75, 90))
  c.objective.update(name="adversarial", attack="pgd", eps=8 / 255, steps=7, step_size=2 / 255,
                     adv_weight=0.5)
  c.train.update(epochs=100, checkpoint_every_steps=1000, val_limit=1000, eval_batch_size=250)
  return c
