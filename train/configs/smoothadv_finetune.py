"""SmoothAdv adversarial fine-tuning of CNI-W (Salman et al.'s attack, m noise samples).

Command::

  python -m train --config=train/configs/smoothadv_finetune.py --workdir=runs/smoothadv \\
      --config.init_from=runs/resnet20_cni_w

Madry adversarial training whose examples maximise the SmoothAdv loss
``-log(mean_m softmax_y)`` (average over m = 8 noise draws before the log) with k = 7 steps,
eps 8/255, step 2/255; the m draws are fixed across the steps of one attack, as Salman et al.
do (``objective.fixed_noise``). 30 epochs at lr 0.01; best checkpoint by soft-smoothed
validation accuracy.

Expected runtime: like epgd_finetune.py (56 attack gradients per example). Expected result:
a smoothed classifier comparable to EPGD-converged (paper, Table 4).
"""

from train.configs import finetune


def get_config():
  c = finetune.get_config()
  c.objective.update(attack="smoothadv", samples=8, fixed_noise=True)
  c.train.best_metric = "smoothed_accuracy"
  return c
