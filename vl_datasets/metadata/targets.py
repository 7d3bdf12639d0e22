"""Turn the normalized table's labels and objects into training targets, vectorized.

Targets are kept in numpy or Arrow buffers (never per-item Python objects) so that forked
DataLoader workers share them instead of copying them page by page.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import CurationError
from .curation import label_sources, list_offsets, selected_labels
from .item_codes import distinct, plain
from .row_batches import one_array

TASKS = ("classification", "multilabel", "detection", None)
INVALID_LABEL_CHOICES = ("raise", "drop")


def distinct_labels(table: pa.Table, label_source: str | Iterable[str] | None) -> pa.ListArray:
    """Each row's distinct label names (an item may carry the same label from several sources).
    Coded labels (``item_codes``) are read once per distinct list, then given to each row."""
    names, codes = distinct_labels_once(table, label_source)
    return names if codes is None else names.take(pa.array(codes))


def distinct_labels_once(
    table: pa.Table, label_source: str | Iterable[str] | None
) -> tuple[pa.ListArray, np.ndarray | None]:
    """``distinct_labels`` of each distinct list of coded labels (``item_codes``), and each row's
    list; of each row, and None, for labels that are not coded."""
    lists, codes = distinct(one_array(table.column("labels")))
    return _distinct_labels(table if codes is None else pa.table({"labels": lists}), label_source), codes


def _distinct_labels(table: pa.Table, label_source: str | Iterable[str] | None) -> pa.ListArray:
    names = selected_labels(table, label_source)
    if pc.max(pc.list_value_length(names)).as_py() in (None, 0, 1):
        return names  # the common case: nothing to deduplicate
    parents = pc.list_parent_indices(names)
    pairs = pa.table({"row": parents, "name": pc.list_flatten(names)}).group_by(["row", "name"]).aggregate([])
    pairs = pairs.sort_by([("row", "ascending"), ("name", "ascending")])
    rows = pairs.column("row").to_numpy()
    offsets = list_offsets(rows, len(table))
    return pa.ListArray.from_arrays(offsets, pairs.column("name").combine_chunks())


def object_labels(table: pa.Table, label_source: str | Iterable[str] | None) -> pa.Array:
    """Every object's category name, across rows (objects from unchosen sources left out)."""
    objects = pc.list_flatten(one_array(plain(table.column("objects"))))
    sources = label_sources(label_source)
    if sources is not None:
        objects = objects.filter(pc.is_in(objects.field("source"), value_set=pa.array(sources, pa.string())))
    return objects.field("category_name")


def resolve_classes(names: pa.Array, classes: Sequence[str] | None) -> list[str]:
    """The given classes (their order is the index), or the sorted distinct names present."""
    if classes is not None:
        classes = list(classes)
        if len(set(classes)) != len(classes):
            raise CurationError("classes= holds a name twice; each class needs one index.")
        return classes
    return sorted(pc.unique(pc.drop_null(names)).to_pylist())


class UnusableLabels:
    """The rows classification cannot use, counted a slice of rows at a time: how many have no
    label, several, or one outside ``classes=``, and (by media id) the first of each, so that the
    error names the same rows as over all of them at once."""

    _KINDS = ("no label", "several labels", "a label outside classes=")

    def __init__(self) -> None:
        self.total = 0
        self._counts = dict.fromkeys(self._KINDS, 0)
        self._first: dict[str, tuple[str, int]] = {}  # kind -> (media id, its label count)

    def add(self, labels: pa.ListArray, index: np.ndarray, media_ids: pa.Array) -> np.ndarray:
        """Count the rows of one slice (``index``: each row's class, -1 where it has none it can use);
        return which to keep."""
        keep = index >= 0
        if keep.all():
            return keep
        counts = pc.list_value_length(labels).to_numpy(zero_copy_only=False)
        for kind, mask in zip(self._KINDS, (counts == 0, counts > 1, (counts == 1) & ~keep)):
            found = int(mask.sum())
            if found and kind not in self._first:
                row = int(np.flatnonzero(mask)[0])
                self._first[kind] = (media_ids[row].as_py(), int(counts[row]))
            self._counts[kind] += found
        self.total += int((~keep).sum())
        return keep

    def error(self) -> CurationError:
        """The error that refuses them, naming how many of each kind and one of each."""
        parts = []
        for kind in self._KINDS:
            if self._counts[kind]:
                media_id, labels = self._first[kind]
                parts.append(
                    f"{self._counts[kind]:,} with {kind} (e.g. media_id {media_id!r}"
                    + (f", {labels} labels)" if kind == "several labels" else ")")
                )
        return CurationError(
            "Classification needs exactly one label per item: "
            + "; ".join(parts)
            + ". Pass invalid_labels='drop' to leave them out, label_source= to count only one source's "
            "labels, or task='multilabel'."
        )
