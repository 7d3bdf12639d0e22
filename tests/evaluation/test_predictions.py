"""Predictions are read from Python values, CSV and Parquet, and every misfit is named."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vl_datasets import PredictionsError
from vl_datasets.evaluation import read_predictions

CLASSES = ["cat", "dog", "07"]


def test_a_mapping_of_names_indices_or_scores():
    names = read_predictions({"a": "dog", "b": "07"}, CLASSES)
    assert names.predicted.tolist() == [1, 2] and np.isnan(names.confidence).all() and names.scores is None
    assert read_predictions({"a": 0, "b": 2}, CLASSES).predicted_names == ["cat", "07"]
    scores = read_predictions({"a": [0.1, 0.7, 0.2], "b": [0.0, 0.25, 0.75]}, CLASSES)  # probabilities
    assert scores.predicted.tolist() == [1, 2] and scores.confidence.tolist() == pytest.approx([0.7, 0.75])
    assert scores.scores.shape == (2, 3)
    logits = read_predictions({"a": [2.0, 0.0, 0.0], "b": [0.2, 0.3, 0.5]}, CLASSES)
    assert logits.confidence[0] == pytest.approx(np.exp(2) / (np.exp(2) + 2))
    # One model gives one kind: a row of logits that looks like a distribution is still logits.
    assert logits.confidence[1] == pytest.approx(np.exp(0.5) / (np.exp(0.2) + np.exp(0.3) + np.exp(0.5)))
    rounded = read_predictions({"a": [0.96, 0.02, 0.01], "b": [0.34, 0.33, 0.34]}, CLASSES)  # to two places
    assert rounded.confidence[0] == pytest.approx(0.96 / 0.99)
    # Within 0-1 but not summing to 1 (sigmoids, a broken row): neither kind, never guessed.
    with pytest.raises(PredictionsError, match=r"row 1 \(media id 'b'\): .* sums to 0.96, not 1") as caught:
        read_predictions({"a": [0.9, 0.05, 0.05], "b": [0.5, 0.46, 0.0]}, CLASSES)
    assert caught.value.media_id == "b"


def test_csv_keeps_classes_and_ids_as_text(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("media_id,prediction,score\n0001,07,0.9\n0002,dog,\n")
    parsed = read_predictions(path, CLASSES)
    assert parsed.media_ids == ["0001", "0002"]  # not the numbers 1 and 2
    assert parsed.predicted_names == ["07", "dog"]
    assert parsed.confidence[0] == pytest.approx(0.9) and np.isnan(parsed.confidence[1])


def test_parquet_with_class_indices(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"media_id": ["a", "b"], "prediction": [2, 0], "score": [0.5, 1.0]}), path)
    assert read_predictions(path, CLASSES).predicted_names == ["07", "cat"]


@pytest.mark.parametrize(
    ("text", "column", "row", "media_id", "message"),
    [
        ("media_id,score\na,0.5\n", "prediction", None, None, "required column 'prediction' is missing"),
        ("media_id,prediction\na,cat\nb,dog\na,cat\n", "media_id", 2, "a", "predicted twice"),
        ("media_id,prediction\na,cat\nb,horse\n", "prediction", 1, "b", "'horse' is not one of the dataset's classes"),
        ("media_id,prediction,score\na,cat,0.5\nb,dog,1.5\n", "score", 1, "b", "score 1.5 is not a number from 0 to 1"),
        ("media_id,prediction,score\na,cat,high\n", "score", None, None, "column 'score' must hold numbers"),
        ("media_id,prediction\n,cat\n", "media_id", 0, None, "is not a non-empty string"),
        # "nan" is a score that is not a number, not a missing score (pyarrow's default nulls).
        ("media_id,prediction,score\na,cat,0.5\nb,dog,nan\n", "score", 1, "b", "score nan is not a number from 0"),
        ("media_id,prediction,score\na,cat,NaN\n", "score", 0, "a", "score nan is not a number from 0"),
        ("media_id,prediction,score\na,cat,N/A\n", "score", None, None, "column 'score' must hold numbers"),
        ("media_id,prediction,prediction\na,cat,dog\n", "prediction", None, None, "'prediction' appears more than"),
    ],
)
def test_bad_files_name_the_column_row_and_media_id(tmp_path, text, column, row, media_id, message):
    path = tmp_path / "p.csv"
    path.write_text(text)
    with pytest.raises(PredictionsError, match=message) as caught:
        read_predictions(path, CLASSES)
    assert (caught.value.column, caught.value.row, caught.value.media_id) == (column, row, media_id)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_bad_python_values_are_refused():
    with pytest.raises(PredictionsError, match=r"class index 3 is outside 0\.\.2"):
        read_predictions({"a": 3}, CLASSES)
    with pytest.raises(PredictionsError, match="neither a class name nor a class index"):
        read_predictions({"a": True}, CLASSES)
    with pytest.raises(PredictionsError, match="scores must be 3 finite numbers") as caught:
        read_predictions({"a": [0.5, 0.5]}, CLASSES)
    assert caught.value.media_id == "a"
    # Class names in a list (a multilabel model's output) are no scores: it was numpy's ValueError.
    with pytest.raises(PredictionsError, match=r"row 1 \(media id 'b'\): scores must be 3 finite numbers.*'dog'"):
        read_predictions({"a": [0.2, 0.3, 0.5], "b": ["cat", "dog"]}, CLASSES)
    with pytest.raises(PredictionsError, match=r"row 0 \(media id 'a'\)"):
        read_predictions({"a": ["cat", "dog"], "b": ["bird"]}, CLASSES)
    with pytest.raises(PredictionsError, match=r"\.csv or \.parquet"):
        read_predictions(__file__, CLASSES)
    with pytest.raises(PredictionsError, match="no such predictions file"):
        read_predictions("missing.csv", CLASSES)
    with pytest.raises(PredictionsError, match="no classes"):
        read_predictions({"a": "cat"}, [])


def test_unknown_media_ids_are_named(tmp_path):
    from tests.evaluation.helpers import item, write_export
    from vl_datasets import VisualLayerDataset
    from vl_datasets.evaluation import evaluate

    export = write_export(tmp_path, [item("a", "cat"), item("b", "dog")])
    ds = VisualLayerDataset.from_export(export, cache_dir=tmp_path / "c")
    with pytest.raises(PredictionsError, match="media id 'zz' is not an item of this export") as caught:
        evaluate(ds, {"a": "cat", "zz": "dog"})
    assert (caught.value.row, caught.value.media_id) == (1, "zz")


def test_predictions_read_against_other_classes_are_mapped_by_name(tmp_path):
    """They were taken as they were: indices into the training set's classes, which later failed
    in the confusion matrix and the report with a KeyError."""
    from tests.evaluation.helpers import item, write_export
    from vl_datasets import VisualLayerDataset
    from vl_datasets.evaluation import evaluate

    export = write_export(tmp_path, [item("a", "cat"), item("b", "dog"), item("c", "dog")])
    ds = VisualLayerDataset.from_export(export, cache_dir=tmp_path / "c")  # classes: cat, dog
    trained = ["bird", "dog", "cat"]
    result = evaluate(ds, read_predictions({"a": "cat", "b": "dog", "c": "cat"}, trained))
    assert result.classes == ["cat", "dog"] and result.accuracy == pytest.approx(2 / 3)
    assert result.confusion_matrix().tolist() == [[1, 0], [1, 1]]
    result.write_report(tmp_path / "r.html")
    with pytest.raises(PredictionsError, match="row 1 \\(media id 'b'\\): class 'bird' is not one of") as caught:
        evaluate(ds, read_predictions({"a": "cat", "b": "bird", "c": "dog"}, trained))
    assert (caught.value.row, caught.value.media_id) == (1, "b")
    # Scores of the same classes in another order are re-ordered; scores of other classes dropped.
    swapped = read_predictions(read_predictions({"a": [0.8, 0.2]}, ["dog", "cat"]), ["cat", "dog"])
    assert swapped.predicted_names == ["dog"] and swapped.scores.tolist() == [[0.2, 0.8]]
    fewer = read_predictions(read_predictions({"a": [0.1, 0.2, 0.7]}, trained), ["cat", "dog"])
    assert fewer.predicted_names == ["cat"] and fewer.scores is None and fewer.confidence.tolist() == [0.7]
