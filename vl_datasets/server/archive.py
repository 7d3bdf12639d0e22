"""Build an export ZIP the way Visual Layer does: metadata file at the root, optional images/."""

from __future__ import annotations

import io
import json
import posixpath
import zipfile
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .datasets import StoredDataset

SCALAR_FIELDS = ("media_id", "media_type", "file_name", "file_path", "file_size", "height", "width",
                 "uniqueness_score", "url", "cluster_id")
IMAGE_LAYOUTS = ("file_path", "file_name", "media_id")


def image_member(item: dict, layout: str) -> str:
    """Where an item's image goes inside the ZIP; the contract leaves the naming open."""
    if layout == "file_name":
        return f"images/{item['file_name']}"
    if layout == "media_id":
        ext = posixpath.splitext(item["file_path"])[1] or ".jpg"
        return f"images/{item['media_id']}{ext}"
    return f"images/{item['file_path']}"


def _parquet_bytes(items: list[dict], metadata_items: str) -> bytes:
    columns = {name: [item.get(name) for item in items] for name in SCALAR_FIELDS
               if any(name in item for item in items)}
    if metadata_items == "nested":
        # list<struct<type, properties: struct<...>>>: pyarrow unions the property keys it sees.
        columns["metadata_items"] = [item.get("metadata_items", []) for item in items]
    else:
        columns["metadata_items"] = [json.dumps(item.get("metadata_items", [])) for item in items]
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    return buffer.getvalue()


def build_export_zip(dataset: StoredDataset, items: list[dict], dest: Path, *, export_format: str,
                     include_images: bool, image_layout: str = "file_path",
                     parquet_metadata_items: str = "json") -> None:
    """Write the ZIP of ``items`` to ``dest``."""
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        if export_format == "json":
            info = dict(dataset.info, export_time=datetime.now().isoformat(), total_media_items=len(items))
            zf.writestr("metadata.json", json.dumps({"info": info, "media_items": items}))
        else:
            zf.writestr("metadata.parquet", _parquet_bytes(items, parquet_metadata_items))
        if include_images:
            for item in items:
                # JPEGs do not compress: store them, as object-storage exports do.
                zf.write(dataset.image_path(item), image_member(item, image_layout), compress_type=zipfile.ZIP_STORED)
