"""Notebooks run top to bottom in a fresh kernel, as a user runs them (committed without outputs, but for
those committed executed, so that a reader sees their results without running them)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
# What each notebook must show a user; a notebook added without an entry fails here.
EXPECTED = {
    "export_walkthrough.ipynb": ["kept", "torch.uint8"],
    "fine_tuning.ipynb": [
        "removed by drop_issues",
        "after fine-tuning on the curated data",
        "report.html",
        "<Figure size",
    ],
    "hf_fine_tuning.ipynb": [
        "removed by drop_issues",
        "model.safetensors",
        "test accuracy after fine-tuning on the uncurated data",
        "test accuracy after fine-tuning on the curated data",
    ],
}
EXECUTED = {"hf_fine_tuning.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    notebook = nbformat.read(path, as_version=4)
    if path.name in EXECUTED:
        committed = _outputs(notebook)
        missing = [expected for expected in EXPECTED[path.name] if expected not in committed]
        assert not missing, f"{path.name} is committed without the results {missing}: execute it before committing"
        for cell in notebook.cells:
            if cell.cell_type == "code":
                cell.outputs = []  # run afresh: the committed outputs prove nothing about today's code
    else:
        assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
            f"{path.name} is committed with outputs: clear them"
        )
    for name in [k for k in os.environ if k.startswith(("VL_API_", "VL_DATASETS_"))]:
        monkeypatch.delenv(name)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = _outputs(notebook)
    for expected in EXPECTED[path.name]:
        assert expected in outputs, f"{path.name} never showed {expected!r}"
    if path.name == "fine_tuning.ipynb":
        before = float(re.search(r"trained on the uncurated data: ([\d.]+)%", outputs).group(1))
        after = float(re.search(r"after fine-tuning on the curated data: ([\d.]+)%", outputs).group(1))
        assert after >= before
    if path.name == "hf_fine_tuning.ipynb":
        uncurated = float(re.search(r"fine-tuning on the uncurated data: ([\d.]+)%", outputs).group(1))
        curated = float(re.search(r"fine-tuning on the curated data: ([\d.]+)%", outputs).group(1))
        assert curated >= uncurated > 50


def _outputs(notebook) -> str:
    return "".join(
        str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for o in cell.get("outputs", [])
    )
