"""The curation report: one HTML file that shows what curation kept, what it removed, and why.

Plots and thumbnails are embedded as base64 data URIs and the page has no script, so the file can
be attached to a ticket or opened offline and fetches nothing when viewed. matplotlib is an
optional extra (``pip install "vl_datasets[report]"``): loading data for training never needs it.

The dataset is read through its public face alone (``curation_summary()``, ``curation_details()``,
``read_image()``, ``curation_rules``, ``label_source``, ``dataset_id``, ``export_dir``), so this
module does not import ``dataset``: it stands above ``loading/``, and imports run one way, from the
data to its reports.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import ConfigurationError
from .html_parts import PAGE, figure_class, img, legend_above, percent, spread_sample, svg, thumbnail, write_atomic
from .metadata.targets import distinct_labels

MAX_LABEL_BARS = 30  # beyond this a bar chart is unreadable; the report says how many it left out


def write_report(
    dataset: Any,
    path: str | os.PathLike,
    *,
    title: str | None = None,
    max_thumbnails: int = 48,
    thumbnail_size: int = 96,
) -> Path:
    """Write a self-contained HTML report of ``dataset``'s curation to ``path``, and return the path.

    It shows the item counts before and after curation, how many items each rule removed, the
    uniqueness-score histogram (with the ``min_uniqueness`` threshold), the label distribution
    before and after, and thumbnails: up to ``max_thumbnails`` of what each rule removed and of
    what was kept, each captioned with its media id, label, uniqueness score and issues.
    """
    figure = figure_class()  # before any work: a missing extra should fail fast
    if max_thumbnails < 0 or thumbnail_size < 8:
        raise ConfigurationError(
            f"max_thumbnails must be >= 0 and thumbnail_size >= 8, got {max_thumbnails} and {thumbnail_size}."
        )
    summary, details = dataset.curation_summary(), dataset.curation_details()
    # subset= scopes the dataset to one part of a split: the other parts were never candidates,
    # so they are counted but left out of the plots and grids.
    details = details.filter(pc.fill_null(pc.not_equal(details.column("removed_by"), "subset"), True))
    names = distinct_labels(details, dataset.label_source)
    removed_by = details.column("removed_by")
    kept = pc.is_null(removed_by).to_numpy(zero_copy_only=False)
    if title is None:
        title = f"Curation report: {dataset.dataset_id or Path(dataset.export_dir).name}"
    sections = [
        _counts_section(summary),
        _histogram_section(figure, details, kept, _uniqueness_threshold(dataset)),
        _labels_section(figure, names, kept),
    ]
    rules = removed_by.to_numpy(zero_copy_only=False)
    # Images are read the dataset's way (a bucket's, with its storage options).
    grid = _Grid(details, names, max_thumbnails, thumbnail_size, dataset.read_image)
    for rule, count in summary.removed_by.items():
        if count and rule != "subset":
            sections.append(grid.section(f"Removed by {rule}", np.flatnonzero(rules == rule)))
    sections.append(grid.section("Kept", np.flatnonzero(kept)))
    page = PAGE.substitute(
        title=html.escape(title), body="\n".join(sections), size=thumbnail_size, cell=max(thumbnail_size, 120)
    )
    return write_atomic(Path(path), page)


def _uniqueness_threshold(dataset: Any) -> float | None:
    return dataset.curation_rules.min_uniqueness


def _counts_section(summary: Any) -> str:
    rows = [("Items in the export", summary.total)]
    rows += [(f"Removed by {rule}", count) for rule, count in summary.removed_by.items()]
    rows.append(("Kept", summary.kept))
    cells = "".join(
        f"<tr><td>{html.escape(name)}</td><td class=n>{count:,}</td>"
        f"<td class=n>{percent(count, summary.total)}</td></tr>"
        for name, count in rows
    )
    return f"<h2>Counts</h2>\n<table><tr><th>Step</th><th>Items</th><th>Share</th></tr>{cells}</table>"


def _histogram_section(figure: type, details: pa.Table, kept: np.ndarray, threshold: float | None) -> str:
    scores = details.column("uniqueness_score").to_numpy(zero_copy_only=False).astype(float)
    scored = ~np.isnan(scores)
    if not scored.any():
        return "<h2>Uniqueness scores</h2>\n<p class=note>No item of this export has a uniqueness score.</p>"
    fig = figure(figsize=(7, 3), layout="constrained")
    ax = fig.subplots()
    bins = np.linspace(min(0.0, scores[scored].min()), max(1.0, scores[scored].max()), 41)
    ax.hist(scores[scored], bins=bins, color="#bbb", label="all items")
    ax.hist(scores[scored & kept], bins=bins, color="#3b75af", label="kept")
    if threshold is not None:
        ax.axvline(threshold, color="#c0392b", linestyle="--", label=f"min_uniqueness={threshold:g}")
    ax.set(xlabel="uniqueness score", ylabel="items")
    legend_above(ax)
    unscored = f"<p class=note>{(~scored).sum():,} item(s) have no score.</p>" if not scored.all() else ""
    return f"<h2>Uniqueness scores</h2>\n{img(svg(fig), 'uniqueness-score histogram')}{unscored}"


def _labels_section(figure: type, names: pa.ListArray, kept: np.ndarray) -> str:
    before = _label_counts(pc.list_flatten(names))
    if not before:
        return "<h2>Labels</h2>\n<p class=note>No item of this export has a label.</p>"
    after = _label_counts(pc.list_flatten(names.filter(pa.array(kept))))
    shown = sorted(before, key=lambda name: (-before[name], name))[:MAX_LABEL_BARS]
    fig = figure(figsize=(7, 0.8 + 0.3 * len(shown)), layout="constrained")
    ax = fig.subplots()
    rows = np.arange(len(shown))
    ax.barh(rows - 0.2, [before[n] for n in shown], height=0.4, color="#bbb", label="before curation")
    ax.barh(rows + 0.2, [after.get(n, 0) for n in shown], height=0.4, color="#3b75af", label="after curation")
    ax.set_yticks(rows, shown, parse_math=False)  # a label is drawn as written, "$" and all: not mathtext
    ax.invert_yaxis()  # most frequent on top
    ax.set_xlabel("items")
    legend_above(ax)
    left_out = len(before) - len(shown)
    note = f"<p class=note>{left_out:,} less frequent label(s) not shown.</p>" if left_out else ""
    return f"<h2>Labels</h2>\n{img(svg(fig), 'label distribution before and after curation')}{note}"


def _label_counts(flat: pa.Array) -> dict[str, int]:
    counts = pc.value_counts(flat.drop_null()) if len(flat) else []
    return {entry["values"].as_py(): entry["counts"].as_py() for entry in counts}


class _Grid:
    """Thumbnail grids of the details' rows, each image read by ``read``."""

    def __init__(
        self, details: pa.Table, names: pa.ListArray, max_thumbnails: int, size: int, read: Callable[[str], bytes]
    ) -> None:
        self.details, self.names, self.max_thumbnails, self.size, self.read = details, names, max_thumbnails, size, read

    def section(self, heading: str, rows: np.ndarray) -> str:
        sample = spread_sample(rows, self.max_thumbnails)
        shown = f" (showing {len(sample):,})" if len(sample) < len(rows) else ""
        subset = self.details.take(pa.array(sample, pa.int64())).to_pylist()
        labels = self.names.take(pa.array(sample, pa.int64())).to_pylist()
        cells = "".join(self._cell(row, row_labels or []) for row, row_labels in zip(subset, labels))
        return f"<h2>{html.escape(heading)}: {len(rows):,} item(s){shown}</h2>\n<div class=grid>{cells}</div>"

    def _cell(self, row: dict, labels: list[str]) -> str:
        return _cell(row, labels, self.size, self.read)


def _cell(row: dict, labels: list[str], size: int, read: Callable[[str], bytes]) -> str:
    src = thumbnail(row.get("image_path"), row.get("media_id"), size, read)
    media_id = str(row.get("media_id") or "")
    picture = (
        img(src, f"media {media_id}")
        if src is not None
        else f"<div class=missing>{'unreadable image' if row.get('image_path') else 'no image'}</div>"
    )
    score = row.get("uniqueness_score")
    issues = {(issue["issue_type"], issue.get("confidence")) for issue in row.get("issues") or []}
    lines = [media_id[:8], ", ".join(labels) or "no label", "unscored" if score is None else f"uniqueness {score:.3f}"]
    lines += [
        f"{kind} {confidence:.3f}" if confidence is not None else str(kind)
        for kind, confidence in sorted(issues, key=lambda pair: str(pair[0]))
    ]
    caption = "<br>".join(html.escape(line) for line in lines)
    tooltip = html.escape(str(row.get("file_path") or row.get("file_name") or media_id))
    return f'<figure title="{tooltip}">{picture}<figcaption>{caption}</figcaption></figure>'
