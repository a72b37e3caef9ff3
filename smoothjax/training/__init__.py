"""Training: objectives, optimizers, one jitted data-parallel train step, and the train loop.

Modules: ``_objectives`` (:class:`Objective`, the losses and adversarial examples), ``_optim``
(parameter groups, schedules, optimisers), ``_steps`` (the jitted train and PGD-eval steps),
``_config`` (``config.model`` / ``config.data`` into typed objects, validated once) and
``_loop`` (:func:`train_and_evaluate`); the command line is :mod:`smoothjax.cli.train`.

Objectives (Nemcovsky et al. 2019, and the papers below), selected by ``config.objective.name``:

* ``"standard"``: cross-entropy. With a model that carries Gaussian input noise
  (``config.model.input_sigma``) this is *noise training / fine-tuning* (CNI-I+W).
* ``"adversarial"``: Madry et al.'s ``w * CE(f(x_adv), y) + (1 - w) * CE(f(x), y)``. The examples
  come from ``config.objective.attack``: ``"pgd"`` (Madry; the reference uses k = 7, a = 2/255,
  w = 0.5), ``"epgd"`` (expectation over m noise draws: *EPGD adversarial training*),
  ``"smoothadv"`` (Salman et al.'s attack on the soft-smoothed model: *SmoothAdv training*) or
  ``"fgsm"``. They are generated with the model in evaluation mode (BatchNorm running
  statistics), its noise switched on, and then held constant (no gradient through the attack).
  With input noise on the model this is CNI-I+W fine-tuning with an adversarial term.
* ``"trades"``: Zhang et al.'s ``CE(f(x), y) + beta * KL(f(x) || f(x_adv))`` with ``x_adv``
  maximising the KL term. ``beta = 0`` gives exactly the loss of ``"standard"``.
* ``"fast"``: Wong, Rice & Kolter (2020) "fast is better than free" adversarial training: one
  FGSM step from a uniform random start in ``[-eps, eps]`` with step ``1.25 eps``, trained on
  the adversarial examples only (``adv_weight = 1``), with a one-cycle learning rate. Pair it
  with ``config.train.best_metric = "pgd_accuracy"`` (PGD accuracy on a held-out validation
  minibatch every epoch) to keep the snapshot before any catastrophic overfitting.

Learnable noise scales (:class:`smoothjax.noise.NoiseScale`: PNI's ``alpha``, CNI's ``alpha_d``
and ``F``) train with the other parameters. Weight decay is applied per group: the ordinary
weights get ``optim.weight_decay``; PNI/CNI ``alpha`` get ``optim.alpha_decay`` (0: PNI excludes
them from weight decay); CNI's ``F`` gets ``optim.factor_decay`` (the later CNI code's "noise
decay", an L2 penalty: weight decay ``lambda`` is the gradient of ``lambda/2 ||F||^2``).

Optimisation follows the reference: gradients are clipped to a global norm
(``optim.clip_norm``, 0.05 in the reference), then weight decay is added (PyTorch's coupled
``weight_decay``), then SGD with Nesterov momentum under a piecewise-constant schedule
(``optim.milestones`` in epochs, ``optim.gamma``). Adam, RAdam, Lookahead and one-cycle / cosine
schedules are options.

The train step is one ``jax.jit``-compiled function with donated state, data-parallel over a
1-D device mesh ``('batch',)``: the batch is sharded, the state replicated; XLA inserts the
cross-device reductions (BatchNorm statistics, gradient means). Random numbers come from
``fold_in(train_key, step)`` and do not depend on the device count (threefry is
sharding-invariant), so 1 and N devices give the same result up to floating-point reduction
order, and a resumed run gives bit-for-bit the parameters of an uninterrupted one.

Example:
  >>> from train.configs import smoke                                 # doctest: +SKIP
  >>> final = train_and_evaluate(smoke.get_config(), "/tmp/smoke")      # doctest: +SKIP

References:
  Madry et al., Towards Deep Learning Models Resistant to Adversarial Attacks, ICLR 2018.
  Zhang et al., Theoretically Principled Trade-off between Robustness and Accuracy (TRADES),
  ICML 2019.
  He, Rakin & Fan, Parametric Noise Injection (PNI), CVPR 2019.
  Zheltonozhskii et al., Colored Noise Injection for Training Adversarially Robust Neural
  Networks, arXiv 2003.02188.
  Salman et al., Provably Robust Deep Learning via Adversarially Trained Smoothed Classifiers,
  NeurIPS 2019.
  Wong, Rice & Kolter, Fast is better than free: Revisiting adversarial training, ICLR 2020.
  Nemcovsky et al., Smoothed Inference for Improving Adversarial Robustness, arXiv 1911.07198.
"""

from smoothjax.training._config import BEST_METRICS, load_training_data, model_config_from
from smoothjax.training._loop import (NonFiniteLossError, TrainState, create_train_state,
                                      restore_checkpoint, save_checkpoint, train_and_evaluate)
from smoothjax.training._objectives import (ATTACKS, OBJECTIVES, Objective, adversarial_examples,
                                            forward, objective_loss)
from smoothjax.training._optim import (OPTIMIZERS, SCHEDULES, init_train_state, make_optimizer,
                                       make_schedule, param_labels)
from smoothjax.training._steps import (BATCH_AXIS, make_mesh, make_pgd_eval_step,
                                       make_train_step, replicate)

__all__ = [
    "OBJECTIVES",
    "ATTACKS",
    "OPTIMIZERS",
    "SCHEDULES",
    "BEST_METRICS",
    "BATCH_AXIS",
    "NonFiniteLossError",
    "Objective",
    "model_config_from",
    "param_labels",
    "make_schedule",
    "make_optimizer",
    "init_train_state",
    "make_mesh",
    "replicate",
    "forward",
    "adversarial_examples",
    "objective_loss",
    "make_train_step",
    "make_pgd_eval_step",
    "load_training_data",
    "TrainState",
    "create_train_state",
    "restore_checkpoint",
    "save_checkpoint",
    "train_and_evaluate",
]
