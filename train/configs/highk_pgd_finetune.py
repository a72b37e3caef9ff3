"""High-k PGD adversarial fine-tuning of CNI-W: the paper's best smoothed model (60.4% PGD).

Command::

  python -m train --config=train/configs/highk_pgd_finetune.py --workdir=runs/highk \\
      --config.init_from=runs/resnet20_cni_w

Madry adversarial training with PGD of many steps, at a cost comparable to EPGD's k x m =
7 x 8 = 56 gradients per example: k = 56, eps 8/255, step 2/255 (the paper's exact k / eps were
lost in the text conversion: override ``--config.objective.steps`` / ``eps``). 30 epochs at
lr 0.01 from the CNI-W model; best checkpoint by clean validation accuracy.

Expected runtime: like epgd_finetune.py. Expected result (paper, Table 1): the base model gets
clearly worse on clean and adversarial data, but its smoothed classifier reaches the highest
adversarial accuracy, 60.4% under PGD (ResNet-20, CIFAR-10), at a somewhat lower clean accuracy.
"""

from train.configs import finetune


def get_config():
  c = finetune.get_config()
  c.objective.update(attack="pgd", steps=56, step_size=2 / 255)
  return c
