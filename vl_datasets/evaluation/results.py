"""``evaluate``: score a model's predictions against the labels and against what Visual Layer knows."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigurationError, PredictionsError
from ..metadata.curation import CurationRules
from ..metadata.targets import distinct_labels, object_labels
from . import slices
from .label_errors import suspected_label_errors, write_media_ids
from .predictions import ClassPredictions, read_predictions
from .scored import scored_items, train_leaks


@dataclass(frozen=True)
class Leakage:
    """How much of the accuracy comes from items that are training items or share a group with one.

    ``leaks`` is ``find_leaks``' table for the scored items; ``points_from_leaks`` is the overall
    accuracy minus the accuracy on the items without a leak (positive: the leaks flatter it).
    """

    train_items: int
    leaks: pa.Table
    accuracy: float
    accuracy_without_leaks: float

    @property
    def leaked_items(self) -> int:
        return len(self.leaks)

    @property
    def near_duplicates(self) -> int:
        """Leaked items sharing a duplicate group (not only a cluster) with a training item."""
        return int(pc.sum(pc.equal(self.leaks.column("shared"), "duplicate_group")).as_py() or 0)

    @property
    def in_train(self) -> int:
        """Leaked items that are training items themselves."""
        return int(pc.sum(pc.equal(self.leaks.column("shared"), "media_id")).as_py() or 0)

    @property
    def points_from_leaks(self) -> float:
        return self.accuracy - self.accuracy_without_leaks


@dataclass(frozen=True)
class Evaluation:
    """The outcome of ``evaluate``: the scored items, the slice tables, the suspected label
    errors, and the leakage check (None without ``train_ids``)."""

    title: str
    classes: list[str]
    scored: pa.Table
    slices: dict[str, pa.Table]
    label_errors: pa.Table
    leakage: Leakage | None
    dataset: Any

    @property
    def items(self) -> int:
        """Scored items that have a label (the others are listed in ``scored`` but not counted)."""
        return int(pc.sum(pc.is_valid(self.scored.column("correct"))).as_py() or 0)

    @property
    def accuracy(self) -> float:
        return _accuracy(self.scored.column("correct"))

    def accuracy_interval(self) -> tuple[float, float]:
        """The 95% Wilson interval of ``accuracy``."""
        correct = int(pc.sum(pc.cast(self.scored.column("correct"), pa.int64())).as_py() or 0)
        return slices.wilson_interval(correct, self.items)

    def confusion_matrix(self) -> np.ndarray:
        """Counts, rows the true class and columns the predicted one, in ``classes`` order."""
        n = len(self.classes)
        index = {name: i for i, name in enumerate(self.classes)}
        matrix = np.zeros((n, n), dtype=np.int64)
        for label, predicted in zip(
            self.scored.column("label").to_pylist(), self.scored.column("predicted").to_pylist()
        ):
            if label is not None:
                matrix[index[label], index[predicted]] += 1
        return matrix

    def top_confusions(self, n: int = 5) -> list[tuple[str, str, int]]:
        """The ``n`` most frequent (true class, predicted class, count) mistakes."""
        matrix = self.confusion_matrix()
        np.fill_diagonal(matrix, 0)
        pairs = [(self.classes[i], self.classes[j], int(matrix[i, j])) for i, j in zip(*np.nonzero(matrix))]
        return sorted(pairs, key=lambda pair: (-pair[2], pair[0], pair[1]))[:n]

    def write_label_errors(self, path: str | os.PathLike) -> Path:
        """Write the suspected label errors' media ids, ranked, one a line, to ``path``."""
        return write_media_ids(self.label_errors, path)

    def write_report(self, path: str | os.PathLike, **options: Any) -> Path:
        """Write the self-contained HTML evaluation report; see ``vl_datasets.evaluation.report``."""
        from .report import write_evaluation_report  # matplotlib is an optional extra

        return write_evaluation_report(self, path, **options)


def evaluate(
    dataset: Any,
    predictions: Any,
    *,
    train_ids: Iterable[str] | None = None,
    curation: CurationRules | None = None,
    min_confidence: float = 0.5,
    min_cluster_items: int = 3,
    title: str | None = None,
) -> Evaluation:
    """Score classification ``predictions`` on ``dataset``'s export and slice them by what Visual
    Layer knows of each item.

    ``dataset`` is a classification ``VisualLayerDataset`` (its classes, label source and curation
    rules are used; another task raises ``PredictionsError``) or the path of a local export,
    opened with the ``curation`` rules (items without exactly one label are then left out of the
    classes, not an error) and the whole export's classes (``with_export_classes``).
    ``predictions`` is anything ``read_predictions`` takes: ``{media_id: class | scores}``, a
    table, a CSV or Parquet path. Predicted items may include items curation removed: the
    ``curation`` slices compare them with the kept ones. With ``train_ids`` (the media ids the
    model was trained on), the leakage check says how much of the accuracy comes from those items
    and the items sharing a group with them.
    """
    if isinstance(dataset, (str, os.PathLike)):
        from ..loading.dataset import VisualLayerDataset

        opener = functools.partial(VisualLayerDataset.from_export, dataset, curation=curation, invalid_labels="drop")
        dataset = with_export_classes(opener)
    elif curation is not None:
        raise ConfigurationError("curation= applies to an export path; a dataset already has its rules.")
    if min_cluster_items < 1:
        raise ConfigurationError(f"min_cluster_items must be at least 1, got {min_cluster_items}.")
    if dataset.task != "classification":  # a multilabel item's labels, or a detection item's, are not one class
        raise PredictionsError(
            f"evaluate scores one class per item on a task='classification' dataset; this one's task is "
            f"{dataset.task!r} (evaluate_detection scores boxes)."
        )
    parsed: ClassPredictions = read_predictions(predictions, dataset.classes)
    scored = scored_items(dataset, parsed)
    families = {
        "class": slices.by_class(scored),
        "issue": slices.by_issue(scored),
        "uniqueness": slices.by_uniqueness(scored),
        "duplicates": slices.by_duplicates(scored),
        "cluster": slices.by_cluster(scored, min_items=min_cluster_items),
        "curation": slices.by_curation(scored),
    }
    leakage = None
    if train_ids is not None:
        leakage = _leakage(dataset, scored, list(train_ids))
        families["leakage"] = slices.by_leakage(scored, leakage.leaks)
    return Evaluation(
        title=title or f"Evaluation: {getattr(dataset, 'dataset_id', None) or Path(dataset.export_dir).name}",
        classes=list(dataset.classes),
        scored=scored,
        slices=families,
        label_errors=suspected_label_errors(scored, min_confidence=min_confidence),
        leakage=leakage,
        dataset=dataset,
    )


def with_export_classes(open_dataset: Callable[..., Any]) -> Any:
    """The dataset ``open_dataset()`` opens, numbered by the classes of the whole export.

    A dataset's classes are those of the items curation kept: a rule that removes every item of
    a class (detection: every item with a box of it) drops it, which shifts the index of every class after it
    (a model's class indices then read as other classes) and refuses the removed items'
    predictions by that name. A model trained on the export knows them all, so when they differ
    the dataset is opened again with ``open_dataset(classes=...)``.
    """
    dataset = open_dataset()
    objects = dataset.task == "detection"
    classes = export_classes(dataset.curation_details(), dataset.label_source, objects=objects)
    return dataset if classes == list(dataset.classes) else open_dataset(classes=classes)


def export_classes(details: pa.Table, label_source: Any, *, objects: bool = False) -> list[str]:
    """The classes training on the whole export numbers, from every item of ``details``, kept or
    not, counting the labels of ``label_source``: the sorted names of the items with one image
    label, or with ``objects`` (detection) of every object label."""
    if objects:
        names = object_labels(details, label_source)
    else:
        # Distinct per item, as the dataset counts them: a label from two sources is one label.
        labels = distinct_labels(details, label_source)
        names = pc.list_flatten(labels.filter(pc.equal(pc.list_value_length(labels), 1)))
    return sorted(pc.unique(pc.drop_null(names)).to_pylist())


def _leakage(dataset: Any, scored: pa.Table, train_ids: list[str]) -> Leakage:
    media_ids = scored.column("media_id")
    leaks = train_leaks(dataset.curation_details(), train_ids, media_ids.to_pylist())
    clean = pc.invert(pc.is_in(media_ids, value_set=leaks.column("media_id")))
    return Leakage(
        train_items=len(train_ids),
        leaks=leaks,
        accuracy=_accuracy(scored.column("correct")),
        accuracy_without_leaks=_accuracy(scored.column("correct").filter(clean)),
    )


def _accuracy(correct: pa.ChunkedArray | pa.Array) -> float:
    value = pc.mean(pc.cast(correct, pa.float64())).as_py()
    return math.nan if value is None else float(value)
