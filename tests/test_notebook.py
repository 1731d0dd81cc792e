"""examples/colab.ipynb runs top to bottom on CPU: its settings cell overridden to the embedded
default model, examples/pirate.jsonl and a few steps; the install and push cells skip themselves."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "colab.ipynb"

pytestmark = pytest.mark.integration


def _overridden(nb, **values):
    """Papermill's way: a cell after the one tagged `parameters` that sets the test's values."""
    import nbformat

    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in values.items())))
    return nb


def test_the_colab_notebook_runs_on_the_default_model(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = _overridden(nbformat.read(NOTEBOOK, as_version=4), MODEL="default",
                     DATA=str(ROOT / "examples" / "pirate.jsonl"), STEPS=3, BATCH_SIZE=4, MAX_LENGTH=256, QLORA=False, OUT=str(tmp_path / "run"),
                     PROMPTS=["What is the capital of France?"], MAX_NEW_TOKENS=8, HUB_REPO="", INSTALL=False)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(out.get("text", "") + str(out.get("data", {}).get("text/markdown", ""))
                     for cell in nb.cells for out in cell.get("outputs", []))
    assert "install skipped" in text and "push skipped (HUB_REPO is empty)" in text
    assert "| prompt | base | fine-tuned |" in text and "capital of France" in text
    assert (tmp_path / "run" / "final" / "adapter_config.json").is_file()
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 3
