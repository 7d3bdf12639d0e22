"""What the HTML reports share: the page, plots as SVG data URIs, thumbnails, the atomic write.

Plots and thumbnails are embedded as base64 data URIs and the page has no script, so a report can
be attached to a ticket or opened offline and fetches nothing when viewed. matplotlib is an
optional extra (``pip install "vl_datasets[report]"``): loading data for training never needs it.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable
from pathlib import Path
from string import Template
from typing import Any

import numpy as np

from .atomic import replacing
from .errors import ConfigurationError, ImageDecodeError, ImageNotFoundError
from .loading import images

PAGE = Template("""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>$title</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:72em;padding:0 1em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .8em;text-align:left}
td.n{text-align:right}.grid{display:flex;flex-wrap:wrap;gap:.6em}
figure{margin:0;width:${cell}px;font-size:11px;line-height:1.3;overflow-wrap:anywhere}
figure img,.missing{display:block;width:${size}px;height:${size}px;object-fit:contain;background:#eee}
.missing{display:flex;align-items:center;justify-content:center;text-align:center;color:#a00;
border:2px dashed #a00;box-sizing:border-box}.note{color:#666}
</style></head><body>
<h1>$title</h1>
$body
</body></html>
""")


def figure_class() -> type:
    """matplotlib's Figure, or a ConfigurationError saying which extra to install."""
    # Figure itself, not pyplot: no global backend or pyplot state to set, and nothing to close.
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigurationError(
            'The HTML reports draw their plots with matplotlib: pip install "vl_datasets[report]"'
        ) from None
    return Figure


def percent(count: int, total: int) -> str:
    return f"{100 * count / total:.1f}%" if total else "-"


def share(value: float | None) -> str:
    """A fraction from 0 to 1 as a percentage; "-" where there is none."""
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


def slice_section(
    heading: str,
    rows: list[dict[str, Any]],
    columns: list[tuple[str, Callable[[dict[str, Any]], str]]],
    *,
    limit: int | None,
    empty: str,
) -> str:
    """One family of an evaluation's slices as a table: a cell per column, the first one's text
    escaped and the others numbers; at most ``limit`` rows, and how many more there are."""
    if not rows:
        return f"<h2>{html.escape(heading)}</h2>\n<p class=note>{html.escape(empty)}</p>"
    shown = rows if limit is None else rows[:limit]
    header = "".join(f"<th>{html.escape(title)}</th>" for title, _ in columns)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(cell(row))}</td>" if i == 0 else f"<td class=n>{cell(row)}</td>"
            for i, (_, cell) in enumerate(columns)
        )
        + "</tr>"
        for row in shown
    )
    more = f"<p class=note>{len(rows) - len(shown):,} more not shown.</p>" if len(shown) < len(rows) else ""
    return f"<h2>{html.escape(heading)}</h2>\n<table><tr>{header}</tr>{body}</table>{more}"


def legend_above(ax: Any) -> None:
    # Above the axes, never over the bars: where the data lies varies from export to export.
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1), ncols=3, frameon=False)


def svg(fig: Any) -> str:
    """The figure as an SVG data URI."""
    from matplotlib import rc_context

    buffer = io.BytesIO()
    # The same data, the same file: no date, and element ids hashed with a fixed salt (matplotlib
    # salts them with a random uuid by default, so every report differed from the last).
    with rc_context({"svg.hashsalt": "vl_datasets"}):
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def img(src: str, alt: str) -> str:
    return f'<img src="{src}" alt="{html.escape(alt)}">'


def spread_sample(rows: np.ndarray, n: int) -> np.ndarray:
    """Up to ``n`` of ``rows``, evenly spread: exports are often sorted by label or folder."""
    if len(rows) <= n:
        return rows
    return rows[np.linspace(0, len(rows) - 1, n).round().astype(np.int64)]


def read_file(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def thumbnail(path: str | None, media_id: str | None, size: int, read: Callable[[str], bytes]) -> str | None:
    """A JPEG data URI of the image shrunk to fit ``size``; None when it cannot be read."""
    if path is None:
        return None
    try:
        image = images.decode_pil(read(path), media_id=media_id, path=path)  # the bomb checks too
    except (OSError, ImageDecodeError, ImageNotFoundError):
        return None
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def write_atomic(path: Path, text: str, what: str = "the report") -> Path:
    """Write to a process-unique temp file beside ``path``, then rename: no reader sees half a
    report. A write that fails is a ``ConfigurationError`` naming the path and ``what`` was written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as exc:  # a folder at ``path``, a parent that is a file or read-only, a full disk
        raise ConfigurationError(f"{path}: cannot write {what} there: {exc.strerror or exc}") from None
    return path
