"""Detection mAP by pycocotools against cases worked out by hand."""

from __future__ import annotations

import math

import pytest

from tests.evaluation.helpers import item, write_export
from vl_datasets import PredictionsError, VisualLayerDataset
from vl_datasets.evaluation.detection import mean_average_precision


@pytest.fixture
def dataset(tmp_path):
    items = [
        item("m0", None, objects=(("cat", [10, 10, 40, 40]), ("dog", [50, 50, 40, 40]))),
        item("m1", None, objects=(("cat", [0, 0, 20, 20]),)),
    ]
    for entry in items:
        entry["width"] = entry["height"] = 100
    return VisualLayerDataset.from_export(write_export(tmp_path, items), task="detection", cache_dir=tmp_path / "c")


def test_every_box_found_scores_one(dataset):
    scores = mean_average_precision(
        dataset,
        {
            "m0": {"boxes": [[10, 10, 50, 50], [50, 50, 90, 90]], "scores": [0.9, 0.8], "labels": ["cat", "dog"]},
            "m1": {"boxes": [[0, 0, 20, 20]], "scores": [0.7], "labels": [0]},
        },
    )
    assert (scores.images, scores.map, scores.map_50) == (2, pytest.approx(1.0), pytest.approx(1.0))
    assert scores.per_class == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0)}


def test_half_the_cats_and_no_dog(dataset):
    # cat: one of two true boxes found first, so precision 1 up to recall 0.5 and 0 after: 51 of
    # COCO's 101 recall points. dog: never found. m1 has no entry: its cat is missed.
    scores = mean_average_precision(dataset, {"m0": {"boxes": [[10, 10, 50, 50]], "scores": [0.9], "labels": ["cat"]}})
    assert scores.per_class["cat"] == pytest.approx(51 / 101)
    assert scores.per_class["dog"] == 0.0
    assert scores.map == scores.map_50 == pytest.approx(51 / 202)


def test_a_loose_box_counts_only_at_the_low_iou_thresholds(dataset):
    # IoU of [10,10,50,50] and [10,10,50,58.67] = 1600 / 1746.8 = 0.916: a hit at 0.50..0.90 (9 of
    # COCO's 10 thresholds), a miss at 0.95.
    box = [10, 10, 50, 10 + 40 * 1.0 / 0.916]
    predictions = {
        "m0": {"boxes": [box, [50, 50, 90, 90]], "scores": [0.9, 0.8], "labels": ["cat", "dog"]},
        "m1": {"boxes": [[0, 0, 20, 20]], "scores": [0.7], "labels": ["cat"]},
    }
    scores = mean_average_precision(dataset, predictions)
    assert scores.map_50 == pytest.approx(1.0)
    # At 0.95 the cat ranking is a false positive (0.9) then a hit (0.7): precision 1/2 up to
    # recall 1/2, so AP 0.5 * 51/101 there.
    assert scores.per_class["cat"] == pytest.approx((9 + 0.5 * 51 / 101) / 10)
    assert scores.per_class["dog"] == pytest.approx(1.0)


def test_no_prediction_at_all_scores_zero(dataset):
    scores = mean_average_precision(dataset, {})
    assert scores.map == scores.map_50 == 0.0


def test_bad_detections_are_named(dataset):
    with pytest.raises(PredictionsError, match="'zz' is not an item"):
        mean_average_precision(dataset, {"zz": {"boxes": [], "scores": [], "labels": []}})
    with pytest.raises(PredictionsError, match="lacks 'scores'") as caught:
        mean_average_precision(dataset, {"m0": {"boxes": [[0, 0, 1, 1]], "labels": ["cat"]}})
    assert caught.value.media_id == "m0"
    with pytest.raises(PredictionsError, match="differ in number"):
        mean_average_precision(dataset, {"m0": {"boxes": [[0, 0, 1, 1]], "scores": [0.5, 0.4], "labels": ["cat"]}})
    with pytest.raises(PredictionsError, match="x2 >= x1"):
        mean_average_precision(dataset, {"m0": {"boxes": [[5, 0, 1, 1]], "scores": [0.5], "labels": ["cat"]}})
    with pytest.raises(PredictionsError, match="'horse' is not one of"):
        mean_average_precision(dataset, {"m0": {"boxes": [[0, 0, 1, 1]], "scores": [0.5], "labels": ["horse"]}})
    assert not math.isnan(mean_average_precision(dataset, {}).map)
