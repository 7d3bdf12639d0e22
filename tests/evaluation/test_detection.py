"""Detection mAP by pycocotools against cases worked out by hand."""

from __future__ import annotations

import functools
import math

import pytest

from tests.evaluation.helpers import item, write_export
from vl_datasets import PredictionsError, VisualLayerDataset
from vl_datasets.evaluation import mean_average_precision  # the public name the README uses


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
    for score in (float("nan"), 7.0, -3.0):
        with pytest.raises(PredictionsError, match="scores must be confidences from 0 to 1"):
            mean_average_precision(dataset, {"m0": {"boxes": [[0, 0, 1, 1]], "scores": [score], "labels": ["cat"]}})
    with pytest.raises(PredictionsError, match=r"N x 4 .*\(2, 5\)") as caught:
        mean_average_precision(dataset, {"m0": {"boxes": [[0] * 5] * 2, "scores": [0.5] * 2, "labels": ["cat"] * 2}})
    assert caught.value.media_id == "m0"
    one_flat = {"m1": {"boxes": [0, 0, 20, 20], "scores": [0.7], "labels": [0]}}  # a single box, flat
    assert mean_average_precision(dataset, one_flat).per_class["cat"] > 0
    assert not math.isnan(mean_average_precision(dataset, {}).map)


def test_tensors_as_a_torchvision_model_gives_them_are_taken(dataset):
    """The dataset's own targets, handed back as predictions, score one."""
    import torch

    predictions = {}
    for i in range(len(dataset)):
        target = dataset[i][1]
        boxes = torch.as_tensor(target["boxes"])
        predictions[target["media_id"]] = {"boxes": boxes, "scores": torch.ones(len(boxes)), "labels": target["labels"]}
    assert isinstance(predictions["m0"]["labels"], torch.Tensor)
    assert mean_average_precision(dataset, predictions).map == pytest.approx(1.0)


def test_the_true_boxes_are_the_targets_object_drop_issues_leaves(tmp_path):
    """A box the training targets leave out (an issue at or over its threshold) is no missed box."""
    blurred = {"issue_type": "blur", "confidence": 0.95}
    objects = (("cat", [10, 10, 40, 40]), ("cat", [50, 50, 40, 40]))
    items = [item("m0", None, objects=objects)]
    items[0]["width"] = items[0]["height"] = 100
    items[0]["metadata_items"][1]["properties"]["metadata_items"] = [{"type": "issue", "properties": blurred}]
    options = {"task": "detection", "cache_dir": tmp_path / "c", "object_drop_issues": {"blur": 0.8}}
    dataset = VisualLayerDataset.from_export(write_export(tmp_path, items), **options)
    (target,) = [dataset[0][1]]
    assert target["boxes"].tolist() == [[10, 10, 50, 50]], "the blurred box should leave the targets"
    found = {"m0": {"boxes": target["boxes"], "scores": [0.9], "labels": target["labels"]}}
    assert mean_average_precision(dataset, found).map == pytest.approx(1.0)


def test_predictions_of_items_curation_left_out_are_not_scored_and_said(tmp_path, caplog):
    items = [item(f"m{i}", None, uniqueness=0.9 - i * 0.6, objects=(("cat", [10, 10, 40, 40]),)) for i in range(2)]
    for entry in items:
        entry["width"] = entry["height"] = 100
    export = write_export(tmp_path, items)
    kept = VisualLayerDataset.from_export(export, task="detection", cache_dir=tmp_path / "c", min_uniqueness=0.5)
    found = {"boxes": [[10, 10, 50, 50]], "scores": [0.9], "labels": ["cat"]}
    with caplog.at_level("WARNING", logger="vl_datasets"):
        scores = mean_average_precision(kept, {"m0": found, "m1": found})
    assert "1 of the 2 predicted items are items this dataset's curation left out" in caplog.text
    assert scores.images == 1 and scores.map == pytest.approx(1.0)
    with pytest.raises(PredictionsError, match="None of the 1 predicted items is in the dataset"):
        mean_average_precision(kept, {"m1": found})


def test_a_dataset_of_another_task_is_refused_naming_the_task_expected(tmp_path):
    """Boxes scored on a classification dataset matched them against its image labels' classes;
    classes scored on a multilabel or a detection dataset gave an accuracy of nothing in particular."""
    from vl_datasets.evaluation import evaluate, evaluate_detection

    items = [item(f"m{i}", "cat", objects=(("cat", [10, 10, 40, 40]),)) for i in range(2)]
    export = write_export(tmp_path, items)
    boxes = {f"m{i}": {"boxes": [[10, 10, 50, 50]], "scores": [0.9], "labels": ["cat"]} for i in range(2)}
    classification = VisualLayerDataset.from_export(export, cache_dir=tmp_path / "c")
    for score in (mean_average_precision, lambda ds, p: evaluate_detection(ds, p, n_resamples=0)):
        with pytest.raises(PredictionsError, match="task is 'classification': open it with task='detection'"):
            score(classification, boxes)
    for task in ("multilabel", "detection"):
        dataset = VisualLayerDataset.from_export(export, task=task, cache_dir=tmp_path / "c")
        with pytest.raises(PredictionsError, match=f"task='classification' dataset; this one's task is '{task}'"):
            evaluate(dataset, {"m0": "cat", "m1": "cat"})


def test_the_export_classes_are_every_object_label_of_the_chosen_source_before_curation(tmp_path):
    from vl_datasets.evaluation.results import with_export_classes

    blur = {"issue_type": "blur", "confidence": 0.9}
    items = [
        item("b0", None, issues=(blur,), objects=(("bird", [0, 0, 8, 8]),)),
        item("c0", None, objects=(("cat", [0, 0, 8, 8]), ("dog", [8, 8, 8, 8]))),
    ]
    items[1]["metadata_items"][1]["properties"]["source"] = "VL"  # the dog is not the user's
    export = write_export(tmp_path, items)
    opener = functools.partial(
        VisualLayerDataset.from_export,
        export,
        task="detection",
        drop_issues={"blur": 0.5},
        label_source="User",
        cache_dir=tmp_path / "c",
    )
    assert opener().classes == ["cat"]
    assert with_export_classes(opener).classes == ["bird", "cat"]
