"""Datasets at rest, as the local service serves them: one folder per dataset id.

    <root>/<dataset_id>/metadata.json    Visual Layer's JSON export schema
    <root>/<dataset_id>/images/<file_path>
    <root>/<dataset_id>/dataset.json     optional dataset-object fields (READY when absent)
"""

from __future__ import annotations

import io
import json
import random
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from PIL import Image


def normalize_status(value: object) -> str:
    return re.sub(r"[\s_\-]+", "_", str(value).strip()).upper()


@dataclass(frozen=True)
class StoredDataset:
    """One dataset folder, read once when first asked for."""

    id: str
    folder: Path
    info: dict
    media_items: list[dict]
    fields: dict

    @property
    def status(self) -> str:
        return normalize_status(self.fields.get("status_new") or self.fields.get("status") or "READY")

    def as_json(self) -> dict:
        """The dataset object of the contract (§3)."""
        created = self.fields.get("created_at") or self.info.get("dataset_creation_time") or "2025-01-01T00:00:00"
        body = {
            "id": self.id,
            "display_name": self.info.get("dataset") or self.id,
            "description": self.info.get("description", ""),
            "created_at": created,
            "status_new": self.status,
            "status": self.status,
            "progress": 100 if self.status == "READY" else 0,
            "n_images": sum(1 for m in self.media_items if m.get("media_type", "image") == "image"),
            "n_videos": 0,
            "n_objects": sum(1 for m in self.media_items for i in m.get("metadata_items", [])
                             if i.get("type") == "object_label"),
            "fatal_error_msg": None,
        }
        body.update(self.fields)
        return body

    def image_path(self, item: dict) -> Path:
        return self.folder / "images" / item["file_path"]


def load_dataset(root: Path, dataset_id: str) -> StoredDataset | None:
    """The dataset folder ``dataset_id`` under ``root``, or None when there is none."""
    if not re.fullmatch(r"[A-Za-z0-9._-]+", dataset_id) or dataset_id.startswith("."):
        return None
    folder = root / dataset_id
    metadata = folder / "metadata.json"
    if not metadata.is_file():
        return None
    payload = json.loads(metadata.read_text(encoding="utf-8"))
    items = payload.get("media_items", []) if isinstance(payload, dict) else payload
    info = payload.get("info", {}) if isinstance(payload, dict) else {}
    extra = folder / "dataset.json"
    fields = json.loads(extra.read_text(encoding="utf-8")) if extra.is_file() else {}
    return StoredDataset(dataset_id, folder, info, items, fields)


def human_size(n_bytes: int) -> str:
    """Visual Layer writes sizes like ``"48.27KB"``."""
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.2f}{unit}"
    return f"{n_bytes}B"


LABELS = ("cat", "dog", "bird")


def _synthetic_items(rng: random.Random, n_items: int, n_clusters: int, size: tuple[int, int]) -> list[dict]:
    clusters = [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(max(n_clusters, 1))]
    items = []
    for i in range(n_items):
        label = LABELS[i % len(LABELS)]
        split = "train" if i % 4 else "val"
        media_id = str(uuid.UUID(int=rng.getrandbits(128)))
        metadata_items = [{"type": "image_label",
                           "properties": {"category_name": label, "source": "User", "original_id": i}}]
        if i % 3 == 0:
            metadata_items.append({"type": "issue", "properties": {
                "issue_type": "duplicates", "confidence": round(0.9 + 0.01 * (i % 10), 3),
                "duplicate_group_id": f"group-{i // 6}", "duplicate_threshold": 0.96}})
        if i % 5 == 0:
            metadata_items.append({"type": "issue", "properties": {"issue_type": "blur",
                                                                   "confidence": round(rng.random(), 3)}})
        items.append({
            "media_id": media_id,
            "media_type": "image",
            "file_name": f"img_{i:04d}.jpg",
            "file_path": f"{split}/{label}/img_{i:04d}.jpg",
            "height": size[1],
            "width": size[0],
            "uniqueness_score": round(rng.random(), 4),
            "url": f"https://app.visual-layer.com/dataset/synthetic/data?media_id={media_id}",
            "cluster_id": clusters[i % len(clusters)],
            "metadata_items": metadata_items,
        })
    return items


def write_dataset(root: str | Path, dataset_id: str, *, n_items: int = 8, n_clusters: int = 3,
                  status: str = "READY", media_items: list[dict] | None = None,
                  image_size: tuple[int, int] = (64, 48), seed: int = 0) -> Path:
    """Write a dataset the local service can serve: real JPEGs and Visual Layer metadata.

    With ``media_items`` those items are written as given, with an image made for each
    ``file_path``. Deterministic for a ``seed``. Returns the dataset's folder.
    """
    rng = random.Random(seed)
    folder = Path(root) / dataset_id
    items = media_items if media_items is not None else _synthetic_items(rng, n_items, n_clusters, image_size)
    for item in items:
        width, height = item.get("width", image_size[0]), item.get("height", image_size[1])
        colour = tuple(rng.randrange(256) for _ in range(3))
        buffer = io.BytesIO()
        Image.new("RGB", (width, height), colour).save(buffer, format="JPEG", quality=90)
        target = folder / "images" / item["file_path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(buffer.getvalue())
        item.setdefault("file_size", human_size(len(buffer.getvalue())))
    info = {"schema_version": "1.1", "dataset": dataset_id, "description": "synthetic dataset",
            "dataset_url": f"https://app.visual-layer.com/dataset/{dataset_id}",
            "export_time": datetime(2025, 1, 1).isoformat(), "dataset_creation_time": "2025-01-01T00:00:00",
            "exported_by": "vl_datasets", "total_media_items": len(items)}
    (folder / "metadata.json").write_text(json.dumps({"info": info, "media_items": items}, indent=1),
                                          encoding="utf-8")
    if normalize_status(status) != "READY":
        (folder / "dataset.json").write_text(json.dumps({"status_new": status}), encoding="utf-8")
    return folder
