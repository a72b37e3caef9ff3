"""Tests of smoothjax.smoothing: votes, prefix counts, chunking / device invariance, statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from smoothjax import models, smoothing
from tiny_model import TinyLinear, images as _images


def _mesh1():
  return smoothing.sample_mesh(jax.devices()[:1])


# ----------------------------------------------------------------------------- votes vs NumPy


def _np_votes(logits):
  """Per-sample contributions of every vote, written directly in NumPy."""
  s, b, c = logits.shape
  out = {}
  hard = np.zeros_like(logits)
  for i in range(s):
    for j in range(b):
      hard[i, j, int(np.argmax(logits[i, j]))] = 1  # first max = lowest class id
  out["hard"] = hard
  e = np.exp(logits - logits.max(-1, keepdims=True))
  out["soft"] = e / e.sum(-1, keepdims=True)
  out["soft_logits"] = logits
  w = np.zeros_like(logits)
  top2 = np.zeros_like(logits)
  for i in range(s):
    for j in range(b):
      # rank 0 = largest; ties -> lower class id first
      order = sorted(range(c), key=lambda k: (-logits[i, j, k], k))
      for r, k in enumerate(order):
        w[i, j, k] = 2.0 ** -r
        top2[i, j, k] = float(r < 2)
  out["weighted"] = w
  out["weighted_top2"] = top2
  return out


def test_votes_match_numpy_on_fixed_logits():
  rng = np.random.RandomState(0)
  logits = np.round(rng.randn(6, 5, 7) * 2).astype(np.float32)  # rounding creates ties
  ref = _np_votes(logits)
  for name, want in ref.items():
    got = np.asarray(smoothing.get_vote(name).fn(jnp.asarray(logits)))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=name)


def test_user_weight_function_and_unknown_vote():
  logits = jnp.asarray([[3.0, 1.0, 2.0]])
  v = smoothing.weighted_vote(lambda r: 10.0 - r, name="lin")
  np.testing.assert_allclose(np.asarray(v.fn(logits)), [[10.0, 8.0, 9.0]])
  with pytest.raises(ValueError, match="unknown vote"):
    smoothing.get_vote("median")


def test_predictions_and_top5_tie_breaking():
  votes = np.array([[[0, 3, 3, 1, 0, 0, 2]]])  # (K=1, N=1, C=7)
  assert smoothing.vote_predictions(votes)[0, 0] == 1  # tie 1 vs 2 -> lowest id
  # Float vote sums: ranking 1, 2, 6, 3, 0, 4, 5 (ties broken by class id).
  soft = votes.astype(np.float32)
  assert smoothing.topk_correct(soft, np.array([0]), k=5)[0, 0]
  assert not smoothing.topk_correct(soft, np.array([4]), k=5)[0, 0]


def test_hard_top5_is_rank_by_rank_and_ignores_unvoted_low_ids():
  """The hard vote's top-5 comes from per-rank histograms, not from argmax counts: at n = 1 a
  label that no sample voted for is not "top-5 correct" because its class id is low."""
  # One sample of C = 10 ranking 7, 9, 8, 6, 5 first: labels 0..3 got no vote at any rank.
  logits = jnp.asarray([[0.0, 0.1, 0.2, 0.3, 0.4, 5.0, 6.0, 9.0, 7.0, 8.0]])
  model = TinyLinear(num_classes=10)
  counts = np.asarray(smoothing.hard_vote.fn(logits))[None]  # (P=1, N=1, C)
  ranks = np.asarray(smoothing.rank_contributions(logits, k=5))[None]  # (P=1, N=1, 5, C)
  v = smoothing.VoteCounts({"hard": counts}, (1,), {"hard": ranks})
  np.testing.assert_array_equal(ranks[..., 0, :], counts)
  for label, want in ((0, 0.0), (3, 0.0), (5, 1.0), (6, 1.0), (9, 1.0), (4, 0.0)):
    assert v.top5("hard", np.array([label]))[0] == want, label
  with pytest.raises(ValueError, match="per-rank"):
    smoothing.VoteCounts({"hard": counts}, (1,)).top5("hard", np.array([0]))
  # sample_votes counts the histograms; rank 0 is the hard counts; sample_counts skips them.
  x = _images(5)
  out = smoothing.sample_votes(0, model, x, sigma=0.3, prefixes=(1, 3), votes=("hard", "soft"))
  r = out.rank_counts["hard"]
  assert r.shape == (2, 5, 5, 10) and r.dtype == np.int32
  np.testing.assert_array_equal(r[..., 0, :], out["hard"])
  want = np.broadcast_to(np.array([1, 3])[:, None, None], (2, 5, 5))
  np.testing.assert_array_equal(r.sum(-1), want)  # every sample fills every rank once
  plain = smoothing.sample_votes(0, model, x, sigma=0.3, prefixes=(1, 3), votes=("hard",),
                                 hard_ranks=False)
  np.testing.assert_array_equal(plain["hard"], out["hard"])
  assert plain.rank_counts == {}


def test_hard_top5_equals_the_base_models_at_n1_on_resnet20(siam_resnet20, lossless_npz):
  """Reference ResNet-20, sigma = 0.06 pixel, 200 images, n = 1: the hard vote's top-5 is the
  base model's top-5 on the one noisy input (which the soft / weighted votes also give)."""
  from smoothjax import checkpoints  # pylint: disable=import-outside-toplevel
  data = np.load(lossless_npz)
  x = data["x_test"][:200].astype(np.float32) / 255.0
  y = data["y_test"][:200]
  model, _ = checkpoints.load_model(siam_resnet20)
  key = jax.random.key(11)
  out = smoothing.sample_votes(key, model, x, sigma=0.06, prefixes=(1,),
                               votes=("hard", "soft", "weighted"), batch_size=200)
  graphdef, state = nnx.split(model)
  base = np.asarray(smoothing.noisy_logits(graphdef, state, x, jax.random.fold_in(key, 0),
                                           np.arange(200), 0.06))
  base_top5 = np.argsort(-base, -1, kind="stable")[:, :5]
  base_ok = np.any(base_top5 == y[:, None], -1)
  assert 0.9 < base_ok.mean() < 1  # some labels outside the base top-5
  assert out.top5("hard", y)[0] == pytest.approx(base_ok.mean())
  for vote in ("soft", "weighted"):
    assert out.top5(vote, y)[0] == pytest.approx(base_ok.mean())
  np.testing.assert_array_equal(
      np.asarray(smoothing.hard_topk_from_ranks(jnp.asarray(out.rank_counts["hard"][0]))),
      base_top5)
  # The old rule (the 5 classes with the most argmax counts) is the argmax plus the 4 lowest
  # unvoted class ids at n = 1: right for low-id labels only, far from the base top-5.
  old = smoothing.topk_correct(out["hard"], y, k=5)[0]
  assert abs(old.mean() - base_ok.mean()) > 0.1


# ------------------------------------------------------------------- prefix counts vs direct


def _direct(model, x, key, n, prefixes, sigma, indices=None):
  """Per-sample logits from noisy_logits (sample s: fold_in(key, s)), then NumPy prefix sums."""
  graphdef, state = nnx.split(model)
  idx = np.arange(len(x)) if indices is None else indices
  f = jax.jit(lambda k: smoothing.noisy_logits(graphdef, state, x, k, idx, sigma))
  logits = np.stack([np.asarray(f(jax.random.fold_in(key, s))) for s in range(n)])
  per = _np_votes(logits)
  return {name: np.stack([c[:p].sum(0) for p in prefixes]) for name, c in per.items()}


@pytest.mark.parametrize("weight_noise", [0.0, 0.3])
def test_prefix_votes_match_direct_computation(weight_noise):
  model = TinyLinear(weight_noise=weight_noise, scale=0.5)
  x = _images(5)
  key = jax.random.key(3)
  prefixes = (1, 2, 3, 5, 8, 13)
  votes = ("hard", "soft", "soft_logits", "weighted", "weighted_top2")
  # noise_block=0: one model-noise draw fold_in(key, s) per sample, as _direct computes it.
  got = smoothing.sample_votes(key, model, x, sigma=0.3, prefixes=prefixes, votes=votes,
                               batch_size=4, steps_per_call=2, mesh=_mesh1(), noise_block=0)
  want = _direct(model, x, key, 13, prefixes, 0.3)
  assert got.prefixes == prefixes
  for name in votes:
    assert got[name].shape == (len(prefixes), 5, 4)
    np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-4, err_msg=name)
  assert got["hard"].dtype == np.int32
  np.testing.assert_array_equal(got["hard"].sum(-1), np.array(prefixes)[:, None] + 0 * x[:, 0,
                                                                                          0, 0])
  # the votes actually vary across samples (a meaningful test)
  assert (got["hard"][-1].max(-1) < 13).any()


@pytest.mark.parametrize("weight_noise", [0.0, 0.3])
def test_chunked_equals_unchunked_and_one_equals_eight_devices(weight_noise):
  model = TinyLinear(weight_noise=weight_noise, scale=0.5)
  x = _images(7)
  key = jax.random.key(11)
  prefixes = (1, 4, 10, 21)
  ref = smoothing.sample_votes(key, model, x, sigma=0.5, prefixes=prefixes, batch_size=64,
                               steps_per_call=32, mesh=_mesh1())
  variants = [
      dict(batch_size=3, steps_per_call=1, mesh=_mesh1()),  # image chunks of 3, 1 sample/call
      dict(batch_size=2, steps_per_call=3),  # 8 devices, images chunked
      dict(batch_size=64, steps_per_call=5),  # 8 devices, unchunked images
  ]
  assert len(jax.devices()) == 8
  for kw in variants:
    got = smoothing.sample_votes(key, model, x, sigma=0.5, prefixes=prefixes, **kw)
    np.testing.assert_array_equal(got["hard"], ref["hard"], err_msg=str(kw))
    for name in ("soft", "soft_logits", "weighted"):
      np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-4,
                                 err_msg=f"{name} {kw}")


@pytest.mark.parametrize("noise_block", [0, 2, 3])
def test_noise_blocks_independent_of_chunking_and_devices(noise_block):
  model = TinyLinear(weight_noise=0.3, scale=0.5)
  x = _images(7)
  key = jax.random.key(12)
  prefixes = (1, 4, 10)
  kw = dict(sigma=0.5, prefixes=prefixes, noise_block=noise_block)
  ref = smoothing.sample_votes(key, model, x, batch_size=64, steps_per_call=32,
                               mesh=_mesh1(), **kw)
  for v in (dict(batch_size=1, steps_per_call=1, mesh=_mesh1()),
            dict(batch_size=2, steps_per_call=3), dict(batch_size=5, steps_per_call=2),
            dict(batch_size=64, steps_per_call=5)):
    got = smoothing.sample_votes(key, model, x, **kw, **v)
    np.testing.assert_array_equal(got["hard"], ref["hard"], err_msg=str(v))
    np.testing.assert_allclose(got["soft"], ref["soft"], rtol=1e-5, atol=1e-4, err_msg=str(v))
  # a subset (its global indices) sees the same draws as in the full run
  sub = smoothing.sample_votes(key, model, x[3:], indices=np.arange(3, 7), batch_size=2,
                               mesh=_mesh1(), **kw)
  np.testing.assert_array_equal(sub["hard"], ref["hard"][:, 3:])


def _weight_draws(model, noise_block, num=6):
  """The weight-noise draw each image saw in sample 0: ``logits(x_i) - clean logits(x_i)``.

  The tiny linear model without input noise gives ``x_i @ (w + eps)``; with one-hot-like images
  picking the same pixel, equal differences mean an equal draw.
  """
  x = np.zeros((num, 4, 4, 3), np.float32)
  x[:, 0, 0, 0] = 1.0  # identical images: any logit difference comes from the draw
  got = smoothing.sample_votes(jax.random.key(0), model, x, sigma=0.0, prefixes=(1,),
                               votes=("soft_logits",), batch_size=4, mesh=_mesh1(),
                               noise_block=noise_block)["soft_logits"][0]
  return got


def test_images_in_different_blocks_get_different_weight_draws():
  model = TinyLinear(weight_noise=0.5)
  d = _weight_draws(model, 2)
  np.testing.assert_allclose(d[0], d[1], rtol=1e-6)  # block 0
  np.testing.assert_allclose(d[2], d[3], rtol=1e-6)  # block 1
  np.testing.assert_allclose(d[4], d[5], rtol=1e-6)  # block 2
  assert np.abs(d[0] - d[2]).max() > 1e-3 and np.abs(d[2] - d[4]).max() > 1e-3
  # noise_block=0: the reference's single draw shared by every image (kept as an option)
  d0 = _weight_draws(model, 0)
  np.testing.assert_allclose(d0, np.broadcast_to(d0[:1], d0.shape), rtol=1e-6)
  # blocks of 1: every image its own draw
  d1 = _weight_draws(model, 1)
  assert len({tuple(np.round(r, 5)) for r in d1}) == len(d1)
  assert smoothing.noise_blocks(np.arange(5), 2).tolist() == [0, 0, 1, 1, 2]
  assert smoothing.noise_blocks(np.arange(3), 0).tolist() == [0, 0, 0]
  with pytest.raises(ValueError, match="noise_block"):
    smoothing.sample_votes(0, model, _images(2), sigma=0.1, num_samples=1, noise_block=-1)


def test_indices_select_the_noise_of_a_subset():
  model = TinyLinear(scale=0.5)
  x = _images(6)
  key = jax.random.key(5)
  full = smoothing.sample_counts(key, model, x, sigma=0.5, num_samples=9)
  sub = smoothing.sample_counts(key, model, x[3:], sigma=0.5, num_samples=9,
                                indices=np.arange(3, 6))
  np.testing.assert_array_equal(sub, full[3:])
  other = smoothing.sample_counts(jax.random.key(6), model, x, sigma=0.5, num_samples=9)
  assert not np.array_equal(other, full)


def test_noiseless_is_deterministic_shortcut():
  model = TinyLinear()
  x = _images(5)
  logits = np.asarray(model(jnp.asarray(x), noise=False))
  got = smoothing.sample_votes(0, model, x, sigma=0.0, prefixes=(1, 3, 100))
  want = np.eye(4, dtype=np.int32)[logits.argmax(-1)]
  np.testing.assert_array_equal(got["hard"], np.array([1, 3, 100])[:, None, None] * want)


def test_hard_counts_follow_the_gaussian_cdf():
  """Two classes, logit gap linear in the input: P(class 1) = Phi(m / s) exactly."""
  model = TinyLinear(num_classes=2, scale=0.3)
  x = _images(4, seed=1)
  sigma, n = 0.2, 4000
  counts = smoothing.sample_counts(jax.random.key(0), model, x, sigma=sigma, num_samples=n,
                                   batch_size=4096)
  w = np.asarray(model.w[...])
  b = np.asarray(model.b[...])
  std = np.asarray(model.config.std)
  xn = ((x - np.asarray(model.config.mean)) / std).reshape(4, -1)
  gap = xn @ (w[:, 1] - w[:, 0]) + b[1] - b[0]
  # pixel-space noise sigma -> normalised noise sigma / std_c per input
  s = sigma * np.sqrt(((w[:, 1] - w[:, 0]) ** 2 / np.tile(std, 16) ** 2).sum())
  p1 = stats.norm.cdf(gap / s)
  assert ((p1 > 0.05) & (p1 < 0.95)).sum() >= 2  # informative
  tol = 4.5 * np.sqrt(p1 * (1 - p1) / n) + 1e-3
  np.testing.assert_array_less(np.abs(counts[:, 1] / n - p1), tol)


def test_normalized_sigma_space_scales_noise_by_std():
  model = TinyLinear(scale=0.5)
  x = _images(3)
  std = np.asarray(model.config.std)
  graphdef, state = nnx.split(model)
  key = jax.random.key(0)
  a = smoothing.noisy_logits(graphdef, state, jnp.asarray(x), key, jnp.arange(3), 0.2,
                             sigma_space="normalized")
  # the same draw in pixel space with per-channel std 0.2 * std_c
  eta = np.stack([np.asarray(jax.random.normal(
      jax.random.fold_in(jax.random.fold_in(key, 0), i), (4, 4, 3))) for i in range(3)])
  b = model(jnp.asarray(x + 0.2 * std * eta), noise=False)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_probs_and_logits_fns_match_sampling():
  model = TinyLinear(weight_noise=0.2, scale=0.5)
  x = _images(5)
  key = jax.random.key(2)
  probs = jax.jit(smoothing.make_smoothed_probs_fn(model, sigma=0.4, num_samples=6))(x, key)
  # the attacks' functions draw the model noise once per call (per craft batch): noise_block=0
  counts = smoothing.sample_counts(key, model, x, sigma=0.4, num_samples=6, noise_block=0)
  np.testing.assert_allclose(np.asarray(probs), counts / 6, atol=1e-6)
  logits_fn = smoothing.make_logits_fn(model, sigma=0.4)
  graphdef, state = nnx.split(model)
  k = jax.random.fold_in(key, 4)
  np.testing.assert_allclose(
      np.asarray(logits_fn(jnp.asarray(x), k)),
      np.asarray(smoothing.noisy_logits(graphdef, state, jnp.asarray(x), k, jnp.arange(5), 0.4)),
      rtol=1e-6)
  g = jax.grad(lambda xx: logits_fn(xx, k)[:, 0].sum())(jnp.asarray(x))
  assert np.abs(np.asarray(g)).sum() > 0
  # pytrees: parameters and sigma are arguments of a jitted attack, not constants
  f = jax.jit(lambda fn, xx, kk: fn(xx, kk))
  a = f(smoothing.make_logits_fn(model, sigma=0.4), x, k)
  b = f(smoothing.make_logits_fn(model, sigma=0.3), x, k)
  assert f._cache_size() == 1 and not np.allclose(np.asarray(a), np.asarray(b))


def test_bad_arguments():
  model = TinyLinear()
  x = _images(2)
  with pytest.raises(ValueError, match="sigma"):
    smoothing.sample_votes(0, model, x, sigma=-0.1, num_samples=2)
  with pytest.raises(ValueError, match="positive integers"):
    smoothing.sample_votes(0, model, x, sigma=0.1, prefixes=(0, 2))
  with pytest.raises(ValueError, match="unknown vote"):
    smoothing.sample_votes(0, model, x, sigma=0.1, num_samples=2, votes=("max",))


@pytest.mark.slow
def test_resnet20_input_noise_matches_direct():
  """The real model, images x samples batched (no model noise), vs one forward per sample."""
  model = models.build_model("resnet20", key=0)
  x = np.random.RandomState(0).rand(3, 32, 32, 3).astype(np.float32)
  key = jax.random.key(1)
  got = smoothing.sample_votes(key, model, x, sigma=0.25, prefixes=(1, 3), batch_size=9,
                               votes=("soft_logits",), mesh=_mesh1())
  graphdef, state = nnx.split(model)
  f = jax.jit(lambda k: smoothing.noisy_logits(graphdef, state, x, k, np.arange(3), 0.25))
  logits = np.stack([np.asarray(f(jax.random.fold_in(key, s))) for s in range(3)])
  np.testing.assert_allclose(got["soft_logits"][1], logits.sum(0), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got["soft_logits"][0], logits[0], rtol=1e-4, atol=1e-4)


_MULTIHOST = r'''
import os, sys
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.pop("XLA_FLAGS", None)
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                           process_id=pid)
import numpy as np
from tiny_model import TinyLinear, images
from smoothjax import smoothing
assert jax.process_count() == 2 and len(jax.devices()) == 2
v = smoothing.sample_votes(jax.random.key(3), TinyLinear(weight_noise=0.3, scale=0.5), images(5),
                           sigma=0.3, prefixes=(1, 5, 13), votes=("hard",), batch_size=4,
                           steps_per_call=2)
np.save(out, v["hard"])
'''


@pytest.mark.slow
def test_two_processes_with_jax_distributed_match_one(tmp_path):
  """Multi-host path: 2 CPU processes (jax.distributed, gloo), one mesh over both."""
  import os
  import socket
  import subprocess
  import sys
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    port = sock.getsockname()[1]
  script = tmp_path / "mh.py"
  script.write_text(_MULTIHOST)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([repo, os.path.join(repo, "tests")]))
  procs = [subprocess.Popen([sys.executable, str(script), str(i), str(port),
                             str(tmp_path / f"h{i}.npy")], env=env, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
  want = smoothing.sample_votes(jax.random.key(3), TinyLinear(weight_noise=0.3, scale=0.5),
                                _images(5), sigma=0.3, prefixes=(1, 5, 13), votes=("hard",),
                                batch_size=4, steps_per_call=2, mesh=_mesh1())["hard"]
  for i in range(2):
    np.testing.assert_array_equal(np.load(tmp_path / f"h{i}.npy"), want)
