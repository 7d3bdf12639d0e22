"""An export's rows a slice at a time: how curation and targets read millions of rows in bounded memory.

Every rule and every target is computed one slice of rows at a time, over only the columns it
reads, and what crosses slices is kept as numpy arrays of one number per row (or less). Slices of
a memory-mapped index are views: nothing is copied but what a rule computes for that slice.

The pages of a file map that a process has read count in its resident memory for as long as it
keeps the map, though they are the page cache's: a curation that reads every row of a 10M-item
index would hold about 1.7 GB of them. An index opened by ``ReleasingMap`` gives each slice's
pages back once ``row_slices`` has yielded it (``release_pages``): they stay in the page cache,
and a later read maps them again, so what is read never changes, only what stays resident.
"""

from __future__ import annotations

import mmap
import os
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from ..errors import CacheMissError
from .item_codes import (
    ITEMS_COLUMN,
    items_gone,
    items_path,
    join_batch,
    join_items,
    plain_table,
    same_pair,
    take_rows,
)

SLICE_ROWS = 1 << 18  # ~256K rows: a rule's temporaries stay in the tens of MiB whatever the export's size


def one_array(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """``column`` as one array: its only chunk as it is, where ``combine_chunks`` copies even that.
    A slice's columns come in one chunk each: those copies were ~1 GB of a 10M-item first open."""
    if isinstance(column, pa.Array):
        return column
    if column.num_chunks == 0:  # a filter that kept no row: combine_chunks cannot make a dictionary of none
        return pa.nulls(0, column.type)
    return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()


def select_present(table: pa.Table, columns: Iterable[str] | None, *, keep_rows: bool = False) -> pa.Table:
    """``table`` holding only those of ``columns`` it has (all of it for None); with ``keep_rows``,
    its first column when it has none of them, for a table of no column counts no rows."""
    if columns is None:
        return table
    present = [name for name in dict.fromkeys(columns) if name in table.column_names]
    return table.select(present or (table.column_names[:1] if keep_rows else []))


def row_slices(
    table: pa.Table, columns: Iterable[str] | None = None, *, release: bool = True
) -> Iterator[tuple[int, pa.Table]]:
    """(first row, table) for consecutive slices of ``table`` of at most ``SLICE_ROWS`` rows, each
    with one chunk per column (a slice never straddles two of the table's chunks), holding only
    ``columns`` (those of them it has; all by default). Each slice's pages are released
    (``release_pages``) once the next is asked for; without ``release``, by whoever uses it, when
    done: a pool of threads asks for the next slice while the one before is still being read,
    and the pages that read faults in again would stay."""
    table = select_present(table, columns, keep_rows=True)
    offset = 0
    for batch in table.to_batches(max_chunksize=SLICE_ROWS):
        yield offset, pa.Table.from_batches([batch])
        if release:
            release_pages(batch)
        offset += batch.num_rows
    if offset == 0:  # an empty table is still one (empty) slice: its rules see its schema
        yield 0, table


def file_slices(
    path: str | os.PathLike[str], rows: np.ndarray, columns: Iterable[str] | None = None
) -> Iterator[tuple[int, pa.Table]]:
    """(first of ``rows``, table) for the ``rows`` (ascending, distinct) of an Arrow IPC file, a
    record batch at a time (at most ``SLICE_ROWS`` rows each), holding only those of
    ``columns`` it has (as ``row_slices``). Read with ordinary reads of those columns alone, not
    through a mapping: the pages of a mapping a process touches count in its resident memory until
    it ends, while a read's buffers go with its slice. ``CacheMissError`` when the file is gone."""
    try:
        source = pa.OSFile(os.fspath(path))
        schema = pa.ipc.open_file(source).schema
    except (OSError, pa.ArrowException):
        raise CacheMissError(f"The index {path} is gone or unreadable; open the dataset again.") from None
    names, wanted = schema.names, None if columns is None else set(columns)
    items = _items_reader(path, schema, wanted) if ITEMS_COLUMN in names else None
    if items is not None and wanted is not None:
        wanted.add(ITEMS_COLUMN)
    fields = [i for i, name in enumerate(names) if wanted is None or name in wanted] or [0]
    with source:
        reader = pa.ipc.open_file(source, options=pa.ipc.IpcReadOptions(included_fields=fields))
        if items is not None and items.num_record_batches != reader.num_record_batches:
            raise items_gone(path)
        start, first = 0, 0
        for number in range(reader.num_record_batches):
            batch = reader.get_batch(number)
            table = pa.Table.from_batches([batch]) if items is None else join_batch(batch, items.get_batch(number))
            low, high = np.searchsorted(rows, [start, start + batch.num_rows])
            if high > low:  # rows are ascending and distinct: all of the batch's, or a take of some
                whole = high - low == batch.num_rows
                chosen = table if whole else table.take(pa.array(rows[low:high] - start))
                for offset in range(0, len(chosen), SLICE_ROWS):
                    yield first, chosen.slice(offset, SLICE_ROWS)
                    first += min(SLICE_ROWS, len(chosen) - offset)
            start += batch.num_rows
        if first == 0:  # no row is still one (empty) slice, as in row_slices
            empty = reader.schema.empty_table()
            yield 0, empty if items is None else join_items(empty, items.schema.empty_table())


def _items_reader(
    path: str | os.PathLike[str], index: pa.Schema, wanted: set[str] | None
) -> pa.ipc.RecordBatchFileReader | None:
    """The reader of the items beside the index at ``path`` (whose schema is ``index``), of those
    ``wanted`` (None: all); None when none is. ``CacheMissError`` when the file is gone, or is
    not the one written with the index (``file_slices`` checks it holds a batch per batch of it)."""
    try:
        source = pa.OSFile(os.fspath(items_path(path)))
        schema = pa.ipc.open_file(source).schema
        if not same_pair(index, schema):
            raise ValueError("another index's items")
        fields = [i for i, name in enumerate(schema.names) if wanted is None or name in wanted]
        if not fields:
            return None
        return pa.ipc.open_file(source, options=pa.ipc.IpcReadOptions(included_fields=fields))
    except (OSError, ValueError, pa.ArrowException):
        raise items_gone(path) from None


class TableRows:
    """A table read the way a dataset's items are (``CuratedItems`` has the same methods): by slices
    of rows, or by a take of some columns at some positions."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.column_names = table.column_names

    def __len__(self) -> int:
        return len(self.table)

    def slices(self, columns: Iterable[str] | None = None, *, coded: bool = False) -> Iterator[tuple[int, pa.Table]]:
        for offset, part in row_slices(self.table, columns):
            yield offset, part if coded else plain_table(part)

    def take(self, columns: Sequence[str], positions: np.ndarray) -> pa.Table:
        return take_rows(select_present(self.table, columns), positions)


class ReleasingMap:
    """The table of an Arrow IPC file mapped read-only (``table``; an index's with its items,
    ``item_codes``), whose pages ``release`` hands back to the page cache: the way to read every
    row of an index once, in bounded resident memory.

    Only pages inside this map are ever released: the same advice on ordinary memory would zero it.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self._maps = [_Map(path)]
        self.index = self.table = self._maps[0].table  # the file's table; ``table``, with its items
        if ITEMS_COLUMN in self.table.column_names:  # an index and its items: both mapped so
            self._maps.append(_Map(items_path(path)))
            joined = join_items(self.table, self._maps[1].table)
            if joined is None:
                raise ValueError(f"{items_path(path)} is not the items of {path}")
            self.table = joined
        with _LOCK:
            _RELEASING.add(self)

    def release(self, data: pa.Table | pa.RecordBatch | pa.ChunkedArray | pa.Array) -> None:
        """Hand back the pages of these maps from the first to the last byte of ``data``'s buffers
        in each: the columns between them too, whose pages the kernel maps around those read."""
        if not _CAN_RELEASE:
            return
        buffers = list(_buffers(data))
        for mapped in self._maps:
            mapped.release(buffers)


class _Map:
    """One Arrow IPC file mapped read-only, and its table."""

    def __init__(self, path: str | os.PathLike) -> None:
        with open(path, "rb") as file:
            self._map = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        buffer = pa.py_buffer(self._map)
        self._start, self._size = buffer.address, buffer.size
        self.table = pa.ipc.open_file(pa.BufferReader(buffer)).read_all()

    def release(self, buffers: list[pa.Buffer]) -> None:
        spans = [
            (buffer.address - self._start, buffer.address - self._start + buffer.size)
            for buffer in buffers
            if self._start <= buffer.address < self._start + self._size
        ]
        if spans:
            first = min(start for start, _ in spans)
            first -= first % mmap.PAGESIZE
            self._map.madvise(mmap.MADV_DONTNEED, first, min(max(end for _, end in spans), self._size) - first)


_RELEASING: weakref.WeakSet[ReleasingMap] = weakref.WeakSet()
_LOCK = threading.Lock()
_CAN_RELEASE = hasattr(mmap, "MADV_DONTNEED") and hasattr(mmap.mmap, "madvise")  # else the pages stay


def release_pages(data: pa.Table | pa.RecordBatch | pa.ChunkedArray | pa.Array) -> None:
    """Hand back the pages under ``data`` that lie in a live ``ReleasingMap``; nothing for data
    anywhere else (an ordinary memory map, memory of its own)."""
    with _LOCK:
        maps = list(_RELEASING)
    for mapped in maps:
        mapped.release(data)


def _buffers(data: pa.Table | pa.RecordBatch | pa.ChunkedArray | pa.Array) -> Iterator[pa.Buffer]:
    if isinstance(data, (pa.Table, pa.RecordBatch)):
        for column in data.columns:
            yield from _buffers(column)
    elif isinstance(data, pa.ChunkedArray):
        for chunk in data.chunks:
            yield from _buffers(chunk)
    else:
        yield from (buffer for buffer in data.buffers() if buffer is not None)
        if isinstance(data, pa.DictionaryArray):  # its buffers are its codes': the values' are the dictionary's
            yield from _buffers(data.dictionary)
