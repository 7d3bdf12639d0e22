"""``--api-url`` points export, prepare and report at an API, over whatever ``VL_API_URL`` says; and
what ``vl-datasets export`` shows while it works: a bar in percent, and a word when it switches to chunks."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import child_env
from tests.waits import run_child
from vl_datasets.cli import main
from vl_datasets.testing import LocalVisualLayer


@pytest.fixture
def wrong_api_url(monkeypatch):
    """VL_API_URL set to a port nothing listens on: a command that used it would exit 8."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("VL_API_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("VL_API_MAX_RETRIES", "0")
    monkeypatch.setenv("VL_DATASETS_PROGRESS", "0")


def test_export_api_url_wins_over_the_environment(quick_vl, wrong_api_url, tmp_path, capsys):
    cache = str(tmp_path / "cache")
    assert main(["export", "ds-ready", "--cache-dir", cache]) == 8  # the environment's API, unreachable
    assert main(["export", "ds-ready", "--cache-dir", cache, "--api-url", quick_vl.url]) == 0
    printed = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed.is_dir() and (tmp_path / "cache").resolve() in printed.resolve().parents
    assert quick_vl.count("export") == 1
    # Offline, --api-url still names the host whose copy is wanted: the one just made, no call.
    assert main(["export", "ds-ready", "--cache-dir", cache, "--api-url", quick_vl.url, "--offline"]) == 0
    assert quick_vl.count("export") == 1


def test_report_and_prepare_take_api_url_for_a_dataset_id(quick_vl, wrong_api_url, tmp_path, capsys):
    cache = str(tmp_path / "cache")
    out = tmp_path / "report.html"
    assert main(["report", "ds-ready", "--out", str(out), "--cache-dir", cache, "--api-url", quick_vl.url]) == 0
    assert "<td>Items in the export</td><td class=n>8</td>" in out.read_text()
    assert (
        main(["prepare", "ds-ready", "--size", "8", "--workers", "1", "--cache-dir", cache, "--api-url", quick_vl.url])
        == 0
    )
    assert re.search(r"^8 images at 8px", capsys.readouterr().out, flags=re.M)
    assert quick_vl.count("export") == 1, "prepare exported again instead of using report's cached copy"


@pytest.mark.parametrize(
    "command",
    [["export"], ["report", "--out", "r.html"], ["prepare", "--size", "8"], ["evaluate", "--predictions", "p.csv"]],
)
def test_an_api_url_that_is_no_url_exits_2_naming_the_flag(wrong_api_url, tmp_path, monkeypatch, capsys, command):
    """It became https://notaurl and exited 8 after the client's retries."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.csv").write_text("media_id,prediction\nm0,cat\n")
    name, *options = command
    argv = [name, "ds-ready", *options, "--api-url", "notaurl", "--cache-dir", str(tmp_path / "c")]
    assert main(argv) == 2
    assert "error: --api-url: Invalid Visual Layer API URL 'notaurl'" in capsys.readouterr().err


def _export(url: str, cache: Path, **env: str) -> subprocess.CompletedProcess:
    """``vl-datasets export ds-ready`` by the real entry point in a child process, whose stderr is
    what a user's terminal shows; no VL_* variable but ``env``."""
    environment = {k: v for k, v in child_env().items() if not k.startswith(("VL_API_", "VL_DATASETS_"))}
    return run_child(
        [sys.executable, "-m", "vl_datasets", "export", "ds-ready", "--api-url", url, "--cache-dir", str(cache)],
        env={**environment, **env},
    )


def test_export_progress_counts_percent_not_a_rate(quick_vl, tmp_path):
    done = _export(quick_vl.url, tmp_path, VL_DATASETS_PROGRESS="1")
    assert done.returncode == 0, done.stderr
    bars = [part for part in re.split(r"[\r\n]", done.stderr) if part.startswith("export ")]
    assert bars, f"no export progress bar in {done.stderr!r}"
    assert all(re.fullmatch(r"export \w{8}: +\d{1,3}%\|.*\| \d\d:\d\d waited", bar) for bar in bars), bars
    assert any(" 100%|" in bar for bar in bars), bars
    assert "%/s" not in done.stderr


def test_a_rejected_export_says_it_switches_to_chunks(dataset_root, tmp_path):
    with LocalVisualLayer(dataset_root, export_polls=0, max_images_per_export=3) as capped:
        done = _export(capped.url, tmp_path, VL_DATASETS_PROGRESS="0")
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stderr.splitlines() if "rejected the export" in line]
    assert len(said) == 1, done.stderr
    assert said[0].startswith("WARNING ")
    assert "ds-ready" in said[0] and "chunks of 3" in said[0] and "--max-images-per-export" in said[0]
