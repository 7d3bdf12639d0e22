"""An export's metadata file as a sequence of normalized slices, never read whole.

A Parquet file is read a record batch at a time; a large JSON export is parsed incrementally by
ijson (its C backend, yajl) into slices of media items. Each slice is normalized as the whole file
would be (``normalize_raw``, rows in errors counted from the file's first), except that the media
ids' uniqueness, which no slice can see, is left to the caller. A Parquet file's slices all have
one schema; a JSON export's unknown keys are typed per slice, and the caller unifies them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Generator, Iterator
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import ijson
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import SchemaError
from .items import gc_paused, is_text
from .json_depth import check_file_depth
from .json_export import check_utf8, opening_byte, table_from_media_items
from .normalize import normalize_raw
from .ordered_map import WORKERS, ordered_map

# A slice of the file, in rows: ~60 MiB of realistic rows, one call of the JSON reader
# (items.JSON_SLICE_ROWS) and one record batch of the index (index_writer.WRITE_ROWS), so that no
# slice is copied to be joined with the next. Larger slices cost less per row to normalize: 16K-row
# slices took 12% more CPU at 10M items.
BATCH_ROWS = 128 << 10
# A JSON export under this size is read whole, by Arrow's one-block reader: faster than ijson,
# and its memory, a few times the file's size, is bounded by this.
JSON_STREAM_BYTES = 64 << 20
_READ_BYTES = 64 << 10
# Slices read and not yet written: enough for every worker to go on while the writer writes one
# (a record batch of the index), few enough to hold ~250 MiB.
_AHEAD = WORKERS + 2
ITEMS = "metadata_items"
_FAST: Any = ijson  # the fastest backend installed: yajl2_c where its wheel has it
_UNBOUNDED: Any = ijson.get_backend("python")

logger = logging.getLogger("vl_datasets")


def is_parquet(path: Path) -> bool:
    """Whether ``path`` starts as a Parquet file does (the magic bytes ``PAR1``)."""
    with open(path, "rb") as stream:
        return stream.read(4) == b"PAR1"


def parquet_slices(
    path: Path, *, batch_rows: int | None = None, skip: Collection[str] = (), left_out: Collection[str] = ()
) -> Generator[pa.Table, None, None]:
    """The normalized slices of a Parquet metadata file, one per record batch read
    (``batch_rows`` rows, ``BATCH_ROWS`` by default). Its columns named in ``skip`` (which the
    file holds once each) are not read, and the normalized columns named in ``left_out`` are not
    made (``normalize_raw``): the slices hold them null."""
    source, batch_rows = str(path), batch_rows or BATCH_ROWS
    try:
        # Without pre-buffering: it keeps every column chunk read until the file is closed.
        file = pq.ParquetFile(path, pre_buffer=False, buffer_size=_READ_BYTES << 4)
        schema = file.schema_arrow
        if _items_as_text(schema):
            file = pq.ParquetFile(path, pre_buffer=False, buffer_size=_READ_BYTES << 4, read_dictionary=[ITEMS])
            schema = file.schema_arrow
        columns = [name for name in schema.names if name not in skip] if skip else None
        batches = file.iter_batches(batch_size=batch_rows, columns=columns)
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:  # a column name that is not UTF-8
        raise _unreadable(path, exc) from None
    empty = True
    slices = _raw_slices(path, batches, schema if skip else None)
    normalized = partial(_normalized_slice, left_out=frozenset(left_out))
    # Closed with this generator, whenever it is: the pool's threads end then, not when collected.
    with closing(ordered_map(normalized, slices, workers=WORKERS, ahead=_AHEAD, name=_slice_name)) as tables:
        for table in tables:
            empty = False
            yield table
    if empty:  # no rows: still the file's columns
        yield normalize_raw(schema.empty_table(), source, None, check_unique=False, left_out=left_out, coded_items=True)


def _items_as_text(schema: pa.Schema) -> bool:
    """Whether the file's ``metadata_items`` is JSON text, read then as a dictionary of the texts.

    The normalization parses each distinct text once (``items.first_seen``): the reader finds them
    from the file's own dictionary pages, where encoding the decoded text hashed every row's (a
    third of the cost per 1M rows: 0.17 s against 0.47 to read and encode the column).
    """
    at = schema.get_field_index(ITEMS)  # -1 when absent, or when two columns share the name
    return at >= 0 and is_text(schema.field(at).type)


class _RawSlice(NamedTuple):
    source: str
    offset: int  # the row of the file the slice starts at
    table: pa.Table


def _raw_slices(path: Path, batches: Iterator[pa.RecordBatch], whole: pa.Schema | None) -> Iterator[_RawSlice]:
    """The batches as tables; with ``whole`` (the file's schema, of which they hold some columns),
    with the columns left unread in their places, null."""
    offset = 0
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
            raise _unreadable(path, exc) from None
        if batch is None:
            return
        table = pa.Table.from_batches([batch])
        if whole is not None:
            read = set(table.column_names)
            columns = [table.column(f.name) if f.name in read else pa.nulls(len(table), f.type) for f in whole]
            table = pa.Table.from_arrays(columns, schema=whole)
        yield _RawSlice(str(path), offset, table)
        offset += batch.num_rows


def _normalized_slice(raw: _RawSlice, left_out: frozenset[str]) -> pa.Table:
    return normalize_raw(
        raw.table, raw.source, None, row_offset=raw.offset, check_unique=False, left_out=left_out, coded_items=True
    )


def _slice_name(raw: _RawSlice) -> str:
    return f"Raised while normalizing rows {raw.offset} to {raw.offset + raw.table.num_rows - 1} of {raw.source}."


def _unreadable(path: Path, exc: Exception) -> SchemaError:
    return SchemaError(f"{path} is not a readable parquet file ({exc}).", field="metadata")


def json_slices(path: Path, *, batch_rows: int | None = None) -> Iterator[pa.Table] | None:
    """The normalized slices of a JSON export's media items, parsed incrementally; the last one
    carries the export's ``info``. None when the file is neither an object nor a list (nor starts
    with a byte-order mark): the caller reads such a file whole, as it always did, to report it."""
    check_utf8(path)  # as for a whole read: ijson would decode bytes that are not UTF-8 its own way
    check_file_depth(path)  # yajl keeps its nesting on the heap, but the items are then walked recursively
    prefix = items_prefix(path)
    if prefix is None:
        return None
    if prefix == "media_items.item":
        check_items_key_once(path)  # ijson would give the items of every media_items list
    return _json_slices(path, prefix, batch_rows or BATCH_ROWS)


def items_prefix(path: Path) -> str | None:
    """``media_items.item`` for an export object, ``item`` for a bare list; None for anything else."""
    # A byte-order mark is left to the whole read.
    return {b"{": "media_items.item", b"[": "item"}.get(opening_byte(path, past_bom=False))


def check_items_key_once(path: Path) -> None:
    """SchemaError when the export object in ``path`` holds the key ``media_items`` more than once:
    a whole read keeps the last list, a streamed one every list, and neither is known to be the
    export's. The bytes are searched first (a key spelled with escapes, which no writer does, is
    not looked for): only a file that holds the key's text twice is parsed for its top-level keys."""
    if _occurrences(path, b'"media_items"') > 1 and list(_top_level_keys(path)).count("media_items") > 1:
        raise SchemaError(f"{path}: the JSON export holds the key 'media_items' more than once.", field="media_items")


def _occurrences(path: Path, text: bytes) -> int:
    """How many times the bytes ``text`` occur in the file ``path``, read a slice at a time."""
    count, tail, short = 0, b"", len(text) - 1
    with open(path, "rb") as stream:
        while chunk := stream.read(16 << 20):
            # In the slice, and across its start: the bytes before it, too few to hold one, with its first.
            count += chunk.count(text) + (tail + chunk[:short]).count(text)
            tail = (tail + chunk[-short:])[-short:]
    return count


def _json_slices(path: Path, prefix: str, batch_rows: int) -> Iterator[pa.Table]:
    source, offset, pending = str(path), 0, []
    info = _info(path) if prefix != "item" else None
    for item in _items(path, prefix):
        pending.append(item)
        if len(pending) == batch_rows:
            yield _normalized_items(pending, source, offset, None)
            offset, pending = offset + len(pending), []
    if offset == 0 and not pending and prefix != "item":
        _check_items_is_a_list(path)
    yield _normalized_items(pending, source, offset, info)  # the info rides on the last slice, empty or not


def _check_items_is_a_list(path: Path) -> None:
    # Only when no item was found: what stands under "media_items" is then small, or no list.
    items = next(json_values(path, "media_items"), None)
    if not isinstance(items, list):
        raise SchemaError(f"{path}: the JSON export has no 'media_items' list.", field="media_items")


def _items(path: Path, prefix: str) -> Iterator[Any]:
    with gc_paused():  # millions of small containers: the cyclic collector would rescan them all
        yield from json_values(path, prefix)


def _info(path: Path) -> Any:
    """The export's ``info`` (None when it has none); the parse stops once it is read."""
    return next(json_values(path, "info"), None)


def json_values(path: Path, prefix: str) -> Iterator[Any]:
    """The values under ``prefix`` in the JSON file ``path``, parsed incrementally (``_parsed``)."""
    return _parsed(path, lambda backend, stream: backend.items(stream, prefix, use_float=True, buf_size=_READ_BYTES))


def _top_level_keys(path: Path) -> Iterator[str]:
    """The keys of the object the JSON file ``path`` holds, in order, parsed incrementally."""
    events = _parsed(path, lambda backend, stream: backend.parse(stream, use_float=True, buf_size=_READ_BYTES))
    return (value for prefix, event, value in events if prefix == "" and event == "map_key")


def _parsed(path: Path, parse: Callable[[Any, BinaryIO], Iterator[Any]]) -> Iterator[Any]:
    """What ``parse(backend, stream)`` gives of the JSON file ``path`` with ijson's fastest backend.

    yajl (ijson's C backend) refuses an integer past 64 bits as an "integer overflow", where
    ``json.loads``, which reads a smaller export whole, takes it (a value the normalization then
    judges, as for any file). At such an integer the parse starts again with ijson's Python
    backend (about 20 times slower, but unbounded) past what was already given.
    """
    given = 0
    for backend in (_FAST, _UNBOUNDED):
        with open(path, "rb") as stream:
            try:
                for i, value in enumerate(parse(backend, stream)):
                    if i >= given:
                        given += 1
                        yield value
                return
            except ijson.JSONError as exc:
                if backend is _UNBOUNDED or "integer overflow" not in str(exc):
                    raise SchemaError(f"{path} is not valid JSON ({exc}).", field="metadata") from None
                logger.warning("%s holds an integer past 64 bits: reading it on with the slower parser (~20x).", path)


def _normalized_items(items: list, source: str, offset: int, info: Any) -> pa.Table:
    raw = table_from_media_items(items, source, row_offset=offset)
    return normalize_raw(raw, source, info, row_offset=offset, check_unique=False, coded_items=True)
