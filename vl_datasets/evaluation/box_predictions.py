"""Detection predictions read from a file: one row per predicted box, COCO's results format.

A JSON file holds a list of objects, a Parquet file one row per box, with the same fields:

    media_id     the item's media id (text); ``image_id`` is taken in its place, as COCO names it
    category_name  the box's class, one of the dataset's classes; or ``category_id``, an index
                 into ``ds.classes`` (the export has class names, not COCO's numeric ids)
    bbox         [x, y, width, height] in the export's pixels, from the top-left corner (COCO's)
    score        the model's confidence in the box, 0 to 1

``read_detections`` turns them into what ``evaluate_detection`` takes: ``{media_id: {"boxes": N x
4 xyxy, "scores": N, "labels": N class indices}}``. An item with no row had no box found. A bad row
raises ``PredictionsError`` naming the file, the row (0-based) and the field.
"""

from __future__ import annotations

import json
import math
import numbers
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PredictionsError

DETECTION_SUFFIXES = (".json",)


def is_detection_file(path: Path) -> bool:
    """Whether ``path`` holds box predictions: a JSON file, or a Parquet file with a ``bbox`` column."""
    suffix = path.suffix.lower()
    if suffix in DETECTION_SUFFIXES:
        return True
    if suffix in (".parquet", ".pq") and path.is_file():
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return "bbox" in pq.read_schema(path).names
        except (pa.ArrowInvalid, OSError) as exc:  # empty, truncated, or not Parquet at all
            raise PredictionsError(f"{path}: cannot be read as parquet: {exc}") from None
    return False


def read_detections(path: str | Path, classes: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """The box predictions in the JSON or Parquet file at ``path`` (module docstring), by media id."""
    path = Path(path)
    rows = _rows(path)
    if not rows:  # as a classification file with no row: a wrong file, far likelier than a blind model
        raise PredictionsError(f"{path}: holds no predicted box.")
    found: dict[str, dict[str, list[Any]]] = {}
    for row, record in enumerate(rows):
        media_id, label, box, score = _parse(record, classes, path, row)
        entry = found.setdefault(media_id, {"boxes": [], "scores": [], "labels": []})
        entry["boxes"].append(box)
        entry["scores"].append(score)
        entry["labels"].append(label)
    return {
        media_id: {
            "boxes": np.asarray(entry["boxes"], np.float64).reshape(-1, 4),
            "scores": np.asarray(entry["scores"], np.float64),
            "labels": np.asarray(entry["labels"], np.int64),
        }
        for media_id, entry in found.items()
    }


def _rows(path: Path) -> list[Any]:
    if not path.is_file():
        raise PredictionsError(f"{path}: no such predictions file.")
    if path.suffix.lower() == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise PredictionsError(f"{path}: not valid JSON: {exc}") from None
        except RecursionError:  # json.loads recurses once per level; predictions nest three deep
            raise PredictionsError(f"{path}: nested deeper than JSON predictions ever are.") from None
        if not isinstance(rows, list):
            raise PredictionsError(f"{path}: expected a JSON list of boxes, got a {type(rows).__name__}.")
        return rows
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowInvalid, OSError) as exc:
        raise PredictionsError(f"{path}: cannot be read as parquet: {exc}") from None


def _parse(record: Any, classes: list[str], path: Path, row: int) -> tuple[str, int, list[float], float]:
    """(media id, class index, xyxy box, score) of one row, or an error naming its field."""
    where = f"{path}: row {row}"
    if not isinstance(record, dict):
        raise PredictionsError(f"{where}: expected an object with media_id, category_name, bbox and score.", row=row)
    media_id = _field(record, ("media_id", "image_id"), where, row)
    if not isinstance(media_id, str) or not media_id:
        raise PredictionsError(f"{where}: media_id {media_id!r} is not a non-empty string.", column="media_id", row=row)
    failure: dict[str, Any] = {"column": "", "row": row, "media_id": media_id}
    label = _label(record, classes, where, failure)
    box = record.get("bbox")
    if (
        not isinstance(box, (list, tuple))
        or len(box) != 4
        or not all(_is_finite(v) for v in box)
        or box[2] < 0
        or box[3] < 0
    ):
        failure["column"] = "bbox"
        raise PredictionsError(
            f"{where} (media id {media_id!r}): bbox {box!r} is not [x, y, width, height], 4 finite numbers "
            "with width and height >= 0.",
            **failure,
        )
    score: Any = record.get("score")
    if not _is_number(score) or not 0 <= score <= 1:
        failure["column"] = "score"
        raise PredictionsError(
            f"{where} (media id {media_id!r}): score {score!r} is not a number from 0 to 1.", **failure
        )
    x, y, w, h = (float(v) for v in box)
    return media_id, label, [x, y, x + w, y + h], float(score)


def _field(record: dict, names: tuple[str, ...], where: str, row: int) -> Any:
    for name in names:
        if record.get(name) is not None:
            return record[name]
    raise PredictionsError(f"{where}: {' or '.join(repr(n) for n in names)} is missing.", column=names[0], row=row)


def _label(record: dict, classes: list[str], where: str, failure: dict[str, Any]) -> int:
    value = _field(record, ("category_name", "category_id"), where, failure["row"])
    failure["column"] = "category_name" if record.get("category_name") is not None else "category_id"
    if isinstance(value, str) and value in classes:
        return classes.index(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and 0 <= int(value) < len(classes):
        return int(value)
    raise PredictionsError(
        f"{where} (media id {failure['media_id']!r}): {failure['column']} {value!r} is not one of the dataset's "
        f"classes (names, or indices 0..{len(classes) - 1} into {classes[:12]!r}).",
        **failure,
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    """A number that is a finite float: JSON's integers have no bound, and one past 1e308 is not."""
    try:
        return _is_number(value) and math.isfinite(value)
    except OverflowError:  # math.isfinite turns an int into a float first
        return False
