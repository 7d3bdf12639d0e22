"""The rows an export holds: the whole dataset, or the items of some media ids or clusters.

Decided on the columnar form, batch by batch (one boolean mask per batch), so that selecting in
ten million rows costs Arrow's ``is_in`` and no Python loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .columnar import ABSENT, SCALAR_FIELDS
from .indexes import Index

SELECTION_FIELDS = {"media_ids": "media_id", "cluster_ids": "cluster_id"}


@dataclass(frozen=True)
class Wanted:
    """A selective export's body: ``key`` (media_ids or cluster_ids) and the ids asked for."""

    key: str
    ids: frozenset[str]

    @property
    def field(self) -> str:
        return SELECTION_FIELDS[self.key]

    def matches(self, item: dict[str, Any]) -> bool:
        """The rule for one parsed item, as the masks apply it to the columns."""
        value = item.get(self.field)
        return isinstance(value, str) and value in self.ids


@dataclass(frozen=True)
class Rows:
    """The selected rows of an index: ``masks`` per batch (None: every row), how many, which fields."""

    index: Index
    wanted: Wanted | None
    masks: list[pa.Array] | None
    count: int
    fields: list[str]
    """The scalar fields some selected row has, in the contract's order."""

    def batches(self, names: list[str]) -> Iterator[pa.RecordBatch]:
        """The selected rows' columns ``names``, batch by batch (empty batches skipped)."""
        for i, batch in enumerate(self.index.columns.batches(names)):
            if self.masks is not None:
                batch = batch.filter(self.masks[i])
            if batch.num_rows:
                yield batch

    def items(self) -> Iterator[dict[str, Any]]:
        """The selected rows as items of their scalar fields (an absent field stays absent)."""
        for batch in self.batches([*SCALAR_FIELDS, ABSENT]):
            for row in batch.to_pylist():
                absent = row.pop(ABSENT)
                yield {k: v for bit, (k, v) in enumerate(row.items()) if not absent & (1 << bit)}


def select(index: Index, wanted: Wanted | None) -> Rows:
    """The rows of ``index`` an export of ``wanted`` (None: everything) holds."""
    if wanted is None:
        return Rows(index, None, None, index.summary.n_items, list(index.summary.fields))
    values = pa.array(sorted(wanted.ids), pa.string())
    masks, count, absent_everywhere = [], 0, (1 << len(SCALAR_FIELDS)) - 1
    for batch in index.columns.batches([wanted.field, ABSENT]):
        column = batch.column(0)
        if column.type == pa.string():
            mask = pc.fill_null(pc.is_in(column, value_set=values), False)
        else:  # ids of another type (hand-made data) never equal the strings asked for
            mask = pa.array([False] * batch.num_rows)
        masks.append(mask)
        chosen = batch.column(1).filter(mask)
        count += len(chosen)
        if len(chosen):
            absent_everywhere &= _all_of(chosen)
    fields = [name for bit, name in enumerate(SCALAR_FIELDS) if count and not absent_everywhere & (1 << bit)]
    return Rows(index, wanted, masks, count, fields)


def _all_of(values: pa.Array) -> int:
    """The bits set in every value (few distinct masks: a field is absent everywhere or nowhere)."""
    result = (1 << len(SCALAR_FIELDS)) - 1
    for value in pc.unique(values).to_pylist():
        result &= value
    return result
