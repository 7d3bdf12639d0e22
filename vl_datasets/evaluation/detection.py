"""Detection predictions scored as COCO mAP, at IoU 0.5 and averaged over 0.5:0.95.

The scoring is pycocotools' ``COCOeval`` (the optional extra ``pip install "vl_datasets[eval]"``):
the reference implementation of the COCO protocol (101-point interpolation, greedy matching by
score, up to 100 detections an image), not a re-implementation of its rules. Ground truth is each item's objects
in the export (``ds.table``), boxes in the export's pixels; predictions must use those pixels
too (boxes predicted on resized images are scaled back first).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigurationError, PredictionsError
from ..metadata.curated import has_issue
from ..metadata.curation import label_sources

logger = logging.getLogger("vl_datasets")


@dataclass(frozen=True)
class DetectionScores:
    """``map`` (IoU 0.5:0.95), ``map_50`` (IoU 0.5), and ``per_class`` mAP@0.5:0.95 by class name
    (NaN for a class with neither a true nor a predicted box), over ``images`` images."""

    images: int
    map: float
    map_50: float
    per_class: dict[str, float]


def mean_average_precision(dataset: Any, predictions: Mapping[str, Mapping[str, Any]]) -> DetectionScores:
    """COCO mAP of ``predictions`` on ``dataset`` (a ``task="detection"`` dataset).

    ``predictions`` maps each media id of the dataset to ``{"boxes": N x 4 xyxy pixels,
    "scores": N, "labels": N class names or indices}``; an item of the dataset without an
    entry counts as one with no predicted box (its true boxes are all missed).
    """
    classes = detection_classes(dataset)
    predictions = of_the_dataset(dataset.curation_details(), predictions, kept_only=True)
    matches = match_boxes(
        dataset.table, classes, dataset.label_source, predictions, drop_issues=dataset.object_drop_issues
    )
    return matches.scores(np.arange(len(dataset.table)))


def of_the_dataset(details: pa.Table, predictions: Mapping[str, Any], *, kept_only: bool) -> Mapping[str, Any]:
    """``predictions`` less those of the export's items the dataset leaves out, each kind said in a
    WARNING: those outside its ``subset=`` (another part of a split: a model's training items
    would count in the test's mAP) and, with ``kept_only``, those other curation rules removed.
    A media id the export lacks raises ``PredictionsError`` naming it; so do predictions none of
    which is of the dataset. ``details``: the dataset's ``curation_details()``."""
    media_ids = details.column("media_id")
    predicted = pa.array(list(predictions), pa.string())
    at = pc.index_in(predicted, value_set=media_ids)
    if at.null_count:
        row = pc.index(pc.is_null(at), True).as_py()
        raise PredictionsError(
            f"media id {predicted[row].as_py()!r} is not an item of this export "
            f"({at.null_count:,} predicted media id(s) are not).",
            column="media_id",
            media_id=predicted[row].as_py(),
        )
    removed_by = details.column("removed_by").take(at)
    outside = pc.is_valid(removed_by) if kept_only else pc.fill_null(pc.equal(removed_by, "subset"), False)
    left_out = outside.to_numpy(zero_copy_only=False)
    if not left_out.any():
        return predictions
    what = "items this dataset's curation left out" if kept_only else "items outside this dataset's subset="
    if left_out.all():
        raise PredictionsError(f"None of the {len(predicted):,} predicted items is in the dataset: all are {what}.")
    logger.warning(
        "%d of the %d predicted items are %s: left out of the evaluation.", int(left_out.sum()), len(predicted), what
    )
    return {media_id: predictions[media_id] for media_id, out in zip(predictions, left_out.tolist()) if not out}


def detection_classes(dataset: Any) -> list[str]:
    """The dataset's object classes; an error when it was not opened for detection or has none."""
    if dataset.task != "detection":  # a classification dataset's classes are its image labels, not objects
        raise PredictionsError(
            f"Boxes are scored on a task='detection' dataset; this one's task is {dataset.task!r}: "
            "open it with task='detection'."
        )
    classes = list(dataset.classes)
    if not classes:
        raise PredictionsError("The dataset has no object classes: open it with task='detection'.")
    return classes


def match_boxes(
    table: pa.Table,
    classes: list[str],
    label_source: Any,
    predictions: Mapping[str, Mapping[str, Any]],
    *,
    drop_issues: Mapping[str, float] | None = None,
) -> BoxMatches:
    """Each row of ``table`` (with ``media_id`` and ``objects``) matched by COCOeval against its
    entry in ``predictions`` (none: no predicted box), ready to be scored over any rows. The true
    boxes are the dataset's targets: ``drop_issues`` (its ``object_drop_issues``) leaves out those
    its training targets leave out."""
    coco = _coco()
    truth = true_boxes(table, classes, label_source, drop_issues)
    media_ids = table.column("media_id").to_pylist()
    found = [_predicted(predictions[m], classes, m) if m in predictions else None for m in media_ids]
    images_with_class = np.zeros(len(classes), np.int64)
    for target in truth:
        images_with_class[np.unique(target["labels"])] += 1
    return BoxMatches(_matched_images(coco, truth, found, len(classes)), classes, images_with_class)


class BoxMatches:
    """COCOeval's per-image matching of every row, done once; ``precision(rows)`` then runs
    COCOeval's own accumulation over any choice of rows, repeats included (a bootstrap resample).

    Matching is per image and class, so scoring a subset from it is what COCOeval gives on that
    subset alone.
    """

    def __init__(self, evaluator: Any, classes: list[str], images_with_class: np.ndarray) -> None:
        self._evaluator, self.classes, self.images_with_class = evaluator, classes, images_with_class
        self.n_rows = len(evaluator.params.imgIds)

    def precision(self, rows: np.ndarray) -> np.ndarray:
        """The precision array (IoU threshold x recall x class) over ``rows``, area "all", 100
        detections an image; -1 where a class has no true box among them."""
        rows = np.asarray(rows, np.int64)
        evaluator = copy.copy(self._evaluator)
        evaluator.params = copy.copy(self._evaluator.params)
        evaluator._paramsEval = copy.copy(self._evaluator._paramsEval)
        # Rows become images 0..n-1 (a repeated row is a new image), laid out as COCOeval
        # indexes them: class-major, then image.
        evaluator.params.imgIds = evaluator._paramsEval.imgIds = list(range(len(rows)))
        every = self._evaluator.evalImgs
        evaluator.evalImgs = [every[k * self.n_rows + row] for k in range(len(self.classes)) for row in rows.tolist()]
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            evaluator.accumulate()
        return evaluator.eval["precision"][:, :, :, 0, 0]

    def scores(self, rows: np.ndarray) -> DetectionScores:
        """mAP over ``rows``: overall, at IoU 0.5 and per class."""
        precision = self.precision(rows)
        return DetectionScores(
            images=len(rows),
            map=mean_precision(precision),
            map_50=mean_precision(precision[:1]),
            per_class={name: mean_precision(precision[:, :, k]) for k, name in enumerate(self.classes)},
        )


def _coco() -> Any:
    try:
        from pycocotools import coco, cocoeval
    except ImportError:
        raise ConfigurationError('Detection mAP needs pycocotools: pip install "vl_datasets[eval]"') from None
    return coco, cocoeval


def _coco_box(number: int, image_id: int, label: int, box: list[float]) -> dict[str, Any]:
    """A COCO annotation of an xyxy ``box``: COCO takes xywh, and an area to match by."""
    xywh = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
    return {
        "id": number,
        "image_id": image_id,
        "category_id": label,
        "bbox": xywh,
        "area": xywh[2] * xywh[3],
        "iscrowd": 0,
    }


def _matched_images(coco: Any, truth: list[dict], found: list[dict | None], n_classes: int) -> Any:
    """A COCOeval that has run ``evaluate`` (its per-image matching) on images 0..n-1, for the
    area range "all" and 100 detections an image only: the summary's cells."""
    coco_module, cocoeval_module = coco
    annotations: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for image_id, (target, predicted) in enumerate(zip(truth, found)):
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            annotations.append(_coco_box(len(annotations) + 1, image_id, label, box))
        if predicted is not None:
            for box, score, label in zip(
                predicted["boxes"].tolist(), predicted["scores"].tolist(), predicted["labels"].tolist()
            ):
                results.append({**_coco_box(len(results) + 1, image_id, label, box), "score": score})
    images = [{"id": i} for i in range(len(truth))]
    categories = [{"id": k} for k in range(n_classes)]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        # Both sides built the same way: loadRes refuses an empty list, and no box found is a
        # result too (every true box missed).
        ground, detected = coco_module.COCO(), coco_module.COCO()
        ground.dataset = {"images": images, "annotations": annotations, "categories": categories}
        detected.dataset = {"images": images, "annotations": results, "categories": categories}
        ground.createIndex()
        detected.createIndex()
        evaluator = cocoeval_module.COCOeval(ground, detected, "bbox")
        evaluator.params.imgIds = [image["id"] for image in images]
        evaluator.params.areaRng, evaluator.params.areaRngLbl = evaluator.params.areaRng[:1], ["all"]
        evaluator.params.maxDets = [100]
        evaluator.evaluate()
    return evaluator


def mean_precision(precision: np.ndarray) -> float:
    """COCO's own summary of a precision array: the mean over the cells of classes that have true
    boxes (-1 marks the others); NaN when no class has one."""
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else float("nan")


def true_boxes(
    table: pa.Table, classes: list[str], label_source: Any, drop_issues: Mapping[str, float] | None = None
) -> list[dict[str, np.ndarray]]:
    """Each row's objects of a known class (and chosen source) with a box and without an issue
    ``drop_issues`` drops, as xyxy boxes and class indices: the dataset's detection targets."""
    index = {name: i for i, name in enumerate(classes)}
    sources = label_sources(label_source)
    drop = drop_issues or {}
    out: list[dict[str, np.ndarray]] = []
    for objects in table.column("objects").to_pylist():
        boxes: list[tuple[float, float, float, float]] = []
        labels: list[int] = []
        for obj in objects:
            if sources is not None and obj.get("source") not in sources:
                continue
            if obj.get("category_name") not in index or obj.get("bbox") is None or has_issue(obj, drop):
                continue
            x, y, w, h = obj["bbox"]
            boxes.append((x, y, x + w, y + h))  # the export's xywh, top-left origin, to xyxy
            labels.append(index[obj["category_name"]])
        out.append({"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "labels": np.asarray(labels, np.int64)})
    return out


def _predicted(entry: Mapping[str, Any], classes: list[str], media_id: str) -> dict[str, np.ndarray]:
    def fail(problem: str, column: str) -> PredictionsError:
        return PredictionsError(f"media id {media_id!r}: {problem}.", column=column, media_id=media_id)

    missing = [key for key in ("boxes", "scores", "labels") if key not in entry]
    if missing:
        raise fail(f"the prediction lacks {missing[0]!r}", missing[0])
    try:  # lists, numpy arrays or tensors (a torchvision model's output, the dataset's own targets)
        boxes = np.asarray(_plain(entry["boxes"]), dtype=np.float32)
        scores = np.asarray(_plain(entry["scores"]), dtype=np.float32).reshape(-1)
    except (TypeError, ValueError):
        raise fail("boxes and scores must be numbers", "boxes") from None
    boxes = boxes.reshape(-1, 4) if boxes.size == 0 or boxes.shape == (4,) else boxes  # none, or one box flat
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise fail(f"boxes must be N x 4 (x1, y1, x2, y2), got shape {tuple(boxes.shape)}", "boxes")
    labels = _label_indices(_plain(entry["labels"]), classes, fail)
    if not len(boxes) == len(scores) == len(labels):
        raise fail(f"{len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels differ in number", "boxes")
    if not np.isfinite(boxes).all() or (boxes[:, 2:] < boxes[:, :2]).any():
        raise fail("boxes must be finite xyxy with x2 >= x1 and y2 >= y1", "boxes")
    if not ((scores >= 0) & (scores <= 1)).all():  # NaN fails this too: a score ranks the boxes
        raise fail("scores must be confidences from 0 to 1", "scores")
    return {"boxes": boxes, "scores": scores, "labels": labels}


def _plain(values: Any) -> Any:
    """``values`` as plain numbers: a tensor (on any device) as a numpy array, anything else as it is."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):
        return values.detach().cpu().numpy()
    return values


def _label_indices(values: Sequence[Any], classes: list[str], fail: Any) -> np.ndarray:
    out = []
    for value in np.asarray(values).tolist() if isinstance(values, np.ndarray) else list(values):
        if isinstance(value, str) and value in classes:
            out.append(classes.index(value))
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value < len(classes):
            out.append(int(value))
        else:
            raise fail(f"label {value!r} is not one of the dataset's classes", "labels")
    return np.asarray(out, dtype=np.int64)
