"""Build an export ZIP the way Visual Layer does (contract §5): metadata at the root, optional images/.

Written as it is read, in bounded memory whatever the dataset's size: a Parquet export by record
batches of the columnar form, a JSON export item by item from metadata.json, both streamed into
their ZIP member (ZIP64 where needed).
"""

from __future__ import annotations

import json
import posixpath
import zipfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from . import image_names
from .columnar import BATCH_ROWS, METADATA_ITEMS
from .datasets import StoredDataset
from .metadata_stream import iter_media_items
from .selection import Rows

IMAGE_LAYOUTS = ("platform", "file_path", "file_name", "media_id")
"""``platform`` (the default) lays images out as the docs show for each format: ``images/<file_path>``
in a JSON export, a flat ``images/<image_filename>`` in a Parquet one. The others force one naming
on both formats, for the contract's undocumented variants."""
METADATA_ITEM_ENCODINGS = ("json", "nested")
EXPORT_FORMATS = ("json", "parquet")
# Members of exports this large may pass 4 GiB, which needs ZIP64 headers written before their data.
ZIP64_FROM_ROWS = 100_000
# Bytes of JSON gathered before each write into the ZIP member: few, large deflate calls.
JSON_FLUSH_BYTES = 1 << 20
Progress = Callable[[float], None]


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


def export_info(dataset: StoredDataset, info: dict[str, Any], n_items: int) -> dict[str, Any]:
    """The ``info`` block of a JSON export; fields a hand-made dataset lacks are filled in."""
    block = {
        "schema_version": "1.1",
        "dataset": info.get("dataset") or dataset.id,
        "description": info.get("description") or "",
        "dataset_url": f"https://app.visual-layer.com/dataset/{dataset.id}/data",
        "dataset_creation_time": dataset.created_at,
        "exported_by": "local Visual Layer service",
    }
    block.update(info)
    block.update(export_time=datetime.now().isoformat(timespec="microseconds"), total_media_items=n_items)
    return block


def repeated_names(rows: Rows) -> pa.Array:
    """The lower-cased names that take ``<media_id><ext>``, decided over the whole dataset so that a
    row's name never depends on the selection; within the export only where media ids repeat."""
    summary = rows.index.summary
    if not summary.media_ids_unique:  # hand-made metadata with repeated ids: name within the export
        return image_names.plan(lambda: rows.batches(image_names.COLUMNS))
    if summary.name_collision is not None:
        raise ValueError(summary.name_collision)
    return rows.index.repeated_names()


def write_json(out: IO[bytes], dataset: StoredDataset, rows: Rows, on_progress: Progress) -> None:
    """``metadata.json``: the export's info, then its items as metadata.json holds them, streamed."""
    head = {"info": export_info(dataset, rows.index.summary.info, rows.count)}
    pending = [json.dumps(head)[:-1], ', "media_items": [']
    size, written = 0, 0
    for item in iter_media_items(dataset.metadata_path):
        if rows.wanted is not None and not rows.wanted.matches(item):
            continue
        text = json.dumps(item)
        pending.append(f", {text}" if written else text)
        size, written = size + len(text), written + 1
        if size >= JSON_FLUSH_BYTES:
            out.write("".join(pending).encode())
            pending, size = [], 0
            on_progress(written / max(rows.count, 1))
    pending.append("]}")
    out.write("".join(pending).encode())
    if written != rows.count:
        raise ValueError(f"{dataset.metadata_path} changed while it was exported ({written} items, not {rows.count}).")


def _nested_type(rows: Rows) -> pa.DataType:
    """The type pyarrow infers for every selected row's entries at once, found one batch at a time."""
    schemas = [
        pa.schema([("m", pa.array([json.loads(t) for t in batch.column(0).to_pylist()]).type)])
        for batch in rows.batches([METADATA_ITEMS])
    ]
    return pa.unify_schemas(schemas, promote_options="permissive").field("m").type


def _schema(rows: Rows, repeated: pa.Array | None, entries: pa.DataType) -> pa.Schema:
    index_schema = rows.index.columns.schema()
    fields = [index_schema.field(name) for name in rows.fields]
    if repeated is not None:
        fields.append(pa.field("image_filename", pa.string()))
    return pa.schema([*fields, pa.field(METADATA_ITEMS, entries)])


def write_parquet(out: IO[bytes], rows: Rows, encoding: str, repeated: pa.Array | None, on_progress: Progress) -> None:
    """``metadata.parquet``: one row per item, the scalar fields some item has, ``image_filename``
    when ``repeated`` is given, and ``metadata_items`` as JSON text (``encoding`` "json") or as
    list<struct<type, properties: struct>> ("nested", property keys unioned across rows)."""
    errors = rows.index.summary.field_errors
    if bad := [errors[name] for name in rows.fields if name in errors]:
        raise ValueError(bad[0])
    nested = encoding == "nested"
    schema = _schema(rows, repeated, _nested_type(rows) if nested else pa.string())
    names = list(dict.fromkeys([*rows.fields, *(image_names.COLUMNS if repeated is not None else []), METADATA_ITEMS]))
    done, pending = 0, []
    with pq.ParquetWriter(out, schema) as writer:
        for batch in rows.batches(names):
            arrays = [batch.column(name) for name in rows.fields]
            if repeated is not None:
                arrays.append(image_names.names(batch, repeated))
            entries = batch.column(METADATA_ITEMS)
            if nested:
                entries = pa.array([json.loads(t) for t in entries.to_pylist()], schema.field(METADATA_ITEMS).type)
            pending.append(pa.RecordBatch.from_arrays([*arrays, entries], schema=schema))
            done += batch.num_rows
            if sum(b.num_rows for b in pending) >= BATCH_ROWS:
                writer.write_table(pa.Table.from_batches(pending, schema))
                pending = []
                on_progress(done / max(rows.count, 1))
        if pending:
            writer.write_table(pa.Table.from_batches(pending, schema))


def _add_images(
    zf: zipfile.ZipFile,
    dataset: StoredDataset,
    rows: Rows,
    layout: str,
    repeated: pa.Array | None,
    drop_first: bool = False,
) -> None:
    items = list(rows.items())
    names = None
    if repeated is not None:
        batches = rows.batches(image_names.COLUMNS)
        names = [name for batch in batches for name in image_names.names(batch, repeated).to_pylist()]
    written: set[str] = set()
    pairs = list(zip(items, image_members(items, layout, names)))
    for item, member in pairs[1:] if drop_first else pairs:
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


def build_export_zip(
    dataset: StoredDataset,
    rows: Rows,
    dest: Path,
    *,
    export_format: str,
    include_images: bool,
    image_layout: str = "platform",
    parquet_metadata_items: str = "json",
    on_progress: Progress = lambda fraction: None,
    drop_first_image: bool = False,
) -> None:
    """Write the ZIP of ``rows`` to ``dest``; ``on_progress`` hears the fraction of rows written.
    ``drop_first_image`` leaves out the first row's image (a fault the tests switch on)."""
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        # The platform's parquet names each row's image in one flat folder, even without images.
        flat = export_format == "parquet" and image_layout == "platform"
        repeated = repeated_names(rows) if flat else None
        member = "metadata.json" if export_format == "json" else "metadata.parquet"
        with zf.open(member, "w", force_zip64=rows.count >= ZIP64_FROM_ROWS) as out:
            if export_format == "json":
                write_json(out, dataset, rows, on_progress)
            else:
                write_parquet(out, rows, parquet_metadata_items, repeated, on_progress)
        if include_images:
            _add_images(zf, dataset, rows, image_layout, repeated, drop_first_image)
