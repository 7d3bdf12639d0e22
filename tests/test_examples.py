"""The examples run as a user runs them: a fresh process, no credentials, no network."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _clean_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VL_API_", "VL_DATASETS_"))}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["XDG_CACHE_HOME"] = str(tmp_path / "user-cache")
    return env


def test_export_example_runs_offline_on_the_local_service(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "examples" / "export_dataset.py")], capture_output=True,
                            text=True, timeout=120, env=_clean_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "local Visual Layer service" in result.stdout
    assert "12 items, 12 images" in result.stdout and "metadata.parquet" in result.stdout
    assert "removed by dedupe" in result.stdout and "first batch: images (8, 3, 224, 224) torch.uint8" in result.stdout
    assert not (tmp_path / "user-cache").exists()  # a local demo leaves the user's cache alone
