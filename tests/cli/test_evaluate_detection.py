"""``vl-datasets evaluate`` with box predictions (COCO results JSON or Parquet): mAP per slice,
end to end from a dataset the local Visual Layer service exports."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.evaluation.helpers import item, write_export
from tests.helpers import thumbnails
from vl_datasets import PredictionsError
from vl_datasets.cli import main
from vl_datasets.evaluation.box_predictions import read_detections
from vl_datasets.testing import LocalVisualLayer

BLUR = {"issue_type": "blur", "confidence": 0.95}
CAT = [10.0, 10.0, 40.0, 40.0]  # xywh, as the export and COCO results give boxes

# m0's cat found; m1's cat missed (its box is elsewhere, IoU 0); m2's cat found, its dog missed.
BOXES = [
    {"image_id": "m0", "category_name": "cat", "bbox": CAT, "score": 0.9},
    {"image_id": "m1", "category_name": "cat", "bbox": [60.0, 60.0, 30.0, 30.0], "score": 0.8},
    {"media_id": "m2", "category_id": 0, "bbox": CAT, "score": 0.7},  # class 0 of ["cat", "dog"]
]
NAMES = {"b0": "bird", "c0": "cat", "d0": "dog"}  # one box each, where the prediction puts it


@pytest.fixture
def service(tmp_path):
    items = [
        item("m0", None, uniqueness=0.9, cluster="k0", issues=(BLUR,), objects=(("cat", CAT),)),
        item("m1", None, uniqueness=0.8, cluster="k0", objects=(("cat", CAT),)),
        item("m2", None, uniqueness=0.7, cluster="k0", objects=(("cat", CAT), ("dog", [60, 60, 20, 20]))),
    ]
    for entry in items:
        entry["width"] = entry["height"] = 100
    write_export(tmp_path / "datasets", items, name="boxes")
    with LocalVisualLayer(tmp_path / "datasets", export_polls=0) as running:
        yield running


def run(service, tmp_path, predictions, *more):
    return main(
        ["evaluate", "boxes", "--api-url", service.url, "--cache-dir", str(tmp_path / "cache"),
         "--predictions", str(predictions), *more]
    )  # fmt: skip


@pytest.mark.parametrize("suffix", ["json", "parquet"])
def test_box_predictions_score_map_per_slice_end_to_end(service, tmp_path, capsys, suffix):
    predictions = tmp_path / f"boxes.{suffix}"
    if suffix == "json":
        predictions.write_text(json.dumps(BOXES))
    else:
        rows = [{"media_id": b.get("media_id") or b["image_id"], "category_name": "cat", **b} for b in BOXES]
        columns = ("media_id", "category_name", "bbox", "score")
        pq.write_table(pa.Table.from_pylist([{k: r[k] for k in columns} for r in rows]), predictions)
    out = tmp_path / "detection.html"
    train_ids = _ids(tmp_path)
    code = run(service, tmp_path, predictions, "--out", str(out), "--resamples", "30", "--train-ids", str(train_ids))
    printed = capsys.readouterr().out
    assert code == 0, printed
    # Cats ranked hit (0.9), miss (m1's box, 0.8), hit (0.7): precision 1 up to recall 1/3 (34 of
    # COCO's 101 recall points), then 2/3 up to recall 2/3 (33 points): AP 56/101. Dog missed: 0.
    assert "3 images scored; mAP@0.5:0.95 27.7% (95% CI " in printed  # 56/202
    assert "  kept: 3 images, mAP@0.5:0.95 27.7%" in printed
    assert "3 images share a group with a training item" in printed  # cluster k0
    page = out.read_text()
    assert "<tr><td>blur 0.9-1</td><td class=n>1</td><td class=n>100.0%</td>" in page
    assert "bootstrap over images: 30 resamples, seed 0" in page
    assert thumbnails(page) == 3  # cluster k0's images


def _ids(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("m1\n")
    return path


def box(**fields):
    """A good row for m0 with ``fields`` changed (None: left out)."""
    row = {"media_id": "m0", "category_name": "cat", "bbox": CAT, "score": 0.5} | fields
    return {name: value for name, value in row.items() if value is not None}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (box(media_id=None), "row 1: 'media_id' or 'image_id' is missing"),
        (box(category_name="horse"), "row 1 (media id 'm0'): category_name 'horse' is not one of"),
        (box(category_name=None, category_id=7), "category_id 7 is not one of"),
        (box(category_name=None), "row 1: 'category_name' or 'category_id' is missing"),
        (box(bbox=[1, 2, 3]), "row 1 (media id 'm0'): bbox [1, 2, 3] is not [x, y, width, height]"),
        (box(bbox=[1, 2, -3, 4]), "width and height >= 0"),
        (box(bbox=[10**400, 0, 1, 1]), "row 1 (media id 'm0'): bbox [1000"),  # an int no float holds
        (box(score=1.5), "row 1 (media id 'm0'): score 1.5 is not a number from 0 to 1"),
        (box(score=None), "score None is not a number"),
        (box(media_id="zz"), "media id 'zz' is not an item of this export"),
    ],
)
def test_a_bad_box_exits_1_naming_the_row_and_field(service, tmp_path, capsys, row, message):
    predictions = tmp_path / "boxes.json"
    predictions.write_text(json.dumps([BOXES[0], row]))
    assert run(service, tmp_path, predictions) == 1
    err = capsys.readouterr().err
    assert message in err
    assert "hint: the predictions do not fit the dataset" in err


def test_a_file_that_is_not_a_list_of_boxes_exits_1(service, tmp_path, capsys):
    predictions = tmp_path / "boxes.json"
    predictions.write_text('{"media_id": "m0"}')
    assert run(service, tmp_path, predictions) == 1
    assert "expected a JSON list of boxes, got a dict" in capsys.readouterr().err
    predictions.write_text("[{")
    assert run(service, tmp_path, predictions) == 1
    assert "not valid JSON" in capsys.readouterr().err


def test_a_predictions_file_nested_100000_deep_exits_1_naming_it(service, tmp_path, capsys):
    predictions = tmp_path / "boxes.json"
    predictions.write_text("[" * 100_000 + "]" * 100_000)
    assert run(service, tmp_path, predictions) == 1
    err = capsys.readouterr().err
    assert "nested deeper than JSON predictions ever are" in err and str(predictions) in err
    assert "RecursionError" not in err and "Traceback" not in err


def test_classification_only_options_are_refused_for_boxes(service, tmp_path, capsys):
    predictions = tmp_path / "boxes.json"
    predictions.write_text(json.dumps(BOXES))
    assert run(service, tmp_path, predictions, "--label-errors", str(tmp_path / "e.txt")) == 2
    assert "--label-errors and --min-confidence apply to classification predictions" in capsys.readouterr().err
    assert run(service, tmp_path, predictions, "--resamples", "-1") == 2
    assert "n_resamples must be 0 or more" in capsys.readouterr().err
    assert run(service, tmp_path, predictions, "--seed", "-1") == 2
    assert "seed must be 0 or more, got -1" in capsys.readouterr().err


def test_an_out_that_is_a_folder_exits_2_before_scoring(service, tmp_path, capsys):
    predictions = tmp_path / "boxes.json"
    predictions.write_text(json.dumps(BOXES))
    assert run(service, tmp_path, predictions, "--out", str(tmp_path)) == 2
    captured = capsys.readouterr()
    assert f"error: --out {tmp_path}: is a folder" in captured.err and "images scored" not in captured.out


def test_the_error_carries_the_row_field_and_media_id(tmp_path):
    predictions = tmp_path / "boxes.json"
    predictions.write_text(json.dumps([box(), box(media_id="m2", bbox=[0, 0, float("inf"), 1])]))
    with pytest.raises(PredictionsError) as caught:
        read_detections(predictions, ["cat", "dog"])
    assert (caught.value.row, caught.value.column, caught.value.media_id) == (1, "bbox", "m2")
    found = read_detections(_good(tmp_path), ["cat", "dog"])
    assert found["m0"]["boxes"].tolist() == [[10, 10, 50, 50], [10, 10, 50, 50]]  # xywh became xyxy
    assert found["m0"]["labels"].tolist() == [0, 1] and found["m0"]["scores"].tolist() == [0.5, 0.25]


def _good(tmp_path):
    path = tmp_path / "good.json"
    path.write_text(json.dumps([box(), box(category_name="dog", score=0.25)]))
    return path


def test_a_predictions_file_without_a_box_exits_1_as_an_empty_classification_file_does(service, tmp_path, capsys):
    predictions = tmp_path / "boxes.json"
    predictions.write_text("[]")
    assert run(service, tmp_path, predictions) == 1
    assert f"{predictions}: holds no predicted box" in capsys.readouterr().err


def test_a_class_curation_removes_whole_keeps_its_index_and_its_name(tmp_path, capsys):
    """The classes came from the objects of the kept items: with the only bird blurred and dropped,
    a perfect detector's category ids (bird 0, cat 1, dog 2) read as other classes, and its bird by
    name was refused."""
    items = [item(m, None, issues=(BLUR,) if m == "b0" else (), objects=((n, CAT),)) for m, n in NAMES.items()]
    for entry in items:
        entry["width"] = entry["height"] = 100
    export = write_export(tmp_path, items)
    by_index, by_name = tmp_path / "index.json", tmp_path / "name.json"
    found = {"bbox": CAT, "score": 0.9}
    by_index.write_text(json.dumps([{"media_id": m, "category_id": i, **found} for m, i in (("c0", 1), ("d0", 2))]))
    by_name.write_text(json.dumps([{"media_id": m, "category_name": n, **found} for m, n in NAMES.items()]))
    argv = ["evaluate", str(export), "--drop-issue", "blur=0.8", "--resamples", "0", "--cache-dir", str(tmp_path / "c")]
    assert main([*argv, "--predictions", str(by_index)]) == 0
    assert "2 images scored; mAP@0.5:0.95 100.0%" in capsys.readouterr().out
    assert main([*argv, "--predictions", str(by_name)]) == 0
    printed = capsys.readouterr().out
    assert "3 images scored; mAP@0.5:0.95 100.0%" in printed
    assert "  removed by drop_issues: 1 images, mAP@0.5:0.95 100.0%" in printed
