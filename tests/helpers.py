"""Helpers shared by test modules of more than one side: the repository, child processes, report pages.

Waits bounded by progress (``run_child``, ``Child``) live in ``tests/waits.py``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tests.waits import run_child

REPO = Path(__file__).resolve().parents[1]


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def thumbnails(page: str) -> int:
    return page.count("data:image/jpeg;base64,")


def render_in_browser(browser, report: Path, screenshot: Path):
    """Open the HTML ``report`` in ``browser`` (playwright's Chromium) as a reader would, check that it
    stands alone (no console error, no request leaving the file, every image decoded, a whole page
    of plots and pictures, saved to ``screenshot`` to look at when a test fails) and return the
    page, for what a test checks beyond that, with the width of each image as decoded."""
    import io

    from PIL import Image

    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors_seen, requests = [], []
    page.on("console", lambda message: message.type == "error" and errors_seen.append(message.text))
    page.on("pageerror", lambda error: errors_seen.append(str(error)))
    page.on("request", lambda request: requests.append(request.url))
    page.goto(report.as_uri(), wait_until="load")
    decoded = page.evaluate("""() => Promise.all(Array.from(document.images, image =>
        image.decode().then(() => image.naturalWidth, () => 0)))""")
    shot = page.screenshot(full_page=True)
    screenshot.write_bytes(shot)

    assert errors_seen == []
    assert [url for url in requests if not url.startswith(("data:", "file:"))] == []
    assert all(width > 0 for width in decoded), f"{decoded.count(0)} of {len(decoded)} images did not decode"
    image = Image.open(io.BytesIO(shot)).convert("RGB")
    assert image.height > 900  # the whole page, not a blank first screen
    assert len(image.getcolors(maxcolors=1 << 24)) > 200  # plots and thumbnails, not an empty page
    return page, decoded


def run_notebook(path: Path, workdir: Path, *, executed: Path | None = None):
    """``path`` executed top to bottom in a fresh kernel in ``workdir`` (see ``tests/run_notebook.py``),
    bounded by progress like ``run_child``; returns the notebook with its outputs, which are also
    saved at ``executed`` (default: beside it in ``workdir``)."""
    import nbformat

    executed = executed or workdir / f"executed-{path.name}"
    command = [sys.executable, "-m", "tests.run_notebook", str(path), str(executed), str(workdir)]
    result = run_child(command, env=child_env(), cwd=REPO)
    assert result.returncode == 0, f"{path.name} failed:\n{result.stderr[-5000:]}"
    return nbformat.read(executed, as_version=4)


def change_dataset(root: Path, dataset_id: str, *, remove: int) -> str:
    """Change a dataset the local service serves, as its owner would between two exports: drop
    its last ``remove`` items and give its first item another image (a removed item's bytes).
    Returns the media id whose image changed."""
    folder = Path(root) / dataset_id
    document = json.loads((folder / "metadata.json").read_text(encoding="utf-8"))
    items = document["media_items"]
    kept, dropped = items[:-remove], items[-remove:]
    changed = folder / "images" / kept[0]["file_path"]
    new_bytes = (folder / "images" / dropped[0]["file_path"]).read_bytes()
    assert new_bytes != changed.read_bytes(), "the replacement image must differ from the one it replaces"
    changed.write_bytes(new_bytes)
    document["media_items"] = kept
    document["info"]["total_media_items"] = len(kept)
    (folder / "metadata.json").write_text(json.dumps(document, indent=1), encoding="utf-8")
    return kept[0]["media_id"]


def without_flock(monkeypatch) -> None:
    """The library's locks as on a filesystem without flock: they fall back to soft locks."""
    import filelock

    from vl_datasets import locks

    class NoFlock(filelock.FileLock):
        def _acquire(self):
            raise NotImplementedError("flock not supported on this filesystem")

    monkeypatch.setattr(locks.filelock, "FileLock", NoFlock)
