"""A model's predictions, read from Python values or a file and checked against the dataset.

Classification predictions hold, for each media id, the predicted class and, when known, the
model's confidence in it (and the scores of every class when the model gave them). They come
from a mapping ``{media_id: class name | class index | scores per class}``, from arrays, or from a
CSV or Parquet file with the columns ``media_id``, ``prediction`` (a class name; in Parquet an
integer column means class indices) and an optional ``score`` (the confidence of the prediction).

Every check raises ``PredictionsError`` naming the column, the row and the media id at fault:
a missing column, an empty or repeated media id, a class not in the dataset's classes, a score
that is not a number from 0 to 1, scores of the wrong length.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import PredictionsError

REQUIRED_COLUMNS = ("media_id", "prediction")


@dataclass(frozen=True)
class ClassPredictions:
    """One predicted class per media id, in the order given.

    ``predicted`` indexes ``classes``; ``confidence`` is NaN where the model gave none;
    ``scores`` (items x classes) is set when the model gave a score for every class.
    """

    media_ids: list[str]
    classes: list[str]
    predicted: np.ndarray
    confidence: np.ndarray
    scores: np.ndarray | None = None
    source: str = "the predictions"  # what errors name: the file's path, or what was given

    def __len__(self) -> int:
        return len(self.media_ids)

    @property
    def predicted_names(self) -> list[str]:
        """The predicted class of each media id, by name."""
        return [self.classes[i] for i in self.predicted.tolist()]


def read_predictions(source: Any, classes: Sequence[str]) -> ClassPredictions:
    """Classification predictions from ``source``: a ``ClassPredictions``, a mapping
    ``{media_id: class name | class index | scores}``, a pyarrow table with the file's columns,
    or the path of a CSV or Parquet file (module docstring)."""
    classes = list(classes)
    if not classes:
        raise PredictionsError("The dataset has no classes to score predictions against (task must be classification).")
    if isinstance(source, ClassPredictions):
        parsed = onto_classes(source, classes)
    elif isinstance(source, Mapping):
        parsed = dataclasses.replace(from_mapping(source, classes), source="the predictions mapping")
    elif isinstance(source, pa.Table):
        parsed = from_table(source, classes, source="the predictions table")
    elif isinstance(source, (str, os.PathLike)):
        parsed = from_table(read_table(Path(source)), classes, source=str(source))
    else:
        parsed = None
    if parsed is not None:
        if not parsed.media_ids:  # "0 items scored", exit 0: a results file that was never written
            raise PredictionsError(f"{parsed.source}: holds no predictions to score.")
        return parsed
    raise PredictionsError(
        "Predictions must be a mapping of media id to class, a table, or a CSV/Parquet path; "
        f"got {type(source).__name__}."
    )


def onto_classes(predictions: ClassPredictions, classes: list[str]) -> ClassPredictions:
    """``predictions`` read against other classes (a training set's, say), their predicted classes
    mapped by name onto ``classes``: one these lack raises ``PredictionsError`` naming its row.
    The scores are kept, in ``classes``' order, where they score the same classes; else dropped."""
    if predictions.classes == classes:
        return predictions
    media_ids = predictions.media_ids
    predicted = np.array(
        [_class_index(name, classes, row, media_ids[row]) for row, name in enumerate(predictions.predicted_names)],
        np.int64,
    )
    scores = None
    if predictions.scores is not None and sorted(predictions.classes) == sorted(classes):
        scores = predictions.scores[:, [predictions.classes.index(name) for name in classes]]
    return dataclasses.replace(predictions, classes=classes, predicted=predicted, scores=scores)


def read_table(path: Path) -> pa.Table:
    """The predictions file at ``path`` as a table: CSV (media ids and classes read as text) or Parquet."""
    if not path.is_file():
        raise PredictionsError(f"{path}: no such predictions file.")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            from pyarrow import csv

            return csv.read_csv(path, convert_options=_csv_options())
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise PredictionsError(f"{path}: cannot be read as {suffix[1:]}: {exc}") from None
    raise PredictionsError(f"{path}: predictions must be a .csv or .parquet file.")


def _csv_options() -> Any:
    """How a predictions CSV is read: media ids and classes as text, and only an empty field as null."""
    from pyarrow import csv

    return csv.ConvertOptions(
        # As text: a class named "07" or a numeric media id must stay what it says.
        column_types={name: pa.string() for name in REQUIRED_COLUMNS},
        # pyarrow's default nulls (nan, NaN, null, N/A, ...) would read a score of "nan" as no
        # score at all, which the score check never sees: only an empty score is missing.
        null_values=[""],
        strings_can_be_null=False,  # an empty media id or class stays "", which the checks name
        quoted_strings_can_be_null=True,  # a quoted "" score is as missing as an empty one
    )


def from_mapping(mapping: Mapping[Any, Any], classes: list[str]) -> ClassPredictions:
    """Predictions from ``{media_id: class name | class index | a score per class}``."""
    media_ids = _check_ids(list(mapping), "media_id")
    values = list(mapping.values())
    if values and all(_is_scores(value) for value in values):
        return from_arrays(media_ids, classes, scores=values)
    return from_arrays(media_ids, classes, labels=values)


def from_arrays(
    media_ids: Sequence[str],
    classes: Sequence[str],
    *,
    labels: Sequence[Any] | None = None,
    scores: Any = None,
    confidence: Sequence[float | None] | None = None,
) -> ClassPredictions:
    """Predictions from parallel arrays: ``labels`` (class names or indices) with an optional
    ``confidence``, or ``scores`` (items x classes: probabilities when every row is a distribution,
    within rounding; logits, every row turned into probabilities by a softmax, when a score lies
    outside 0-1; scores all within 0-1 whose rows do not sum to 1 are refused)."""
    classes = list(classes)
    ids = _check_ids(list(media_ids), "media_id")
    if (labels is None) == (scores is None):
        raise PredictionsError("Give either labels= or scores=, not both or neither.")
    if scores is not None:
        probabilities = _probabilities(scores, ids, len(classes))
        predicted = probabilities.argmax(axis=1)
        return ClassPredictions(ids, classes, predicted, probabilities.max(axis=1), probabilities)
    assert labels is not None
    labels = list(labels)
    if len(labels) != len(ids):
        raise PredictionsError(f"{len(labels):,} labels for {len(ids):,} media ids.", column="prediction")
    predicted = np.array([_class_index(value, classes, row, ids[row]) for row, value in enumerate(labels)], np.int64)
    return ClassPredictions(ids, classes, predicted, _confidence(confidence, ids))


def from_table(table: pa.Table, classes: list[str], *, source: str) -> ClassPredictions:
    """Predictions from a table with ``media_id``, ``prediction`` and an optional ``score`` column."""
    _check_unique_columns(table.column_names, source)
    missing = [name for name in REQUIRED_COLUMNS if name not in table.column_names]
    if missing:
        raise PredictionsError(
            f"{source}: required column {missing[0]!r} is missing (columns: {table.column_names}).", column=missing[0]
        )
    media_ids = table.column("media_id")
    if not (pa.types.is_string(media_ids.type) or pa.types.is_large_string(media_ids.type)):
        raise PredictionsError(f"{source}: column 'media_id' must hold text, not {media_ids.type}.", column="media_id")
    prediction = table.column("prediction")
    kind = prediction.type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)):
        raise PredictionsError(
            f"{source}: column 'prediction' must hold class names or class indices, not {kind}.", column="prediction"
        )
    score = None
    if "score" in table.column_names:
        score = _score_column(table.column("score"), source)
    try:
        parsed = from_arrays(media_ids.to_pylist(), classes, labels=prediction.to_pylist(), confidence=score)
    except PredictionsError as error:
        raise PredictionsError(
            f"{source}: {error.message}", column=error.column, row=error.row, media_id=error.media_id
        ) from None
    return dataclasses.replace(parsed, source=source)


def _check_unique_columns(names: list[str], source: str) -> None:
    # A CSV header or a Parquet schema may repeat a name: which of the two columns is meant
    # cannot be guessed (pyarrow refuses to pick one by name). Other columns are never read.
    for name in (*REQUIRED_COLUMNS, "score"):
        if names.count(name) > 1:
            raise PredictionsError(f"{source}: column {name!r} appears more than once (columns: {names}).", column=name)


def _score_column(column: pa.ChunkedArray, source: str) -> list[float | None]:
    if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type) or pa.types.is_null(column.type)):
        raise PredictionsError(f"{source}: column 'score' must hold numbers, not {column.type}.", column="score")
    return pc.cast(column, pa.float64()).to_pylist()  # None where a score is missing, never NaN


def _check_ids(media_ids: list[Any], column: str) -> list[str]:
    seen: dict[str, int] = {}
    for row, media_id in enumerate(media_ids):
        if not isinstance(media_id, str) or not media_id:
            raise PredictionsError(
                f"row {row}: media id {media_id!r} is not a non-empty string.", column=column, row=row
            )
        if media_id in seen:
            raise PredictionsError(
                f"row {row}: media id {media_id!r} is predicted twice (first at row {seen[media_id]}).",
                column=column,
                row=row,
                media_id=media_id,
            )
        seen[media_id] = row
    return media_ids


def _is_scores(value: Any) -> bool:
    return isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, (str, bytes))


def _class_index(value: Any, classes: list[str], row: int, media_id: str) -> int:
    # An int is an index; a str a name. bool is an int to Python, and a mistake here.
    if isinstance(value, str):
        if value in classes:
            return classes.index(value)
        problem = f"class {value!r} is not one of the dataset's classes {_shown(classes)}"
    elif isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        if 0 <= int(value) < len(classes):
            return int(value)
        problem = f"class index {value} is outside 0..{len(classes) - 1}"
    else:
        problem = f"prediction {value!r} is neither a class name nor a class index"
    raise PredictionsError(
        f"row {row} (media id {media_id!r}): {problem}.", column="prediction", row=row, media_id=media_id
    )


def _shown(classes: list[str]) -> str:
    return repr(classes) if len(classes) <= 12 else f"{classes[:12]!r} and {len(classes) - 12} more"


def _confidence(confidence: Sequence[float | None] | None, ids: list[str]) -> np.ndarray:
    if confidence is None:
        return np.full(len(ids), np.nan)
    values = list(confidence)
    if len(values) != len(ids):
        raise PredictionsError(f"{len(values):,} scores for {len(ids):,} media ids.", column="score")
    out = np.full(len(ids), np.nan)
    for row, value in enumerate(values):
        if value is None:
            continue
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
            raise PredictionsError(
                f"row {row} (media id {ids[row]!r}): score {value!r} is not a number from 0 to 1.",
                column="score",
                row=row,
                media_id=ids[row],
            )
        out[row] = float(value)
    return out


def _probabilities(scores: Any, ids: list[str], n_classes: int) -> np.ndarray:
    rows = list(scores)
    if len(rows) != len(ids):
        raise PredictionsError(f"{len(rows):,} rows of scores for {len(ids):,} media ids.", column="scores")
    out = np.empty((len(ids), n_classes))
    for row, values in enumerate(rows):
        vector = _numbers(values)
        if vector is None or len(vector) != n_classes or not np.isfinite(vector).all():
            raise PredictionsError(
                f"row {row} (media id {ids[row]!r}): scores must be {n_classes} finite numbers, one per class, "
                f"not {reprlib.repr(values)}.",
                column="scores",
                row=row,
                media_id=ids[row],
            )
        out[row] = vector
    # One reading for the whole array, as a model gives one kind: probabilities when every row is
    # one (printed or rounded to two places, a row sums to 0.99 or 1.01); logits when some score
    # lies outside 0-1, every row then (one of logits can look like a distribution by chance).
    sums = out.sum(axis=1)
    off = np.flatnonzero(~np.isclose(sums, 1.0, atol=_SUM_TOLERANCE))
    if ((out >= 0) & (out <= 1)).all():
        if not len(off):
            return out / sums[:, None]
        row = int(off[0])
        raise PredictionsError(
            f"row {row} (media id {ids[row]!r}): scores all lie from 0 to 1, as probabilities do, but this row "
            f"sums to {sums[row]:.3g}, not 1 ({len(off):,} rows do not): give each item's probabilities "
            "(a softmax) or its logits, one kind for every row.",
            column="scores",
            row=row,
            media_id=ids[row],
        )
    exp = np.exp(out - out.max(axis=1, keepdims=True))  # a softmax, shifted so exp() cannot overflow
    return exp / exp.sum(axis=1, keepdims=True)


def _numbers(values: Any) -> np.ndarray | None:
    """``values`` as a flat array of floats; None when they are not all numbers (class names, say)."""
    try:
        array = np.asarray(values)
    except (TypeError, ValueError):  # lists nested unevenly
        return None
    return array.astype(float).reshape(-1) if array.dtype.kind in "biuf" else None


_SUM_TOLERANCE = 0.02  # how far from 1 a row of probabilities may sum: rounding, not logits
