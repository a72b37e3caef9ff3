"""examples/quickstart.ipynb runs end to end (tiny budgets, CPU), so it cannot rot."""

import os
import pathlib

import nbclient
import nbformat
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "examples" / "quickstart.ipynb"


@pytest.mark.slow  # compiles votes, PGD, EPGD, CERTIFY and a training step: minutes on a CPU
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  assert "colab.research.google.com/github/" in nb.cells[0].source
  # The kernel inherits the environment: tiny budgets, the CPU, and this checkout's smoothjax.
  monkeypatch.setenv("SMOOTHJAX_NOTEBOOK_QUICK", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()
  text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
  assert "smoke_pni_w" in text and "PGD-7" in text and "EPGD m=2" in text
  assert "certified accuracy at radius 0" in text and "restored step 2" in text
  images = [o for c in nb.cells for o in c.get("outputs", [])
            if "image/png" in o.get("data", {})]
  assert images, "the accuracy-vs-n plot is missing"
  assert (tmp_path / "runs" / "notebook" / "tiny_train" / "metrics.jsonl").is_file()
