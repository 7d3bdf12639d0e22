"""Datasets at rest, as the local service serves them: one folder per dataset id.

<root>/<dataset_id>/metadata.json    Visual Layer's JSON export schema ({"info", "media_items"})
<root>/<dataset_id>/images/<file_path>
<root>/<dataset_id>/dataset.json     optional dataset-object fields (READY when absent)

A dataset's status comes from dataset.json alone, so a start of an export is answered at once; its
counts and ``info`` come from the columnar form of metadata.json (``indexes``), built in the
background the first time a version of the file is asked for.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .columnar import Summary
from .indexes import IndexBuild, IndexStore

# Folder names only: a dataset id must never reach outside the root (``..``, slashes).
_DATASET_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Snapshot ids are uuids, as the platform's are, derived so that the same dataset keeps the same one.
_SNAPSHOT_IDS = uuid.UUID("6f1c0a52-8f3e-4d8e-9b1a-5c2d7e4f9a10")


def status_key(value: object) -> str:
    """A status compared the contract's way: ignoring case, spaces, underscores (``READ ONLY``)."""
    return re.sub(r"[\s_-]+", "", str(value)).upper()


@dataclass(frozen=True)
class StoredDataset:
    """One dataset folder: its dataset.json, and the build of its metadata's columnar form."""

    id: str
    folder: Path
    fields: dict[str, Any]
    """What ``dataset.json`` holds: it wins over every derived field of the dataset object."""
    created_at: str
    """Derived creation time, used when neither dataset.json nor info gives one."""
    index: IndexBuild

    @property
    def metadata_path(self) -> Path:
        return self.folder / "metadata.json"

    @property
    def status(self) -> str:
        """The status as written (``status_new``, then the legacy ``status``), READY by default."""
        return str(self.fields.get("status_new") or self.fields.get("status") or "READY")

    @property
    def ready(self) -> bool:
        """Only a READY dataset can be exported."""
        return status_key(self.status) == "READY"

    def as_json(self, summary: Summary) -> dict[str, Any]:
        """The dataset object of the contract (§3)."""
        info = summary.info
        body = {
            "id": self.id,
            "display_name": info.get("dataset") or self.id,
            "description": info.get("description") or "",
            "created_at": info.get("dataset_creation_time") or self.created_at,
            "status_new": self.status,
            "status": self.status,
            "progress": 100.0 if self.ready else 0.0,
            "n_images": summary.n_images,
            "n_videos": summary.n_videos,
            "n_objects": summary.n_objects,
            "fatal_error_msg": None,
        }
        body.update(self.fields)
        return body

    def snapshots(self, summary: Summary) -> list[dict[str, Any]]:
        """The snapshot list (§2). The service keeps no history, and an export reads the dataset as it is
        now, so that is the one snapshot: current, taken at creation, with the dataset object's counts."""
        dataset = self.as_json(summary)
        snapshot_id = uuid.uuid5(_SNAPSHOT_IDS, f"{self.id}@{dataset['created_at']}")
        return [
            {"snapshot_id": str(snapshot_id), "n_images": dataset["n_images"], "is_current": True, "reason": "creation"}
        ]

    def image_path(self, item: dict[str, Any]) -> Path:
        """Where an item's image lies on disk."""
        return self.folder / "images" / item["file_path"]


class DatasetStore:
    """The datasets under ``root``; each metadata.json version is indexed once (``IndexStore``)."""

    def __init__(self, root: Path, indexes: IndexStore) -> None:
        self.root = Path(root)
        self.indexes = indexes
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple, StoredDataset]] = {}

    def ids(self) -> list[str]:
        """The dataset ids found under the root, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if _DATASET_ID.fullmatch(p.name) and (p / "metadata.json").is_file()
        )

    def get(self, dataset_id: str) -> StoredDataset | None:
        """The dataset ``dataset_id``, or None when there is no such folder. Never waits for an index."""
        if not _DATASET_ID.fullmatch(dataset_id):
            return None
        folder = self.root / dataset_id
        metadata, extra = _stamp(folder / "metadata.json"), _stamp(folder / "dataset.json")
        if metadata is None:
            return None
        with self._lock:
            cached = self._cache.get(dataset_id)
        if cached is not None and cached[0] == (metadata, extra):
            return cached[1]
        dataset = StoredDataset(
            dataset_id,
            folder,
            _fields(folder / "dataset.json") if extra is not None else {},
            datetime.fromtimestamp(metadata[1] / 1e9).isoformat(timespec="microseconds"),
            self.indexes.index_of(folder / "metadata.json", metadata),
        )
        with self._lock:
            self._cache[dataset_id] = ((metadata, extra), dataset)
        return dataset

    def index_all(self) -> None:
        """Start indexing every dataset now, so the first request for a large one waits less."""
        for dataset_id in self.ids():
            with contextlib.suppress(ValueError, OSError):  # a broken dataset.json is answered 500 when asked
                self.get(dataset_id)


def _stamp(path: Path) -> tuple[int, int] | None:
    """(size, mtime_ns): a new version of the file has a new stamp."""
    try:
        stat = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (stat.st_size, stat.st_mtime_ns)


def _fields(path: Path) -> dict[str, Any]:
    fields = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(fields, dict):
        raise ValueError(f"{path} does not hold a JSON object of dataset fields.")
    return fields
