"""Suspected label errors: items where the model confidently disagrees with the label.

The list is ranked by the model's confidence in its own class, most confident first; where the
model gave no confidence, items Visual Layer also flagged come first. Each row says whether
Visual Layer flagged the item as mislabeled and whether it suggested the model's class. Its
media ids (``write_media_ids``) feed a selective export (``media_ids=``) or the next curation
(``subset=`` / ``where=``), to review those items or to leave them out.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigurationError
from ..html_parts import write_atomic
from ..metadata.curation import flat_issues

MISLABELS = "mislabels"

LABEL_ERROR_SCHEMA = pa.schema(
    [
        ("rank", pa.int64()),
        ("media_id", pa.string()),
        ("label", pa.string()),
        ("predicted", pa.string()),
        ("confidence", pa.float64()),
        ("vl_mislabel", pa.float64()),
        ("vl_suggested_label", pa.string()),
        ("vl_agrees", pa.bool_()),
    ]
)


def suspected_label_errors(scored: pa.Table, *, min_confidence: float = 0.5) -> pa.Table:
    """The scored items whose prediction differs from their label with confidence at least
    ``min_confidence`` (every disagreement, when the model gave no confidence), ranked.

    Columns: ``rank`` (1 first), ``media_id``, ``label``, ``predicted``, ``confidence``,
    ``vl_mislabel`` (Visual Layer's mislabel confidence, null when it did not flag the item),
    ``vl_suggested_label`` and ``vl_agrees`` (Visual Layer suggested the model's class).
    """
    if not 0 <= min_confidence <= 1:
        raise ConfigurationError(f"min_confidence must be from 0 to 1, got {min_confidence!r}.")
    mislabel, suggested = mislabel_flags(scored)
    confidence = scored.column("confidence").to_numpy(zero_copy_only=False).astype(float)
    wrong = pc.fill_null(pc.invert(scored.column("correct")), False).to_numpy(zero_copy_only=False)
    sure = np.isnan(confidence) | (confidence >= min_confidence)
    rows = np.flatnonzero(wrong & sure)
    flagged = ~np.isnan(mislabel[rows])
    # lexsort: the last key sorts first. NaN confidences (none given) compare as lowest.
    order = np.lexsort((rows, ~flagged, -np.nan_to_num(confidence[rows], nan=-1.0)))
    rows = rows[order]
    predicted = scored.column("predicted").take(pa.array(rows, pa.int64()))
    suggestion = pa.array(suggested[rows].tolist(), pa.string())
    return pa.table(
        {
            "rank": pa.array(np.arange(1, len(rows) + 1), pa.int64()),
            "media_id": scored.column("media_id").take(pa.array(rows, pa.int64())),
            "label": scored.column("label").take(pa.array(rows, pa.int64())),
            "predicted": predicted,
            "confidence": pa.array(confidence[rows], pa.float64(), from_pandas=True),
            "vl_mislabel": pa.array(mislabel[rows], pa.float64(), from_pandas=True),
            "vl_suggested_label": suggestion,
            "vl_agrees": pc.fill_null(pc.equal(suggestion, predicted), False),
        },
        schema=LABEL_ERROR_SCHEMA,
    )


def mislabel_flags(scored: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Per scored row: Visual Layer's highest mislabel confidence (NaN when not flagged), and the
    label it suggested with it (None when none)."""
    issues, parents = flat_issues(scored)
    is_mislabel = pc.fill_null(pc.equal(issues.field("issue_type"), MISLABELS), False).to_numpy(zero_copy_only=False)
    confidence = np.full(len(scored), np.nan)
    suggested = np.full(len(scored), None, dtype=object)
    values = pc.fill_null(issues.field("confidence"), 1.0).to_numpy(zero_copy_only=False)
    labels = issues.field("suggested_label").to_pylist()
    for i in np.flatnonzero(is_mislabel).tolist():
        row = parents[i]
        if np.isnan(confidence[row]) or values[i] > confidence[row]:
            confidence[row], suggested[row] = values[i], labels[i]
    return confidence, suggested


def write_media_ids(media_ids: Iterable[str] | pa.Table, path: str | os.PathLike) -> Path:
    """Write media ids one a line (a table's ``media_id`` column, in its order) to ``path``,
    atomically; ``read_media_ids`` reads them back for ``media_ids=``, ``subset=`` or ``where=``."""
    if isinstance(media_ids, pa.Table):
        media_ids = media_ids.column("media_id").to_pylist()
    return write_atomic(Path(path), "".join(f"{media_id}\n" for media_id in media_ids), "the media ids")


def read_media_ids(path: str | os.PathLike) -> list[str]:
    """The media ids of a file written by ``write_media_ids`` (blank lines ignored)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:  # a binary file given by mistake, or another encoding
        raise ConfigurationError(f"{path}: media ids must be UTF-8 text, one a line: {exc}") from None
    except OSError as exc:  # missing, a folder, unreadable: a ConfigurationError names the file
        raise ConfigurationError(f"{path}: cannot read media ids: {exc.strerror or exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]
