"""`python -m train`: overrides, kill-and-resume bit-for-bit, NaN guard, bad input."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from smoothjax import checkpoints
from smoothjax import metrics as metrics_lib

# ml_collections' config_flags loads config files with importlib's deprecated load_module().
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")

REPO = pathlib.Path(__file__).resolve().parents[1]
SMOKE = "train/configs/smoke.py"

# A tiny run: 200 generated images (180 train), batch 12, 15 steps, a checkpoint every 3 steps,
# no validation (keeps compilation to the train step alone).
TINY = [
    f"--config={SMOKE}",
    "--compilation_cache=",
    "--config.data.dataset=synthetic:200",
    "--config.data.batch_size=12",
    "--config.model.noise=pni_w",
    "--config.train.num_steps=15",
    "--config.train.checkpoint_every_steps=3",
    "--config.train.keep=2",
    "--config.train.eval_every_epochs=0",
    "--config.train.progress=False",
    "--config.train.num_devices=1",
]


def _run(args, cache, **kw):
  env = dict(os.environ)
  env.setdefault("JAX_PLATFORMS", "cpu")
  args = [*args, f"--compilation_cache={cache}"]
  return subprocess.Popen([sys.executable, "-m", "train", *args], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _params(workdir: pathlib.Path) -> dict:
  model, info = checkpoints.load_model(workdir / "checkpoints" / str(15))
  from flax import nnx
  from flax import traverse_util
  assert info["step"] == 15
  return {k: np.asarray(v) for k, v in
          traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model))).items()}


@pytest.mark.slow
def test_kill_and_resume_is_bit_exact(tmp_path):
  ref_dir, kill_dir = tmp_path / "uninterrupted", tmp_path / "killed"
  # The slowed copy (0.2 s per step) is killed right after its first checkpoint appears.
  # The uninterrupted run goes first and fills a compilation cache that the two others reuse
  # (same programs: the resumed run must not differ from the uninterrupted one anyway).
  cache = tmp_path / "jax_cache"
  ref = _run(TINY + [f"--workdir={ref_dir}"], cache)
  ref_out, ref_err = ref.communicate(timeout=300)
  assert ref.returncode == 0, ref_err
  # The end-of-run summary: best checkpoint (none: no validation here), latest, wall time, files.
  summary = [l for l in ref_out.splitlines() if l.startswith("[train] ")]
  assert summary[0].startswith("[train] training done in "), ref_out
  assert "[train] best checkpoint: none (no validation ran)" in summary
  assert f"[train] latest checkpoint: {ref_dir / 'checkpoints' / '15'} (step 15)" in summary
  assert any(f"config {ref_dir / 'config.json'}" in l and f"metrics {ref_dir / 'metrics.jsonl'}"
             in l for l in summary), summary
  victim = _run(TINY + [f"--workdir={kill_dir}", "--config.debug.sleep_per_step=0.2"], cache)
  deadline = time.time() + 240
  ckdir = kill_dir / "checkpoints"
  while time.time() < deadline and victim.poll() is None:
    steps = [p for p in ckdir.iterdir() if p.name.isdigit()] if ckdir.is_dir() else []
    if steps:
      break
    time.sleep(0.05)
  assert victim.poll() is None, "the run finished before it could be killed: " + (
      victim.stderr.read())
  time.sleep(0.3)  # somewhere after the first checkpoint (possibly while saving the next)
  victim.send_signal(signal.SIGKILL)
  victim.wait()
  killed_at = checkpoints.TrainCheckpointer(kill_dir, keep=2).latest_step()
  assert killed_at is not None and killed_at < 15

  resumed = _run(TINY + [f"--workdir={kill_dir}", "--config.debug.sleep_per_step=0.2"], cache)
  out, err = resumed.communicate(timeout=300)
  assert resumed.returncode == 0, err
  assert "resuming from" in err

  a, b = _params(ref_dir), _params(kill_dir)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg="/".join(map(str, k)))
  # metrics.jsonl stays one history: every logged step once.
  steps = [r["step"] for r in metrics_lib.read_metrics(kill_dir) if r["split"] == "train"]
  assert steps == sorted(set(steps)) and steps[-1] == 15
  # The meta tells `python -m evaluate` how to rebuild the model.
  cfg = json.loads((kill_dir / "config.json").read_text())
  assert cfg["model"]["noise"] == "pni_w"


def test_nan_loss_exits_1_with_the_message(tmp_path, capsys, monkeypatch):
  from smoothjax import training
  from train.__main__ import main

  def boom(config, workdir):
    raise training.NonFiniteLossError(f"non-finite loss at step 7 ({workdir})")

  monkeypatch.setattr(training, "train_and_evaluate", boom)
  rc = main([f"--config={SMOKE}", f"--workdir={tmp_path}", "--compilation_cache="])
  err = capsys.readouterr().err
  assert rc == 1
  assert err.strip() == f"python -m train: non-finite loss at step 7 ({tmp_path})"


def test_overrides_reach_the_config(tmp_path):
  from train.__main__ import parse_flags

  fv = parse_flags([f"--config={SMOKE}", f"--workdir={tmp_path}", "--config.optim.lr=0.05",
                    "--config.objective.eps=0.02", "--config.optim.milestones=(3,7)",
                    "--config.model.noise=cni_w"])
  assert fv.config.optim.lr == 0.05
  assert fv.config.objective.eps == pytest.approx(0.02)
  assert tuple(fv.config.optim.milestones) == (3, 7)
  assert fv.config.model.noise == "cni_w"
  assert fv.workdir == str(tmp_path)


@pytest.mark.parametrize("args, needle", [
    ([f"--config={SMOKE}"], "--workdir"),
    (["--workdir=/tmp/x"], "--config"),
    ([f"--config={SMOKE}", "--workdir=/tmp/x", "--config.optim.nope=1"], "nope"),
    ([f"--config={SMOKE}", "--config.model.arch=resnet21"], "resnet21"),
    ([f"--config={SMOKE}", "--config.data.dataset=npz:/does/not/exist.npz"], "exist"),
    ([f"--config={SMOKE}", "--config.objective.name=madry"], "madry"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, args, needle):
  from train.__main__ import main

  if not any(a.startswith("--workdir") for a in args) and any(
      a.startswith("--config=") for a in args) and len(args) > 1:
    args = args + [f"--workdir={tmp_path / 'wd'}"]
  rc = main(args)
  err = capsys.readouterr().err.strip()
  assert rc == 2
  assert len(err.splitlines()) == 1 and needle in err, err


PRESETS = sorted(p.stem for p in (REPO / "train" / "configs").glob("*.py")
                 if p.stem not in ("__init__", "base", "finetune"))


def test_every_preset_is_documented_and_valid():
  from smoothjax import training
  from smoothjax.training import _config as training_config
  from train.__main__ import parse_flags

  assert {"smoke", "resnet20_madry", "resnet20_pni_w", "resnet20_cni_w", "epgd_finetune",
          "highk_pgd_finetune", "cni_iw_finetune", "smoothadv_finetune", "trades",
          "wrn34_10_pni_w", "wrn34_10_pni_w_trades", "resnet20_fast_at"} <= set(PRESETS)
  for name in PRESETS:
    path = f"train/configs/{name}.py"
    doc = (REPO / path).read_text()
    assert f"--config={path}" in doc and "Expected runtime" in doc, name
    cfg = parse_flags([f"--config={path}", "--workdir=/tmp/unused"]).config
    if cfg.init_required:
      with pytest.raises(ValueError, match="init_from"):
        training_config._check_config(cfg)  # pylint: disable=protected-access
      cfg.init_from = "runs/resnet20_cni_w"
    training_config._check_config(cfg)  # pylint: disable=protected-access
    training.model_config_from(cfg.model, num_classes=100 if "cifar100" in name else 10)
  # The reference recipe (Nemcovsky et al.'s CNI-W training).
  c = parse_flags(["--config=train/configs/resnet20_cni_w.py", "--workdir=/tmp/u"]).config
  assert (c.train.epochs, tuple(c.optim.milestones), c.optim.clip_norm, c.optim.lr,
          c.optim.weight_decay, c.data.batch_size, c.optim.nesterov) == (
              400, (100, 200, 300), 0.05, 0.1, 1e-4, 256, True)
  assert (c.objective.steps, c.objective.eps, c.objective.step_size, c.objective.adv_weight) == (
      7, 8 / 255, 2 / 255, 0.5)
  # The config argument picks the dataset of the WRN presets.
  c = parse_flags(["--config=train/configs/wrn34_10_pni_w.py:cifar100", "--workdir=/tmp/u"])
  assert c.config.data.dataset == "cifar100" and c.config.model.arch == "wrn34_10"


def _damage(step_dir: pathlib.Path) -> None:
  """Flips the first bytes of every orbax data file of a checkpoint (its arrays unreadable)."""
  files = list(step_dir.glob("*/ocdbt.process_0/d/*"))
  assert files, step_dir
  for f in files:
    b = bytearray(f.read_bytes())
    b[:16] = bytes(x ^ 0xFF for x in b[:16])
    f.write_bytes(bytes(b))


def _not_logs(err: str) -> list[str]:
  return [l for l in err.splitlines() if l.strip() and not l.startswith("[train] ")]


@pytest.mark.slow
def test_damaged_checkpoints_one_line_and_fallback(tmp_path):
  """A damaged latest checkpoint: evaluate exits 2 with one line; train resumes from the newest
  intact one (one warning line), and exits 2 with one line when none is intact."""
  wd, cache = tmp_path / "wd", tmp_path / "jax_cache"
  first = _run(TINY + [f"--workdir={wd}", "--config.train.num_steps=6"], cache)
  _, err = first.communicate(timeout=300)
  assert first.returncode == 0, err
  assert checkpoints.TrainCheckpointer(wd, keep=2).all_steps() == [3, 6]
  _damage(wd / "checkpoints" / "6")

  npz = tmp_path / "x.npz"
  np.savez(npz, x_test=np.zeros((2, 32, 32, 3), np.uint8), y_test=np.zeros(2, np.int64))
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  ev = subprocess.run([sys.executable, "-m", "evaluate", f"--checkpoint={wd}",
                       f"--dataset=npz:{npz}", "--n=1", f"--workdir={tmp_path / 'ev'}"],
                      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert ev.returncode == 2
  assert len(ev.stderr.strip().splitlines()) == 1, ev.stderr[:3000]
  assert "checkpoints/6 is corrupt" in ev.stderr and not (tmp_path / "ev").exists()

  resumed = _run(TINY + [f"--workdir={wd}", "--config.train.num_steps=9"], cache)
  _, err = resumed.communicate(timeout=300)
  assert resumed.returncode == 0, err
  warnings = [l for l in err.splitlines() if "warning: checkpoint 6 is damaged" in l]
  assert len(warnings) == 1 and "step 3" in warnings[0], err
  assert f"resuming from {wd / 'checkpoints' / '3'} (step 3)" in err
  assert not _not_logs(err), err[:3000]
  assert (wd / "damaged" / "6" / "model").is_dir()
  assert checkpoints.TrainCheckpointer(wd, keep=2).all_steps() == [6, 9]
  steps = [r["step"] for r in metrics_lib.read_metrics(wd) if r["split"] == "train"]
  assert steps == sorted(set(steps)) and steps[-1] == 9

  for step in (6, 9):
    _damage(wd / "checkpoints" / str(step))
  failed = _run(TINY + [f"--workdir={wd}", "--config.train.num_steps=12"], cache)
  _, err = failed.communicate(timeout=300)
  assert failed.returncode == 2
  lines = _not_logs(err)
  assert len(lines) == 1 and lines[0].startswith("python -m train: no intact checkpoint"), err
  assert "step 9:" in lines[0] and "step 6:" in lines[0]
