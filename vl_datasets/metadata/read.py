"""Find and read an export's metadata file (``metadata.parquet`` or ``metadata.json``) into the
normalized table of ``normalize``: whole (``read_metadata_file``) or a slice at a time
(``metadata_slices``, for the index build)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import SchemaError
from .items import gc_paused
from .json_depth import check_file_depth
from .json_export import check_export_opening, check_utf8, not_utf8, read_json_export
from .normalize import check_names, normalize, normalize_raw
from .stream import JSON_STREAM_BYTES, check_items_key_once, is_parquet, json_slices, parquet_slices
from .table_file import read_normalized, stamp_source, write_normalized

logger = logging.getLogger(__name__)

METADATA_FILE_NAMES = ("metadata.parquet", "metadata.json")


def find_metadata_file(export_dir: str | os.PathLike) -> Path:
    """``metadata.parquet`` (preferred) or ``metadata.json`` at the export folder's root."""
    folder = Path(export_dir)
    for name in METADATA_FILE_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise SchemaError(
        f"No metadata.parquet or metadata.json at the root of the export folder {folder}.", field="metadata.parquet"
    )


def read_metadata(export_dir: str | os.PathLike, *, cache_path: str | os.PathLike | None = None) -> pa.Table:
    """The normalized table of an export folder.

    With ``cache_path``, a normalized copy there is reused when it was written by this version of
    the library from the same metadata file (name, size, mtime), and is (re)written otherwise.
    """
    source = find_metadata_file(export_dir)
    if cache_path is not None:
        cached = read_normalized(cache_path, source=source)
        if cached is not None:
            return cached
    table = read_metadata_file(source)
    if cache_path is not None:
        try:
            write_normalized(table, cache_path)
        except OSError as exc:  # a read-only or full cache folder costs the next load time, not this one
            logger.warning("Could not cache the normalized metadata at %s: %s", cache_path, exc)
    return table


@dataclass(frozen=True)
class MetadataSlices:
    """A metadata file's normalized table as consecutive slices (``stream``), its media ids not
    yet checked unique. ``same_schema``: every slice has the first one's schema; otherwise (a
    streamed JSON export) unknown columns may be typed differently from slice to slice."""

    tables: Iterator[pa.Table]
    same_schema: bool


def metadata_slices(
    path: str | os.PathLike,
    *,
    batch_rows: int | None = None,
    skip: Collection[str] = (),
    left_out: Collection[str] = (),
) -> MetadataSlices:
    """One ``metadata.parquet`` or ``metadata.json`` file, read ``batch_rows`` rows at a time (by
    default ``stream.BATCH_ROWS``): a
    Parquet file by record batches, a JSON export of ``JSON_STREAM_BYTES`` or more incrementally. A
    smaller JSON export (or one that is no list of items) is read whole, as ``read_metadata_file`` does.
    A Parquet file's columns named in ``skip`` are not read, and the normalized columns named in
    ``left_out``, which the caller leaves out, are not made of the others: the slices hold them null."""
    path = Path(path)
    if is_parquet(path):
        slices = parquet_slices(path, batch_rows=batch_rows, skip=skip, left_out=left_out)
        return MetadataSlices(slices, same_schema=True)
    if path.stat().st_size >= JSON_STREAM_BYTES:
        tables = json_slices(path, batch_rows=batch_rows)
        if tables is not None:
            return MetadataSlices(tables, same_schema=False)
    return MetadataSlices(iter([read_metadata_file(path)]), same_schema=True)


def read_metadata_file(path: str | os.PathLike) -> pa.Table:
    """The normalized table of one ``metadata.parquet`` or ``metadata.json`` file."""
    path = Path(path)
    if is_parquet(path):
        try:
            check_names(pq.read_schema(path), str(path))  # read_table refuses a repeated name, naming no column
            raw = pq.read_table(path)
        except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:  # a column name that is not UTF-8
            raise SchemaError(f"{path} is not a readable parquet file ({exc}).", field="metadata") from None
        table = normalize(raw, source=str(path))
    else:
        check_utf8(path)  # both readers below would take bytes that are not UTF-8
        check_file_depth(path)  # and recurse once per level: a deep nesting would overflow their stacks
        check_export_opening(path)  # and Arrow's reader crashes on a text that opens with null
        check_items_key_once(path)  # both would keep the last of two media_items lists
        parsed = read_json_export(path)
        table = (
            normalize(_load_json(path), source=str(path))
            if parsed is None
            else normalize_raw(parsed[0], str(path), parsed[1])
        )
    return stamp_source(table, path)


def _load_json(path: Path) -> Any:
    with open(path, "rb") as stream:
        data = stream.read()
    try:
        # Decoded here as UTF-8: json.load would guess UTF-16 or UTF-32 from the first bytes.
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:  # check_utf8 ran first; the file changed since
        raise not_utf8(path, exc.start, exc.reason) from None
    del data
    with gc_paused():
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise SchemaError(f"{path} is not valid JSON ({exc}).", field="metadata") from None
