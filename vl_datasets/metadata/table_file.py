"""The normalized table on disk: an uncompressed Arrow IPC file, memory-mapped when read.

Arrow IPC rather than parquet: reading it costs no decoding, so opening a million-item export is
a memory map, and every process that opens it (DataLoader workers under spawn or forkserver too)
shares the same page-cache pages. A table remembers the metadata file it was built from (name,
size, modification time), so a stale copy is never reused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa

from ..atomic import replacing
from ..errors import SchemaError
from .normalize import is_normalized, with_schema_metadata

SOURCE_KEY = b"vl_datasets.source"


def stamp_source(table: pa.Table, source: str | os.PathLike) -> pa.Table:
    """``table`` marked as built from the metadata file ``source`` as it is now."""
    return with_schema_metadata(table, source_stamp(source))


def source_stamp(source: str | os.PathLike) -> dict[bytes, bytes]:
    """The schema metadata that marks a table as built from the metadata file ``source`` as it is now."""
    return {SOURCE_KEY: json.dumps(_fingerprint(Path(source))).encode()}


def write_normalized(table: pa.Table, path: str | os.PathLike) -> None:
    """Write a normalized table to ``path`` atomically (temp file, rename)."""
    if not is_normalized(table):
        raise SchemaError(
            "write_normalized takes a table returned by normalize() or read_metadata().",
            field="vl_datasets.normalized_version",
        )
    with replacing(Path(path)) as tmp, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        # One record batch: readers then get single-chunk columns they can use without copying.
        writer.write_table(table.combine_chunks(), max_chunksize=max(len(table), 1))


def read_normalized(path: str | os.PathLike, *, source: str | os.PathLike | None = None) -> pa.Table | None:
    """A table written by ``write_normalized``, memory-mapped; or None when there is none to reuse:
    the file is missing or unreadable, was written by another version of the library, or (with
    ``source``) was built from a metadata file of another name, size or modification time."""
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except (OSError, pa.ArrowException):
        return None
    if not is_normalized(table):
        return None
    if source is not None:
        built_from = (table.schema.metadata or {}).get(SOURCE_KEY)
        if built_from is None or json.loads(built_from) != _fingerprint(Path(source)):
            return None
    return table


def _fingerprint(path: Path) -> dict:
    stat = path.stat()
    return {"name": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
