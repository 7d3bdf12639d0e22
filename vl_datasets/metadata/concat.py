"""The metadata files of a selection exported in chunks, written as one file of their format.

A Parquet file's record batches are copied under the schema that unifies every chunk's (``unify``:
a column all null in one chunk and text in another is text). A JSON export's media items are
streamed (``stream.json_values``) into one export, with the first chunk's ``info``. Either way
one record batch or one media item is held at a time, whatever the selection's size.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import CorruptArchiveError, SchemaError
from .json_depth import check_file_depth
from .json_export import check_utf8
from .stream import is_parquet, items_prefix, json_values
from .unify import conformed, unified_schema


def concatenate_metadata(parts: list[Path], folder: Path) -> int:
    """Write the metadata files ``parts`` (one per chunk, in order, all of one name) as one file of
    that name in ``folder``; return its rows."""
    names = {part.name for part in parts}
    if len(names) != 1:
        raise CorruptArchiveError(
            f"The chunks' metadata files differ in format ({', '.join(sorted(names))}): they cannot be joined.",
            path=str(parts[0].parent),
        )
    target = folder / parts[0].name
    return _parquet(parts, target) if is_parquet(parts[0]) else _json(parts, target)


def media_ids_of(path: Path) -> list:
    """The media ids a metadata file holds, in order, read without normalizing the rest (a chunk
    may hold millions of rows, normalized once they are joined). SchemaError when none can be read."""
    try:
        if is_parquet(path):
            return pq.read_table(path, columns=["media_id"]).column(0).to_pylist()
        prefix = _json_prefix(path)
        if prefix is None:
            raise SchemaError(f"{path} is neither a JSON export object nor a list of media items.", field="metadata")
        return [item.get("media_id") if isinstance(item, dict) else None for item in json_values(path, prefix)]
    except (pa.ArrowException, OSError, KeyError) as exc:
        raise SchemaError(f"{path} has no readable media_id column ({exc}).", field="media_id") from None


def _parquet(parts: list[Path], target: Path) -> int:
    files = [pq.ParquetFile(part) for part in parts]
    schema = unified_schema([file.schema_arrow for file in files])
    rows = 0
    with pq.ParquetWriter(target, schema, compression="snappy") as writer:
        for file in files:
            for batch in file.iter_batches():
                writer.write_table(conformed(pa.Table.from_batches([batch]), schema))
                rows += batch.num_rows
    return rows


def _json_prefix(path: Path) -> str | None:
    """``stream.items_prefix`` of a JSON file checked first as a streamed read checks it: UTF-8, and
    nested no deeper than the items are walked (``json.dumps`` recurses too)."""
    check_utf8(path)
    check_file_depth(path)
    return items_prefix(path)


def _json(parts: list[Path], target: Path) -> int:
    prefixes = [_json_prefix(part) for part in parts]
    for part, prefix in zip(parts, prefixes):
        if prefix is None:
            raise CorruptArchiveError(
                f"{part} is neither a JSON export object nor a list of media items.", path=str(part)
            )
    bare = prefixes[0] == "item"  # the first chunk's shape: a list of items, or an export object
    rows = 0
    with open(target, "w", encoding="utf-8") as out:
        if bare:
            out.write("[")
        else:
            info = next(json_values(parts[0], "info"), None)
            out.write(f'{{"info": {json.dumps(info, ensure_ascii=False)}, "media_items": [')
        for part, prefix in zip(parts, prefixes):
            assert prefix is not None
            for item in json_values(part, prefix):
                out.write(",\n" if rows else "\n")
                out.write(json.dumps(item, ensure_ascii=False))
                rows += 1
        out.write("\n]\n" if bare else "\n]}\n")
    return rows
