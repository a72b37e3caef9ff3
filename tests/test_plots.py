"""Tests of smoothjax.plots: the confidence-interval bands of the accuracy-vs-n plot."""

from matplotlib.collections import PolyCollection

from smoothjax import plots


def _rows(ci=True):
  out = []
  for n, acc in ((1, 0.5), (4, 0.6), (16, 0.7)):
    r = {"vote": "hard", "n": n, "sigma": 0.12, "sigma_space": "pixel", "attack": "none",
         "accuracy": acc, "accuracy_std": 0.01}
    if ci:
      r.update(accuracy_ci_low=acc - 0.05, accuracy_ci_high=acc + 0.04)
    out.append(r)
  return out


def test_accuracy_vs_n_draws_the_confidence_band(tmp_path, monkeypatch):
  figs = []
  real_save = plots._save
  monkeypatch.setattr(plots, "_save", lambda fig, path: (figs.append(fig), real_save(fig, path)))
  plots.plot_accuracy_vs_n(_rows(), tmp_path / "a.png", vote="hard")
  bands = [c for c in figs[-1].axes[0].collections if isinstance(c, PolyCollection)]
  assert len(bands) == 1
  ys = bands[0].get_paths()[0].vertices[:, 1]
  assert min(ys) == 45.0 and abs(max(ys) - 74.0) < 1e-9  # percent: 50 - 5 .. 70 + 4
  assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
  # records without intervals (older results): no band, still a plot
  plots.plot_accuracy_vs_n(_rows(ci=False), tmp_path / "b.png", vote="hard")
  assert not [c for c in figs[-1].axes[0].collections if isinstance(c, PolyCollection)]


def _bands(fig):
  return [c for c in fig.axes[0].collections if isinstance(c, PolyCollection)]


def _capture(monkeypatch):
  figs = []
  real_save = plots._save
  monkeypatch.setattr(plots, "_save", lambda fig, path: (figs.append(fig), real_save(fig, path)))
  return figs


def test_accuracy_vs_sigma_draws_the_confidence_band(tmp_path, monkeypatch):
  figs = _capture(monkeypatch)
  rows = [dict(r, sigma=s, n=16) for s, r in zip((0.0, 0.12, 0.25), _rows())]
  plots.plot_accuracy_vs_sigma(rows, tmp_path / "s.png")
  (band,) = _bands(figs[-1])
  ys = band.get_paths()[0].vertices[:, 1]
  assert min(ys) == 45.0 and abs(max(ys) - 74.0) < 1e-9


def test_certified_accuracy_band_is_clopper_pearson(tmp_path, monkeypatch):
  from scipy import stats as st
  figs = _capture(monkeypatch)
  radius = [0.0, 0.1, 0.3, 0.5, 0.5, 0.7, 0.2, 0.9, 0.0, 0.4]
  correct = [0, 1, 1, 1, 0, 1, 1, 1, 1, 1]
  plots.plot_certified_accuracy({0.25: (radius, correct)}, tmp_path / "c.png")
  (band,) = _bands(figs[-1])
  ys = band.get_paths()[0].vertices[:, 1]
  # At radius 0: 8 of 10 certified-correct; the exact 95% Clopper-Pearson bounds.
  low, high = st.beta.ppf(0.025, 8, 3), st.beta.ppf(0.975, 9, 2)
  assert abs(ys[1] - 100 * low) < 1e-6 and abs(max(ys) - 100 * high) < 1e-6


def test_attack_vs_compute_rows_carry_intervals_and_bands(tmp_path, monkeypatch):
  import jax.numpy as jnp
  import numpy as np

  from smoothjax import attacks, stats
  figs = _capture(monkeypatch)
  w = jnp.asarray(np.random.RandomState(0).randn(12, 3).astype(np.float32))

  def logits_fn(x, key):
    del key
    return x.reshape(x.shape[0], -1) @ w

  x = np.random.RandomState(1).rand(8, 2, 2, 3).astype(np.float32)
  y = np.asarray(logits_fn(x, None)).argmax(-1)

  def accuracy_fn(xa):
    c = np.asarray(logits_fn(xa, None)).argmax(-1) == y
    return {"n=1": stats.accuracy_ci(c, block_ids=np.arange(len(c)))}

  rows = attacks.attack_vs_compute(logits_fn, x, y, key=0, eps=0.05, budgets=[(1, 1), (2, 1)],
                                   attacks=("pgd",), accuracy_fn=accuracy_fn)
  assert all(r["accuracy_ci_low"] <= r["accuracy"] <= r["accuracy_ci_high"] for r in rows)
  assert rows[0]["accuracy_ci_method"] == "clopper_pearson"
  plots.plot_attack_vs_compute(rows, tmp_path / "k.png")
  assert len(_bands(figs[-1])) == 1
