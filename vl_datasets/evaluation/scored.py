"""Join a model's predictions with what Visual Layer knows of each item: one row per scored item.

The table (``scored_items``) keeps the prediction's order and holds ``media_id``, ``label`` (the
item's one label among the classes, null when it has none or several), ``predicted``,
``confidence`` (NaN when unknown), ``correct`` (null without a label), then the item's metadata
from ``curation_details()``: ``uniqueness_score``, ``cluster_id``, ``issues``, ``file_path``,
``image_path`` and ``removed_by`` (the curation rule that removed it, null when kept). Every
slice, the label-error list and the report read this one table.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import PredictionsError
from ..metadata.splits import find_leaks
from ..metadata.targets import distinct_labels
from .predictions import ClassPredictions

logger = logging.getLogger("vl_datasets")

METADATA_COLUMNS = ("uniqueness_score", "cluster_id", "issues", "file_path", "image_path", "removed_by")


def scored_items(dataset: Any, predictions: ClassPredictions) -> pa.Table:
    """The scored-items table (module docstring) of ``predictions`` on ``dataset``'s export.

    Every predicted media id must be an item of the export (kept by curation or not); an
    unknown one raises ``PredictionsError`` naming it and its row. Items outside the dataset's
    ``subset=`` (another part of a split: a model's training items, say) are left out, with a
    WARNING: scored, they would count in the accuracy of a part they are not in. A WARNING also
    says how many of the dataset's items have no prediction.
    """
    details = dataset.curation_details()
    rows = _rows_of(details, predictions.media_ids, predictions.source)
    removed_by = details.column("removed_by").take(pa.array(rows))
    outside = pc.fill_null(pc.equal(removed_by, "subset"), False).to_numpy(zero_copy_only=False)
    if outside.any():
        logger.warning(
            "%d of the %d predictions are for items outside this dataset's subset= (another part of the "
            "split): left out of the evaluation.",
            int(outside.sum()), len(rows),
        )  # fmt: skip
        if outside.all():
            raise PredictionsError(
                f"{predictions.source}: none of the {len(rows):,} predicted items is in this dataset's subset=."
            )
        predictions = _only(predictions, ~outside)
        rows, removed_by = rows[~outside], removed_by.filter(pa.array(~outside))
    unpredicted = len(dataset) - int(pc.sum(pc.is_null(removed_by)).as_py() or 0)
    if unpredicted:
        logger.warning(
            "%d of the dataset's %d items have no prediction: the evaluation covers the %d that do.",
            unpredicted, len(dataset), len(dataset) - unpredicted,
        )  # fmt: skip
    picked = details.take(pa.array(rows, pa.int64()))
    label = _single_labels(distinct_labels(picked, dataset.label_source), predictions.classes)
    predicted = pa.array(predictions.predicted_names, pa.string())
    columns: dict[str, Any] = {
        "media_id": pa.array(predictions.media_ids, pa.string()),
        "label": label,
        "predicted": predicted,
        "confidence": pa.array(predictions.confidence, pa.float64()),
        "correct": pc.equal(label, predicted),
    }
    for name in METADATA_COLUMNS:
        columns[name] = picked.column(name)
    return pa.table(columns)


def _only(predictions: ClassPredictions, chosen: np.ndarray) -> ClassPredictions:
    """``predictions`` of the items ``chosen`` (a mask), in their order."""
    return dataclasses.replace(
        predictions,
        media_ids=[media_id for media_id, keep in zip(predictions.media_ids, chosen.tolist()) if keep],
        predicted=predictions.predicted[chosen],
        confidence=predictions.confidence[chosen],
        scores=None if predictions.scores is None else predictions.scores[chosen],
    )


def train_leaks(details: pa.Table, train_ids: list[str], eval_ids: list[str]) -> pa.Table:
    """``find_leaks`` of ``eval_ids`` against ``train_ids``, with a WARNING when some of the train
    ids are no item of this export: a file of another dataset's ids would find no leak, which
    reads as a clean result."""
    known = pc.is_in(pa.array(train_ids, pa.string()), value_set=details.column("media_id"))
    unknown = len(train_ids) - int(pc.sum(known).as_py() or 0)
    if unknown:
        logger.warning(
            "%d of the %d train media ids are no item of this export: the leakage check cannot see them.",
            unknown,
            len(train_ids),
        )
    return find_leaks(details, train_ids, eval_ids)


def _rows_of(details: pa.Table, media_ids: list[str], source: str) -> np.ndarray:
    index = pc.index_in(pa.array(media_ids, pa.string()), value_set=details.column("media_id"))
    unknown = pc.is_null(index).to_numpy(zero_copy_only=False)
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise PredictionsError(
            f"{source}: row {row}: media id {media_ids[row]!r} is not an item of this export "
            f"({int(unknown.sum()):,} predicted media id(s) are not).",
            column="media_id",
            row=row,
            media_id=media_ids[row],
        )
    return index.to_numpy(zero_copy_only=False).astype(np.int64)


def _single_labels(names: pa.ListArray, classes: list[str]) -> pa.Array:
    """Each row's label when it has exactly one and it is a class; else null."""
    single = pc.equal(pc.list_value_length(names), 1).to_numpy(zero_copy_only=False)
    first = pc.list_element(pc.if_else(pa.array(single), names, pa.nulls(len(names), names.type)), 0)
    known = pc.is_in(first, value_set=pa.array(classes, pa.string()))
    return pc.if_else(known, first, pa.scalar(None, pa.string()))
