"""Columns an index leaves in its Parquet metadata file until something asks for them.

Curation, the targets and the item list never read an item's ``url``, ``media_type``,
``cluster_id`` or ``file_size_bytes`` (nor, in a metadata-only export, its ``file_name`` and
``image_filename``), yet they were most of a 10M-item index (2.3 of 4.2 GB, the url alone 1.3)
and 15-35% of a first open: read, checked, made (the sizes from text such as "48.27KB", by a
pattern) and written for nothing on most opens. So the index of a Parquet export is built
without them (``plan``), and its schema metadata names them and the order of all its columns.
The first thing that asks for one (``ds.table``, a split by cluster, a ``where=`` over the url,
a ``task=None`` target, ``curation_details``) reads them from the metadata file, made as the
index build would have (``normalize.normalized_pass_through``), into a second Arrow file beside
the index, record batch for record batch (``deferred_store``); every later process maps it,
and ``complete_index`` joins the two.

What changes for a user is when a bad value in those columns is found (text that is not UTF-8):
when they are first read, with the same error, naming the row. A metadata file changed or gone
since the index was built raises ``CacheMissError`` naming it, never columns of another file.
A cache folder that cannot be written to (read-only, full) costs each process the columns in
its own memory, with a warning.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Generator, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..atomic import left_beside, replacing
from ..errors import CacheMissError, VLDatasetsError
from ..locks import hold_lock
from .item_codes import ITEM_NAMES, ITEMS_COLUMN, with_items
from .items import is_text
from .normalize import DERIVED_FROM, normalized_pass_through
from .row_batches import file_slices
from .stream import BATCH_ROWS, is_parquet
from .table_file import SOURCE_KEY, source_stamp

logger = logging.getLogger("vl_datasets")

DEFERRABLE = ("url", "media_type", "cluster_id")  # read by no rule, target or item list, as they are
DEFERRED_KEY = b"vl_datasets.deferred"
COLUMNS_FILE, LOCK_FILE = ".vl_datasets_columns.arrow", ".vl_datasets_columns.lock"
BUILD_LOCK_TIMEOUT_S = 3600.0  # reading them from 100M rows takes minutes: the other ranks wait


@dataclass(frozen=True)
class Deferral:
    """The columns an index leaves in its metadata file: ``columns`` (as the normalized table
    names them), read from the file's columns ``read`` (the media ids among them, to name a row
    at fault); ``order``: every column of the whole index, in order; ``metadata``: the file, as
    a path relative to the index's folder (absolute for a folder opened in place)."""

    columns: tuple[str, ...]
    read: tuple[str, ...]
    order: tuple[str, ...] = ()
    metadata: str = ""

    def to_json(self) -> bytes:
        fields = {"columns": self.columns, "read": self.read, "order": self.order, "metadata": self.metadata}
        return json.dumps(fields).encode()

    @classmethod
    def of(cls, table: pa.Table | pa.Schema) -> Deferral | None:
        """The deferral an index's schema records; None for an index that holds every column."""
        schema = table.schema if isinstance(table, pa.Table) else table
        raw = (schema.metadata or {}).get(DEFERRED_KEY)
        if raw is None:
            return None
        fields = json.loads(raw)
        return cls(tuple(fields["columns"]), tuple(fields["read"]), tuple(fields["order"]), fields["metadata"])


def plan(metadata: Path, *, has_images: bool) -> Deferral | None:
    """What the index of ``metadata`` leaves out: the deferrable columns a Parquet file holds as
    text (another type is cast, and may fail, while the index is built, as before), the sizes,
    and, when the export has no images to look them up among, ``file_name`` and
    ``image_filename`` beside a ``file_path``. None for a JSON export."""
    if not is_parquet(metadata):
        return None
    try:
        schema = pq.read_schema(metadata)
    except (pa.ArrowException, OSError, UnicodeDecodeError):
        return None  # the build reads it and reports what is wrong
    names = schema.names
    if len(set(names)) != len(names):  # columns are read by name: two of one name are read whole
        return None
    text = {field.name for field in schema if is_text(field.type)}
    columns = [name for name in DEFERRABLE if name in text]
    columns.append("file_size_bytes")  # made of file_size, or all null without one
    if not has_images and "file_path" in names:  # otherwise they are read to find images by
        if "file_name" in text or "file_name" not in names:  # text, or the base names of the paths
            columns.append("file_name")
        if "image_filename" in text:  # read all the same to fill a missing file_path
            columns.append("image_filename")
    read = [name for name in names if name in {*_made_of(columns), "media_id"}]
    return Deferral(tuple(columns), tuple(read))


def skipped_on_read(deferral: Deferral | None, metadata: Path) -> tuple[str, ...]:
    """The columns of the file ``metadata`` the index build need not read: those the deferred
    columns are made of, but ``file_path`` and, unless the file's statistics say no row lacks a
    ``file_path``, the ``image_filename`` that fills a missing one."""
    if deferral is None:
        return ()
    needed = {"file_path"} if _never_null(metadata, "file_path") else {"file_path", "image_filename"}
    return tuple(sorted(_made_of(deferral.columns) - needed))


def _made_of(columns: Iterable[str]) -> set[str]:
    """The metadata file's columns the normalized ``columns`` are made of: each its own, or those
    ``normalize.DERIVED_FROM`` names."""
    return {source for name in columns for source in DERIVED_FROM.get(name, (name,))}


def _never_null(metadata: Path, column: str) -> bool:
    """Whether every row group of the Parquet file ``metadata`` counts no null in ``column``
    (False where a writer left the count out, or the footer does not read)."""
    try:
        footer = pq.ParquetFile(metadata).metadata
        # Its place among the leaf columns, which a nested column before it (metadata_items as
        # a list of structs) shifts from its place among the fields.
        leaves = [footer.schema.column(i).path for i in range(footer.num_columns)]
        if leaves.count(column) != 1:
            return False
        at = leaves.index(column)
        for group in range(footer.num_row_groups):
            stats = footer.row_group(group).column(at).statistics
            if stats is None or not stats.has_null_count or stats.null_count:
                return False
    except (pa.ArrowException, OSError, UnicodeDecodeError):
        return False
    return True


def recorded(deferral: Deferral, names: Sequence[str], index_dir: Path, metadata: Path) -> Deferral:
    """``deferral`` with what the index's schema must say: the order of the whole index's columns
    (``names``, as read: its items in place of their codes) and where the metadata file is from
    the index's folder."""
    # Beside the index, by its name alone: the folder is built under one name and published under another.
    where = metadata.name if metadata.parent.resolve() == index_dir.resolve() else str(metadata.resolve())
    return Deferral(deferral.columns, deferral.read, tuple(names), where)


def column_names(index: pa.Table) -> list[str]:
    """The whole index's columns, in order, whether or not some are deferred, its items' among
    them whether or not they are joined yet (``item_codes``)."""
    deferral = Deferral.of(index)
    if deferral is not None:
        return list(deferral.order)
    return [part for name in index.column_names for part in (ITEM_NAMES if name == ITEMS_COLUMN else [name])]


def complete_index(index: pa.Table, index_path: Path | None) -> pa.Table:
    """``index`` with its items in place of their codes (``item_codes``) and its deferred columns
    (``deferred_store``) joined in their places: the table the index would have been with every
    column. The index as it is when it holds them all."""
    deferral = Deferral.of(index)
    index = with_items(index, index_path)
    return index if deferral is None else joined(index, deferred_store(index, index_path).table, deferral)


def joined(index: pa.Table, columns: pa.Table, deferral: Deferral) -> pa.Table:
    """The index's columns and the deferred ``columns`` (the same rows) in the recorded order."""
    fields, arrays = [], []
    for name in deferral.order:
        source = columns if name in deferral.columns else index
        fields.append(source.schema.field(name))
        arrays.append(source.column(name))
    metadata = {k: v for k, v in (index.schema.metadata or {}).items() if k != DEFERRED_KEY}
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=metadata))


@dataclass(frozen=True)
class DeferredColumns:
    """The deferred columns of an index (``table``, its rows), and the file they are mapped from:
    None when they were read into memory, in a cache that cannot keep them."""

    table: pa.Table
    file: Path | None


def joined_file_slices(
    index_file: Path, columns_file: Path, rows: np.ndarray, columns: Iterable[str] | None, deferral: Deferral
) -> Iterator[tuple[int, pa.Table]]:
    """``row_batches.file_slices`` of the whole index: the index's own columns read from its file
    and the deferred ones from theirs, which holds the same record batches, so that each slice of
    one is the same rows as the other's; its columns in the index's order."""
    wanted = set(deferral.columns) if columns is None else set(deferral.columns).intersection(columns)
    rest = None if columns is None else [name for name in columns if name not in deferral.columns]
    parts = [file_slices(columns_file, rows, wanted)]
    if rest is None or rest:
        parts.insert(0, file_slices(index_file, rows, rest))
    for pieces in zip(*parts, strict=True):
        fields = {field.name: (field, table.column(field.name)) for _, table in pieces for field in table.schema}
        names = [name for name in deferral.order if name in fields]
        schema = pa.schema([fields[name][0] for name in names])
        yield pieces[0][0], pa.Table.from_arrays([fields[name][1] for name in names], schema=schema)


def deferred_store(index: pa.Table, index_path: Path | None) -> DeferredColumns:
    """The deferred columns of the index at ``index_path`` (``index``, as read from there),
    memory-mapped from their file beside it: read from the metadata file the first time they are
    asked for, by one process (the others wait on a lock), in record batches of the index's."""
    deferral = Deferral.of(index)
    assert deferral is not None
    if index_path is None:
        raise ValueError(
            "An index that leaves columns in its metadata file needs index_path=, the file it was read from."
        )
    path = store_path(index_path)
    found = _read_store(path, index)
    if found is not None:
        return DeferredColumns(found, path)
    metadata = _metadata_file(index, index_path, deferral)
    try:
        with hold_lock(index_path.with_name(LOCK_FILE), timeout_s=BUILD_LOCK_TIMEOUT_S, what=f"reading {metadata}"):
            found = _read_store(path, index)
            if found is None:
                for stale in left_beside(path):  # a killed build's: none runs beside this lock's holder
                    stale.unlink(missing_ok=True)
                with replacing(path) as tmp:
                    _write_store(tmp, index, deferral, metadata)
                found = _read_store(path, index)
    except OSError as exc:
        if isinstance(exc, VLDatasetsError):  # a lock timeout
            raise
        logger.warning("Cannot keep the columns %s in %s (%s): reading them into memory.", deferral.columns, path, exc)
        return DeferredColumns(pa.Table.from_batches(list(_batches(index, deferral, metadata))), None)
    if found is None:
        raise CacheMissError(f"The columns {path} just written do not read back; open the dataset again.")
    return DeferredColumns(found, path)


def store_path(index_path: Path) -> Path:
    """Where the deferred columns of the index at ``index_path`` are kept."""
    return index_path.with_name(COLUMNS_FILE)


def _read_store(path: Path, index: pa.Table) -> pa.Table | None:
    """The columns at ``path``, mapped, when they were read for this index (the same metadata
    file's state, the same rows); None otherwise."""
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except (OSError, pa.ArrowException):
        return None
    stamp = (index.schema.metadata or {}).get(SOURCE_KEY)
    same = stamp is not None and (table.schema.metadata or {}).get(SOURCE_KEY) == stamp
    return table if same and len(table) == len(index) else None


def _metadata_file(index: pa.Table, index_path: Path, deferral: Deferral) -> Path:
    """The metadata file the index was built from, as it was then; else ``CacheMissError``."""
    metadata = index_path.parent / deferral.metadata
    built_from = (index.schema.metadata or {}).get(SOURCE_KEY)
    try:
        same = built_from is not None and source_stamp(metadata)[SOURCE_KEY] == built_from
    except OSError:
        same = False
    if not same:
        raise CacheMissError(
            f"The metadata file {metadata} changed or is gone since the index {index_path} was built from it, "
            f"and its columns {list(deferral.columns)} are read from there; fetch or open the export again."
        )
    return metadata


def _write_store(path: Path, index: pa.Table, deferral: Deferral, metadata: Path) -> None:
    stamp = {SOURCE_KEY: (index.schema.metadata or {})[SOURCE_KEY]}  # which state of the file they are
    with closing(_batches(index, deferral, metadata)) as batches:
        first = next(batches)
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, first.schema.with_metadata(stamp)) as writer:
            writer.write_batch(first)
            for batch in batches:
                writer.write_batch(batch)


def _batches(index: pa.Table, deferral: Deferral, metadata: Path) -> Generator[pa.RecordBatch, None, None]:
    """The deferred columns, normalized as the index build would have, in record batches as long
    as the index's (its columns' chunks), so that a slice of one is a slice of the other: at least
    one, empty for an index of no rows."""
    with closing(_read_back(metadata, deferral)) as tables:
        pending = next(tables)  # a file of no rows is still one (empty) slice
        for length in [len(chunk) for chunk in index.column(0).chunks] or [0]:
            while len(pending) < length:
                more = next(tables, None)
                if more is None:
                    raise CacheMissError(f"{metadata} holds fewer rows than the index built from it.")
                pending = pa.concat_tables([pending, more])
            part = pending.slice(0, length)
            yield pa.RecordBatch.from_arrays([column.combine_chunks() for column in part.columns], schema=part.schema)
            pending = pending.slice(length)


def _read_back(metadata: Path, deferral: Deferral) -> Generator[pa.Table, None, None]:
    """The deferred columns of the metadata file a record batch at a time, normalized as the index
    build would have (``normalized_pass_through``: they need nothing but their own values); at
    least one table, empty for a file of no rows."""
    source, offset = str(metadata), 0
    try:
        file = pq.ParquetFile(metadata, pre_buffer=False)
        batches = file.iter_batches(batch_size=BATCH_ROWS, columns=list(deferral.read))
        for batch in batches:
            yield normalized_pass_through(pa.Table.from_batches([batch]), deferral.columns, source, row_offset=offset)
            offset += batch.num_rows
        if offset == 0:
            empty = file.schema_arrow.empty_table().select(list(deferral.read))
            yield normalized_pass_through(empty, deferral.columns, source)
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        raise CacheMissError(f"{metadata} no longer reads as the file its index was built from ({exc}).") from None
