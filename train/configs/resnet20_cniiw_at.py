"""CNI-I+W ResNet-20: the CNI-W model fine-tuned under Gaussian input noise (paper, eq. 23).

Command::

  python -m train --config=train/configs/resnet20_cniiw_at.py --workdir=runs/resnet20_cniiw_at \\
      --config.init_from=pretrained:resnet20_cniw_at

Starts from ``pretrained:resnet20_cniw_at`` (CNI-W, fine-tuned from the noise-free fast-AT
``resnet20_at``) and adds Gaussian input noise of std 0.05 in [0, 1] pixel units
(``model.input_sigma``; the model carries it in training and evaluation), the sigma that gave
that model its best smoothed PGD-20 accuracy in our sweep (500 JPEG test images, n = 16; the
sweep is flat within its intervals up to 0.05, see docs/reproduction.md). Loss: the parent's
fast-AT objective (FGSM from a random start, step 1.25 eps, eps = 8/255, on the noisy model),
so this is the "optionally with adversarial examples" variant. Optimisation as the parent's
preset (frozen BatchNorm, gradient clipping 1.0) at a cosine learning rate from 0.005 for one
epoch.

Expected runtime: ~3 s per step on 2 CPU cores (351 steps: ~20 minutes); seconds on a GPU.
"""

from train.configs import resnet20_cniw_at


def get_config():
  c = resnet20_cniw_at.get_config()
  c.model.update(input_sigma=0.05, sigma_space="pixel")
  c.optim.update(lr=0.005)
  c.train.update(epochs=1, best_metric="pgd_accuracy")
  return c
