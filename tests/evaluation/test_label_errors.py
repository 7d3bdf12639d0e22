"""Suspected label errors: ranked, marked where Visual Layer agrees, and fed back as media ids."""

from __future__ import annotations

import pytest

from tests.evaluation.helpers import item, mislabel, write_export
from vl_datasets import ConfigurationError, VisualLayerDataset
from vl_datasets.evaluation import evaluate, read_media_ids


@pytest.fixture
def dataset(tmp_path):
    items = [
        item("m0", "cat", issues=(mislabel(0.9, "dog"),)),  # VL suggests what the model says
        item("m1", "cat", issues=(mislabel(0.7, "bird"),)),  # VL flags it, suggests another class
        item("m2", "cat"),  # confident disagreement VL missed
        item("m3", "dog"),  # unsure disagreement: not listed
        item("m4", "dog"),  # agreement
        item("m5", "bird"),
    ]
    return VisualLayerDataset.from_export(write_export(tmp_path, items), cache_dir=tmp_path / "c")


SCORES = {  # classes: bird, cat, dog
    "m0": [0.05, 0.15, 0.80],
    "m1": [0.05, 0.05, 0.90],
    "m2": [0.95, 0.03, 0.02],
    "m3": [0.40, 0.35, 0.25],
    "m4": [0.00, 0.10, 0.90],
    "m5": [0.90, 0.05, 0.05],
}


def test_confident_disagreements_ranked_with_visual_layers_view(dataset):
    errors = evaluate(dataset, SCORES, min_confidence=0.6).label_errors.to_pylist()
    assert [e["media_id"] for e in errors] == ["m2", "m1", "m0"]  # most confident first
    assert [e["rank"] for e in errors] == [1, 2, 3]
    by_id = {e["media_id"]: e for e in errors}
    assert (by_id["m0"]["label"], by_id["m0"]["predicted"]) == ("cat", "dog")
    assert by_id["m0"]["vl_mislabel"] == pytest.approx(0.9) and by_id["m0"]["vl_agrees"] is True
    assert by_id["m1"]["vl_suggested_label"] == "bird" and by_id["m1"]["vl_agrees"] is False
    assert by_id["m2"]["vl_mislabel"] is None and by_id["m2"]["vl_agrees"] is False
    # A lower threshold takes in the unsure one too.
    assert "m3" in evaluate(dataset, SCORES, min_confidence=0.3).label_errors.column("media_id").to_pylist()


def test_without_confidences_every_disagreement_is_listed_flagged_first(dataset):
    labels = {m: ["bird", "cat", "dog"][max(range(3), key=s.__getitem__)] for m, s in SCORES.items()}
    errors = evaluate(dataset, labels).label_errors.column("media_id").to_pylist()
    assert errors == ["m0", "m1", "m2", "m3"]


def test_the_list_feeds_the_next_curation_and_a_selective_export(dataset, tmp_path):
    result = evaluate(dataset, SCORES, min_confidence=0.6)
    path = result.write_label_errors(tmp_path / "out" / "errors.txt")
    assert path.read_text() == "m2\nm1\nm0\n"
    ids = read_media_ids(path)
    review = VisualLayerDataset.from_export(dataset.export_dir, cache_dir=tmp_path / "c", subset=ids)
    assert sorted(review.media_ids) == ["m0", "m1", "m2"]
    import pyarrow.compute as pc

    cleaned = VisualLayerDataset.from_export(
        dataset.export_dir, cache_dir=tmp_path / "c", where=~pc.field("media_id").isin(ids)
    )
    assert sorted(cleaned.media_ids) == ["m3", "m4", "m5"]


def test_a_confidence_threshold_outside_0_1_is_refused(dataset):
    with pytest.raises(ConfigurationError, match="min_confidence"):
        evaluate(dataset, SCORES, min_confidence=60)


def test_a_media_ids_file_that_cannot_be_read_or_written_is_named(dataset, tmp_path):
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    for path, message in ((tmp_path / "missing.txt", "cannot read media ids"), (latin, "must be UTF-8 text")):
        with pytest.raises(ConfigurationError, match=message) as caught:
            read_media_ids(path)
        assert str(path) in str(caught.value)
    result = evaluate(dataset, SCORES, min_confidence=0.6)
    with pytest.raises(ConfigurationError, match="cannot write the media ids there") as caught:
        result.write_label_errors(tmp_path)  # a folder
    assert str(tmp_path) in str(caught.value)
