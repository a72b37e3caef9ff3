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
