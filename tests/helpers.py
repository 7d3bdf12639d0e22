"""Helpers shared by test modules of more than one side: the repository, child processes, report pages."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def thumbnails(page: str) -> int:
    return page.count("data:image/jpeg;base64,")
