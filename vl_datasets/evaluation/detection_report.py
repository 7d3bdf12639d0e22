"""The detection evaluation report: one self-contained HTML page of mAP, overall and per slice of
what Visual Layer knows, each with its bootstrap interval, mAP by uniqueness as a plot, and
thumbnails of the worst clusters' images.

It is built from the same pieces as the classification report (``html_parts``, the uniqueness
plot), so it too embeds everything and fetches nothing when viewed.
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigurationError
from ..html_parts import PAGE, figure_class, img, read_file, share, slice_section, thumbnail, write_atomic
from .report import SLICE_HEADINGS, uniqueness_plot

HEADINGS = SLICE_HEADINGS | {"class": "Per class (AP over every image; images: those with a box of the class)"}


def write_detection_report(
    evaluation: Any,
    path: str | os.PathLike,
    *,
    title: str | None = None,
    max_clusters: int = 6,
    thumbnail_size: int = 96,
) -> Path:
    """Write ``evaluation`` (a ``DetectionEvaluation``) as one self-contained HTML page to ``path``:
    the summary, mAP by uniqueness decile, every slice table (clusters: the 20 worst) and
    thumbnails of the ``max_clusters`` worst clusters' images."""
    figure = figure_class()  # before any work: a missing extra should fail fast
    if max_clusters < 0 or thumbnail_size < 8:
        raise ConfigurationError(
            f"max_clusters must be >= 0 and thumbnail_size >= 8, got {max_clusters} and {thumbnail_size}."
        )
    sections = [
        _summary_section(evaluation),
        uniqueness_plot(figure, evaluation.slices["uniqueness"], score="map", label="mAP@0.5:0.95"),
    ]
    for name, table in evaluation.slices.items():
        sections.append(_slice_section(HEADINGS.get(name, name), table, limit=20 if name == "cluster" else None))
    sections.append(_clusters_section(evaluation, max_clusters, thumbnail_size))
    page = PAGE.substitute(
        title=html.escape(title or evaluation.title),
        body="\n".join(sections),
        size=thumbnail_size,
        cell=max(thumbnail_size, 120),
    )
    return write_atomic(Path(path), page)


def _interval(low: float | None, high: float | None) -> str:
    return "-" if low is None or math.isnan(low) else f"{share(low)}-{share(high)}"


def _summary_section(evaluation: Any) -> str:
    scores, bootstrap = evaluation.scores, evaluation.bootstrap
    rows = [
        ("Images scored", f"{scores.images:,}"),
        ("mAP@0.5:0.95", f"{share(scores.map)} (95% CI {_interval(*evaluation.map_interval)})"),
        ("mAP@0.5", f"{share(scores.map_50)} (95% CI {_interval(*evaluation.map_50_interval)})"),
        ("Intervals", f"bootstrap over images: {bootstrap.n_resamples:,} resamples, seed {bootstrap.seed}"),
    ]
    if evaluation.leaks is not None:
        rows.append(("Images in train or sharing a group with a training item", f"{len(evaluation.leaks):,}"))
    body = "".join(
        f"<tr><td>{html.escape(name)}</td><td class=n>{html.escape(value)}</td></tr>" for name, value in rows
    )
    return f"<h2>Summary</h2>\n<table>{body}</table>"


def _slice_section(heading: str, table: pa.Table, *, limit: int | None) -> str:
    columns = [
        ("Slice", lambda row: row["value"]),
        ("Images", lambda row: f"{row['images']:,}"),
        ("mAP@0.5:0.95", lambda row: share(row["map"])),
        ("95% CI", lambda row: _interval(row["low"], row["high"])),
        ("mAP@0.5", lambda row: share(row["map_50"])),
        ("95% CI", lambda row: _interval(row["low_50"], row["high_50"])),
    ]
    return slice_section(heading, table.to_pylist(), columns, limit=limit, empty="No scored image in this family.")


def _clusters_section(evaluation: Any, max_clusters: int, size: int) -> str:
    clusters = evaluation.slices["cluster"].slice(0, max_clusters).to_pylist()
    if not clusters:
        return "<h2>Worst clusters</h2>\n<p class=note>No cluster has enough scored images.</p>"
    read = getattr(evaluation.dataset, "read_image", None) or read_file
    items = evaluation.items
    parts = ["<h2>Worst clusters</h2>"]
    for row in clusters:
        members = np.flatnonzero(
            pc.fill_null(pc.equal(items.column("cluster_id"), row["value"]), False).to_numpy(zero_copy_only=False)
        )
        cells = []
        for member in items.take(pa.array(members, pa.int64())).to_pylist():
            media_id = str(member["media_id"])
            src = thumbnail(member.get("image_path"), media_id, size, read)
            picture = img(src, f"media {media_id}") if src is not None else "<div class=missing>no image</div>"
            tooltip = html.escape(str(member.get("file_path") or media_id))
            cells.append(
                f'<figure title="{tooltip}">{picture}<figcaption>{html.escape(media_id[:8])}</figcaption></figure>'
            )
        heading = f"Cluster {row['value']}: {row['images']:,} images, mAP@0.5:0.95 {share(row['map'])}"
        parts.append(f"<h3>{html.escape(heading)}</h3>\n<div class=grid>{''.join(cells)}</div>")
    return "\n".join(parts)
