"""The common config layout of every preset (``get_config()`` returns the defaults).

Not a preset itself: training with it runs standard cross-entropy training of a clean
ResNet-20 with the reference's optimiser settings (400 epochs) on CIFAR-10 via tfds.

Layout (override any field on the command line: ``--config.optim.lr=0.05``):

* ``seed``: root seed; keys are ``fold_in(key(seed), i)``: 0 init, 1 train steps, 2 data
  order, 3 validation.
* ``init_from``: a checkpoint to start from (train workdir, orbax step directory, or PyTorch
  ``.pth``/``.th`` file); parameters are copied where path and shape agree (noise scales a
  plain checkpoint lacks keep their initial values). ``init_required``: the preset fine-tunes
  and refuses to start without ``init_from``.
* ``resume_from``: the train state of another run to continue in a fresh workdir (its workdir:
  the latest checkpoint, or one copied step directory ``checkpoints/<step>/``): model,
  optimiser state, step, data position and keys, so the run goes on as that run would have, bit
  for bit (the config must be the same; ``init_from`` is then not used). Ignored once the
  workdir has its own checkpoints.
* ``model``: ``arch`` (resnet20/32/44/56/110, wrn34_10, wrn28_4), ``num_classes`` (0: the
  dataset's), ``shortcut`` (A/B), ``noise`` (none, pni_w[:layer|channel|element], pni_a,
  cni_w, joined with +), ``input_sigma`` and ``sigma_space`` (Gaussian input noise the model
  carries, in training and evaluation: CNI-I+W), ``pni_granularity``, ``pni_alpha_init``,
  ``cni_rank``, ``cni_alpha_init``, ``cni_f_init``, ``cni_f_dist`` (how CNI's F starts:
  normal = independent N(0, cni_f_init^2) entries; constant = every entry cni_f_init, the
  reference's, whose coherent per-layer offset breaks eval-mode BatchNorm), ``normalization``
  (reference, akamaster, or MEAN_R,MEAN_G,MEAN_B,STD_R,STD_G,STD_B).
* ``data``: ``dataset`` (cifar10, cifar100, npz:PATH, folder:PATH - e.g. the JPEG tar
  ``folder:../shared/data/cifar10_jpeg75.tar`` - or synthetic[:N]), ``data_dir`` (tfds),
  ``cache_dir`` (decoded folder/tar images), ``validation_size`` (-1: the last 5,000 training
  images, or the last 10% of a smaller set; never the test split), ``batch_size``, ``augment``
  (random crop with 4-pixel padding + horizontal flip), ``train_limit`` (0: all).
* ``optim``: ``optimizer`` (sgd, adam, radam), ``lr``, ``momentum``, ``nesterov``, ``b1``,
  ``b2``, ``eps``, ``weight_decay``, ``decay_norm_and_bias``, ``alpha_decay`` (PNI alpha, CNI
  alpha_d; PNI: 0), ``factor_decay`` (CNI F, "noise decay"), ``clip_norm`` (global gradient
  norm; 0: off), ``schedule`` (piecewise, constant, onecycle, cosine), ``milestones`` (epochs),
  ``gamma``, ``warmup_epochs``, ``peak_fraction`` (one-cycle), ``lookahead_steps`` (0: off),
  ``lookahead_alpha``.
* ``objective``: ``name`` (standard, adversarial, trades, fast), ``attack`` (pgd, epgd,
  smoothadv, fgsm), ``eps``, ``steps``, ``step_size`` (pixel units; 0: 1.25 eps for fast AT and
  FGSM from a random start, eps for plain FGSM, eps/4 otherwise), ``samples`` (EPGD /
  SmoothAdv m), ``adv_weight`` (w), ``beta`` (TRADES), ``random_start``, ``fixed_noise``,
  ``attack_bn`` (BatchNorm mode while crafting: auto = train for fast AT as Wong et al., eval
  otherwise, and eval with train_bn=frozen; train; eval), ``train_bn`` (BatchNorm in the
  training passes: batch = batch statistics; frozen = the running statistics, never updated),
  ``noise_draws`` (noise draws per training pass: the batch splits into that many groups, each
  with its own noise draw, BatchNorm's statistics pooled over all of them; 1 = one draw per
  batch, the reference's; must divide data.batch_size).
* ``train``: ``epochs``, ``num_steps`` (> 0 overrides epochs), ``checkpoint_every_steps``,
  ``keep`` (last k checkpoints), ``eval_every_epochs``, ``val_n`` (noise draws of the smoothed
  validation accuracy, soft vote), ``val_limit`` (0: the whole validation split),
  ``eval_batch_size``, ``best_metric`` (accuracy, smoothed_accuracy, pgd_accuracy),
  ``val_pgd_examples`` / ``val_pgd_steps`` / ``val_pgd_step_size`` (PGD accuracy on a
  held-out validation minibatch), ``keep_worst`` (also keep the lowest-accuracy snapshot
  under ``worst/``), ``num_devices`` (0: all local devices), ``progress``, ``log_every_steps``,
  ``tensorboard``.
* ``debug``: ``nan_at_step`` (inject a NaN loss at that step; -1: off), ``sleep_per_step``.
"""

import pathlib

import ml_collections

REPO = pathlib.Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"


def shared_data(name: str) -> pathlib.Path:
  """Path of a file under ``../shared/data`` (beside the checkout)."""
  return SHARED / "data" / name


def get_config() -> ml_collections.ConfigDict:
  """The defaults every preset starts from."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.init_from = ""
  c.resume_from = ""
  c.init_required = False

  c.model = ml_collections.ConfigDict(dict(
      arch="resnet20", num_classes=0, shortcut="B", noise="none", input_sigma=0.0,
      sigma_space="pixel", pni_granularity="element", pni_alpha_init=0.25, cni_rank=5,
      cni_alpha_init=0.0625, cni_f_init=0.01, cni_f_dist="normal", normalization="reference"))

  c.data = ml_collections.ConfigDict(dict(
      dataset="cifar10", data_dir="", cache_dir="", validation_size=-1, batch_size=256,
      augment=True, train_limit=0))

  # The reference's optimisation: SGD Nesterov 0.9, lr 0.1, wd 1e-4, clip 0.05, lr x0.1 at
  # epochs 100/200/300 of 400.
  c.optim = ml_collections.ConfigDict(dict(
      optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, b1=0.9, b2=0.999, eps=1e-8,
      weight_decay=1e-4, decay_norm_and_bias=True, alpha_decay=0.0, factor_decay=0.0,
      clip_norm=0.05, schedule="piecewise", milestones=(100, 200, 300), gamma=0.1,
      warmup_epochs=0.0, peak_fraction=0.4, lookahead_steps=0, lookahead_alpha=0.5))

  c.objective = ml_collections.ConfigDict(dict(
      name="standard", attack="pgd", eps=8 / 255, steps=7, step_size=0.0, samples=8,
      adv_weight=0.5, beta=6.0, random_start=True, fixed_noise=False, attack_bn="auto",
      train_bn="batch", noise_draws=1))

  c.train = ml_collections.ConfigDict(dict(
      epochs=400, num_steps=-1, checkpoint_every_steps=1000, keep=3, eval_every_epochs=1,
      val_n=8, val_limit=0, eval_batch_size=500, best_metric="accuracy", val_pgd_examples=0,
      val_pgd_steps=10, val_pgd_step_size=2 / 255, keep_worst=False, num_devices=0,
      progress=True, log_every_steps=20, tensorboard=True))

  c.debug = ml_collections.ConfigDict(dict(nan_at_step=-1, sleep_per_step=0.0))
  return c
