"""Accuracy per slice on hand-made exports, every count checked by hand."""

from __future__ import annotations

import math

import pytest

from tests.evaluation.helpers import duplicate, item, mislabel, write_export
from vl_datasets import VisualLayerDataset
from vl_datasets.evaluation import evaluate, wilson_interval


def rows(table) -> dict[str, tuple[int, int]]:
    """value -> (items, correct)."""
    return {row["value"]: (row["items"], row["correct"]) for row in table.to_pylist()}


@pytest.fixture
def export(tmp_path):
    items = [
        item("a0", "cat", uniqueness=0.05, cluster="c1", issues=duplicate("g1", 0.99)),
        item("a1", "cat", uniqueness=0.10, cluster="c1", issues=duplicate("g1", 0.97)),
        item("a2", "cat", uniqueness=0.20, cluster="c1", issues=({"issue_type": "blur", "confidence": 0.95},)),
        item("a3", "dog", uniqueness=0.30, cluster="c2", issues=({"issue_type": "blur", "confidence": 0.6},)),
        item("a4", "dog", uniqueness=0.40, cluster="c2", issues=(mislabel(0.8, "cat"),)),
        item("a5", "dog", uniqueness=0.60, cluster="c2"),
        item("a6", "bird", uniqueness=0.70, cluster="c3"),
        item("a7", "bird", uniqueness=0.80, cluster="c3"),
        item("a8", "bird", uniqueness=0.90, cluster="c3"),
        item("a9", None, uniqueness=0.95, cluster="c3"),  # no label: listed, never scored
    ]
    return write_export(tmp_path, items)


# a0, a2 (blurred), a4 (the suspected mislabel) and a7 are wrong; a9 has no label.
PREDICTIONS = {
    "a0": "dog",
    "a1": "cat",
    "a2": "bird",
    "a3": "dog",
    "a4": "cat",
    "a5": "dog",
    "a6": "bird",
    "a7": "cat",
    "a8": "bird",
    "a9": "cat",
}


def test_wilson_interval_matches_the_formula_and_stays_in_bounds():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    assert wilson_interval(0, 5)[1] < 1 and wilson_interval(5, 5)[0] > 0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_overall_and_per_class(export, tmp_path):
    ds = VisualLayerDataset.from_export(export, cache_dir=tmp_path / "c", invalid_labels="drop")
    result = evaluate(ds, PREDICTIONS)
    assert result.items == 9  # a9 has no label
    assert result.accuracy == pytest.approx(5 / 9)
    assert rows(result.slices["class"]) == {"bird": (3, 2), "cat": (3, 1), "dog": (3, 2)}
    matrix = result.confusion_matrix()  # classes: bird, cat, dog
    assert matrix.tolist() == [[2, 1, 0], [1, 1, 1], [0, 1, 2]]
    assert result.top_confusions(1) == [("bird", "cat", 1)]
    table = result.slices["class"].to_pylist()[0]
    assert (table["low"], table["high"]) == pytest.approx(wilson_interval(2, 3))


def test_predictions_outside_the_subset_are_left_out_and_missing_ones_said(export, tmp_path, caplog):
    """A model run on the whole export: its training items must not count in the test part's accuracy."""
    from vl_datasets.errors import PredictionsError

    parts = {"subset": ["a0", "a1", "a2", "a3"], "classes": ["bird", "cat", "dog"]}  # the classes of train
    test = VisualLayerDataset.from_export(export, cache_dir=tmp_path / "c", **parts)
    with caplog.at_level("WARNING", logger="vl_datasets"):
        result = evaluate(test, PREDICTIONS)
    assert (result.items, result.accuracy) == (4, pytest.approx(2 / 4))  # a0 and a2 wrong
    assert "6 of the 10 predictions are for items outside this dataset's subset=" in caplog.text
    assert "removed by subset" not in rows(result.slices["curation"])
    caplog.clear()
    with caplog.at_level("WARNING", logger="vl_datasets"):
        assert evaluate(test, {"a1": "cat"}).items == 1
    assert "3 of the dataset's 4 items have no prediction" in caplog.text
    with pytest.raises(PredictionsError, match="none of the 1 predicted items is in this dataset's subset="):
        evaluate(test, {"a7": "cat"})


def test_issue_slices_count_each_type_once_at_its_band(export, tmp_path):
    ds = VisualLayerDataset.from_export(export, cache_dir=tmp_path / "c", invalid_labels="drop")
    issue = rows(evaluate(ds, PREDICTIONS).slices["issue"])
    assert issue == {
        "blur 0.5-0.7": (1, 1),
        "blur 0.9-1": (1, 0),
        "duplicates 0.9-1": (2, 1),  # two thresholds each, counted once
        "mislabels 0.7-0.9": (1, 0),
        "no issue": (4, 3),  # a5..a8; a9 has no label
    }


def test_uniqueness_duplicates_clusters_and_curation(export, tmp_path):
    ds = VisualLayerDataset.from_export(
        export, cache_dir=tmp_path / "c", min_uniqueness=0.25, invalid_labels="drop", classes=["bird", "cat", "dog"]
    )
    result = evaluate(ds, PREDICTIONS, min_cluster_items=3)
    assert rows(result.slices["duplicates"]) == {"in a duplicate group": (2, 1), "singleton": (7, 4)}
    clusters = result.slices["cluster"].to_pylist()
    # Worst first: c1 (1 of 3), then c3 and c2 (2 of 3: the tie goes by id); a9 is unlabeled.
    assert [(c["value"], c["items"], c["correct"]) for c in clusters] == [
        ("c1", 3, 1),
        ("c2", 3, 2),
        ("c3", 3, 2),
    ]
    assert rows(result.slices["curation"]) == {"removed by min_uniqueness=0.25": (3, 1), "kept": (6, 4)}
    deciles = result.slices["uniqueness"].to_pylist()
    assert sum(d["items"] for d in deciles) == 9
    assert deciles[0]["value"].startswith(" 1 (0.050-")  # least unique first
    assert [d["correct"] for d in deciles][:2] == [0, 1]  # a0 wrong, a1 right


def test_leakage_says_how_much_accuracy_comes_from_near_duplicates_in_train(export, tmp_path):
    ds = VisualLayerDataset.from_export(export, cache_dir=tmp_path / "c", invalid_labels="drop")
    scored = {k: v for k, v in PREDICTIONS.items() if k not in ("a0", "a6")}
    result = evaluate(ds, scored, train_ids=["a0", "a6"])
    leakage = result.leakage
    # a1 shares g1 (a duplicate group) with a0, a2 cluster c1; a7, a8 (and the unlabeled a9) share c3 with a6.
    assert sorted(leakage.leaks.column("media_id").to_pylist()) == ["a1", "a2", "a7", "a8", "a9"]
    assert leakage.near_duplicates == 1
    assert rows(result.slices["leakage"]) == {
        "near-duplicate in train": (1, 1),
        "same cluster as a train item": (3, 1),
        "no group shared with train": (3, 2),
    }
    assert leakage.accuracy == pytest.approx(4 / 7)
    assert leakage.accuracy_without_leaks == pytest.approx(2 / 3)
    assert leakage.points_from_leaks == pytest.approx(4 / 7 - 2 / 3)


def test_an_evaluated_item_in_train_is_a_leak_of_its_own(tmp_path):
    """Without a cluster or a duplicate group it was 'no group shared with train'."""
    items = [item("s0", "cat"), item("s1", "cat"), item("k0", "dog", cluster="k"), item("k1", "dog", cluster="k")]
    ds = VisualLayerDataset.from_export(write_export(tmp_path, items), cache_dir=tmp_path / "c")
    result = evaluate(ds, {"s0": "cat", "s1": "dog", "k0": "dog", "k1": "dog"}, train_ids=["s0", "k0"])
    assert result.leakage.leaks.column("shared").to_pylist() == ["media_id", "cluster_id", "media_id"]  # k0, k1, s0
    assert (result.leakage.leaked_items, result.leakage.in_train, result.leakage.near_duplicates) == (3, 2, 0)
    assert rows(result.slices["leakage"]) == {
        "the item itself is in train": (2, 2),
        "same cluster as a train item": (1, 1),
        "no group shared with train": (1, 0),
    }
    assert result.leakage.accuracy_without_leaks == 0.0


def test_an_export_path_with_rules_and_scores_work_as_input(export, tmp_path):
    from vl_datasets import ConfigurationError, CurationRules

    classes = ["bird", "cat", "dog"]
    scores = {m: [0.8 if c == p else 0.1 for c in classes] for m, p in PREDICTIONS.items()}
    result = evaluate(export, scores, curation=CurationRules(drop_issues={"blur": 0.5}))
    assert result.accuracy == pytest.approx(5 / 9)
    assert result.scored.column("confidence").to_pylist() == pytest.approx([0.8] * 10)
    assert rows(result.slices["curation"]) == {"kept": (7, 4), "removed by drop_issues": (2, 1)}  # a2, a3 blurred
    ds = VisualLayerDataset.from_export(export, cache_dir=tmp_path / "c", invalid_labels="drop")
    with pytest.raises(ConfigurationError, match="curation= applies to an export path"):
        evaluate(ds, scores, curation=CurationRules(dedupe=True))


def test_an_export_path_keeps_the_classes_curation_removed_whole(tmp_path):
    from vl_datasets import CurationRules

    blur = ({"issue_type": "blur", "confidence": 0.9},)
    items = [item("b0", "bird", issues=blur), item("c0", "cat"), item("d0", "dog")]
    export = write_export(tmp_path, items)
    rules = CurationRules(drop_issues={"blur": 0.5})
    result = evaluate(export, {"b0": "bird", "c0": 1, "d0": 2}, curation=rules)
    assert result.classes == ["bird", "cat", "dog"]
    assert result.accuracy == 1.0
    assert rows(result.slices["curation"]) == {"kept": (2, 2), "removed by drop_issues": (1, 1)}


def test_an_item_labelled_alike_by_two_sources_has_one_label_in_the_classes_and_the_scores(tmp_path):
    """A User and a VL label of the same name: the dataset counts one label, the export's classes
    counted two and dropped every such cat from the evaluation, leaving ["dog"]."""
    cats = [item(f"c{i}", "cat") for i in range(3)]
    for cat in cats:
        cat["metadata_items"].append({"type": "image_label", "properties": {"category_name": "cat", "source": "VL"}})
    export = write_export(tmp_path, [*cats, item("d0", "dog")])
    result = evaluate(export, {"c0": "cat", "c1": "cat", "c2": "dog", "d0": "dog"})
    assert result.classes == ["cat", "dog"]
    assert (result.scored.num_rows, result.accuracy) == (4, 0.75)
