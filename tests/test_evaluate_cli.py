"""Tests of ``python -m evaluate`` (README, "Evaluation"): records, outputs, resume, bad input."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from smoothjax import checkpoints, evaluation, models, smoothing

import evaluate.__main__ as cli

REPO = pathlib.Path(__file__).resolve().parents[1]
FIELDS = ("vote", "n", "sigma", "sigma_space", "attack", "eps", "steps", "attack_samples",
          "accuracy", "accuracy_std", "top5", "repeats", "num_images", "seed", "checkpoint")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """A saved ResNet-20 (random weights, no noise) and an npz of 6 test images."""
  root = tmp_path_factory.mktemp("evalcli")
  model = models.build_model("resnet20", key=0)
  ck = root / "ckpt"
  checkpoints.save_model(ck, model)
  rng = np.random.RandomState(0)
  x = rng.randint(0, 256, (6, 32, 32, 3)).astype(np.uint8)
  logits = np.asarray(model(x.astype(np.float32) / 255, noise=False))
  # labels: the model's own prediction for 4 images, wrong for 2 (accuracy 4/6 at sigma=0)
  y = logits.argmax(-1)
  y[4:] = (y[4:] + 1) % 10
  npz = root / "tiny.npz"
  np.savez(npz, x_test=x, y_test=y.astype(np.int64))
  return {"ckpt": str(ck), "data": f"npz:{npz}", "model": model, "x": x, "y": y}


def _run(args, **kw):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-m", "evaluate", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600, **kw)


def test_run_writes_records_plots_certify_and_resumes(tiny, tmp_path):
  wd = tmp_path / "wd"
  args = [f"--checkpoint={tiny['ckpt']}", f"--dataset={tiny['data']}", "--sigma=0,1/8",
          "--n=1,2,4", "--vote=hard,soft", "--repeats=2", "--certify", "--n0=4",
          "--certify_n=32", "--alpha=0.01", "--progress=false", f"--workdir={wd}"]
  r = _run(args)
  assert r.returncode == 0, r.stderr
  recs = json.loads((wd / "results.json").read_text())
  clean = [x for x in recs if x["vote"] != "certify"]
  assert len(clean) == 2 * 2 * 3  # sigma x vote x n
  for rec in recs:
    assert set(FIELDS) <= set(rec), rec
    assert rec["checkpoint"] == tiny["ckpt"] and rec["num_images"] == 6 and rec["seed"] == 0
  for rec in clean:
    assert rec["attack"] == "none" and rec["eps"] == 0 and rec["steps"] == 0
    assert rec["repeats"] == 2 and rec["sigma_space"] == "pixel"
    assert 0 <= rec["accuracy"] <= 1 and 0 <= rec["top5"] <= 1
  at0 = [x for x in clean if x["sigma"] == 0]
  assert all(x["accuracy"] == pytest.approx(4 / 6) and x["accuracy_std"] == 0 for x in at0)
  assert {x["sigma"] for x in clean} == {0.0, 0.125}
  # sigma = 1/8 hard votes at n = 4 vs the library with the documented keys
  x = tiny["x"].astype(np.float32) / 255
  accs = []
  for rep in range(2):
    k = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(jax.random.key(0), 0), rep), 0)
    v = smoothing.sample_votes(k, tiny["model"], x, sigma=0.125, prefixes=(1, 2, 4),
                               votes=("hard",))
    accs.append(v.accuracy("hard", tiny["y"])[2])
  rec = [x for x in clean if x["sigma"] == 0.125 and x["vote"] == "hard" and x["n"] == 4][0]
  assert rec["accuracy"] == pytest.approx(np.mean(accs))
  assert rec["accuracy_std"] == pytest.approx(np.std(accs, ddof=1))
  rec_h4 = rec
  # certification rows at the contract radii, and the per-image tsv
  cert = [x for x in recs if x["vote"] == "certify"]
  assert {0, 0.125, 0.25, 0.5, 0.75, 1.0} <= {x["radius"] for x in cert}
  assert all(x["sigma"] == 0.125 and x["n"] == 32 and x["n0"] == 4 and x["alpha"] == 0.01
             and x["top5"] is None and 0 <= x["abstain"] <= 1 for x in cert)
  tsv = (wd / "certify.tsv").read_text().splitlines()
  assert tsv[0].split("\t")[:5] == ["index", "label", "predict", "radius", "correct"]
  assert len(tsv) == 7
  csv_lines = (wd / "results.csv").read_text().splitlines()
  assert len(csv_lines) == len(recs) + 1 and csv_lines[0].startswith(",".join(FIELDS))
  for name in ("accuracy_vs_n_hard", "accuracy_vs_n_soft", "accuracy_vs_sigma",
               "certified_accuracy"):
    assert (wd / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
  # resume: drop one finished point; the rerun recomputes only that one
  pdir = next((wd / "points").iterdir())
  pts = sorted(pdir.glob("sigma_*.json"))
  assert len(pts) == 4
  pts[-1].unlink()
  mtimes = {p: p.stat().st_mtime_ns for p in pts[:-1]}
  r2 = _run(args)
  assert r2.returncode == 0, r2.stderr
  assert "resumed: 4 finished point(s)" in r2.stderr  # 3 sigma x repeat points + certify
  assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
  assert pts[-1].exists()
  assert json.loads((wd / "results.json").read_text()) == recs
  assert not list(wd.rglob("*.tmp*"))
  # confidence intervals in every record (a model without weight noise: blocks of one image)
  for rec in recs:
    assert {"accuracy_ci_low", "accuracy_ci_high", "accuracy_ci_method", "noise_block",
            "smoothjax_version", "git_commit"} <= set(rec), rec
    assert rec["noise_block"] == 256 and rec["accuracy_ci_method"] != "unavailable"
    assert rec["accuracy_ci_low"] <= rec["accuracy"] + 1e-12 <= rec["accuracy_ci_high"] + 2e-12
    assert 0 <= rec["accuracy_ci_low"] and rec["accuracy_ci_high"] <= 1
  assert "accuracy_ci_low" in csv_lines[0]
  # provenance beside the results: versions and the command line
  prov = json.loads((wd / "provenance.json").read_text())
  assert prov["packages"]["jax"] == jax.__version__
  assert f"--workdir={wd}" in prov["argv"] and "--n=1,2,4" in prov["command"]
  assert "version" in prov["smoothjax"] and "commit" in prov["smoothjax"]
  # per-image correctness is kept: paired comparison of two votes of the same samples
  correct, blocks = evaluation.load_correct(wd, sigma=0.125, vote="hard", n=4)
  assert correct.shape == (2, 6) and blocks.tolist() == list(range(6))
  assert correct.mean() == pytest.approx(rec_h4["accuracy"])
  d = evaluation.paired_difference(wd, sigma=0.125, a=("hard", 4), b=("soft", 4))
  assert -1 <= d.diff <= 1


def test_fingerprint_follows_the_weights_not_the_checkpoint_path(tiny, tmp_path):
  """A copied checkpoint (new path, new mtime, e.g. a fresh clone) resumes the same points;
  changed weights get a new fingerprint, so stale points are never reused."""
  import shutil  # pylint: disable=import-outside-toplevel

  def fingerprint(ck):
    s = evaluation.EvalSettings(checkpoint=str(ck), dataset=tiny["data"], sigmas=(0.0,), ns=(1,),
                                progress=False, workdir=str(tmp_path / "wd"))
    return evaluation.prepare(s).fingerprint

  copy = tmp_path / "copied" / "ckpt"
  shutil.copytree(tiny["ckpt"], copy, copy_function=shutil.copy)  # fresh mtimes
  os.utime(copy, (1, 1))
  assert fingerprint(copy) == fingerprint(tiny["ckpt"])
  changed = models.build_model("resnet20", key=1)
  checkpoints.save_model(tmp_path / "other", changed)
  assert fingerprint(tmp_path / "other") != fingerprint(tiny["ckpt"])


def test_ci_blocks_follow_noise_blocks_and_craft_batches():
  """Weight noise: CI blocks = noise blocks, merged with the craft batches for attacked images."""
  from tiny_model import TinyLinear  # pylint: disable=import-outside-toplevel
  y = np.zeros(8, np.int64)
  x = np.zeros((8, 4, 4, 3), np.uint8)
  s = evaluation.EvalSettings(checkpoint="c", noise_block=2, batch_size=4, attack="pgd")
  p = evaluation.Prepared(s, TinyLinear(weight_noise=0.3), {}, x, y, 4)
  assert evaluation.ci_blocks(p, "clean").tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
  assert evaluation.ci_blocks(p, "adv").tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
  p0 = evaluation.Prepared(dataclasses.replace(s, noise_block=0), TinyLinear(weight_noise=0.3),
                           {}, x, y, 4)
  assert set(evaluation.ci_blocks(p0).tolist()) == {0}
  # input noise only: independent images
  pi = evaluation.Prepared(s, TinyLinear(), {}, x, y, 4)
  assert evaluation.ci_blocks(pi, "adv").tolist() == list(range(8))
  with pytest.raises(evaluation.EvaluationError, match="noise_block"):
    evaluation.validate(dataclasses.replace(s, noise_block=-1))


BAD = [
    ("--sigma=-0.1", "sigma"),
    ("--n=1,0", "n:"),
    ("--n=1,two", "n:"),
    ("--vote=median", "vote"),
    ("--dataset=imagenet", "dataset"),
    ("--dataset=npz:/does/not/exist.npz", "dataset"),
    ("--attack=foo", "attack"),
    ("--arch=resnet18", "arch"),
    ("--normalization=0.5,0.5,0.5", "normalization"),
    ("--checkpoint=/does/not/exist.pth", "checkpoint"),
    ("--eps=8/0", "eps"),
    ("--unknown_flag=1", "unknown_flag"),
    ("--nattack_n=-1", "nattack_n"),
    ("--nattack_confirm=-2", "nattack_confirm"),
]


@pytest.mark.parametrize("arg,word", BAD)
def test_bad_input_one_line_exit_2_nothing_written(tiny, tmp_path, capsys, arg, word):
  wd = tmp_path / "wd"
  argv = [f"--checkpoint={tiny['ckpt']}", f"--dataset={tiny['data']}", "--n=1",
          f"--workdir={wd}", "--progress=false", arg]
  with pytest.raises(SystemExit) if arg.startswith("--unknown") else _nullcontext() as exc:
    rc = cli.main(argv)
  if arg.startswith("--unknown"):
    rc = exc.value.code
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2
  assert len(err) == 1 and word in err[0], err
  assert not wd.exists()


class _nullcontext:
  def __enter__(self):
    return None

  def __exit__(self, *a):
    return False


def test_bad_input_via_subprocess(tiny, tmp_path):
  wd = tmp_path / "wd"
  r = _run([f"--checkpoint={tiny['ckpt']}", f"--dataset={tiny['data']}", "--sigma=-1",
            f"--workdir={wd}"])
  assert r.returncode == 2
  assert r.stderr.strip().count("\n") == 0 and "sigma" in r.stderr
  assert not wd.exists()


def test_attack_wiring_with_a_stub_attacks_module(tiny, tmp_path, monkeypatch):
  """The attack flags reach smoothjax.attacks.craft / run_sanity_checks as documented."""
  calls = {}

  def craft(name, logits_fn, x, y, *, key, eps, norm, steps, step_size, samples, restarts,
            source_logits_fn, smoothed_probs_fn, population, iterations, batch_size):
    calls["craft"] = dict(name=name, eps=eps, norm=norm, steps=steps, samples=samples)
    probs = np.asarray(smoothed_probs_fn(x, key))
    assert probs.shape == (len(x), 10)
    np.testing.assert_allclose(probs.sum(-1), 1, rtol=1e-5)
    assert logits_fn(x, key).shape == (len(x), 10)
    return np.clip(x + eps * np.sign(np.cos(np.arange(x.size))).reshape(x.shape), 0, 1)

  def run_sanity_checks(logits_fn, x, y, *, key, eps, steps, step_size, accuracy_fn,
                        source_logits_fn=None, smoothed_probs_fn=None, **kw):
    acc = accuracy_fn(x)
    calls["source"] = source_logits_fn is not None
    return [{"check": "stub_ok", "passed": True, "detail": f"acc={acc}"},
            {"check": "stub_bad", "passed": False, "detail": "always fails"}]

  stub = types.SimpleNamespace(craft=craft, run_sanity_checks=run_sanity_checks)
  monkeypatch.setattr(evaluation, "attacks", stub)
  logs = []
  s = evaluation.EvalSettings(checkpoint=tiny["ckpt"], dataset=tiny["data"], sigmas=(0.0,),
                              ns=(1, 8, 16), votes=("hard",), attack="pgd", eps=8 / 255,
                              steps=3, sanity_checks=True, workdir=str(tmp_path / "wd"),
                              progress=False, source_checkpoint=tiny["ckpt"])
  recs = evaluation.run(s, log=logs.append)
  assert calls["craft"] == dict(name="pgd", eps=8 / 255, norm="linf", steps=3, samples=1)
  assert calls["source"]  # --source_checkpoint feeds the checks' transfer test, not only transfer
  adv = [r for r in recs if r["attack"] == "pgd"]
  assert len(adv) == 3 and all(r["eps"] == 8 / 255 and r["steps"] == 3 and
                               r["attack_samples"] == 1 for r in adv)
  assert len([r for r in recs if r["attack"] == "none"]) == 3
  checks = json.loads((tmp_path / "wd" / "sanity_checks.json").read_text())
  assert [c["check"] for c in checks] == ["stub_ok", "stub_bad"]
  assert any("stub_bad" in m and "warning" in m for m in logs)
  # a source with neither --attack=transfer nor --sanity_checks would be ignored: an error
  with pytest.raises(evaluation.EvaluationError, match="source_checkpoint: used only by"):
    evaluation.validate(dataclasses.replace(s, sanity_checks=False))


@pytest.mark.slow
def test_siam_resnet20_clean_accuracy(siam_resnet20, lossless_npz, tmp_path):
  wd = tmp_path / "wd"
  r = _run([f"--checkpoint={siam_resnet20}", f"--dataset=npz:{lossless_npz}", "--sigma=0",
            "--n=1", "--limit=500", "--progress=false", f"--workdir={wd}"])
  assert r.returncode == 0, r.stderr
  recs = json.loads((wd / "results.json").read_text())
  hard = [x for x in recs if x["vote"] == "hard"][0]
  assert hard["num_images"] == 500 and hard["accuracy"] >= 0.90, hard


def test_weight_noise_evaluation_blocks_intervals_and_chunking(tmp_path):
  """A weight-noise model: block CIs, and records independent of --batch_size per noise_block."""
  from tiny_model import TinyLinear  # pylint: disable=import-outside-toplevel
  rng = np.random.RandomState(1)
  x = rng.randint(0, 256, (8, 4, 4, 3)).astype(np.uint8)
  model = TinyLinear(weight_noise=0.5, scale=0.5)
  y = np.asarray(model(x.astype(np.float32) / 255, noise=False)).argmax(-1)

  def records(name, **kw):
    s = evaluation.EvalSettings(checkpoint="tiny", sigmas=(0.1,), ns=(1, 4), votes=("hard",),
                                repeats=2, progress=False, workdir=str(tmp_path / name), **kw)
    p = evaluation.Prepared(s, model, {}, x, y, 4, fingerprint=name)
    return evaluation.run(p, log=lambda m: None)

  a = records("a", noise_block=2, batch_size=64)
  b = records("b", noise_block=2, batch_size=3)
  assert [r["accuracy"] for r in a] == [r["accuracy"] for r in b]
  for r in a:
    assert r["accuracy_ci_method"] == "block_beta" and r["noise_block"] == 2
    assert r["accuracy_ci_low"] <= r["accuracy"] <= r["accuracy_ci_high"]
  blocks = json.loads((tmp_path / "a" / "points" / "a" / "blocks.json").read_text())
  assert blocks["clean"] == [0, 0, 1, 1, 2, 2, 3, 3]
  # one shared draw (the reference's granularity): a single block, so the repeats fallback
  c = records("c", noise_block=0)
  assert all(r["accuracy_ci_method"] == "repeats" and r["noise_block"] == 0 for r in c)


def test_apgd_presets_fixed_noise_and_final_draws_settings():
  base = dict(checkpoint="c", workdir="w")
  s = evaluation.validate(evaluation.EvalSettings(attack="apgd_ce", **base))
  assert (s.apgd_preset, s.steps, s.attack_samples, s.restarts) == ("cpu", 20, 4, 1)
  s = evaluation.validate(evaluation.EvalSettings(attack="autoattack_rand", apgd_preset="rand",
                                                  **base))
  assert (s.steps, s.attack_samples) == (100, 20)
  s = evaluation.validate(evaluation.EvalSettings(attack="apgd_dlr", apgd_preset="rand",
                                                  steps=5, **base))
  assert (s.steps, s.attack_samples) == (5, 20)  # given flags win over the preset
  assert evaluation.validate(evaluation.EvalSettings(attack="smoothadv", **base)).fixed_noise
  assert not evaluation.validate(evaluation.EvalSettings(attack="pgd_s", **base)).fixed_noise
  for bad, word in ((dict(attack="pgd", fixed_noise=True), "fixed_noise"),
                    (dict(attack="apgd_ce", apgd_preset="huge"), "apgd_preset"),
                    (dict(attack="pgd", final_draws=0), "final_draws")):
    with pytest.raises(evaluation.EvaluationError, match=word):
      evaluation.validate(evaluation.EvalSettings(**bad, **base))


def test_apgd_ce_attack_with_final_draws(tiny, tmp_path):
  wd = tmp_path / "wd"
  rc = cli.main([f"--checkpoint={tiny['ckpt']}", f"--dataset={tiny['data']}", "--sigma=1/4",
                 "--n=1,4", "--vote=hard", "--attack=apgd_ce", "--steps=2",
                 "--attack_samples=1", "--final_draws=3", "--progress=false",
                 f"--workdir={wd}"])
  assert rc == 0
  recs = json.loads((wd / "results.json").read_text())
  adv = [r for r in recs if r["attack"] == "apgd_ce"]
  assert len(adv) == 2
  for r in adv:
    assert set(FIELDS) <= set(r)
    assert (r["apgd_preset"], r["steps"], r["attack_samples"], r["eot_samples"],
            r["restarts"], r["final_draws"]) == ("cpu", 2, 1, 1, 1, 3)
    assert 0 <= r["accuracy_all_draws"] <= r["accuracy"] <= 1
    assert r["accuracy_all_draws"] * 6 == round(r["accuracy_all_draws"] * 6)


def test_final_draws_hand_checked():
  # 3 images, labels 0, 1, 2; draw A right on all, draw B wrong on image 1.
  a = smoothing.VoteCounts({"soft": np.eye(3, dtype=np.float32)[None]}, (1,))
  b = smoothing.VoteCounts({"soft": np.eye(3, dtype=np.float32)[[0, 2, 2]][None]}, (1,))
  y = np.array([0, 1, 2])
  got = evaluation._draws_summary([a, b], y)["soft"]
  assert got["accuracy"] == [pytest.approx(5 / 6)]  # the mean of 1 and 2/3
  assert got["accuracy_all_draws"] == [pytest.approx(2 / 3)]
  one = evaluation._draws_summary([b], y)["soft"]
  assert one["accuracy"] == one["accuracy_all_draws"] == [pytest.approx(2 / 3)]


def test_final_draws_on_a_noisy_model(tiny, tmp_path, monkeypatch):
  """R independent evaluations with the documented keys: accuracy is their mean,
  accuracy_all_draws the fraction right in all R (<= the mean, equal at R = 1)."""
  stub = types.SimpleNamespace(craft=lambda name, fn, x, y, **kw: np.array(x, np.float32))
  monkeypatch.setattr(evaluation, "attacks", stub)
  common = dict(checkpoint=tiny["ckpt"], dataset=tiny["data"], sigmas=(0.5,), ns=(1, 3),
                votes=("hard",), attack="pgd", progress=False)
  out = {}
  for r in (1, 4):
    recs = evaluation.run(evaluation.EvalSettings(final_draws=r, workdir=str(tmp_path / f"r{r}"),
                                                  **common), log=lambda m: None)
    out[r] = [x for x in recs if x["attack"] == "pgd"]
  for rec in out[1]:
    assert rec["accuracy_all_draws"] == rec["accuracy"] and rec["final_draws"] == 1
  x = tiny["x"].astype(np.float32) / 255
  rep = jax.random.fold_in(jax.random.fold_in(jax.random.key(0), 0), 0)
  keys = [jax.random.fold_in(rep, 2)] + [jax.random.fold_in(jax.random.fold_in(rep, 4), j)
                                         for j in (1, 2, 3)]
  correct = np.stack([smoothing.sample_votes(
      k, tiny["model"], x, sigma=0.5, prefixes=(1, 3), votes=("hard",),
      indices=np.arange(6, dtype=np.int32)).predictions("hard") == tiny["y"][None]
      for k in keys])
  assert 0 < correct.mean() < 1  # noisy: the draws disagree somewhere
  for k, rec in enumerate(out[4]):
    assert rec["accuracy"] == pytest.approx(correct[:, k].mean())
    assert rec["accuracy_all_draws"] == pytest.approx(correct[:, k].all(0).mean())
    assert rec["accuracy_all_draws"] <= rec["accuracy"]


def test_smoothadv_from_the_cli_uses_fixed_noise(tiny, tmp_path, monkeypatch):
  calls = []

  def craft(name, fn, x, y, **kw):
    calls.append((name, kw.get("fixed_noise", False)))
    return np.array(x, np.float32)

  monkeypatch.setattr(evaluation, "attacks", types.SimpleNamespace(craft=craft))
  for attack in ("smoothadv", "pgd_s"):
    recs = evaluation.run(evaluation.EvalSettings(
        checkpoint=tiny["ckpt"], dataset=tiny["data"], ns=(1,), votes=("soft",), attack=attack,
        progress=False, workdir=str(tmp_path / attack)), log=lambda m: None)
    adv = [r for r in recs if r["attack"] == attack]
    assert adv and all(r.get("fixed_noise", False) == (attack == "smoothadv") for r in adv)
  assert calls == [("smoothadv", True), ("pgd_s", False)]


def test_nattack_query_n_confirmation_and_budget_reach_craft_and_every_record(
    tiny, tmp_path, monkeypatch):
  """--nattack_n / --nattack_confirm reach the attack; every NAttack record states its budget."""
  calls = []

  def craft(name, fn, x, y, *, smoothed_probs_fn, population, iterations, **kw):
    calls.append(dict(name=name, n=smoothed_probs_fn.num_samples, population=population,
                      iterations=iterations, confirm=kw.get("confirm")))
    return np.array(x, np.float32)

  def run_sanity_checks(logits_fn, x, y, *, smoothed_probs_fn, nattack_population,
                        nattack_iterations, nattack_confirm, **kw):
    calls.append(dict(name="checks", n=smoothed_probs_fn.num_samples,
                      confirm=nattack_confirm))
    return [{"check": "white_box_vs_nattack", "passed": True, "detail": "",
             "nattack_population": nattack_population}]

  monkeypatch.setattr(evaluation, "attacks", types.SimpleNamespace(
      craft=craft, run_sanity_checks=run_sanity_checks))
  parser = cli.build_parser()
  helps = {a.dest: a.help for a in parser._actions}
  for flag in ("nattack_population", "nattack_iterations"):
    assert "100 x 100" in helps[flag] and "300 x 500" in helps[flag], helps[flag]
  base = [f"--checkpoint={tiny['ckpt']}", f"--dataset={tiny['data']}", "--vote=hard",
          "--attack=nattack", "--progress=false"]
  cases = [  # (flags, expected query n, population, iterations, confirm, Li et al.'s budget)
      (["--n=1,4,16"], 16, 100, 100, 8, False),  # 0 = auto: the smallest n >= 8
      (["--n=1,4"], 4, 100, 100, 8, False),  # none >= 8: the largest
      (["--n=1,16", "--nattack_n=2", "--nattack_confirm=0", "--nattack_population=300",
        "--nattack_iterations=500", "--sanity_checks"], 2, 300, 500, 0, True),
  ]
  for i, (flags, n, pop, its, confirm, li) in enumerate(cases):
    calls.clear()
    args = parser.parse_args(base + flags + [f"--workdir={tmp_path / str(i)}"])
    recs = evaluation.run(cli.settings_from_args(args), log=lambda m: None)
    assert calls[0] == dict(name="nattack", n=n, population=pop, iterations=its,
                            confirm=confirm)
    want = {"attack_samples": n, "steps": its, "nattack_n": n, "nattack_population": pop,
            "nattack_iterations": its, "nattack_confirm": confirm, "nattack_li2019_budget": li}
    adv = [r for r in recs if r["attack"] == "nattack"]
    assert adv and all({k: r[k] for k in want} == want for r in adv), adv[0]
    # attacked rows have intervals too (a noise-free model: the exact Clopper-Pearson one)
    assert all(r["accuracy_ci_method"] == "clopper_pearson" for r in adv), adv[0]
    correct, _ = evaluation.load_correct(tmp_path / str(i), sigma=0.0, vote="hard", n=1,
                                         kind="adv")
    # the stub leaves the images clean, and the model is right on the first 4 (fixture)
    assert correct.tolist() == [[True] * 4 + [False] * 2]
    if "--sanity_checks" in flags:
      assert calls[1] == dict(name="checks", n=n, confirm=confirm)
      checks = json.loads((tmp_path / str(i) / "sanity_checks.json").read_text())
      assert {k: checks[0][k] for k in want if k.startswith("nattack")} == {
          k: v for k, v in want.items() if k.startswith("nattack")}


def test_a_model_with_input_noise_and_no_sigma_flag_gets_one_note(tiny, tmp_path, capsys):
  """--sigma replaces the model's own input noise and defaults to 0: without --sigma a model
  that carries input noise runs without it, and evaluate says so in one stderr line."""
  from smoothjax import noise as noise_lib

  model = models.build_model("resnet20", key=0,
                             noise=noise_lib.NoiseConfig(input_sigma=0.05))
  ck = tmp_path / "noisy_input"
  checkpoints.save_model(ck, model)
  base = [f"--checkpoint={ck}", f"--dataset={tiny['data']}", "--n=1", "--progress=false"]
  assert cli.main(base + [f"--workdir={tmp_path / 'a'}"]) == 0
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ["evaluate: note: the model carries Gaussian input noise σ=0.05 (pixel); "
                 "--sigma (default 0) replaces it, so this run has none: pass --sigma=0.05 "
                 "to keep it"]
  assert cli.main(base + ["--sigma=0.05", f"--workdir={tmp_path / 'b'}"]) == 0
  assert "note" not in capsys.readouterr().err
  assert cli.main([f"--checkpoint={tiny['ckpt']}", f"--dataset={tiny['data']}", "--n=1",
                   "--progress=false", f"--workdir={tmp_path / 'c'}"]) == 0
  assert "note" not in capsys.readouterr().err
