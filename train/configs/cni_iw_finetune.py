"""CNI-I+W: fine-tune CNI-W under Gaussian input noise (optionally with an adversarial term).

Command::

  python -m train --config=train/configs/cni_iw_finetune.py --workdir=runs/cni_iw \\
      --config.init_from=runs/resnet20_cni_w --config.model.input_sigma=0.12

The model carries Gaussian input noise of std ``model.input_sigma`` (pixel units by default;
``--config.model.sigma_space=normalized`` for the reference's convention) on top of its CNI-W
weight noise, in training and in evaluation. Pick the sigma that maximises the CNI-W model's
smoothed accuracy (``python -m evaluate --sigma=0,0.02,...``); 0.12 is a placeholder. Loss:
Madry's 0.5 CE(PGD-7 adv) + 0.5 CE(clean), both under the input noise (paper eq. 23); set
``--config.objective.name=standard`` for noise-only fine-tuning. 30 epochs at lr 0.01.

Expected runtime: as an adversarial epoch of resnet20_cni_w per epoch (about 3.5 hours on
2 CPU cores, ~10 s on a GPU; estimates). Expected result: a model whose smoothed accuracy peaks
at the trained sigma (paper, Figs. 1-2).
"""

from train.configs import finetune


def get_config():
  c = finetune.get_config()
  c.model.input_sigma = 0.12
  c.model.sigma_space = "pixel"
  c.train.best_metric = "smoothed_accuracy"
  return c
