"""Build an export ZIP the way Visual Layer does (contract §5): metadata at the root, optional images/."""

from __future__ import annotations

import io
import json
import posixpath
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .datasets import StoredDataset

SCALAR_FIELDS = (
    "media_id",
    "media_type",
    "file_name",
    "file_path",
    "file_size",
    "height",
    "width",
    "uniqueness_score",
    "url",
    "cluster_id",
)
IMAGE_LAYOUTS = ("file_path", "file_name", "media_id")
METADATA_ITEM_ENCODINGS = ("json", "nested")
EXPORT_FORMATS = ("json", "parquet")


def image_member(item: dict[str, Any], layout: str) -> str:
    """Where an item's image goes inside the ZIP; the contract leaves the naming open, so all three exist."""
    if layout == "file_name":
        return f"images/{item['file_name']}"
    if layout == "media_id":
        ext = posixpath.splitext(item["file_path"])[1] or ".jpg"
        return f"images/{item['media_id']}{ext}"
    return f"images/{item['file_path']}"


def export_info(dataset: StoredDataset, n_items: int) -> dict[str, Any]:
    """The ``info`` block of a JSON export; fields a hand-made dataset lacks are filled in."""
    info = {
        "schema_version": "1.1",
        "dataset": dataset.info.get("dataset") or dataset.id,
        "description": dataset.info.get("description") or "",
        "dataset_url": f"https://app.visual-layer.com/dataset/{dataset.id}/data",
        "dataset_creation_time": dataset.created_at,
        "exported_by": "local Visual Layer service",
    }
    info.update(dataset.info)
    info.update(export_time=datetime.now().isoformat(timespec="microseconds"), total_media_items=n_items)
    return info


def parquet_bytes(items: list[dict[str, Any]], metadata_items: str = "json") -> bytes:
    """``metadata.parquet``: one row per item, the scalar fields, and ``metadata_items``.

    ``metadata_items="json"`` writes a JSON string per row; ``"nested"`` a list<struct<type,
    properties: struct>> column (pyarrow unions the property keys it sees across rows).
    """
    columns: dict[str, list[Any]] = {
        name: [item.get(name) for item in items] for name in SCALAR_FIELDS if any(name in item for item in items)
    }
    entries = [item.get("metadata_items") or [] for item in items]
    columns["metadata_items"] = entries if metadata_items == "nested" else [json.dumps(e) for e in entries]
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    return buffer.getvalue()


def build_export_zip(
    dataset: StoredDataset,
    items: list[dict[str, Any]],
    dest: Path,
    *,
    export_format: str,
    include_images: bool,
    image_layout: str = "file_path",
    parquet_metadata_items: str = "json",
) -> None:
    """Write the ZIP of ``items`` (already selected) to ``dest``."""
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        if export_format == "json":
            payload = {"info": export_info(dataset, len(items)), "media_items": items}
            zf.writestr("metadata.json", json.dumps(payload))
        else:
            zf.writestr("metadata.parquet", parquet_bytes(items, parquet_metadata_items))
        if not include_images:
            return
        written: set[str] = set()
        for item in items:
            member = image_member(item, image_layout)
            if member in written:
                # The file_name layout collides when names repeat (video frames): keep the first,
                # which is exactly the ambiguity the contract tells clients to refuse to guess.
                continue
            written.add(member)
            source = dataset.image_path(item)
            if not source.is_file():
                raise FileNotFoundError(f"Image of media {item.get('media_id')} not found at {source}")
            # JPEGs do not compress: store them, as object-storage exports do.
            zf.write(source, member, compress_type=zipfile.ZIP_STORED)
