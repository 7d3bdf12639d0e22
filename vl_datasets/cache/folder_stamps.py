"""Whether an opened folder's ``images/`` changed since its index was built, without listing it.

The index of a folder export says which file is each row's image, found by listing ``images/``.
Adding, removing or renaming a file changes the modification time of the folder that holds it,
and of no other: so the index records each folder's time (``record``), and a later open compares
them by one ``stat`` per folder (``changed``), where listing the files again would cost as much as
building the index. A file rewritten in place keeps its name, and the index stays right.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..atomic import replacing

STAMPS = ".vl_datasets_images_folders.json"  # in the version's folder, beside its index


def record(images_dir: Path, version_dir: Path) -> None:
    """Write the modification time of ``images_dir`` and of every folder under it into
    ``version_dir`` (nothing when there is no such folder). Taken before the index lists the
    files: a change while it does shows at the next open, and the index is built again."""
    if not images_dir.is_dir():
        return
    stamps = {}
    pending = [(images_dir, "")]
    while pending:
        folder, relative = pending.pop()
        try:
            stamps[relative] = folder.stat().st_mtime_ns
            with os.scandir(folder) as entries:
                folders = [entry for entry in entries if entry.is_dir(follow_symlinks=False)]
        except FileNotFoundError:  # gone since its parent was listed: its parent's time says so
            continue
        pending.extend((Path(entry.path), f"{relative}{entry.name}/") for entry in folders)
    with replacing(version_dir / STAMPS) as tmp:
        tmp.write_text(json.dumps(stamps, separators=(",", ":")), encoding="utf-8")


def changed(images_dir: Path, version_dir: Path) -> bool:
    """Whether a folder ``record`` saw under ``images_dir`` is gone or was changed since. A version
    recorded without stamps (no images then, or an older library) counts as unchanged here."""
    try:
        stamps = json.loads((version_dir / STAMPS).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True
    if not isinstance(stamps, dict):
        return True
    for relative, mtime_ns in stamps.items():
        try:
            if os.stat(images_dir / relative).st_mtime_ns != mtime_ns:
                return True
        except OSError:
            return True
    return False
