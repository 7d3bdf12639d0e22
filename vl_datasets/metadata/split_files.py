"""A dataset's leakage-safe split kept beside its curated item list: split once, mapped by every rank.

Every rank of a job (and every later job) that splits the same items with the same fractions, seed
and stratification gets the same parts. So the first to ask writes them, under a lock, and the
others map its files: at 100M items a split takes minutes and gigabytes, which the eight ranks of a
node would otherwise each pay at the same time. The parts are written a slice of items at a time,
never whole in memory, as Arrow IPC files that ``MediaIds.read`` maps (a part then pickles as its
path)::

    <item list folder>/splits/<settings digest>/part-<i>.arrow    each part's media ids, in item order
                                                manifest.json     written last: the parts and their counts

A part file that is missing or does not hold its counted ids is not trusted: the split is written
again. A folder that cannot be written (a read-only cache) leaves the split to memory, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._version import __version__
from ..atomic import replacing
from ..errors import CacheMissError, VLDatasetsError
from ..locks import hold_lock
from .media_ids import MediaIds

logger = logging.getLogger("vl_datasets")

FORMAT = 1  # of the files below: a new format is a new settings digest, so a new split
SPLITS = "splits"
MANIFEST_FILE, LOCK_FILE = "manifest.json", "split.lock"
LOCK_TIMEOUT_S = 3600.0  # splitting 100M items takes minutes: the other ranks must outlast it


def split_folder(list_folder: Path, fractions: dict[str, float], seed: int, stratify: bool) -> Path:
    """Where the split of the items listed in ``list_folder`` with these settings is kept."""
    # The fractions in their order, as pairs: the parts are drawn in it, and their files are numbered
    # by it. As a mapping, sort_keys made {"test", "train"} the folder of {"train", "test"}, and a part
    # pickled as its file's path came back as the other part once the second call wrote its own.
    settings = {
        "format": FORMAT,
        "library": __version__,
        "fractions": list(fractions.items()),
        "seed": seed,
        "stratify": stratify,
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return list_folder / SPLITS / digest


def part_files(folder: Path, count: int) -> list[Path]:
    """The files of a split of ``count`` parts, in the parts' order."""
    return [folder / f"part-{number}.arrow" for number in range(count)]


def kept_split(folder: Path, names: list[str], write: Callable[[list[Path]], list[int]]) -> dict[str, MediaIds] | None:
    """The parts kept in ``folder``; when there are none, ``write(files)`` writes them first (one
    process of the node at a time) and returns how many ids each holds. None when the folder
    cannot be written: split in memory."""
    found = _read(folder, names)
    if found is not None:
        return found
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with hold_lock(folder / LOCK_FILE, timeout_s=LOCK_TIMEOUT_S, what=f"splitting into {folder}"):
            found = _read(folder, names)  # another rank may have written it meanwhile
            if found is not None:
                return found
            counts = write(part_files(folder, len(names)))
            _write_manifest(folder / MANIFEST_FILE, {"parts": dict(zip(names, counts)), "created_at": time.time()})
    except OSError as exc:
        if isinstance(exc, VLDatasetsError):  # a lock timeout, an index pruned under the job: not the folder's fault
            raise
        logger.warning("Cannot keep the split in %s (%s): splitting in memory.", folder, exc)
        return None
    return _read(folder, names)


def _read(folder: Path, names: list[str]) -> dict[str, MediaIds] | None:
    """The parts in ``folder``, mapped, when its manifest names these parts and each file holds its count."""
    try:
        counts = json.loads((folder / MANIFEST_FILE).read_text())["parts"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(counts, dict) or list(counts) != names:
        return None
    parts = {}
    for name, path in zip(names, part_files(folder, len(names))):
        try:
            parts[name] = MediaIds.read(path)
        except CacheMissError:
            return None
        if len(parts[name]) != counts[name]:
            return None
    return parts


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    with replacing(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))
