"""Each row's metadata items kept once per distinct list, with a code per row: how the index holds them.

A row's ``metadata_items`` becomes nine columns (labels, issues, objects, captions, tags and the
video fields). Rows repeat the same items often (the same label, no issue: a 10M-item export
holds about 2.2M distinct texts), and the parse makes each distinct list once. Expanding them
per row took a copy of every list per row: half the index on disk (1 of 1.96 GB at 10M) and a
second of its build. The index holds instead one int32 code per row (``ITEMS_COLUMN``), and a
second file beside it (``items_path``) holds, per record batch of the index, the distinct lists
its codes point at, in a record batch of the same number.

An index is read with its codes (``index.read_index``: a cached open reads no item); what reads
the items joins them (``with_items``): each item column becomes an Arrow dictionary array per
batch, the codes as its indices, the batch's distinct lists as its dictionary, both
memory-mapped, nothing copied. Takes, filters and slices move the codes alone; what computes
over the lists reads each distinct list once (``distinct``) or decodes (``plain``); what a user
is handed is decoded (``plain_table``, ``take_rows``), as the index without codes held it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import CacheMissError

ITEMS_COLUMN = "__items__"
# The item columns ``metadata_items`` is made into (``items.ITEM_FIELDS`` in that order): the columns coded.
ITEM_NAMES = (
    "labels",
    "issues",
    "objects",
    "captions",
    "tags",
    "video_name",
    "video_id",
    "frame_timestamp_s",
    "frame_number",
)
# Schema metadata both files carry, the same in both: an index is never joined to another's items.
PAIR_KEY = b"vl_datasets.items_pair"
CODE_TYPE = pa.int32()


def items_path(index_path: str | os.PathLike[str]) -> Path:
    """The items file beside the index at ``index_path``."""
    path = Path(index_path)
    return path.with_name(f"{path.stem}.items{path.suffix}")


def coded_type(value_type: pa.DataType) -> pa.DictionaryType:
    return pa.dictionary(CODE_TYPE, value_type)


def coded_columns(columns: Sequence[pa.Array], codes: pa.Array) -> list[pa.DictionaryArray]:
    """Each of ``columns`` (one value per distinct list) as one value per row, by ``codes``."""
    codes = codes.cast(CODE_TYPE)
    return [pa.DictionaryArray.from_arrays(codes, column, safe=False) for column in columns]


def split_items(table: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(``table`` with ``ITEMS_COLUMN`` where its item columns were, the items its codes point at).

    Item columns that came coded (dictionary arrays sharing their codes, as ``items`` makes them)
    keep their distinct values; a table whose item columns are plain (a small JSON export read
    whole) gets a code per row, each row its own list."""
    names = [name for name in ITEM_NAMES if name in table.column_names]
    at = table.schema.get_field_index(names[0])
    codes, values = _shared_codes([table.column(name) for name in names])
    fields = [_plain_field(table.schema.field(name)) for name in names]
    items = pa.Table.from_arrays(values, schema=pa.schema(fields))
    rest = table.drop_columns(names)
    return rest.add_column(at, pa.field(ITEMS_COLUMN, CODE_TYPE, nullable=False), codes), items


def _shared_codes(columns: list[pa.ChunkedArray]) -> tuple[pa.Array, list[pa.Array]]:
    """(one code per row, each column's values): a chunk's dictionaries follow the chunk before's."""
    if all(pa.types.is_dictionary(column.type) for column in columns) and _aligned(columns):
        first = columns[0]
        if first.num_chunks == 0:
            return pa.array([], CODE_TYPE), [pa.array([], column.type.value_type) for column in columns]
        if first.num_chunks == 1:
            return first.chunk(0).indices, [column.chunk(0).dictionary for column in columns]
        sizes = np.cumsum([0] + [len(chunk.dictionary) for chunk in first.chunks[:-1]])
        codes = np.concatenate([chunk.indices.to_numpy() + base for chunk, base in zip(first.chunks, sizes)])
        values = [pa.concat_arrays([chunk.dictionary for chunk in column.chunks]) for column in columns]
        return pa.array(codes.astype(np.int32)), values
    decoded = [plain(column).combine_chunks() for column in columns]
    return pa.array(np.arange(len(decoded[0]), dtype=np.int32)), decoded


def _aligned(columns: list[pa.ChunkedArray]) -> bool:
    """Whether every column's chunks are codes the first column's chunks share, none null."""
    first = columns[0]
    for number, chunk in enumerate(first.chunks):
        if chunk.indices.null_count:
            return False
        for column in columns[1:]:
            if column.num_chunks != first.num_chunks:
                return False
            other = column.chunk(number).indices
            if not (_same_buffer(other, chunk.indices) or other.equals(chunk.indices)):
                return False
    return True


def _same_buffer(one: pa.Array, other: pa.Array) -> bool:
    """Whether two arrays are views of the same values (the codes ``items`` gives every column)."""
    return (one.offset, len(one), one.buffers()[1].address) == (other.offset, len(other), other.buffers()[1].address)


def _plain_field(field: pa.Field) -> pa.Field:
    return field.with_type(field.type.value_type) if pa.types.is_dictionary(field.type) else field


def with_items(index: pa.Table, path: str | os.PathLike | None) -> pa.Table:
    """The index ``index.read_index`` read at ``path`` with its item columns in place of their codes
    (``item_codes``), memory-mapped; ``index`` itself when it holds them (``path`` may then be
    None). ``CacheMissError`` when its items are gone since.

    Apart, because joining reads: each batch's dictionary array is validated as it is made, which
    touches a few pages of every buffer of every batch's items (~90 MiB at 10M items). An open
    that reads no item (the item list does not) leaves them untouched.
    """
    if ITEMS_COLUMN not in index.column_names:
        return index
    if path is None:
        raise ValueError("An index that holds its items' codes needs index_path=, the file it was read from.")
    items = read_items(path, index)
    joined = None if items is None else join_items(index, items)
    if joined is None:
        raise items_gone(path)
    return joined


def items_gone(path: str | os.PathLike) -> CacheMissError:
    """The error of a read of the items beside the index at ``path`` that are no longer there."""
    return CacheMissError(f"The items of the index {path} are gone or unreadable; open the dataset again.")


def read_items(path: str | os.PathLike, index: pa.Table) -> pa.Table | None:
    """The items written with ``index`` beside it (the index at ``path``), memory-mapped; None
    when they are not there."""
    reader = _items_file(path, index)
    return None if reader is None else reader.read_all()


def items_beside(path: str | os.PathLike, index: pa.Table) -> bool:
    """Whether the items written with ``index`` are beside it (the index at ``path``): their
    file's footer read, nothing else."""
    return _items_file(path, index) is not None


def _items_file(path: str | os.PathLike, index: pa.Table) -> pa.ipc.RecordBatchFileReader | None:
    try:
        reader = pa.ipc.open_file(pa.memory_map(str(items_path(path)), "r"))
    except (OSError, pa.ArrowException):
        return None
    same = same_pair(index.schema, reader.schema) and reader.num_record_batches == index.column(0).num_chunks
    return reader if same else None


def same_pair(index: pa.Schema, items: pa.Schema) -> bool:
    """Whether ``items`` is the schema of the items file written with the index of schema ``index``."""
    pair = (index.metadata or {}).get(PAIR_KEY)
    return pair is not None and (items.metadata or {}).get(PAIR_KEY) == pair


def join_items(index: pa.Table, items: pa.Table) -> pa.Table | None:
    """``index`` with its item columns in place of ``ITEMS_COLUMN``, each batch's codes over the
    items' batch of the same number; None when ``items`` is not the file written with it."""
    codes = index.column(ITEMS_COLUMN)
    if not same_pair(index.schema, items.schema):
        return None
    if any(column.num_chunks != codes.num_chunks for column in items.columns):
        return None
    batches = [
        coded_columns([column.chunk(number) for column in items.columns], code)
        for number, code in enumerate(codes.chunks)
    ]
    joined = [
        pa.chunked_array([batch[at] for batch in batches], coded_type(field.type))
        for at, field in enumerate(items.schema)
    ]
    return _in_place_of_codes(index, items.schema, joined)


def join_batch(batch: pa.RecordBatch, items: pa.RecordBatch) -> pa.Table:
    """One record batch of an index with the item columns ``items`` (its batch of the same number
    in the items file) holds in place of its codes, as a table."""
    joined = coded_columns(items.columns, batch.column(ITEMS_COLUMN))
    return _in_place_of_codes(pa.Table.from_batches([batch]), items.schema, joined)


def _in_place_of_codes(index: pa.Table, items: pa.Schema, columns: Sequence[pa.Array | pa.ChunkedArray]) -> pa.Table:
    at = index.schema.get_field_index(ITEMS_COLUMN)
    table = index.remove_column(at)
    for offset, (field, column) in enumerate(zip(items, columns)):
        table = table.add_column(at + offset, field.with_type(coded_type(field.type)), column)
    # Joined, it is what an index without codes was: no longer one of a pair.
    return table.replace_schema_metadata({k: v for k, v in (index.schema.metadata or {}).items() if k != PAIR_KEY})


def distinct(column: pa.Array) -> tuple[pa.Array, np.ndarray | None]:
    """(the values, each row's position among them; None when they are one per row already)."""
    if pa.types.is_dictionary(column.type):
        return column.dictionary, column.indices.to_numpy(zero_copy_only=False)
    return column, None


def expanded(parents: np.ndarray, codes: np.ndarray, values: int) -> tuple[np.ndarray, np.ndarray]:
    """For the elements of ``values`` distinct lists (each element's list: ``parents``, ascending),
    each row's elements in row order, as (position among the elements, row); ``codes``: each
    row's list."""
    counts = np.bincount(parents, minlength=values)
    starts = np.cumsum(counts) - counts
    per_row = counts[codes]
    rows = np.repeat(np.arange(len(codes), dtype=np.int64), per_row)
    ends = np.cumsum(per_row)
    within = np.arange(int(ends[-1]) if len(ends) else 0, dtype=np.int64) - np.repeat(ends - per_row, per_row)
    return np.repeat(starts[codes], per_row) + within, rows


def plain(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """``column`` one value per row: a coded column decoded, any other as it is."""
    if not pa.types.is_dictionary(column.type):
        return column
    if isinstance(column, pa.ChunkedArray):
        return pa.chunked_array([chunk.dictionary_decode() for chunk in column.chunks], column.type.value_type)
    return column.dictionary_decode()


def plain_table(table: pa.Table, names: Iterable[str] = ITEM_NAMES) -> pa.Table:
    """``table`` with its coded item columns decoded: what the index held before it coded them.
    Other dictionary columns (an export's own categorical column) stay as they are."""
    for name in names:
        at = table.schema.get_field_index(name)
        if at >= 0 and pa.types.is_dictionary(table.schema.field(at).type):
            field = table.schema.field(at)
            table = table.set_column(at, _plain_field(field), plain(table.column(at)))
    return table


def take_rows(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """``table.take(rows)`` with its coded columns decoded, for a table of many record batches too:
    Arrow takes from a column of many chunks by joining them first, which dictionaries of lists
    cannot be (each batch has its own). Each coded column is taken a chunk at a time instead."""
    rows = np.asarray(rows, dtype=np.int64)
    # In the table's order: each goes back to its place, after those before it.
    coded = [field.name for field in table.schema if field.name in ITEM_NAMES and pa.types.is_dictionary(field.type)]
    taken = table.drop_columns(coded).take(pa.array(rows))  # an export's own categorical column stays one
    for name in coded:
        at = table.schema.get_field_index(name)
        field = table.schema.field(at)
        taken = taken.add_column(at, _plain_field(field), _taken_by_chunk(table.column(at), rows))
    return taken


def _taken_by_chunk(column: pa.ChunkedArray, rows: np.ndarray) -> pa.Array:
    if column.num_chunks == 1:
        return column.chunk(0).take(pa.array(rows)).dictionary_decode()
    starts = np.cumsum([0] + [len(chunk) for chunk in column.chunks])
    chunk_of = np.searchsorted(starts, rows, side="right") - 1
    order = np.argsort(chunk_of, kind="stable")
    pieces = []
    for number in np.unique(chunk_of):
        local = rows[chunk_of == number] - starts[number]
        pieces.append(column.chunk(int(number)).take(pa.array(local)).dictionary_decode())
    grouped = pa.concat_arrays(pieces) if pieces else pa.array([], column.type.value_type)
    back = np.empty_like(order)
    back[order] = np.arange(len(order))
    return grouped.take(pa.array(back))
