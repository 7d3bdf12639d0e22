"""Open a local export the user hands us: an extracted folder as it is, a ZIP unpacked safely.

A ZIP is unpacked once into the cache (keyed by its path, size and modification time), through
the same checks as a downloaded export, and published by an atomic rename.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

from .archive import extract_archive
from ..config import resolve_cache_dir
from ..errors import ConfigurationError, ExportNotFoundError

OPENED = "opened"


def open_export(path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding the export at ``path`` (a folder, or a ZIP unpacked into the cache)."""
    path = Path(path).expanduser().resolve()
    if path.is_dir():
        return path
    if not path.is_file():
        raise ExportNotFoundError(f"No export at {path}: expected a ZIP file or an extracted export folder.",
                                  path=str(path))
    root = resolve_cache_dir(cache_dir)
    if "://" in root:
        raise ConfigurationError("Opening a ZIP needs a local cache_dir to unpack it into.")
    stat = path.stat()
    digest = hashlib.sha256(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:20]
    target = Path(root) / OPENED / f"{path.stem[:40]}-{digest}"
    if target.is_dir():
        return target
    staging = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        extract_archive(path, staging)
        try:
            os.rename(staging, target)
        except OSError:  # another process published the same archive first
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
