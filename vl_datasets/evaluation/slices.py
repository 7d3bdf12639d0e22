"""Accuracy per slice of the scored items, each with a 95% Wilson interval.

A slice family groups the scored items (``scored.py``) by one thing Visual Layer knows: the true
class, an issue type at a confidence band, the uniqueness decile, duplicate-group membership,
the similarity cluster, what curation did, and whether a training item shares a group with it.
Each family is one table with the columns ``slice``, ``value``, ``items``, ``correct``,
``accuracy``, ``low`` and ``high``; items without a label are not counted. An item may fall in
several values of one family (an item with two issues), never twice in the same value.

Which items fall in which value is each family's ``*_members`` function, apart from the scoring,
so that detection (``detection_slices``) slices images the same way and scores them by mAP. They
read only the metadata columns (``issues``, ``uniqueness_score``, ``cluster_id``, ``removed_by``,
``media_id``), and return ``(rows, values)``: ``rows[k]`` belongs to ``values[k]``.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..metadata.curation import flat_issues

CONFIDENCE_BANDS = (0.0, 0.5, 0.7, 0.9)  # lower edges: below 0.5, 0.5-0.7, 0.7-0.9, 0.9 and up
Z_95 = 1.959963984540054
NO_ISSUE = "no issue"
UNSCORED = "unscored"

SLICE_SCHEMA = pa.schema(
    [
        ("slice", pa.string()),
        ("value", pa.string()),
        ("items", pa.int64()),
        ("correct", pa.int64()),
        ("accuracy", pa.float64()),
        ("low", pa.float64()),
        ("high", pa.float64()),
    ]
)


def wilson_interval(correct: int, items: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of ``correct`` successes in ``items`` trials: unlike the normal
    approximation it stays inside 0..1 and is honest for small slices and accuracies near 1."""
    if items == 0:
        return math.nan, math.nan
    p = correct / items
    denominator = 1 + z * z / items
    centre = (p + z * z / (2 * items)) / denominator
    half = z * math.sqrt(p * (1 - p) / items + z * z / (4 * items * items)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def slice_table(name: str, items: np.ndarray, values: list[str], correct: np.ndarray) -> pa.Table:
    """One family: ``items[k]`` (row numbers of the scored table) belongs to ``values[k]``;
    ``correct`` is the per-row outcome (NaN for rows without a label). Rows in value order."""
    counts: dict[str, list[int]] = {}
    for row, value in zip(items.tolist(), values):
        outcome = correct[row]
        if math.isnan(outcome):
            continue
        entry = counts.setdefault(value, [0, 0])
        entry[0] += 1
        entry[1] += int(outcome)
    out = []
    for value, (n, k) in counts.items():
        low, high = wilson_interval(k, n)
        out.append(
            {"slice": name, "value": value, "items": n, "correct": k, "accuracy": k / n, "low": low, "high": high}
        )
    return pa.Table.from_pylist(out, schema=SLICE_SCHEMA)


def outcomes(scored: pa.Table) -> np.ndarray:
    """1.0 right, 0.0 wrong, NaN without a label: one float per scored row."""
    return pc.cast(scored.column("correct"), pa.float64()).to_numpy(zero_copy_only=False).astype(float)


def by_class(scored: pa.Table) -> pa.Table:
    """Accuracy per true class (recall), classes in name order."""
    labels = scored.column("label").to_pylist()
    rows = np.array([i for i, label in enumerate(labels) if label is not None], np.int64)
    table = slice_table("class", rows, [labels[i] for i in rows], outcomes(scored))
    return table.sort_by("value")


def by_issue(scored: pa.Table, bands: tuple[float, ...] = CONFIDENCE_BANDS) -> pa.Table:
    """Per issue type and confidence band (``"blur 0.7-0.9"``), and ``"no issue"``. An item's
    issues of one type (duplicates at several thresholds) count once, at their highest confidence."""
    return slice_table("issue", *issue_members(scored, bands), outcomes(scored))


def issue_members(items: pa.Table, bands: tuple[float, ...] = CONFIDENCE_BANDS) -> tuple[np.ndarray, list[str]]:
    """Rows per issue type and confidence band, and the rows with no issue (``by_issue``)."""
    issues, parents = flat_issues(items)
    kinds = issues.field("issue_type").to_pylist()
    confidence = pc.fill_null(issues.field("confidence"), 1.0).to_numpy(zero_copy_only=False)
    best: dict[tuple[int, str], float] = {}
    for row, kind, value in zip(parents.tolist(), kinds, confidence.tolist()):
        if kind is not None:
            best[(row, kind)] = max(value, best.get((row, kind), -1.0))
    rows, values = [], []
    for (row, kind), value in sorted(best.items(), key=lambda pair: (pair[0][1], pair[0][0])):
        rows.append(row)
        values.append(f"{kind} {_band(value, bands)}")
    clean = np.setdiff1d(np.arange(len(items)), np.asarray(rows, np.int64))
    rows += clean.tolist()
    values += [NO_ISSUE] * len(clean)
    return np.asarray(rows, np.int64), values


def _band(confidence: float, bands: tuple[float, ...]) -> str:
    index = int(np.searchsorted(bands, confidence, side="right")) - 1
    low = bands[max(index, 0)]
    high = bands[index + 1] if index + 1 < len(bands) else 1.0
    return f"{low:g}-{high:g}"


def by_uniqueness(scored: pa.Table, n_bins: int = 10) -> pa.Table:
    """Per uniqueness decile of the scored items (``"1 (0.000-0.052)"``: least unique first),
    and ``"unscored"``. Edges are the scores' quantiles, so the deciles hold about equal counts."""
    table = slice_table("uniqueness decile", *uniqueness_members(scored, n_bins), outcomes(scored))
    return table.sort_by("value")


def uniqueness_members(items: pa.Table, n_bins: int = 10) -> tuple[np.ndarray, list[str]]:
    """Every row with its uniqueness decile among ``items`` (``by_uniqueness``)."""
    scores = items.column("uniqueness_score").to_numpy(zero_copy_only=False).astype(float)
    scored_rows = np.flatnonzero(~np.isnan(scores))
    values = [UNSCORED] * len(scores)
    if len(scored_rows):
        edges = np.quantile(scores[scored_rows], np.linspace(0, 1, n_bins + 1))
        decile = np.clip(np.searchsorted(edges, scores[scored_rows], side="right") - 1, 0, n_bins - 1)
        for row, d in zip(scored_rows.tolist(), decile.tolist()):
            values[row] = f"{d + 1:>2} ({edges[d]:.3f}-{edges[d + 1]:.3f})"
    return np.arange(len(scores)), values


def by_duplicates(scored: pa.Table) -> pa.Table:
    """Members of a duplicate group (at any threshold) against singletons."""
    return slice_table("duplicates", *duplicate_members(scored), outcomes(scored))


def duplicate_members(items: pa.Table) -> tuple[np.ndarray, list[str]]:
    """Every row, as a member of a duplicate group or a singleton (``by_duplicates``)."""
    issues, parents = flat_issues(items)
    grouped = pc.and_(
        pc.equal(issues.field("issue_type"), "duplicates"), pc.is_valid(issues.field("duplicate_group_id"))
    )
    members = np.zeros(len(items), dtype=bool)
    members[parents[pc.fill_null(grouped, False).to_numpy(zero_copy_only=False)]] = True
    values = ["in a duplicate group" if member else "singleton" for member in members.tolist()]
    return np.arange(len(items)), values


def by_cluster(scored: pa.Table, *, min_items: int = 3) -> pa.Table:
    """Per similarity cluster of at least ``min_items`` scored items, worst first (lowest
    accuracy, then the largest): where the model fails on a kind of image, not on one image."""
    table = slice_table("cluster", *cluster_members(scored), outcomes(scored))
    table = table.filter(pc.greater_equal(table.column("items"), min_items))
    return table.sort_by([("accuracy", "ascending"), ("items", "descending"), ("value", "ascending")])


def cluster_members(items: pa.Table) -> tuple[np.ndarray, list[str]]:
    """The rows that have a similarity cluster, with it (``by_cluster``)."""
    clusters = items.column("cluster_id").to_pylist()
    rows = np.array([i for i, cluster in enumerate(clusters) if cluster is not None], np.int64)
    return rows, [clusters[i] for i in rows]


def by_curation(scored: pa.Table) -> pa.Table:
    """Items curation kept against those each rule removed (when the model also ran on those)."""
    return slice_table("curation", *curation_members(scored), outcomes(scored))


def curation_members(items: pa.Table) -> tuple[np.ndarray, list[str]]:
    """Every row, as kept or removed by its rule (``by_curation``)."""
    reasons = items.column("removed_by").to_pylist()
    return np.arange(len(items)), ["kept" if reason is None else f"removed by {reason}" for reason in reasons]


def by_leakage(scored: pa.Table, leaks: pa.Table) -> pa.Table:
    """Items that are training items themselves, items sharing a duplicate group with one, sharing
    only a similarity cluster with one, and none of these (``leaks`` is ``find_leaks``' table)."""
    return slice_table("leakage", *leakage_members(scored, leaks), outcomes(scored))


def leakage_members(items: pa.Table, leaks: pa.Table) -> tuple[np.ndarray, list[str]]:
    """Every row, by what it shares with the training items (``by_leakage``)."""
    shared = dict(zip(leaks.column("media_id").to_pylist(), leaks.column("shared").to_pylist()))
    names = {
        "media_id": "the item itself is in train",
        "duplicate_group": "near-duplicate in train",
        "cluster_id": "same cluster as a train item",
    }
    values = [
        names.get(shared.get(media_id, ""), "no group shared with train")
        for media_id in items.column("media_id").to_pylist()
    ]
    return np.arange(len(items)), values
