"""Build an export ZIP the way Visual Layer does (contract §5): metadata at the root, optional images/."""

from __future__ import annotations

import io
import json
import posixpath
import re
import zipfile
from collections import Counter
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
IMAGE_LAYOUTS = ("platform", "file_path", "file_name", "media_id")
"""``platform`` (the default) lays images out as the docs show for each format: ``images/<file_path>``
in a JSON export, a flat ``images/<image_filename>`` in a Parquet one. The others force one naming
on both formats, for the contract's undocumented variants."""
METADATA_ITEM_ENCODINGS = ("json", "nested")
EXPORT_FORMATS = ("json", "parquet")
_UNSAFE_NAME = re.compile(r"[/\\]")


def flat_names(items: list[dict[str, Any]]) -> list[str | None]:
    """Each item's ``image_filename``: a name inside the flat ``images/`` of a Parquet export.

    The file name where it is unique in the export; ``<media_id><ext>`` for every item whose name
    repeats (video frames named ``output_000001.jpg`` under many videos), so that copying
    ``images/{image_filename}`` into one folder, as the docs' pandas snippet does, loses no image.
    Names are compared ignoring case: that folder may be on a case-insensitive filesystem. None for
    an item with neither file name nor path (hand-made bad metadata): it has no image.
    """
    bases = [posixpath.basename(str(item.get("file_name") or item.get("file_path") or "")) for item in items]
    counts = Counter(base.lower() for base in bases if base)
    names: list[str | None] = [
        None
        if not base
        else base
        if counts[base.lower()] == 1
        else _UNSAFE_NAME.sub("_", str(item.get("media_id"))) + posixpath.splitext(base)[1]
        for item, base in zip(items, bases)
    ]
    given = [name.lower() for name in names if name is not None]
    if len(set(given)) != len(given):  # a file named like another item's media id: never drop an image
        raise ValueError("image_filename values collide even after disambiguating repeated names by media id")
    return names


def image_filenames(items: list[dict[str, Any]], everything: list[dict[str, Any]]) -> list[str | None]:
    """``flat_names`` of ``items``, decided over the whole dataset (``everything``), so that an item's
    name never depends on the selection: the chunks of a large export, exported separately, never
    hold two images under one name, and a metadata-only export names the files the others carry."""
    ids = [item.get("media_id") for item in everything]
    if len(set(ids)) != len(ids):  # hand-made metadata with repeated ids: name within the export
        return flat_names(items)
    by_id = dict(zip(ids, flat_names(everything)))
    return [by_id[item.get("media_id")] for item in items]


def image_members(items: list[dict[str, Any]], layout: str, flat_names: list[str | None] | None) -> list[str]:
    """Where each item's image goes inside the ZIP (contract §5 leaves the naming open):
    ``flat_names`` (a parquet export's ``image_filename`` column) when there are any."""
    if flat_names is not None:
        return [f"images/{name}" for name in flat_names]
    return [image_member(item, "file_path" if layout == "platform" else layout) for item in items]


def image_member(item: dict[str, Any], layout: str) -> str:
    """Where an item's image goes inside the ZIP under one of the forced layouts."""
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


def parquet_bytes(
    items: list[dict[str, Any]], metadata_items: str = "json", image_filenames: list[str | None] | None = None
) -> bytes:
    """``metadata.parquet``: one row per item, the scalar fields, ``image_filename`` when given, and
    ``metadata_items``.

    ``metadata_items="json"`` writes a JSON string per row; ``"nested"`` a list<struct<type,
    properties: struct>> column (pyarrow unions the property keys it sees across rows).
    """
    columns: dict[str, list[Any]] = {
        name: [item.get(name) for item in items] for name in SCALAR_FIELDS if any(name in item for item in items)
    }
    if image_filenames is not None:
        columns["image_filename"] = image_filenames
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
    image_layout: str = "platform",
    parquet_metadata_items: str = "json",
) -> None:
    """Write the ZIP of ``items`` (already selected) to ``dest``."""
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        # The platform's parquet names each row's image in one flat folder, even without images.
        flat = export_format == "parquet" and image_layout == "platform"
        names = image_filenames(items, dataset.media_items) if flat else None
        if export_format == "json":
            payload = {"info": export_info(dataset, len(items)), "media_items": items}
            zf.writestr("metadata.json", json.dumps(payload))
        else:
            zf.writestr("metadata.parquet", parquet_bytes(items, parquet_metadata_items, names))
        if not include_images:
            return
        members = image_members(items, image_layout, names)
        written: set[str] = set()
        for item, member in zip(items, members):
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
