"""The evaluation report: one self-contained HTML page of where a model fails, sliced by what
Visual Layer knows: slice tables with confidence intervals, accuracy by uniqueness, the
confusion matrix, and thumbnails of the worst clusters and of the suspected label errors.

It shares its page, plots and thumbnails with the curation report (``html_parts``), so it too
embeds everything and fetches nothing when viewed.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigurationError
from ..html_parts import PAGE, figure_class, img, percent, read_file, share, slice_section, svg, thumbnail, write_atomic
from .slices import UNSCORED

SLICE_HEADINGS = {
    "class": "Per class",
    "issue": "Per issue type and confidence",
    "uniqueness": "Per uniqueness decile (1: least unique)",
    "duplicates": "Duplicate-group members against singletons",
    "curation": "Kept by curation against removed",
    "leakage": "Training items, and items sharing a group with one",
    "cluster": "Similarity clusters, worst first",
}


def write_evaluation_report(
    evaluation: Any,
    path: str | os.PathLike,
    *,
    title: str | None = None,
    max_clusters: int = 6,
    max_thumbnails: int = 48,
    thumbnail_size: int = 96,
) -> Path:
    """Write ``evaluation`` (an ``Evaluation``) as one self-contained HTML page to ``path``.

    Shows the accuracy with its 95% interval, the leakage check, accuracy by uniqueness decile
    and the confusion matrix as plots, every slice table (clusters: the 20 worst), thumbnails of
    the ``max_clusters`` worst clusters' items and of up to ``max_thumbnails`` suspected label
    errors, each captioned with its label, the prediction and its confidence.
    """
    figure = figure_class()  # before any work: a missing extra should fail fast
    if max_thumbnails < 0 or max_clusters < 0 or thumbnail_size < 8:
        raise ConfigurationError(
            "max_thumbnails and max_clusters must be >= 0 and thumbnail_size >= 8, got "
            f"{max_thumbnails}, {max_clusters} and {thumbnail_size}."
        )
    dataset = evaluation.dataset
    read = getattr(dataset, "read_image", None) or read_file
    cells = _Cells(evaluation.scored, thumbnail_size, read)
    sections = [
        _summary_section(evaluation),
        uniqueness_plot(figure, evaluation.slices["uniqueness"]),
        _confusion_plot(figure, evaluation.confusion_matrix(), evaluation.classes),
    ]
    for name, table in evaluation.slices.items():
        sections.append(_slice_section(SLICE_HEADINGS.get(name, name), table, limit=20 if name == "cluster" else None))
    sections.append(_clusters_section(evaluation, cells, max_clusters))
    sections.append(_label_errors_section(evaluation, cells, max_thumbnails))
    page = PAGE.substitute(
        title=html.escape(title or evaluation.title),
        body="\n".join(sections),
        size=thumbnail_size,
        cell=max(thumbnail_size, 120),
    )
    return write_atomic(Path(path), page)


def _summary_section(evaluation: Any) -> str:
    low, high = evaluation.accuracy_interval()
    unlabeled = len(evaluation.scored) - evaluation.items
    rows = [
        ("Items scored", f"{evaluation.items:,}"),
        ("Accuracy", f"{share(evaluation.accuracy)} (95% CI {share(low)}-{share(high)})"),
        ("Suspected label errors", f"{len(evaluation.label_errors):,}"),
    ]
    if unlabeled:
        rows.append(("Predicted items without a usable label (not scored)", f"{unlabeled:,}"))
    leakage = evaluation.leakage
    if leakage is not None:
        rows += [
            (
                "Items in train or sharing a group with a training item",
                f"{leakage.leaked_items:,} "
                f"({leakage.near_duplicates:,} near-duplicates, {leakage.in_train:,} in train)",
            ),
            ("Accuracy without them", share(leakage.accuracy_without_leaks)),
            ("Accuracy points owed to them", f"{100 * leakage.points_from_leaks:+.1f}"),
        ]
    body = "".join(
        f"<tr><td>{html.escape(name)}</td><td class=n>{html.escape(value)}</td></tr>" for name, value in rows
    )
    return f"<h2>Summary</h2>\n<table>{body}</table>"


def _slice_section(heading: str, table: pa.Table, *, limit: int | None) -> str:
    columns = [
        ("Slice", lambda row: row["value"]),
        ("Items", lambda row: f"{row['items']:,}"),
        ("Correct", lambda row: f"{row['correct']:,}"),
        ("Accuracy", lambda row: share(row["accuracy"])),
        ("95% CI", lambda row: f"{share(row['low'])}-{share(row['high'])}"),
    ]
    return slice_section(heading, table.to_pylist(), columns, limit=limit, empty="No scored item in this family.")


def uniqueness_plot(figure: type, table: pa.Table, *, score: str = "accuracy", label: str = "Accuracy") -> str:
    """A section with the column ``score`` (named ``label``) per uniqueness decile of ``table`` (a
    uniqueness slice family), as bars with their interval (``low`` to ``high``)."""
    heading = f"{label} by uniqueness"
    deciles = table.filter(pc.not_equal(table.column("value"), UNSCORED)).to_pylist()
    if not deciles:
        return f"<h2>{heading}</h2>\n<p class=note>No scored item has a uniqueness score.</p>"
    fig = figure(figsize=(7, 3), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(deciles))
    value = np.array([row[score] for row in deciles], dtype=float)
    # No interval (none asked for) draws no bar; a NaN score no bar either.
    errors = np.nan_to_num(
        np.array([[row[score] - row["low"] for row in deciles], [row["high"] - row[score] for row in deciles]], float)
    )
    ax.bar(x, np.nan_to_num(value), color="#3b75af")
    ax.errorbar(x, np.nan_to_num(value), yerr=errors, fmt="none", ecolor="#222", capsize=3)
    ax.set_xticks(x, [row["value"].split()[0] for row in deciles])
    ax.set(xlabel="uniqueness decile (1: least unique)", ylabel=label, ylim=(0, 1.05))
    return f"<h2>{heading}</h2>\n{img(svg(fig), f'{score} by uniqueness decile')}"


def _confusion_plot(figure: type, matrix: np.ndarray, classes: list[str]) -> str:
    if not matrix.sum():
        return "<h2>Confusion matrix</h2>\n<p class=note>No scored item has a label.</p>"
    side = min(12.0, 2 + 0.4 * len(classes))
    fig = figure(figsize=(side, side), layout="constrained")
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    ticks = np.arange(len(classes))
    # parse_math=False: a class name is drawn as written; "cat$_$dog" is not mathtext to parse.
    ax.set_xticks(ticks, classes, rotation=90, parse_math=False)
    ax.set_yticks(ticks, classes, parse_math=False)
    ax.set(xlabel="predicted", ylabel="label")
    if len(classes) <= 20:  # counts in the cells stay readable up to here
        peak = matrix.max()
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                ax.text(
                    j,
                    i,
                    str(count),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if count > peak / 2 else "#222",
                )
    return f"<h2>Confusion matrix</h2>\n{img(svg(fig), 'confusion matrix')}"


def _clusters_section(evaluation: Any, cells: _Cells, max_clusters: int) -> str:
    clusters = evaluation.slices["cluster"].slice(0, max_clusters).to_pylist()
    if not clusters:
        return "<h2>Worst clusters</h2>\n<p class=note>No cluster has enough scored items.</p>"
    cluster_ids = evaluation.scored.column("cluster_id")
    parts = ["<h2>Worst clusters</h2>"]
    for row in clusters:
        members = np.flatnonzero(
            pc.fill_null(pc.equal(cluster_ids, row["value"]), False).to_numpy(zero_copy_only=False)
        )
        heading = f"Cluster {row['value']}: {row['correct']:,} of {row['items']:,} right ({share(row['accuracy'])})"
        parts.append(f"<h3>{html.escape(heading)}</h3>\n<div class=grid>{cells.many(members)}</div>")
    return "\n".join(parts)


def _label_errors_section(evaluation: Any, cells: _Cells, max_thumbnails: int) -> str:
    errors = evaluation.label_errors
    heading = f"Suspected label errors: {len(errors):,} item(s)"
    if not len(errors):
        return f"<h2>{heading}</h2>\n<p class=note>The model never confidently disagrees with a label.</p>"
    media_ids = evaluation.scored.column("media_id")
    rows = pc.index_in(errors.column("media_id").slice(0, max_thumbnails), value_set=media_ids)
    flagged = int(pc.sum(pc.is_valid(errors.column("vl_mislabel"))).as_py() or 0)
    agrees = int(pc.sum(pc.cast(errors.column("vl_agrees"), pa.int64())).as_py() or 0)
    shown = f" (the {min(max_thumbnails, len(errors)):,} most confident)" if len(errors) > max_thumbnails else ""
    note = (
        f"<p class=note>Visual Layer flagged {flagged:,} of them as mislabeled ({percent(flagged, len(errors))}), "
        f"and suggested the model's class for {agrees:,}.</p>"
    )
    return f"<h2>{heading}{shown}</h2>\n{note}<div class=grid>{cells.many(rows.to_numpy(zero_copy_only=False))}</div>"


class _Cells:
    """Thumbnails of scored rows, captioned with the media id, label -> prediction and confidence."""

    def __init__(self, scored: pa.Table, size: int, read: Callable[[str], bytes]) -> None:
        self.scored, self.size, self.read = scored, size, read

    def many(self, rows: np.ndarray) -> str:
        picked = self.scored.take(pa.array(np.asarray(rows, dtype=np.int64))).to_pylist()
        return "".join(self._cell(row) for row in picked)

    def _cell(self, row: dict) -> str:
        media_id = str(row["media_id"])
        src = thumbnail(row.get("image_path"), media_id, self.size, self.read)
        picture = img(src, f"media {media_id}") if src is not None else "<div class=missing>no image</div>"
        confidence = row.get("confidence")
        lines = [
            media_id[:8],
            f"{row.get('label') or 'no label'} -> {row['predicted']}",
            "no confidence" if confidence is None or math.isnan(confidence) else f"confidence {confidence:.2f}",
        ]
        lines += [
            f"VL mislabel {issue['confidence']:.2f}: {issue.get('suggested_label') or '?'}"
            for issue in row.get("issues") or []
            if issue.get("issue_type") == "mislabels" and issue.get("confidence") is not None
        ]
        caption = "<br>".join(html.escape(line) for line in lines)
        tooltip = html.escape(str(row.get("file_path") or media_id))
        return f'<figure title="{tooltip}">{picture}<figcaption>{caption}</figcaption></figure>'
