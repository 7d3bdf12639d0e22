"""Detection mAP per slice of the images, each with a bootstrap 95% interval.

The slices are classification's (``slices``' ``*_members`` functions): issue type and confidence
band, uniqueness decile, duplicate-group members against singletons, similarity cluster (worst
first), what curation did, and what an image shares with the training items; and, in place of
accuracy per class, each class's AP. Each family is one table with the columns ``slice``,
``value``, ``images``, ``map`` (IoU 0.5:0.95), ``low``, ``high``, ``map_50`` (IoU 0.5),
``low_50`` and ``high_50``.

mAP is no mean of per-image outcomes, so its interval is a bootstrap: the slice's images are
resampled with replacement ``n_resamples`` times (images, not boxes: the boxes of one image fail
together), each resample scored by COCOeval's own accumulation, and the interval is the 2.5th and
97.5th percentiles of those scores. The generator is seeded (``seed``), so the same inputs give
the same intervals. A resample costs one accumulation over the slice's images; ``n_resamples=0``
leaves the intervals out (NaN).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigurationError
from . import slices
from .detection import BoxMatches, mean_precision

N_RESAMPLES = 200
SEED = 0

DETECTION_SLICE_SCHEMA = pa.schema(
    [
        ("slice", pa.string()),
        ("value", pa.string()),
        ("images", pa.int64()),
        ("map", pa.float64()),
        ("low", pa.float64()),
        ("high", pa.float64()),
        ("map_50", pa.float64()),
        ("low_50", pa.float64()),
        ("high_50", pa.float64()),
    ]
)


@dataclass(frozen=True)
class Bootstrap:
    """How the intervals are drawn: ``n_resamples`` resamples of a slice's images, from ``seed``."""

    n_resamples: int = N_RESAMPLES
    seed: int = SEED

    def __post_init__(self) -> None:
        if self.n_resamples < 0:
            raise ConfigurationError(f"n_resamples must be 0 or more, got {self.n_resamples}.")
        if self.seed < 0:  # numpy's generators take no negative seed
            raise ConfigurationError(f"seed must be 0 or more, got {self.seed}.")

    def resampled(self, matches: BoxMatches, rows: np.ndarray) -> np.ndarray:
        """Per resample of ``rows``: mAP, mAP@0.5, then each class's AP (resamples x 2 + classes)."""
        rng = np.random.default_rng(self.seed)
        out = np.full((self.n_resamples, 2 + len(matches.classes)), np.nan)
        for b in range(self.n_resamples if len(rows) else 0):
            out[b] = _summary(matches.precision(rng.choice(rows, size=len(rows), replace=True)))
        return out

    def intervals(self, matches: BoxMatches, rows: np.ndarray) -> np.ndarray:
        """The 95% percentile interval of each ``resampled`` column (2 x columns; NaN where no
        resample had a true box to score)."""
        draws = self.resampled(matches, rows)
        out = np.full((2, draws.shape[1]), np.nan)
        for column in range(draws.shape[1]):
            valid = draws[:, column][~np.isnan(draws[:, column])]
            if valid.size:
                out[:, column] = np.percentile(valid, [2.5, 97.5])
        return out


def _summary(precision: np.ndarray) -> np.ndarray:
    per_class = [mean_precision(precision[:, :, k]) for k in range(precision.shape[2])]
    return np.array([mean_precision(precision), mean_precision(precision[:1]), *per_class])


def detection_slice_table(
    name: str, matches: BoxMatches, rows: np.ndarray, values: list[str], bootstrap: Bootstrap
) -> pa.Table:
    """One family: ``rows[k]`` (rows of the matched images) belongs to ``values[k]``; rows in
    value order of first appearance."""
    groups: dict[str, list[int]] = {}
    for row, value in zip(np.asarray(rows).tolist(), values):
        groups.setdefault(value, []).append(row)
    out = []
    for value, members in groups.items():
        picked = np.asarray(members, np.int64)
        score = _summary(matches.precision(picked))
        (low, low_50), (high, high_50) = bootstrap.intervals(matches, picked)[:, :2]
        out.append(
            {
                "slice": name,
                "value": value,
                "images": len(picked),
                "map": score[0],
                "low": low,
                "high": high,
                "map_50": score[1],
                "low_50": low_50,
                "high_50": high_50,
            }
        )
    return pa.Table.from_pylist(out, schema=DETECTION_SLICE_SCHEMA)


def by_class(matches: BoxMatches, bootstrap: Bootstrap) -> pa.Table:
    """Each class's AP over every image (``images``: those with a true box of it), classes in
    name order; its interval from resamples of every image."""
    every = np.arange(matches.n_rows)
    precision = matches.precision(every)
    intervals = bootstrap.intervals(matches, every)
    out = []
    for k, name in enumerate(matches.classes):
        ap, ap_50 = mean_precision(precision[:, :, k]), mean_precision(precision[:1, :, k])
        # The per-class AP at IoU 0.5 has no bootstrap column of its own: its interval is left out.
        out.append(
            {
                "slice": "class",
                "value": name,
                "images": int(matches.images_with_class[k]),
                "map": ap,
                "low": intervals[0, 2 + k],
                "high": intervals[1, 2 + k],
                "map_50": ap_50,
                "low_50": np.nan,
                "high_50": np.nan,
            }
        )
    return pa.Table.from_pylist(out, schema=DETECTION_SLICE_SCHEMA).sort_by("value")


def detection_families(
    items: pa.Table,
    matches: BoxMatches,
    *,
    bootstrap: Bootstrap,
    min_cluster_images: int = 3,
    leaks: pa.Table | None = None,
) -> dict[str, pa.Table]:
    """Every family of ``items`` (the matched images' metadata, row for row with ``matches``)."""

    def family(name: str, members: tuple[np.ndarray, list[str]]) -> pa.Table:
        return detection_slice_table(name, matches, *members, bootstrap)

    clusters = family("cluster", slices.cluster_members(items))
    clusters = clusters.filter(pc.greater_equal(clusters.column("images"), min_cluster_images))
    families = {
        "class": by_class(matches, bootstrap),
        "issue": family("issue", slices.issue_members(items)),
        "uniqueness": family("uniqueness decile", slices.uniqueness_members(items)).sort_by("value"),
        "duplicates": family("duplicates", slices.duplicate_members(items)),
        "cluster": clusters.sort_by([("map", "ascending"), ("images", "descending"), ("value", "ascending")]),
        "curation": family("curation", slices.curation_members(items)),
    }
    if leaks is not None:
        families["leakage"] = family("leakage", slices.leakage_members(items, leaks))
    return families
