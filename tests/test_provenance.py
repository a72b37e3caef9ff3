"""Tests of smoothjax.provenance: complete, JSON-safe, no personal data, never crashes."""

import datetime
import json
import pathlib
import shutil
import socket
import subprocess
import sys

import jax
import pytest

import smoothjax
from smoothjax import provenance

_HAS_GIT = shutil.which("git") is not None


def test_fields_json_and_command_line():
  argv = ["evaluate", "--checkpoint=a b.pth", "--n=1,2"]
  info = provenance.provenance(argv)
  assert json.loads(json.dumps(info)) == info
  assert info["argv"] == argv and info["command"] == "evaluate '--checkpoint=a b.pth' --n=1,2"
  assert info["smoothjax"]["version"] == smoothjax.__version__
  for name in ("jax", "jaxlib", "flax", "optax", "numpy"):
    assert info["packages"][name], name
  assert info["packages"]["jax"] == jax.__version__
  assert info["python"] == ".".join(map(str, sys.version_info[:3]))
  dev = info["devices"]
  assert dev["platform"] == jax.devices()[0].platform and dev["count"] == jax.device_count()
  assert dev["process_count"] == jax.process_count() and dev["kinds"]
  t = datetime.datetime.strptime(info["time_utc"], "%Y-%m-%dT%H:%M:%SZ")
  now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
  assert abs((now - t).total_seconds()) < 120
  assert provenance.provenance(devices=False)["argv"] == sys.argv
  assert "devices" not in provenance.provenance([], devices=False)


def test_no_host_name():
  text = json.dumps(provenance.provenance(["x"]))
  host = socket.gethostname()
  if len(host) >= 4:
    assert host not in text
  assert "hostname" not in text.lower()


def test_missing_package_and_no_git(monkeypatch):
  assert provenance.package_versions(("surely-not-installed-pkg",)) == {
      "surely-not-installed-pkg": None}
  monkeypatch.setenv("PATH", "")  # git cannot be found
  assert provenance.git_info() == {"commit": None, "dirty": None}
  info = provenance.provenance(["x"], devices=False)
  assert info["smoothjax"]["commit"] is None


@pytest.mark.skipif(not _HAS_GIT, reason="needs git")
def test_commit_of_this_checkout():
  pkg = pathlib.Path(provenance.__file__).resolve().parent
  head = subprocess.run(["git", "-C", str(pkg), "rev-parse", "HEAD"], capture_output=True,
                        text=True, check=False)
  if head.returncode != 0:
    pytest.skip("smoothjax is not imported from a git checkout here")
  assert provenance.provenance([], devices=False)["smoothjax"]["commit"] == head.stdout.strip()


@pytest.mark.skipif(not _HAS_GIT, reason="needs git")
def test_git_info_only_for_a_tracked_package(tmp_path):
  pkg = tmp_path / "repo" / "smoothjax"
  pkg.mkdir(parents=True)
  (pkg / "__init__.py").write_text("x = 1\n")
  assert provenance.git_info(pkg) == {"commit": None, "dirty": None}  # not a repository
  repo = tmp_path / "repo"

  def git(*args):
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t",
                    *args], check=True, capture_output=True)

  git("init", "-q")
  (repo / "README").write_text("r\n")
  git("add", "README")
  git("commit", "-q", "-m", "init")
  # Inside a repository but untracked (an installed copy in some project): no commit.
  assert provenance.git_info(pkg) == {"commit": None, "dirty": None}
  git("add", "smoothjax")
  git("commit", "-q", "-m", "pkg")
  head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                        text=True, check=True).stdout.strip()
  assert provenance.git_info(pkg) == {"commit": head, "dirty": False}
  (pkg / "__init__.py").write_text("x = 2\n")
  assert provenance.git_info(pkg) == {"commit": head, "dirty": True}
