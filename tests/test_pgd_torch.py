"""PGD against an independent PyTorch PGD on the same imported ResNet-20 and the same images.

The PyTorch side is written here like the usual (and the reference's) loop: uniform random start
in [-eps, eps], ``k`` steps ``x += a * sign(grad CE)``, projection onto the eps-ball and [0, 1].
Both sides use the SIAM reference ResNet-20 (tests/torch_reference.py loads the same state dict) on
the first 500 lossless CIFAR-10 test images; robust accuracies must agree within 2 points at
eps = 0.5/255, 2/255 and 8/255 (the random starts differ, so per-image results may too).
"""

import jax
import numpy as np
import pytest
from flax import nnx

from smoothjax import attacks

torch = pytest.importorskip("torch")
import torch_reference  # noqa: E402  (needs torch)

NUM_IMAGES = 500
STEPS = 7


def torch_pgd(model, x, y, *, eps, steps, step_size, generator):
  """Reference-style PGD in PyTorch (NCHW tensors in [0, 1])."""
  delta = (torch.rand(x.shape, generator=generator) * 2 - 1) * eps
  x_adv = (x + delta).clamp(0, 1)
  for _ in range(steps):
    x_adv = x_adv.detach().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(x_adv), y)
    (grad,) = torch.autograd.grad(loss, x_adv)
    x_adv = x_adv.detach() + step_size * grad.sign()
    x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
  return x_adv.detach()


@pytest.mark.slow
def test_pgd_robust_accuracy_matches_pytorch(siam_twins):
  x, y, tm = siam_twins.x, siam_twins.y, siam_twins.torch_model
  assert len(x) == NUM_IMAGES
  fn = attacks.model_logits_fn(*nnx.split(siam_twins.model))

  jit_logits = jax.jit(lambda xv: fn(xv, None))

  def jax_acc(xa):
    return float(np.mean(np.concatenate(
        [np.asarray(jit_logits(xa[i:i + 250])).argmax(1) for i in range(0, len(xa), 250)]) == y))

  xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  yt = torch.from_numpy(y)
  clean = jax_acc(x)
  assert clean > 0.88
  report = {}
  # 2/255 and 8/255 as asked; 0.5/255 leaves a robust accuracy far from 0, where a difference
  # in the attacks would show.
  for i, eps in enumerate((0.5 / 255, 2 / 255, 8 / 255)):
    xa = attacks.craft("pgd", fn, x, y, key=jax.random.key(i), eps=eps, steps=STEPS,
                       step_size=eps / 4, batch_size=250)
    assert np.abs(xa - x).max() <= eps + 1e-6 and xa.min() >= 0 and xa.max() <= 1
    acc_jax = jax_acc(xa)
    g = torch.Generator().manual_seed(i)
    preds = []
    for lo in range(0, NUM_IMAGES, 250):
      xta = torch_pgd(tm, xt[lo:lo + 250], yt[lo:lo + 250], eps=eps, steps=STEPS,
                      step_size=eps / 4, generator=g)
      with torch.no_grad():
        preds.append(tm(xta).argmax(1).numpy())
    acc_torch = float(np.mean(np.concatenate(preds) == y))
    # The JAX examples also fool the PyTorch model (same weights, so the same function).
    acc_cross = float(np.mean(torch_reference.logits_nhwc(tm, xa, 250).argmax(1) == y))
    report[eps] = (acc_jax, acc_torch, acc_cross)
    print(f"eps={eps:.5f}: clean {clean:.3f}  PGD-{STEPS} JAX {acc_jax:.3f}  "
          f"PyTorch {acc_torch:.3f}  JAX examples in PyTorch {acc_cross:.3f}")
    assert abs(acc_jax - acc_torch) <= 0.02, report
    assert abs(acc_cross - acc_jax) <= 0.005, report
  assert report[2 / 255][0] < clean - 0.3  # the attack works
  assert 0.1 < report[0.5 / 255][0] < clean - 0.1
