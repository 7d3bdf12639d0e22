"""Detection mAP per slice, with bootstrap intervals, on an export small enough to score by hand."""

from __future__ import annotations

import base64
import math
import re

import pytest

from tests.evaluation.helpers import duplicate, item, write_export
from tests.helpers import render_in_browser, thumbnails
from tests.test_report import browser  # noqa: F401  (the fixture: Debian's Chromium through playwright)
from vl_datasets import ConfigurationError, PredictionsError, VisualLayerDataset
from vl_datasets.evaluation import evaluate_detection

BLUR = {"issue_type": "blur", "confidence": 0.95}
CAT = [10, 10, 40, 40]  # xywh in the export; the same box as xyxy [10, 10, 50, 50]
FOUND = {"boxes": [[10, 10, 50, 50]], "scores": [0.9], "labels": ["cat"]}


@pytest.fixture
def dataset(tmp_path):
    items = [
        item("m0", None, uniqueness=0.9, cluster="k0", issues=(BLUR,), objects=(("cat", CAT),)),
        item("m1", None, uniqueness=0.8, cluster="k0", issues=duplicate("g1"), objects=(("cat", CAT),)),
        item("m2", None, uniqueness=0.7, cluster="k1", objects=(("cat", CAT), ("dog", [60, 60, 20, 20]))),
        item("m3", None, uniqueness=0.1, cluster="k1", objects=(("cat", CAT),)),  # removed by min_uniqueness
    ]
    for entry in items:
        entry["width"] = entry["height"] = 100
    export = write_export(tmp_path, items)
    return VisualLayerDataset.from_export(export, task="detection", cache_dir=tmp_path / "c", min_uniqueness=0.5)


def rows(table):
    return {row["value"]: row for row in table.to_pylist()}


def test_map_per_slice_is_what_each_slice_scores_alone(dataset):
    # m0 and m2's cat found, m1's cat missed, m2's dog missed; m3 (removed) found.
    result = evaluate_detection(dataset, {"m0": FOUND, "m2": FOUND, "m3": FOUND}, n_resamples=50)
    # Over m0..m3: cats 3 of 4 found, each ranked before any miss: precision 1 up to recall 0.75,
    # so 76 of COCO's 101 recall points; dog never found: 0.
    assert result.scores.images == 4
    assert result.scores.per_class == {"cat": pytest.approx(76 / 101), "dog": 0.0}
    assert result.scores.map == pytest.approx(76 / 202)
    issue = rows(result.slices["issue"])
    assert set(issue) == {"blur 0.9-1", "duplicates 0.9-1", "no issue"}
    assert (issue["blur 0.9-1"]["images"], issue["blur 0.9-1"]["map"]) == (1, pytest.approx(1.0))
    assert issue["duplicates 0.9-1"]["map"] == 0.0  # m1: its one cat missed
    # m2 and m3: both cats found (AP 1), the dog missed (AP 0).
    assert (issue["no issue"]["images"], issue["no issue"]["map"]) == (2, pytest.approx(0.5))
    curation = rows(result.slices["curation"])
    # m0..m2: two cats of three found (recall points 0..0.66), the dog missed.
    assert curation["kept"]["images"] == 3 and curation["kept"]["map"] == pytest.approx(67 / 202)
    assert curation["removed by min_uniqueness=0.5"]["map"] == pytest.approx(1.0)
    duplicates = rows(result.slices["duplicates"])
    assert duplicates["in a duplicate group"]["images"] == 1 and duplicates["singleton"]["images"] == 3
    classes = rows(result.slices["class"])
    assert classes["cat"]["map"] == pytest.approx(76 / 101) and classes["cat"]["images"] == 4
    assert classes["dog"]["images"] == 1


def test_worst_cluster_first_and_small_clusters_left_out(dataset):
    predictions = {"m0": FOUND, "m2": FOUND, "m3": FOUND}
    result = evaluate_detection(dataset, predictions, n_resamples=0, min_cluster_images=2)
    clusters = result.slices["cluster"].to_pylist()
    # k0 (m0 found, m1 missed): cat AP 51/101. k1 (m2, m3): cats found, dog missed: 0.5.
    assert [(row["value"], row["images"]) for row in clusters] == [("k1", 2), ("k0", 2)]
    assert [row["map"] for row in clusters] == [pytest.approx(0.5), pytest.approx(51 / 101)]
    assert all(math.isnan(row["low"]) for row in clusters)  # no resample asked: no interval
    fewer = evaluate_detection(dataset, {"m0": FOUND}, n_resamples=0, min_cluster_images=3)
    assert len(fewer.slices["cluster"]) == 0


def test_bootstrap_intervals_resample_images_with_a_fixed_seed(dataset):
    predictions = {"m0": FOUND, "m2": FOUND}
    result = evaluate_detection(dataset, predictions, n_resamples=200, seed=0)
    issue = rows(result.slices["issue"])
    # One image: every resample is that image.
    assert (issue["blur 0.9-1"]["low"], issue["blur 0.9-1"]["high"]) == (pytest.approx(1.0), pytest.approx(1.0))
    # The kept images m0, m1, m2: a resample of only m1 scores 0 (1 in 27 draws), of only m0 or m2
    # (the dog apart) higher; the interval spans the point estimate and stays in 0..1.
    kept = rows(result.slices["curation"])["kept"]
    assert 0 <= kept["low"] <= kept["map"] <= kept["high"] <= 1
    assert kept["low"] < kept["high"]
    low, high = result.map_interval
    assert low <= result.scores.map <= high
    again = evaluate_detection(dataset, predictions, n_resamples=200, seed=0)
    assert again.slices["curation"].equals(result.slices["curation"])


def test_leakage_slices_need_train_ids(dataset):
    result = evaluate_detection(dataset, {"m0": FOUND}, n_resamples=0)
    assert "leakage" not in result.slices and result.leaks is None
    leaked = evaluate_detection(dataset, {"m0": FOUND}, n_resamples=0, train_ids=["m3"])
    leakage = rows(leaked.slices["leakage"])
    assert leakage["same cluster as a train item"]["images"] == 1  # m2, in m3's cluster k1
    assert leakage["no group shared with train"]["images"] == 2
    assert leaked.leaks.column("media_id").to_pylist() == ["m2"]


def test_bad_input_is_named(dataset):
    with pytest.raises(PredictionsError, match="'zz' is not an item of this export"):
        evaluate_detection(dataset, {"zz": FOUND})
    with pytest.raises(ConfigurationError, match="n_resamples"):
        evaluate_detection(dataset, {}, n_resamples=-1)
    with pytest.raises(ConfigurationError, match="seed must be 0 or more, got -1"):  # not numpy's ValueError
        evaluate_detection(dataset, {}, seed=-1)
    with pytest.raises(ConfigurationError, match="min_cluster_images"):
        evaluate_detection(dataset, {}, min_cluster_images=0)


def test_the_report_shows_map_per_slice_with_its_interval(dataset, tmp_path):
    result = evaluate_detection(
        dataset, {"m0": FOUND, "m2": FOUND, "m3": FOUND}, n_resamples=20, min_cluster_images=2, title="Boxes <&>"
    )
    page = result.write_report(tmp_path / "out" / "detection.html", max_clusters=1).read_text(encoding="utf-8")
    assert "<title>Boxes &lt;&amp;&gt;</title>" in page
    assert not re.search(r'(?:src|href)="(?!data:)', page), "the report links to a resource outside itself"
    plots = [base64.b64decode(b).decode() for b in re.findall(r'data:image/svg\+xml;base64,([^"]+)', page)]
    assert len(plots) == 1 and "uniqueness decile" in plots[0]
    assert "<tr><td>Images scored</td><td class=n>4</td></tr>" in page
    assert "bootstrap over images: 20 resamples, seed 0" in page
    # The blurred image's slice: every box found, and every resample is that one image.
    assert "<tr><td>blur 0.9-1</td><td class=n>1</td><td class=n>100.0%</td><td class=n>100.0%-100.0%</td>" in page
    assert "<h2>Kept by curation against removed</h2>" in page
    assert "<h3>Cluster k1: 2 images, mAP@0.5:0.95 50.0%</h3>" in page and "Cluster k0" not in page
    assert thumbnails(page) == 2  # the worst cluster's images, m2 and m3


def test_detection_report_renders_in_a_browser(browser, dataset, tmp_path):  # noqa: F811
    result = evaluate_detection(dataset, {"m0": FOUND}, n_resamples=10, min_cluster_images=1)
    report = result.write_report(tmp_path / "detection.html")
    page, decoded = render_in_browser(browser, report, tmp_path / "detection.png")
    assert len(decoded) == 1 + thumbnails(report.read_text())
    assert page.evaluate("() => document.querySelectorAll('table tr').length") > 10


def test_predictions_outside_the_subset_are_left_out_of_the_headline_with_a_warning(tmp_path, caplog):
    """A model run on the whole export, evaluated on one part of a split: the other part's items
    (its training images, say) must not count in the test's mAP."""
    items = [item(f"m{i}", None, objects=(("cat", CAT),)) for i in range(4)]
    for entry in items:
        entry["width"] = entry["height"] = 100
    export = write_export(tmp_path, items)
    test_part = VisualLayerDataset.from_export(export, task="detection", cache_dir=tmp_path / "c", subset=["m0", "m1"])
    found_everywhere = {f"m{i}": FOUND for i in range(4)}
    with caplog.at_level("WARNING", logger="vl_datasets"):
        result = evaluate_detection(test_part, {"m0": FOUND, "m2": FOUND, "m3": FOUND}, n_resamples=20)
    assert "2 of the 3 predicted items are items outside this dataset's subset=" in caplog.text
    # m0's cat found, m1's missed: precision 1 up to recall 0.5 (51 of 101 points); m2, m3 not scored.
    assert result.scores.images == 2 and result.scores.per_class["cat"] == pytest.approx(51 / 101)
    assert evaluate_detection(test_part, found_everywhere, n_resamples=20).scores.map == pytest.approx(1.0)
    with pytest.raises(PredictionsError, match="None of the 2 predicted items is in the dataset"):
        evaluate_detection(test_part, {"m2": FOUND, "m3": FOUND}, n_resamples=20)
