"""An export's rows a slice at a time: how curation and targets read millions of rows in bounded memory.

Every rule and every target is computed one slice of rows at a time, over only the columns it
reads, and what crosses slices is kept as numpy arrays of one number per row (or less). Slices of
a memory-mapped index are views: nothing is copied but what a rule computes for that slice.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa

SLICE_ROWS = 1 << 18  # ~256K rows: a rule's temporaries stay in the tens of MiB whatever the export's size


def select_present(table: pa.Table, columns: Iterable[str] | None, *, keep_rows: bool = False) -> pa.Table:
    """``table`` holding only those of ``columns`` it has (all of it for None); with ``keep_rows``,
    its first column when it has none of them, for a table of no column counts no rows."""
    if columns is None:
        return table
    present = [name for name in dict.fromkeys(columns) if name in table.column_names]
    return table.select(present or (table.column_names[:1] if keep_rows else []))


def row_slices(table: pa.Table, columns: Iterable[str] | None = None) -> Iterator[tuple[int, pa.Table]]:
    """(first row, table) for consecutive slices of ``table`` of at most ``SLICE_ROWS`` rows, each
    with one chunk per column (a slice never straddles two of the table's chunks), holding only
    ``columns`` (those of them it has; all by default)."""
    table = select_present(table, columns, keep_rows=True)
    offset = 0
    for batch in table.to_batches(max_chunksize=SLICE_ROWS):
        yield offset, pa.Table.from_batches([batch])
        offset += batch.num_rows
    if offset == 0:  # an empty table is still one (empty) slice: its rules see its schema
        yield 0, table


class TableRows:
    """A table read the way a dataset's items are (``CuratedItems`` has the same methods): by slices
    of rows, or by a take of some columns at some positions."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.column_names = table.column_names

    def __len__(self) -> int:
        return len(self.table)

    def slices(self, columns: Iterable[str] | None = None) -> Iterator[tuple[int, pa.Table]]:
        return row_slices(self.table, columns)

    def take(self, columns: Sequence[str], positions: np.ndarray) -> pa.Table:
        return select_present(self.table, columns).take(pa.array(positions))
