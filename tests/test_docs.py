"""The documentation site builds in strict mode (broken links, missing API references fail).

Runs ``mkdocs build --strict`` on ``mkdocs.yml`` into a temporary directory, so that README's test
command (and CI, ``.ci/run``) covers the docs. The tools come with the ``test`` extra (and the
``docs`` extra); skipped with the reason when they are not installed.
"""

import importlib.util
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# Pages the nav names that another change adds; until it lands, a stub stands in for it in the
# temporary copy (never in the repository), so the rest of the site is still checked strictly.
_PENDING_PAGES = {"architecture.md": "# Architecture\n\n(Not written yet.)\n"}

_NEEDS_MKDOCS = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None
        for m in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers")),
    reason='needs the docs tools: pip install -e ".[test]" (or ".[docs]")')


def _nav_pages(config_text: str) -> list[str]:
  return re.findall(r":\s*([\w./-]+\.md)\s*$", config_text, flags=re.M)


def test_nav_pages_exist():
  config = (REPO / "mkdocs.yml").read_text()
  pages = _nav_pages(config)
  assert "index.md" in pages and "api/attacks.md" in pages
  missing = [p for p in pages if not (REPO / "docs" / p).is_file() and p not in _PENDING_PAGES]
  assert not missing, f"nav pages missing from docs/: {missing}"


def test_docs_do_not_cite_internal_material():
  # Users do not have the project's internal REFERENCE.md / CONTRACT.md: the docs cite papers.
  for page in (REPO / "docs").rglob("*.md"):
    text = page.read_text()
    assert "REFERENCE.md" not in text and "CONTRACT.md" not in text, page


@_NEEDS_MKDOCS
def test_mkdocs_build_strict(tmp_path):
  docs = tmp_path / "docs"
  shutil.copytree(REPO / "docs", docs)
  for page, stub in _PENDING_PAGES.items():
    if not (docs / page).exists():
      (docs / page).write_text(stub)
  config = (REPO / "mkdocs.yml").read_text()
  config = re.sub(r"^docs_dir:.*$", f"docs_dir: {docs}", config, flags=re.M)
  config = config.replace("paths: [.]", f"paths: [{REPO}]")
  assert str(docs) in config and str(REPO) in config
  site = tmp_path / "site"
  config = config.replace("- docs/_ext/", f"- {REPO}/docs/_ext/")
  (tmp_path / "mkdocs.yml").write_text(config)
  proc = subprocess.run(
      [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(tmp_path / "mkdocs.yml"),
       "-d", str(site)], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert (site / "index.html").is_file()
  api = (site / "api" / "attacks.html").read_text()
  assert "smoothjax.attacks.pgd" in api  # the reference is generated from the docstrings
