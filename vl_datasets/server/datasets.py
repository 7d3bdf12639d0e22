"""Datasets at rest, as the local service serves them: one folder per dataset id.

<root>/<dataset_id>/metadata.json    Visual Layer's JSON export schema ({"info", "media_items"})
<root>/<dataset_id>/images/<file_path>
<root>/<dataset_id>/dataset.json     optional dataset-object fields (READY when absent)
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

# Folder names only: a dataset id must never reach outside the root (``..``, slashes).
_DATASET_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def status_key(value: object) -> str:
    """A status compared the contract's way: ignoring case, spaces, underscores (``READ ONLY``)."""
    return re.sub(r"[\s_-]+", "", str(value)).upper()


@dataclass(frozen=True)
class StoredDataset:
    """One dataset folder, parsed."""

    id: str
    folder: Path
    info: dict[str, Any]
    media_items: list[dict[str, Any]]
    fields: dict[str, Any]
    """What ``dataset.json`` holds: it wins over every derived field of the dataset object."""
    created_at: str
    """Derived creation time, used when neither dataset.json nor info gives one."""

    @property
    def status(self) -> str:
        """The status as written (``status_new``, then the legacy ``status``), READY by default."""
        return str(self.fields.get("status_new") or self.fields.get("status") or "READY")

    @property
    def ready(self) -> bool:
        """Only a READY dataset can be exported."""
        return status_key(self.status) == "READY"

    def as_json(self) -> dict[str, Any]:
        """The dataset object of the contract (§3)."""
        body = {
            "id": self.id,
            "display_name": self.info.get("dataset") or self.id,
            "description": self.info.get("description") or "",
            "created_at": self.info.get("dataset_creation_time") or self.created_at,
            "status_new": self.status,
            "status": self.status,
            "progress": 100.0 if self.ready else 0.0,
            "n_images": sum(1 for m in self.media_items if m.get("media_type", "image") == "image"),
            "n_videos": len(_video_names(self.media_items)),
            "n_objects": sum(
                1 for m in self.media_items for i in m.get("metadata_items") or [] if i.get("type") == "object_label"
            ),
            "fatal_error_msg": None,
        }
        body.update(self.fields)
        return body

    def image_path(self, item: dict[str, Any]) -> Path:
        """Where an item's image lies on disk."""
        return self.folder / "images" / item["file_path"]


def _video_names(items: list[dict[str, Any]]) -> set[str]:
    # Real exports name a frame's video in video_info (video_name; the docs also show video_id).
    names = set()
    for item in items:
        for entry in item.get("metadata_items") or []:
            if entry.get("type") == "video_info":
                props = entry.get("properties") or {}
                name = props.get("video_name") or props.get("video_id")
                if name:
                    names.add(str(name))
    return names


class DatasetStore:
    """The datasets under ``root``, each parsed once and parsed again only when its files change.

    Status polls arrive every few seconds; re-reading a million-item metadata.json for each
    would make the service slower than the platform it stands in for.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
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
        """The dataset ``dataset_id``, or None when there is no such folder."""
        if not _DATASET_ID.fullmatch(dataset_id):
            return None
        folder = self.root / dataset_id
        stamp = _stamp(folder / "metadata.json", folder / "dataset.json")
        if stamp is None:
            return None
        with self._lock:
            cached = self._cache.get(dataset_id)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        dataset = _read(folder, dataset_id)
        with self._lock:
            self._cache[dataset_id] = (stamp, dataset)
        return dataset


def _stamp(metadata: Path, extra: Path) -> tuple | None:
    try:
        meta = metadata.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        more = extra.stat()
        extra_stamp: tuple = (more.st_mtime_ns, more.st_size)
    except (FileNotFoundError, NotADirectoryError):
        extra_stamp = ()
    return (meta.st_mtime_ns, meta.st_size, extra_stamp)


def _read(folder: Path, dataset_id: str) -> StoredDataset:
    metadata = folder / "metadata.json"
    payload = json.loads(metadata.read_text(encoding="utf-8"))
    # A bare list of media items is accepted too: hand-made folders often start that way.
    items = payload.get("media_items", []) if isinstance(payload, dict) else payload
    info = payload.get("info", {}) if isinstance(payload, dict) else {}
    extra = folder / "dataset.json"
    fields = json.loads(extra.read_text(encoding="utf-8")) if extra.is_file() else {}
    if not isinstance(items, list) or not isinstance(info, dict) or not isinstance(fields, dict):
        raise ValueError(f"{metadata} is not a Visual Layer JSON export ({{'info': ..., 'media_items': [...]}}).")
    created = datetime.fromtimestamp(metadata.stat().st_mtime).isoformat(timespec="microseconds")
    return StoredDataset(dataset_id, folder, info, items, fields, created)
