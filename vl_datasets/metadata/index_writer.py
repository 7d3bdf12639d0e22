"""An export's index written a normalized slice at a time, in memory bounded by a slice.

The slices (``read.metadata_slices``) go to an Arrow IPC file as record batches, each with its
image column, so a reader memory-maps a table of many chunks. Each batch's item columns go to a
second file as the batch of the same number, a distinct list once, the index holding a code per
row (``item_codes``). Two things need every row:

- the media ids' uniqueness, checked on 64-bit hashes of the ids (``unique_ids``), 8 bytes a row;
- the image of a row whose ``file_path`` names no file, which is looked up by file name among all
  the files and all the rows (``resolve_image_paths``). So when the export has images, the slices
  are first spilled to disk as they come, and read back a slice at a time to find each row's image
  by its exact path (``ExactPaths``), which holds 8 bytes a row and 16 a file (and, to see that no
  file is two rows', one byte a file). Only when some row has no image there, or two rows one,
  does the lookup read back the four columns it uses, all the rows at once.

A streamed JSON export's slices type its unknown keys one slice at a time; they are spilled too,
and written under the schema that unifies them, as a whole-file read would have typed them.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..atomic import replacing
from .cold_pages import ColdPages
from .deferred import DEFERRED_KEY, Deferral, recorded
from .image_paths import ExactPaths, resolve_image_paths
from .item_codes import CODE_TYPE, ITEMS_COLUMN, PAIR_KEY, items_path, split_items
from .normalize import duplicate_id
from .read import MetadataSlices
from .row_batches import one_array, select_present
from .table_file import source_stamp
from .unify import conformed, unified_schema
from .unique_ids import IdHashes

IMAGE_COLUMN = "__image_path__"
_LOOKUP_COLUMNS = ("media_id", "file_path", "file_name", "image_filename")
# What a first open reads back once the index is written (curation, the targets, the item list's
# paths): left in the page cache, while the other columns are written behind (``cold_pages``).
_READ_NEXT = frozenset(
    (
        "media_id",
        "file_path",
        "file_size_bytes",
        "height",
        "width",
        "uniqueness_score",
        ITEMS_COLUMN,
        IMAGE_COLUMN,
    )
)

# Rows per record batch of the index: slices are read small (fast to normalize), written large, so
# that opening the index builds few Arrow objects (a cached open of 100M items: 760 batches, not 6,100).
WRITE_ROWS = 128 << 10


def write_index_file(
    slices: MetadataSlices, path: Path, metadata: Path, members: pa.Array | None, deferral: Deferral | None = None
) -> int:
    """Write the index of ``metadata``'s slices, with each row's image among ``members`` (the
    export's files, ``images/...``; None when it has none), atomically to ``path``, without the
    columns ``deferral`` leaves in the metadata file (``deferred``). Returns the rows."""
    with _system_allocator() as pool:
        try:
            return _write_index_file(slices, path, metadata, members, deferral)
        finally:
            # Should the write fail, the threads reading the slices end now, not once its traceback goes.
            close = getattr(slices.tables, "close", None)
            if close is not None:
                close()
            # The slices' buffers are free, but the allocator keeps them for reuse: hundreds of MiB
            # of resident memory the curation that follows would hold on top of its own.
            pool.release_unused()


@contextlib.contextmanager
def _system_allocator() -> Iterator[pa.MemoryPool]:
    """The C library's allocator as Arrow's default while the index is built (restored after).

    The build allocates and frees tens of MiB per slice. Arrow's default allocator (mimalloc) hands
    freed pages back to the system soon after, and faulting them in again, zeroed (in huge pages
    where the system backs them so), cost a third of the build's CPU: 2.4-3.0 s of system time per
    million rows against 1.2 s with the C library's allocator, which keeps them for the next slice
    (16 against 10.5 s at 10M items). Only the allocator changes: every buffer is freed by the
    pool that made it, whenever it is freed.
    """
    global _builds, _previous_pool
    pool = pa.system_memory_pool()
    with _pool_lock:  # builds in several threads at once: the first sets it, the last restores it
        if _builds == 0:
            _previous_pool = pa.default_memory_pool()
            pa.set_memory_pool(pool)
        _builds += 1
    try:
        yield pool
    finally:
        with _pool_lock:
            _builds -= 1
            if _builds == 0 and _previous_pool is not None:
                pa.set_memory_pool(_previous_pool)
                _previous_pool = None


_pool_lock = threading.Lock()
_builds = 0  # index builds running in this process (under _pool_lock)
_previous_pool: pa.MemoryPool | None = None  # Arrow's default before the first of them


def _write_index_file(
    slices: MetadataSlices, path: Path, metadata: Path, members: pa.Array | None, deferral: Deferral | None
) -> int:
    hashes = IdHashes()
    coded = (split_items(table) for table in _hashed(slices.tables, hashes))
    with replacing(path) as tmp, replacing(items_path(path)) as items_tmp:
        out = _Output(tmp, items_tmp, metadata, deferral)
        if slices.same_schema and members is None:
            rows = _write(out, coded, schema=None, images=None)
            _check_unique(hashes, metadata, lambda: _read(tmp).column("media_id"))
            return rows
        with tempfile.TemporaryDirectory(prefix=".vl_datasets_slices.", dir=path.parent) as folder:
            spilled = _spill(coded, Path(folder))
            tables = [table for table, _ in spilled]
            _check_unique(hashes, metadata, lambda: _spilled_media_ids(tables))
            schema = unified_schema([_load(part, schema_only=True).schema for part in tables])
            images = None if members is None else _resolve(tables, schema, members)
            whole = (conformed(table, schema) for table in _loaded(tables, consume=True))
            items = _loaded([part for _, part in spilled], consume=True)
            return _write(out, zip(whole, items, strict=True), schema=schema, images=images)


@dataclass(frozen=True)
class _Output:
    """Where an index is written: its file and its items' (``item_codes``), both temporary until
    the build succeeds; the metadata file it is made of, and the columns it leaves there."""

    index: Path
    items: Path
    metadata: Path
    deferral: Deferral | None


def _hashed(tables: Iterable[pa.Table], hashes: IdHashes) -> Iterator[pa.Table]:
    for table in tables:
        hashes.add(table.column("media_id"))
        yield table


def _spilled_media_ids(spilled: list[Path]) -> pa.ChunkedArray:
    """The media ids of the spilled tables, in their order."""
    tables = _loaded(spilled, ["media_id"])
    return pa.chunked_array([chunk for table in tables for chunk in table.column("media_id").chunks], pa.string())


def _check_unique(hashes: IdHashes, metadata: Path, media_ids: Callable[[], pa.ChunkedArray]) -> None:
    duplicate = hashes.first_duplicate(media_ids)
    if duplicate is not None:
        raise duplicate_id(str(metadata), duplicate)


# The image paths (under images/) of ``count`` rows from ``start``, as the index's image column holds them.
ImagesOf = Callable[[int, int], pa.Array]


def _write(
    out: _Output, tables: Iterable[tuple[pa.Table, pa.Table]], *, schema: pa.Schema | None, images: ImagesOf | None
) -> int:
    """Write ``tables`` (each with the items its codes point at) as record batches of the index
    file, each with its rows' ``images`` (all null without them) and without the columns
    ``out.deferral`` names, and their items as the batches of the same numbers in the items file.
    ``schema``: the tables', or None to take the first table's."""
    rows, writer, items_writer, cold, kept, items_schema = 0, None, None, None, None, None
    pair = {PAIR_KEY: uuid.uuid4().hex.encode()}
    with pa.OSFile(str(out.index), "wb") as sink, pa.OSFile(str(out.items), "wb") as items_sink:
        try:
            for table, items in _coalesced(tables, WRITE_ROWS):
                if writer is None:
                    schema, kept = _index_schema(schema or table.schema, items.schema, out, pair)
                    items_schema = items.schema.with_metadata(pair)
                    writer, items_writer = pa.ipc.new_file(sink, schema), pa.ipc.new_file(items_sink, items_schema)
                    cold = ColdPages(out.index, schema, hot=_READ_NEXT)
                assert schema is not None and cold is not None and kept is not None and items_writer is not None
                column = pa.nulls(table.num_rows, pa.string()) if images is None else images(rows, table.num_rows)
                columns = [*table.columns, column]
                start = sink.tell()
                # A batch each, empty ones too: the items' batch of a number is the index's of that number.
                writer.write_batch(pa.RecordBatch.from_arrays([one_array(columns[i]) for i in kept], schema=schema))
                cold.written(start, sink.tell())
                items_writer.write_batch(
                    pa.RecordBatch.from_arrays([one_array(c) for c in items.columns], schema=items_schema)
                )
                rows += table.num_rows
            if writer is not None and items_writer is not None:
                writer.close()
                items_writer.close()
        finally:
            if cold is not None:
                cold.close()
    return rows


def _coalesced(tables: Iterable[tuple[pa.Table, pa.Table]], rows: int) -> Iterator[tuple[pa.Table, pa.Table]]:
    """Consecutive ``tables`` joined into tables of at least ``rows`` rows, one chunk per column,
    each with its items joined and its codes moved past the items of the tables before it.

    A table of ``rows`` alone (the slices are read that size) has only its chunked columns joined:
    joining every column copied the whole index once more, 5 s of the writer's thread at 10M items.
    """
    group: list[tuple[pa.Table, pa.Table]] = []
    for pair in tables:
        group.append(pair)
        if sum(len(table) for table, _ in group) >= rows:
            yield _one_chunk(group)
            group = []
    if group:
        yield _one_chunk(group)


def _one_chunk(group: list[tuple[pa.Table, pa.Table]]) -> tuple[pa.Table, pa.Table]:
    if len(group) == 1:
        table, items = group[0]
    else:
        bases = np.cumsum([0] + [len(items) for _, items in group[:-1]])
        table = pa.concat_tables([_codes_from(table, int(base)) for (table, _), base in zip(group, bases)])
        items = pa.concat_tables([items for _, items in group])
    return _chunk_each(table), _chunk_each(items)


def _codes_from(table: pa.Table, base: int) -> pa.Table:
    """``table`` with its codes counted from ``base``: past the items of the tables joined before it."""
    if not base:
        return table
    at = table.schema.get_field_index(ITEMS_COLUMN)
    codes = pc.add(one_array(table.column(at)), pa.scalar(base, CODE_TYPE))
    return table.set_column(at, table.schema.field(at), codes)


def _chunk_each(table: pa.Table) -> pa.Table:
    if all(column.num_chunks == 1 for column in table.columns):
        return table
    columns = [one_array(column) for column in table.columns]
    return pa.Table.from_arrays(columns, schema=table.schema)


def _index_schema(
    schema: pa.Schema, items: pa.Schema, out: _Output, pair: dict[bytes, bytes]
) -> tuple[pa.Schema, list[int]]:
    """The index's schema (the slices' with the image column, stamped with the metadata file's
    state and the items file's pairing, less the deferred columns, which its metadata names) and
    the positions it keeps. ``items``: the schema of the items its codes point at."""
    whole = schema.append(pa.field(IMAGE_COLUMN, pa.string()))
    extra = {**(schema.metadata or {}), **source_stamp(out.metadata), **pair}
    deferral = out.deferral
    if deferral is not None:
        names = [part for name in whole.names for part in (items.names if name == ITEMS_COLUMN else [name])]
        extra[DEFERRED_KEY] = recorded(deferral, names, out.index.parent, out.metadata).to_json()
    left_out = set(deferral.columns) if deferral is not None else set()
    kept = [i for i, name in enumerate(whole.names) if name not in left_out]
    return pa.schema([whole.field(i) for i in kept], metadata=extra), kept


def _read(path: Path) -> pa.Table:
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()


def _spill(tables: Iterable[tuple[pa.Table, pa.Table]], folder: Path) -> list[tuple[Path, Path]]:
    """Each table and its items written to files of their own in ``folder``."""
    spilled = []
    for i, pair in enumerate(tables):
        spilled.append((folder / f"{i:06d}.arrow", folder / f"{i:06d}.items.arrow"))
        for table, part in zip(pair, spilled[-1]):
            with pa.OSFile(str(part), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
    return spilled


def _load(path: Path, *, schema_only: bool = False) -> pa.Table:
    # Read, not memory-mapped: a map of every slice would count them all in the resident memory.
    with pa.OSFile(str(path)) as source:
        reader = pa.ipc.open_file(source)
        return reader.schema.empty_table() if schema_only else reader.read_all()


def _loaded(spilled: list[Path], columns: list[str] | None = None, *, consume: bool = False) -> Iterator[pa.Table]:
    """The spilled tables one at a time (only ``columns`` of them, those they have). With
    ``consume``, each file is deleted once read: its pages, still dirty, are freed unwritten, and
    the index written next takes them (pages the machine used a moment before cost a third as much
    to write into as others), where they would have been written back to the disk, for nothing."""
    for part in spilled:
        table = _load(part)
        if consume:
            part.unlink()
        yield select_present(table, columns)


def _resolve(spilled: list[Path], schema: pa.Schema, members: pa.Array) -> ImagesOf:
    """Each row's image path under ``images/`` (null when it has none): by its exact path a slice at
    a time when that finds every row's, else over all the rows at once."""
    lookup = pa.schema([schema.field(name) for name in _LOOKUP_COLUMNS if name in schema.names])
    exact = _exact_images(spilled, lookup, members)
    if exact is not None:
        return exact
    parts = [conformed(table, lookup) for table in _loaded(spilled, lookup.names)]
    resolved = _under_images(resolve_image_paths(pa.concat_tables(parts), members, on_missing="null"))
    return lambda start, count: resolved.slice(start, count)


def _exact_images(spilled: list[Path], lookup: pa.Schema, members: pa.Array) -> ImagesOf | None:
    """The images found by every row's exact path (``ExactPaths``), or None when a row has none there."""
    exact = ExactPaths(members)
    parts = [exact.found(conformed(table, lookup)) for table in _loaded(spilled, lookup.names)]
    found = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if not (found >= 0).all() or _given_twice(found, len(exact.members)) or exact.doubled(found):
        return None  # the lookup over all the rows says which rows have none, or which are ambiguous
    return lambda start, count: _under_images(exact.names.take(pa.array(found[start : start + count])))


def _given_twice(found: np.ndarray, members: int) -> bool:
    """Whether two rows, of any slices, were given one file (by their image_filename, their
    file_path however spelled, or one each): no file is ever two rows'. One byte a file, marked
    by position (~0.1 s per 10M rows), where sorting the positions took seconds."""
    seen = np.zeros(members, dtype=bool)
    seen[found] = True
    return int(np.count_nonzero(seen)) < len(found)


def _under_images(paths: pa.Array) -> pa.Array:
    return pc.utf8_slice_codeunits(paths, len("images/"))
