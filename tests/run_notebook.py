"""Run a notebook top to bottom in a fresh kernel, as a user does, and save it with its outputs.

``python -m tests.run_notebook NOTEBOOK EXECUTED WORKDIR``. It says when each cell starts, so the
test that runs it (``tests.helpers.run_child``) sees progress; no cell has a time limit of its own.
"""

from __future__ import annotations

import sys

import nbformat
from nbclient import NotebookClient


def main(source: str, executed: str, workdir: str) -> None:
    notebook = nbformat.read(source, as_version=4)

    def started(cell, cell_index: int) -> None:
        print(f"cell {cell_index} started", flush=True)

    client = NotebookClient(
        notebook,
        timeout=None,
        kernel_name="python3",
        resources={"metadata": {"path": workdir}},
        on_cell_start=started,
    )
    try:
        client.execute()
    finally:
        nbformat.write(notebook, executed)


if __name__ == "__main__":
    main(*sys.argv[1:4])
