"""The notebooks are committed executed, as GitHub shows them, and a fresh run gives the same outputs.

Each notebook runs top to bottom in a fresh kernel, as a user runs it; its text outputs must match
the committed ones (numbers within a tolerance: a float may round the other way on another CPU) and
its figures the committed PNGs by decoded pixels. ``python scripts/execute_notebooks.py`` saves new
outputs after a notebook changes.
"""

from __future__ import annotations

import base64
import io
import os
import re
from pathlib import Path

import nbformat
import numpy as np
import PIL.Image
import pytest

from tests.helpers import run_notebook

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
# What each notebook must show a user; a notebook added without an entry fails here.
EXPECTED = {
    "export_walkthrough.ipynb": ["kept", "torch.uint8"],
    "fine_tuning.ipynb": [
        "removed by drop_issues",
        "after fine-tuning on the curated data",
        "report.html",
        "<Figure size",
        "removed by dedupe",
        "no issue",
        "share a group with one of",
        "suspected label errors; Visual Layer flagged",
        "evaluation.html",
    ],
    "hf_fine_tuning.ipynb": [
        "removed by drop_issues",
        "model.safetensors",
        "test accuracy after fine-tuning on the uncurated data",
        "test accuracy after fine-tuning on the curated data",
    ],
}
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")
# Numbers printed by a re-run may differ from the committed ones by this much (relative).
NUMBER_TOLERANCE = 0.02
# A slice's accuracy over N items moves by 100/N points when one prediction flips, as it does when
# another CPU rounds the training's floats differently (a slice of 22 items: 95.5% or 100%). Such a
# line may differ by this many flips, and its interval's bounds by one more.
SLICE_LINE = re.compile(
    r"(?P<n>\d[\d,]*) items\s+accuracy\s+(?P<accuracy>[\d.]+)%\s+\(95% CI (?P<low>\d+)%-(?P<high>\d+)%\)"
)
SLICE_FLIPS = 2
# A re-drawn figure may differ from the committed PNG by this mean absolute difference per channel (of 255).
PIXEL_TOLERANCE = 4.0
# Folders in the temp dir that outlive any one process by design: the download locks' (private to the
# user, see vl_datasets.api.download.lock_path) and torch's compile cache.
PER_USER_TMP = ("vl_datasets-locks-", "torchinductor_")


def _same_text(committed: str, rerun: str) -> bool:
    """Equal but for numbers, and those within NUMBER_TOLERANCE (a slice's accuracy and its interval
    within SLICE_FLIPS predictions)."""
    old_lines, new_lines = committed.split("\n"), rerun.split("\n")
    if len(old_lines) != len(new_lines):
        return False
    return all(_same_line(old, new) for old, new in zip(old_lines, new_lines))


def _same_line(committed: str, rerun: str) -> bool:
    old, new = SLICE_LINE.search(committed), SLICE_LINE.search(rerun)
    if old is None or new is None or old["n"] != new["n"]:
        return _same_numbers(committed, rerun)
    flip = 100 / max(int(old["n"].replace(",", "")), 1)  # points per prediction
    near = abs(float(old["accuracy"]) - float(new["accuracy"])) <= SLICE_FLIPS * flip + 0.05
    bounds = all(abs(int(old[k]) - int(new[k])) <= (SLICE_FLIPS + 1) * flip + 1 for k in ("low", "high"))
    around = _same_numbers(committed[: old.start()], rerun[: new.start()]) and _same_numbers(
        committed[old.end() :], rerun[new.end() :]
    )
    return near and bounds and around


def _same_numbers(committed: str, rerun: str) -> bool:
    if NUMBER.sub("#", committed) != NUMBER.sub("#", rerun):
        return False
    pairs = zip(NUMBER.findall(committed), NUMBER.findall(rerun))
    return all(
        abs(float(a.replace(",", "")) - float(b.replace(",", "")))
        <= NUMBER_TOLERANCE * max(abs(float(a.replace(",", ""))), 1.0)
        for a, b in pairs
    )


def _pixels(png_base64: str) -> np.ndarray:
    return np.asarray(PIL.Image.open(io.BytesIO(base64.b64decode(png_base64))).convert("RGB"), dtype=np.float32)


def _compare(cell_number: int, committed: dict, rerun: dict) -> list[str]:
    """What differs between one committed output and the re-run's."""
    where = f"cell {cell_number}, {committed['output_type']}"
    if committed["output_type"] != rerun["output_type"]:
        return [f"{where}: the re-run gave a {rerun['output_type']}"]
    if committed["output_type"] == "stream":
        same = committed["name"] == rerun["name"] and _same_text(committed["text"], rerun["text"])
        return [] if same else [f"{where}: {committed['text']!r} became {rerun['text']!r}"]
    problems = []
    old, new = committed.get("data", {}), rerun.get("data", {})
    if not _same_text(str(old.get("text/plain", "")), str(new.get("text/plain", ""))):
        problems.append(f"{where}: {old.get('text/plain')!r} became {new.get('text/plain')!r}")
    if "image/png" in old or "image/png" in new:
        if "image/png" not in old or "image/png" not in new:
            return [*problems, f"{where}: a figure appeared or disappeared"]
        before, after = _pixels(old["image/png"]), _pixels(new["image/png"])
        if before.shape != after.shape:
            problems.append(f"{where}: the figure is {after.shape[1::-1]} px, committed {before.shape[1::-1]}")
        elif (diff := float(np.abs(before - after).mean())) > PIXEL_TOLERANCE:
            problems.append(
                f"{where}: the figure differs by {diff:.1f} per pixel channel (tolerance {PIXEL_TOLERANCE})"
            )
    return problems


def _outputs_text(notebook: nbformat.NotebookNode) -> str:
    return "".join(
        str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for o in cell.outputs
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_reruns_to_its_committed_outputs(path, tmp_path, monkeypatch):
    committed = nbformat.read(path, as_version=4)
    code = [cell for cell in committed.cells if cell.cell_type == "code"]
    assert all(cell.execution_count for cell in code), (
        f"{path.name} is committed unexecuted: run scripts/execute_notebooks.py"
    )
    stderr = [o["text"] for cell in code for o in cell.outputs if o.get("name") == "stderr"]
    assert stderr == [], f"{path.name} shows warnings or errors: {stderr}"
    for name in [k for k in os.environ if k.startswith(("VL_API_", "VL_DATASETS_"))]:
        monkeypatch.delenv(name)
    scratch, cwd = tmp_path / "tmp", tmp_path / "cwd"
    scratch.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # what the notebook's kernel makes with tempfile lands here

    rerun = run_notebook(path, cwd, executed=tmp_path / f"executed-{path.name}")

    outputs = _outputs_text(rerun)
    for expected in EXPECTED[path.name]:
        assert expected in outputs, f"{path.name} never showed {expected!r}"
    assert "IProgress" not in outputs
    problems = []
    for number, (old, new) in enumerate(zip(code, [c for c in rerun.cells if c.cell_type == "code"]), start=1):
        old_outputs, new_outputs = _merged_streams(old.outputs), _merged_streams(new.outputs)
        if len(old_outputs) != len(new_outputs):
            problems.append(f"cell {number}: {len(new_outputs)} outputs, committed {len(old_outputs)}")
            continue
        for committed_output, rerun_output in zip(old_outputs, new_outputs):
            problems += _compare(number, committed_output, rerun_output)
    assert problems == [], f"{path.name} no longer gives its committed outputs:\n" + "\n".join(problems)
    left = sorted(p.name for p in scratch.iterdir() if not p.name.startswith(PER_USER_TMP))
    assert left == [], f"{path.name} left temporary folders behind: {left}"
    assert list(cwd.iterdir()) == [], f"{path.name} wrote into its working folder: {list(cwd.iterdir())}"
    if path.name == "fine_tuning.ipynb":
        before = float(re.search(r"trained on the uncurated data: ([\d.]+)%", outputs).group(1))
        after = float(re.search(r"after fine-tuning on the curated data: ([\d.]+)%", outputs).group(1))
        assert after >= before
        # The evaluation's suspected label errors find most of the labels the sample flipped.
        found, flipped = map(int, re.search(r"(\d+) of them are among the (\d+) labels flipped", outputs).groups())
        assert found >= 0.8 * flipped
    if path.name == "hf_fine_tuning.ipynb":
        uncurated = float(re.search(r"fine-tuning on the uncurated data: ([\d.]+)%", outputs).group(1))
        curated = float(re.search(r"fine-tuning on the curated data: ([\d.]+)%", outputs).group(1))
        assert curated >= uncurated > 50


def _merged_streams(outputs: list) -> list:
    """``outputs`` with consecutive prints to one stream joined: where the kernel cuts a cell's
    stdout into messages depends on how long the cell pauses between prints, not on the notebook."""
    merged: list = []
    for output in outputs:
        if output.get("output_type") == "stream" and merged and merged[-1].get("name") == output.get("name"):
            merged[-1] = {**merged[-1], "text": merged[-1]["text"] + output["text"]}
        else:
            merged.append(dict(output))
    return merged


def _outputs(notebook) -> str:
    return "".join(
        str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
        for cell in notebook.cells
        if cell.cell_type == "code"
        for o in cell.get("outputs", [])
    )
