"""Turn the normalized table's labels and objects into training targets, vectorized.

Targets are kept in numpy or Arrow buffers (never per-item Python objects) so that forked
DataLoader workers share them instead of copying them page by page.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import CurationError
from .curation import label_sources, list_offsets, selected_labels

TASKS = ("classification", "multilabel", "detection", None)
INVALID_LABEL_CHOICES = ("raise", "drop")


def distinct_labels(table: pa.Table, label_source: str | Iterable[str] | None) -> pa.ListArray:
    """Each row's distinct label names (an item may carry the same label from several sources)."""
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
    objects = pc.list_flatten(table.column("objects").combine_chunks())
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


def classification_targets(
    labels: pa.ListArray, classes: list[str], invalid_labels: str, media_id: Callable[[int], str]
) -> tuple[np.ndarray, np.ndarray]:
    """(class index per row, rows to keep). Rows with no label, several, or an unknown one are
    an error naming how many there are (and, by ``media_id`` of a row, one of each), or are
    dropped when ``invalid_labels="drop"``."""
    counts = pc.list_value_length(labels).to_numpy(zero_copy_only=False)
    single = counts == 1
    first = pc.list_element(labels.filter(pa.array(single)), 0) if single.any() else pa.array([], pa.string())
    index = np.full(len(labels), -1, dtype=np.int64)
    index[single] = pc.fill_null(pc.index_in(first, value_set=pa.array(classes, pa.string())), -1).to_numpy(
        zero_copy_only=False
    )
    keep = index >= 0
    if invalid_labels == "raise" and not keep.all():
        raise CurationError(_invalid_message(media_id, counts, single & ~keep))
    return index, keep


def _invalid_message(media_id: Callable[[int], str], counts: np.ndarray, unknown: np.ndarray) -> str:
    parts = []
    for what, mask in (
        ("no label", counts == 0),
        ("several labels", counts > 1),
        ("a label outside classes=", unknown),
    ):
        if mask.any():
            row = int(np.flatnonzero(mask)[0])
            parts.append(
                f"{int(mask.sum()):,} with {what} (e.g. media_id {media_id(row)!r}"
                + (f", {int(counts[row])} labels)" if what == "several labels" else ")")
            )
    return (
        "Classification needs exactly one label per item: "
        + "; ".join(parts)
        + ". Pass invalid_labels='drop' to leave them out, label_source= to count only one source's "
        "labels, or task='multilabel'."
    )


def multilabel_indices(labels: pa.ListArray, classes: list[str]) -> pa.ListArray:
    """Each row's class indices (labels outside ``classes`` left out), as an Arrow list array."""
    flat = pc.index_in(pc.list_flatten(labels), value_set=pa.array(classes, pa.string()))
    parents = pc.list_parent_indices(labels).to_numpy(zero_copy_only=False)
    known = pc.is_valid(flat).to_numpy(zero_copy_only=False)
    offsets = list_offsets(parents[known], len(labels))
    return pa.ListArray.from_arrays(offsets, flat.filter(pa.array(known)).cast(pa.int64()))
