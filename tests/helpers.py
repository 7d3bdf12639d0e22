"""Helpers shared by test modules of more than one side: the repository, child processes, report pages."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

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


# A child that neither prints nor uses CPU for this long is stuck; one that does either is working,
# however loaded the machine. The overall cap only stops a child that spins forever.
STALL_S = 300.0
LIMIT_S = 4 * 3600.0


def run_child(
    command: list[str],
    *,
    env: dict | None = None,
    cwd: str | os.PathLike | None = None,
    stall_s: float = STALL_S,
    limit_s: float = LIMIT_S,
) -> subprocess.CompletedProcess:
    """Run ``command`` to its end, as ``subprocess.run(capture_output=True, text=True)`` does, bounded
    by progress: the test fails when the child (with its own children: DataLoader workers, a
    kernel) prints nothing and uses no CPU for ``stall_s``, naming the command and its last lines."""
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}  # output as it is printed
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd)
    watch = _Progress(child)
    readers = [threading.Thread(target=watch.drain, args=(stream, sink), daemon=True) for stream, sink in watch.sinks()]
    for reader in readers:
        reader.start()
    started = time.monotonic()
    try:
        while not _ended(child, wait_s=1.0):
            if watch.idle_s() > stall_s:
                pytest.fail(watch.report(command, f"made no progress (no output, no CPU time) for {stall_s:.0f} s"))
            if time.monotonic() - started > limit_s:
                pytest.fail(watch.report(command, f"still ran after {limit_s:.0f} s"))
    finally:
        _end_tree(child)
        for reader in readers:
            reader.join(timeout=10)
    return subprocess.CompletedProcess(command, child.returncode, watch.text("stdout"), watch.text("stderr"))


def _ended(child: subprocess.Popen, *, wait_s: float) -> bool:
    try:
        child.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        return False
    return True


class _Progress:
    """What a child printed, and when it last printed or used CPU."""

    def __init__(self, child: subprocess.Popen) -> None:
        self.child = child
        self.output: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self.last_progress = time.monotonic()
        self.cpu_s = -1.0
        self.lock = threading.Lock()

    def sinks(self):
        return [(self.child.stdout, "stdout"), (self.child.stderr, "stderr")]

    def drain(self, stream, sink: str) -> None:
        while chunk := os.read(stream.fileno(), 65536):
            with self.lock:
                self.output[sink] += chunk
                self.last_progress = time.monotonic()
        stream.close()

    def idle_s(self) -> float:
        """Seconds since the child last printed or worked; called about once a second."""
        cpu_s = _tree_cpu_s(self.child.pid)
        with self.lock:
            # 5% of a core since the last call: work, not an idle kernel's heartbeat.
            if self.cpu_s >= 0 and cpu_s - self.cpu_s > 0.05:
                self.last_progress = time.monotonic()
            self.cpu_s = cpu_s
            return time.monotonic() - self.last_progress

    def text(self, sink: str) -> str:
        with self.lock:
            return self.output[sink].decode("utf-8", "replace")

    def report(self, command: list[str], what: str) -> str:
        lines = (self.text("stdout") + self.text("stderr")).splitlines()[-30:]
        return f"{shlex.join(str(c) for c in command)} {what}; its last output lines:\n" + "\n".join(lines)


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and every process under it (0 once they are gone)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def _end_tree(child: subprocess.Popen) -> None:
    """Kill ``child`` and what it started, if they still run (a failed test leaves no orphan)."""
    try:
        processes = [*psutil.Process(child.pid).children(recursive=True)]
    except psutil.Error:
        processes = []
    if child.poll() is None:
        child.kill()
    for process in processes:
        with contextlib.suppress(psutil.Error):  # it ended on its own meanwhile
            process.kill()
    child.wait()


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
