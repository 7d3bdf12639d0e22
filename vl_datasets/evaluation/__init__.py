"""Evaluate a model against its labels and against what Visual Layer knows of each item.

    from vl_datasets.evaluation import evaluate

    result = evaluate(test_set, {media_id: predicted_class, ...}, train_ids=train_set.media_ids)
    print(result.slices["issue"])                  # accuracy per issue type and confidence band
    result.write_label_errors("label_errors.txt")  # media ids for media_ids= / subset= / where=
    result.write_report("evaluation.html")

One module per job: ``predictions`` reads and checks predictions, ``scored`` joins them with the
metadata, ``slices`` computes accuracy per slice, ``label_errors`` ranks suspected label errors,
``detection`` scores boxes (mAP), ``report`` writes the HTML page, ``results`` ties them together.
For boxes: ``box_predictions`` reads a file of them, ``detection_slices`` scores mAP per slice with
bootstrap intervals, ``detection_results`` (``evaluate_detection``) ties them together and
``detection_report`` writes their page.
"""

from __future__ import annotations

from .box_predictions import read_detections
from .detection import mean_average_precision
from .detection_results import DetectionEvaluation, evaluate_detection
from .label_errors import read_media_ids, suspected_label_errors, write_media_ids
from .predictions import ClassPredictions, read_predictions
from .results import Evaluation, Leakage, evaluate
from .slices import wilson_interval

__all__ = [
    "ClassPredictions",
    "DetectionEvaluation",
    "Evaluation",
    "Leakage",
    "evaluate",
    "evaluate_detection",
    "mean_average_precision",
    "read_detections",
    "read_media_ids",
    "read_predictions",
    "suspected_label_errors",
    "wilson_interval",
    "write_media_ids",
]
