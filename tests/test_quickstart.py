"""smoothjax.quickstart: the offline quick start on the shipped model and sample."""

import io
import json

import pytest

from smoothjax import pretrained
from smoothjax import quickstart


def _rec(vote, n, acc, attack="none", sigma=0.0, std=0.0, repeats=1, **kw):
  return {"vote": vote, "n": n, "sigma": sigma, "sigma_space": "pixel", "attack": attack,
          "eps": 8 / 255 if attack != "none" else 0, "steps": 7 if attack != "none" else 0,
          "attack_samples": 1 if attack != "none" else 0, "accuracy": acc,
          "accuracy_std": std, "repeats": repeats, "num_images": 10, **kw}


def test_format_eps():
  assert quickstart.format_eps(8 / 255) == "8/255"
  assert quickstart.format_eps(0) == "0/255"
  assert quickstart.format_eps(0.5) == "1/2"
  assert quickstart.format_eps(0.123456) == "0.1235"


def test_format_table_rows_n_columns_votes_a_block_per_attack():
  recs = [_rec(v, n, 0.1 * n + (v == "soft") * 0.01 - (a == "pgd") * 0.05, attack=a)
          for a in ("pgd", "none") for v in ("hard", "soft") for n in (1, 2, 4)]
  recs.append({"vote": "certify", "n": 100, "sigma": 0.0, "accuracy": 0.3})  # left out
  lines = quickstart.format_table(recs).splitlines()
  assert lines[0] == ("accuracy (%) of the smoothed classifier, input noise sigma=0 "
                      "(pixel units), 10 images")
  assert lines[1] == "clean" and lines[6] == "PGD-7, eps=8/255"  # clean first
  assert lines[2].split() == lines[7].split() == ["n", "hard", "soft"]
  assert [l.split() for l in lines[3:6]] == [["1", "10.0", "11.0"], ["2", "20.0", "21.0"],
                                              ["4", "40.0", "41.0"]]
  assert lines[8].split() == ["1", "5.0", "6.0"] and len(lines) == 11
  assert max(len(l) for l in lines) <= 100
  assert quickstart.format_table(recs, votes=("soft",)).splitlines()[2].split() == ["n", "soft"]
  assert quickstart.format_table([]) == ""


def test_format_table_repeats_and_sigmas():
  recs = [_rec("hard", 1, 0.5, sigma=s, std=0.02, repeats=3) for s in (0.0, 0.25)]
  text = quickstart.format_table(recs)
  assert text.count("accuracy (%)") == 2 and "sigma=0.25" in text
  assert "50.0±2.0" in text and "mean±std over 3 repeats" in text


def test_bad_checkpoint_is_one_clear_error(capsys):
  assert quickstart.main(["--checkpoint=pretrained:nope", "--workdir=/nonexistent/x"]) == 2
  err = capsys.readouterr().err
  assert "unknown pretrained model 'nope'" in err and "smoke_pni_w" in err


def test_quickstart_small(tmp_path):
  out = io.StringIO()
  wd = tmp_path / "qs"
  res = quickstart.run(wd, limit=32, ns=(1, 2, 4, 8), progress=False, out=out)
  text = out.getvalue()
  flat = " ".join(text.split())
  assert f"pretrained:{pretrained.DEFAULT}" in flat and "on 32 images" in flat
  assert res.table in text and "next steps" in text and str(wd) in text
  assert "--checkpoint=pretrained:smoke_pni_w --dataset=cifar10" in text
  lines = res.table.splitlines()
  assert lines[1] == "clean" and lines[7] == "PGD-7, eps=8/255" and len(lines) == 13
  assert lines[2].split() == lines[8].split() == ["n", "hard", "soft", "soft_logits", "weighted"]
  assert [l.split()[0] for l in lines[3:7]] == ["1", "2", "4", "8"]
  records = json.loads((wd / "results.json").read_text())
  assert len(records) == 2 * 4 * 4 == len(res.records)
  assert {r["attack"] for r in records} == {"none", "pgd"}
  assert all(r["num_images"] == 32 and r["dataset"] == pretrained.sample_spec()
             for r in records)
  assert (wd / "table.txt").read_text().strip() == res.table
  for f in ("results.csv", "plots/accuracy_vs_n_hard.png", "plots/accuracy_vs_n_weighted.png",
            "plots/accuracy_vs_sigma.png"):
    assert (wd / f).is_file(), f
  assert set(res.files) >= {wd / "results.json", wd / "plots/accuracy_vs_n_soft.png"}


@pytest.mark.slow
def test_quickstart_defaults(tmp_path):
  """The real defaults: 500 images, n = 1..64, every vote, clean and PGD-7 at 8/255."""
  out = io.StringIO()
  res = quickstart.run(tmp_path / "qs", progress=False, out=out)
  assert len(res.records) == 2 * 4 * 7
  assert all(r["num_images"] == 500 for r in res.records)
  assert [l.split()[0] for l in res.table.splitlines()[3:10]] == ["1", "2", "4", "8", "16", "32",
                                                                 "64"]
  assert len(list((tmp_path / "qs" / "plots").glob("accuracy_vs_n_*.png"))) == 4


def test_evaluate_without_checkpoint_is_the_quick_start(tmp_path, capsys):
  from smoothjax.cli import evaluate as cli
  wd = tmp_path / "qs"
  assert cli.main(["--limit=16", "--n=1,2", f"--workdir={wd}", "--progress=false"]) == 0
  text = capsys.readouterr().out
  assert "smoothjax quick start" in text and "next steps" in text
  assert "accuracy (%) of the smoothed classifier" in text
  records = json.loads((wd / "results.json").read_text())
  assert records and all(r["num_images"] == 16 for r in records)
  assert {r["checkpoint"] for r in records} == {f"pretrained:{pretrained.DEFAULT}"}
  assert (wd / "plots" / "accuracy_vs_n_soft.png").is_file()
  assert "omit for the quick start" in " ".join(cli.build_parser().format_help().split())
