"""Run the notebooks top to bottom and save them with their outputs, so GitHub shows the plots.

    python scripts/execute_notebooks.py [notebooks/NAME.ipynb ...]   # default: every notebook

Each runs in a fresh kernel, in an empty temporary folder, with no ``VL_API_*`` or ``VL_DATASETS_*``
variable: on the local service and the sample, as tests/test_notebooks.py re-runs them to check
that the saved outputs still come out. What changes from run to run without saying anything about
the notebook (timings, the kernel's Python version) is left out of the file.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CELL_TIMEOUT_S = 600


def executed(path: Path) -> nbformat.NotebookNode:
    """The notebook at ``path`` run top to bottom, its outputs in place and volatile metadata stripped."""
    notebook = nbformat.read(path, as_version=4)
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith(("VL_API_", "VL_DATASETS_"))}
    try:
        with tempfile.TemporaryDirectory(prefix="vl_notebook_") as cwd:
            NotebookClient(
                notebook,
                timeout=CELL_TIMEOUT_S,
                kernel_name="python3",
                record_timing=False,
                resources={"metadata": {"path": cwd}},
            ).execute()
    finally:
        os.environ.update(saved)
    notebook.metadata["language_info"] = {"name": "python"}
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
    return notebook


def main(paths: list[str]) -> None:
    for path in [Path(p) for p in paths] or sorted(NOTEBOOKS.glob("*.ipynb")):
        nbformat.write(executed(path), path)
        print(f"executed {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
