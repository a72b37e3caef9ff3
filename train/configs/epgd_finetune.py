"""EPGD adversarial fine-tuning of CNI-W: the paper's EPGD-converged / EPGD-diverged models.

Command::

  python -m train --config=train/configs/epgd_finetune.py --workdir=runs/epgd \\
      --config.init_from=runs/resnet20_cni_w
  python -m evaluate --checkpoint=runs/epgd          # EPGD-converged (best clean val acc)
  python -m evaluate --checkpoint=runs/epgd/worst    # EPGD-diverged (worst clean val acc)

Adversarial training with EPGD examples (Nemcovsky et al. eq. 25: every step averages the
cross-entropy gradient over m = 8 noise draws; k = 7, eps 8/255, step 2/255), loss
0.5 CE(adv) + 0.5 CE(clean), 30 epochs at lr 0.01 from the CNI-W model. Two snapshots are kept
by clean validation accuracy: the best under ``best/`` ("EPGD-converged") and the worst under
``worst/best/`` ("EPGD-diverged"; ``train.keep_worst``).

Expected runtime: each step costs 7 x 8 = 56 attack gradients + 2 training passes, about 6x
an adversarial (PGD-7) epoch: ~2-3 hours per epoch on 2 CPU cores, 3-5 minutes on one GPU
(estimates). Expected result: EPGD-converged behaves like CNI-W (paper, Fig. 2); the smoothed
EPGD-diverged model trades clean accuracy for robustness.
"""

from train.configs import finetune


def get_config():
  c = finetune.get_config()
  c.objective.update(attack="epgd", samples=8)
  c.train.keep_worst = True
  c.train.best_metric = "accuracy"
  return c
