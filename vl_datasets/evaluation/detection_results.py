"""``evaluate_detection``: score predicted boxes by COCO mAP, per slice of what Visual Layer knows."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigurationError
from .detection import DetectionScores, detection_classes, match_boxes, of_the_dataset
from .detection_slices import N_RESAMPLES, SEED, Bootstrap, detection_families
from .scored import train_leaks

ITEM_COLUMNS = ("media_id", "uniqueness_score", "cluster_id", "issues", "file_path", "image_path", "removed_by")


@dataclass(frozen=True)
class DetectionEvaluation:
    """The outcome of ``evaluate_detection``: ``scores`` (mAP over every scored image), its 95%
    bootstrap intervals, the slice tables (``detection_slices``), the scored images' metadata
    (``items``) and, with ``train_ids``, the leaks (``find_leaks``' table)."""

    title: str
    classes: list[str]
    items: pa.Table
    scores: DetectionScores
    map_interval: tuple[float, float]
    map_50_interval: tuple[float, float]
    slices: dict[str, pa.Table]
    leaks: pa.Table | None
    bootstrap: Bootstrap
    dataset: Any

    def write_report(self, path: str | os.PathLike, **options: Any) -> Path:
        """Write the self-contained HTML detection report; see ``vl_datasets.evaluation.detection_report``."""
        from .detection_report import write_detection_report  # matplotlib is an optional extra

        return write_detection_report(self, path, **options)


def evaluate_detection(
    dataset: Any,
    predictions: Mapping[str, Mapping[str, Any]],
    *,
    train_ids: Iterable[str] | None = None,
    min_cluster_images: int = 3,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
    title: str | None = None,
) -> DetectionEvaluation:
    """Score detection ``predictions`` on ``dataset`` (``task="detection"``) by COCO mAP, overall
    and per slice, each with a bootstrap 95% interval (``n_resamples`` resamples of the images
    from ``seed``; 0 leaves the intervals out).

    ``predictions`` maps media ids to ``{"boxes": N x 4 xyxy in the export's pixels, "scores": N,
    "labels": N class names or indices}`` (``read_detections`` reads one from a file). The scored
    images are the dataset's items, where a missing entry means no box found, and any item that
    curation removed but the model ran on (the ``curation`` slices compare them). A media id
    the export lacks, or a dataset of another task, raises ``PredictionsError`` naming it.
    """
    if min_cluster_images < 1:
        raise ConfigurationError(f"min_cluster_images must be at least 1, got {min_cluster_images}.")
    bootstrap = Bootstrap(n_resamples, seed)
    classes = detection_classes(dataset)
    details = dataset.curation_details()
    items = _scored_images(details, predictions)
    matches = match_boxes(items, classes, dataset.label_source, predictions, drop_issues=dataset.object_drop_issues)
    leaks = None
    if train_ids is not None:
        leaks = train_leaks(details, list(train_ids), items.column("media_id").to_pylist())
    every = np.arange(len(items))
    intervals = bootstrap.intervals(matches, every)
    return DetectionEvaluation(
        title=title or f"Detection evaluation: {getattr(dataset, 'dataset_id', None) or Path(dataset.export_dir).name}",
        classes=classes,
        items=items.select(list(ITEM_COLUMNS)),
        scores=matches.scores(every),
        map_interval=(float(intervals[0, 0]), float(intervals[1, 0])),
        map_50_interval=(float(intervals[0, 1]), float(intervals[1, 1])),
        slices=detection_families(
            items, matches, bootstrap=bootstrap, min_cluster_images=min_cluster_images, leaks=leaks
        ),
        leaks=leaks,
        bootstrap=bootstrap,
        dataset=dataset,
    )


def _scored_images(details: pa.Table, predictions: Mapping[str, Any]) -> pa.Table:
    """The export's rows that are scored: those curation kept, and those predicted but outside no
    ``subset=`` (``of_the_dataset``: those are left out, with a WARNING)."""
    predicted = pa.array(list(of_the_dataset(details, predictions, kept_only=False)), pa.string())
    scored = pc.or_(pc.is_null(details.column("removed_by")), pc.is_in(details.column("media_id"), value_set=predicted))
    return details.filter(scored)
