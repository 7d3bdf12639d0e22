"""Synthetic datasets in the layout the local service serves: real JPEGs and Visual Layer metadata."""

from __future__ import annotations

import copy
import io
import json
import random
import uuid
from pathlib import Path
from typing import Any

from PIL import Image

from .datasets import status_key

LABELS = ("cat", "dog", "bird")
CREATED_AT = "2025-01-01T00:00:00"


def human_size(n_bytes: int) -> str:
    """A size the way Visual Layer writes it: ``"48.27KB"``, ``"3.38MB"``."""
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.2f}{unit}"
    return f"{n_bytes}B"


def _uuid(rng: random.Random) -> str:
    # uuid4-shaped but drawn from the seeded generator: the same seed gives the same ids.
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _metadata_items(rng: random.Random, i: int, label: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = [
        {"type": "image_label", "properties": {"category_name": label, "source": "User", "original_id": i}}
    ]
    if i % 3 == 0:
        # Real exports carry one duplicates issue per threshold; two are enough to exercise that.
        for threshold in (0.96, 0.98):
            entries.append(
                {
                    "type": "issue",
                    "properties": {
                        "issue_type": "duplicates",
                        "confidence": round(0.96 + 0.004 * (i % 10), 3),
                        "duplicate_group_id": f"group-{i // 6}",
                        "duplicate_threshold": threshold,
                    },
                }
            )
    if i % 5 == 0:
        entries.append({"type": "issue", "properties": {"issue_type": "blur", "confidence": round(rng.random(), 3)}})
    return entries


def _synthetic_items(
    rng: random.Random, dataset_id: str, n_items: int, n_clusters: int, size: tuple[int, int]
) -> list[dict[str, Any]]:
    clusters = [_uuid(rng) for _ in range(max(n_clusters, 1))]
    items = []
    for i in range(n_items):
        label = LABELS[i % len(LABELS)]
        split = "val" if i % 4 == 0 else "train"
        media_id = _uuid(rng)
        items.append(
            {
                "media_id": media_id,
                "media_type": "image",
                "file_name": f"img_{i:04d}.jpg",
                "file_path": f"{split}/{label}/img_{i:04d}.jpg",
                "height": size[1],
                "width": size[0],
                "uniqueness_score": round(rng.random(), 4),
                "url": f"https://app.visual-layer.com/dataset/{dataset_id}/data?media_id={media_id}",
                "cluster_id": clusters[i % len(clusters)],
                "metadata_items": _metadata_items(rng, i, label),
            }
        )
    return items


def _jpeg(rng: random.Random, width: int, height: int) -> bytes:
    # Two seeded colours, split down the middle: each image differs, so a mix-up of images shows.
    image = Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
    image.paste(tuple(rng.randrange(256) for _ in range(3)), (0, 0, max(width // 2, 1), height))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_dataset(
    root: str | Path,
    dataset_id: str,
    *,
    n_items: int = 8,
    n_clusters: int = 3,
    status: str = "READY",
    media_items: list[dict[str, Any]] | None = None,
    image_size: tuple[int, int] = (64, 48),
    seed: int = 0,
) -> Path:
    """Write a dataset the local service can serve, and return its folder (``root/dataset_id``).

    Synthetic by default: ``n_items`` real JPEGs of ``image_size`` (width, height) in
    ``n_clusters`` clusters, labelled cat/dog/bird, with duplicates and blur issues. With
    ``media_items``, those items are written as given (a copy), with an image made for each
    ``file_path`` at the item's width and height. ``status`` other than READY goes to
    ``dataset.json`` as ``status_new``. Deterministic for a ``seed``.
    """
    rng = random.Random(seed)
    folder = Path(root) / dataset_id
    folder.mkdir(parents=True, exist_ok=True)
    synthetic = media_items is None
    items = (
        _synthetic_items(rng, dataset_id, n_items, n_clusters, image_size)
        if media_items is None
        else copy.deepcopy(media_items)
    )
    for item in items:
        if not item.get("file_path"):
            continue  # an item without a path (a test of bad metadata) has no image to write
        data = _jpeg(rng, int(item.get("width") or image_size[0]), int(item.get("height") or image_size[1]))
        target = folder / "images" / item["file_path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        if synthetic:
            item["file_size"] = human_size(len(data))
    info = {
        "schema_version": "1.1",
        "dataset": dataset_id,
        "description": "synthetic dataset",
        "dataset_url": f"https://app.visual-layer.com/dataset/{dataset_id}/data",
        "export_time": CREATED_AT,
        "dataset_creation_time": CREATED_AT,
        "exported_by": "vl_datasets",
        "total_media_items": len(items),
    }
    (folder / "metadata.json").write_text(json.dumps({"info": info, "media_items": items}, indent=1), encoding="utf-8")
    extra = folder / "dataset.json"
    if status_key(status) != "READY":
        extra.write_text(json.dumps({"status_new": status}), encoding="utf-8")
    elif extra.exists():
        extra.unlink()  # rewriting a dataset as READY must not leave an old status behind
    return folder
