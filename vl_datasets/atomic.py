"""Whole-file replacement: readers see the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import glob
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


def beside(path: Path, kind: str = "tmp") -> Path:
    """A process-unique hidden name beside ``path`` (``.<name>.<pid>.<random>.<kind>``), on its
    filesystem: where a file or folder is written before a rename puts it at ``path``."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.{kind}")


def left_beside(path: Path, kind: str = "tmp") -> list[Path]:
    """What ``beside`` names for ``path`` that is still there: files a killed writer left."""
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.{kind}"))


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A process-unique temp path beside ``path`` to write; renamed onto ``path`` when the block
    succeeds, removed when it fails. Beside it, so the rename stays on one filesystem."""
    tmp = beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
