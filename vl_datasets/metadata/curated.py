"""The item side of a dataset: which rows of an export it holds, their targets, and how curation chose them.

``CuratedItems(rows, curation, targets)`` takes an export's rows (the normalized metadata plus each
row's image path, as ``metadata.index`` builds them), keeps what the ``CurationRules`` keep, drops
or refuses rows without an image, and builds the targets ``TargetOptions`` ask for, a slice of
rows at a time (``row_batches``). What it keeps per item (its row in the index, image path,
target: an ``item_list.ItemList``) is a few numbers and a path, written to files as each slice
makes them and mapped once whole, so that curating holds a slice, not the items: one pass
writes each slice's items, their targets numbered as names are met and renumbered once the
classes are known (``list_build``).
``CuratedItems.from_list`` opens a list written earlier, memory-mapped, with no curation. It holds
Arrow and numpy buffers only (forked DataLoader workers share them instead of copying them,
pytorch/pytorch#13246), and answers in plain Python and numpy values: no torch is imported, so a
tool that audits, splits or counts items needs nothing else. ``VisualLayerDataset`` turns its
targets into tensors.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConfigurationError, SchemaError
from .curation import CurationRules, CurationSummary, curate_mask, label_sources, removal_reasons
from .deferred import (
    Deferral,
    DeferredColumns,
    column_names,
    complete_index,
    deferred_store,
    joined,
    joined_file_slices,
)
from .index import IMAGE_COLUMN
from .item_codes import ITEM_NAMES, ITEMS_COLUMN, plain_table, take_rows, with_items
from .item_list import LIST_DIR, ItemFiles, ItemList
from .list_build import ListBuild
from .options import check_choice, doc, string_list
from .row_batches import SLICE_ROWS, file_slices, select_present
from .targets import (
    INVALID_LABEL_CHOICES,
    TASKS,
)

Task = Literal["classification", "multilabel", "detection", None]
InvalidLabels = Literal["raise", "drop"]
MissingImages = Literal["raise", "drop"]


@dataclass(frozen=True)
class TargetOptions:
    """What each item's target is."""

    task: Task = field(
        default="classification",
        metadata=doc('``"classification"``, ``"multilabel"``, ``"detection"`` or None (the metadata row)'),
    )
    classes: Sequence[str] | None = field(
        default=None, metadata=doc("the class names, in index order; None: the sorted names present")
    )
    invalid_labels: InvalidLabels = field(
        default="raise",
        metadata=doc('for classification, ``"raise"`` on items without exactly one known label, or ``"drop"`` them'),
    )
    object_drop_issues: Mapping[str, float] | None = field(
        default=None, metadata=doc("for detection, issue type -> confidence: leave out boxes with such an issue")
    )
    target_transform: Any = field(default=None, metadata=doc("a callable applied to each target (by the dataset)"))

    def __post_init__(self) -> None:
        check_choice("task", self.task, TASKS)
        check_choice("invalid_labels", self.invalid_labels, INVALID_LABEL_CHOICES)
        if self.target_transform is not None and not callable(self.target_transform):
            raise ConfigurationError(f"target_transform must be callable, got {type(self.target_transform).__name__}.")
        if self.classes is not None:  # frozen; a copy the caller cannot change, each name a str
            object.__setattr__(self, "classes", tuple(string_list("classes", self.classes)))
        if self.object_drop_issues is not None:
            object.__setattr__(self, "object_drop_issues", dict(self.object_drop_issues))


def check_missing_images(missing_images: str) -> None:
    """Refuse a ``missing_images`` other than ``"raise"`` or ``"drop"``."""
    check_choice("missing_images", missing_images, get_args(MissingImages))


class CuratedItems:
    """The rows a dataset holds, one per index, with their image paths and targets (see the module).

    It keeps the export's rows (``rows``, the index: memory-mapped when it comes from the cache) and,
    per item, its row there, its image path and its target; ``table`` takes the items' rows out of
    the index only when asked. ``where`` names the export in the error raised when no item is left.
    ``folder`` is where the list's files are written (a new folder, made here; the caller moves it
    into place); without one they go to a temporary folder, removed once they are mapped.
    ``paths_from_file_path`` makes the image paths of the kept rows' ``file_path`` instead of
    taking the index's (images under a root of their own). ``from_list`` opens a list written
    earlier (``item_list``): no curation runs, and a list that came from files pickles as those
    files' paths, so a spawned worker maps them instead of copying.
    """

    def __init__(
        self,
        rows: pa.Table,
        curation: CurationRules,
        targets: TargetOptions,
        *,
        missing_images: MissingImages = "raise",
        where: str = "the export",
        paths_from_file_path: Callable[[pa.ChunkedArray], pa.ChunkedArray | pa.Array] | None = None,
        folder: Path | None = None,
        index_path: Path | None = None,
    ) -> None:
        check_missing_images(missing_images)
        rows = with_items(rows, index_path)  # curation reads the items
        build = ListBuild(rows, targets, curation.label_source, missing_images, paths_from_file_path, where)
        # A where= expression may read any column: it sees them all, the deferred ones joined.
        curated_rows = rows if curation.where is None else complete_index(rows, index_path)
        if folder is not None:
            items = build.write(curate_mask(curated_rows, curation), folder)
        else:  # the files stay mapped once their folder is gone
            with tempfile.TemporaryDirectory(prefix="vl_datasets-items-") as scratch:
                items = build.write(curate_mask(curated_rows, curation), Path(scratch) / LIST_DIR)
        self._set(rows, items, curation, targets, index_path=index_path)

    @classmethod
    def from_list(
        cls,
        rows: pa.Table,
        items: ItemList,
        curation: CurationRules,
        targets: TargetOptions,
        *,
        files: ItemFiles | None = None,
    ) -> CuratedItems:
        """The items of a list written earlier (``item_list.read_item_list``) over the index ``rows``
        it was made from; ``files`` (where both are) make it pickle as paths."""
        self = cls.__new__(cls)
        self._set(rows, items, curation, targets, files=files)
        return self

    def _set(
        self,
        rows: pa.Table,
        items: ItemList,
        rules: CurationRules,
        targets: TargetOptions,
        *,
        files: ItemFiles | None = None,
        subset_on_disk: bool = False,
        index_path: Path | None = None,
    ) -> None:
        self._rows_table, self.list, self.options, self._files = rows, items, targets, files
        self._checked_rows: np.ndarray | None = None  # ``rows`` and ``paths`` once checked whole
        self._checked_paths: pa.Array | None = None
        # The index as read: without the columns it leaves in its metadata file (``deferred``),
        # joined only when one of them is asked for.
        self._read_index = _without_image(rows)
        self._index_path = files.index if files is not None else index_path
        self._deferral = Deferral.of(rows)
        self._deferred = frozenset(self._deferral.columns) if self._deferral is not None else frozenset()
        self._deferred_columns: DeferredColumns | None = None
        self._whole: pa.Table | None = None
        self._with_items: pa.Table | None = None  # the index with its items joined, once asked for
        # The rules as known here: whole, or (unpickled) without the subset ids, which stay on disk
        # until someone asks for ``rules``.
        self._known_rules = rules
        self._rules: CurationRules | None = None if subset_on_disk else rules
        self._columns: dict[str, pa.ChunkedArray] = {}
        self._table: pa.Table | None = None

    @property
    def rows(self) -> np.ndarray:
        """Each item's row in the index (int64, ascending), checked whole the first time (``item_list``)."""
        if self._checked_rows is None:
            self._checked_rows = self.list.checked_rows()
        return self._checked_rows

    @property
    def paths(self) -> pa.Array:
        """Each item's image path, relative to the images' root, as mapped: for its length, or a few
        of them. Reading every one: ``all_paths``."""
        return self.list.paths

    def all_paths(self) -> pa.Array:
        """``paths``, checked whole the first time (``item_list``): for a pass over every path."""
        if self._checked_paths is None:
            self._checked_paths = self.list.checked_paths()
        return self._checked_paths

    @property
    def classes(self) -> list[str]:
        """The class names, in index order (none for ``task=None``)."""
        return self.list.classes

    @property
    def summary(self) -> CurationSummary:
        """How many items each curation rule removed."""
        return self.list.summary

    @property
    def rules(self) -> CurationRules:
        """The curation rules these items were chosen by."""
        if self._rules is None:
            assert self._files is not None
            self._rules = replace(self._known_rules, subset=self._files.read_subset())
        return self._rules

    # Pickled (for a spawned DataLoader worker), a list from files is their paths and the options:
    # the worker maps the same files, and its memory does not grow with the number of items. The
    # ids of ``subset=`` (millions, for a part of a split) stay on disk until someone asks for them.
    def __getstate__(self) -> dict[str, Any]:
        if self._files is None:
            return {
                "rows_table": self._rows_table,
                "index_path": self._index_path,
                "list": self.list,
                "rules": self.rules,
                "options": self.options,
            }
        known = self._known_rules
        return {
            "files": self._files,
            "rules": replace(known, subset=None) if known.subset is not None else known,
            "subset_on_disk": self._rules is None or self._rules.subset is not None,
            "options": self.options,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        files: ItemFiles | None = state.get("files")
        if files is None:
            self._set(
                state["rows_table"], state["list"], state["rules"], state["options"], index_path=state["index_path"]
            )
            return
        rows, items = files.open()
        self._set(rows, items, state["rules"], state["options"], files=files, subset_on_disk=state["subset_on_disk"])

    @property
    def table(self) -> pa.Table:
        """The items' rows of the normalized metadata, in index order (taken from the index when
        first asked for: at millions of items, ask for ``column`` instead where one column will do)."""
        if self._table is None:
            self._table = take_rows(self._index_with(None), self.rows)
        return self._table

    def column(self, name: str) -> pa.ChunkedArray:
        """One column of ``table``, taken from the index alone."""
        if self._table is not None:
            return self._table.column(name)
        return take_rows(self._index_with([name]).select([name]), self.rows).column(0)

    @property
    def column_names(self) -> list[str]:
        """The metadata's columns (those of ``table``)."""
        return [name for name in column_names(self._read_index) if name != IMAGE_COLUMN]

    def _index_with(self, columns: Iterable[str] | None) -> pa.Table:
        """The index, with its items joined in place of their codes (``item_codes``) and the
        deferred columns joined when ``columns`` (None: all) names one of them."""
        wanted = None if columns is None else set(columns)
        coded = ITEMS_COLUMN in self._read_index.column_names
        with_items = coded and (wanted is None or not wanted.isdisjoint(ITEM_NAMES))
        if not self._deferred or (wanted is not None and self._deferred.isdisjoint(wanted)):
            return _without_image(self._rows_with_items()) if with_items else self._read_index
        if self._whole is None:
            assert self._deferral is not None
            self._whole = _without_image(joined(self._rows_with_items(), self._read_deferred().table, self._deferral))
        return self._whole

    def _rows_with_items(self) -> pa.Table:
        if self._with_items is None:
            self._with_items = with_items(self._rows_table, self._index_path)
        return self._with_items

    def _read_deferred(self) -> DeferredColumns:
        """The columns the index left in its metadata file, read into a file beside it when first asked for."""
        if self._deferred_columns is None:
            self._deferred_columns = deferred_store(self._rows_table, self._index_path)
        return self._deferred_columns

    @property
    def list_folder(self) -> Path | None:
        """The folder of the item list these items were read from, where what is computed from
        them is kept (a split: ``split_files``); None for items curated in memory."""
        return None if self._files is None else self._files.folder

    def slices(self, columns: Iterable[str] | None = None, *, coded: bool = False) -> Iterator[tuple[int, pa.Table]]:
        """(first item, table) for consecutive slices of the items' rows, holding only those of
        ``columns`` the metadata has: ``table`` a slice at a time, for work over millions of items.
        Items from the cache read their index file with ordinary reads (``row_batches.file_slices``),
        so what a pass over every item reads is not left resident in this process. With
        ``coded``, the item columns stay as the index holds them (``item_codes``)."""
        for start, part in self._slices(columns):
            yield start, part if coded else plain_table(part)

    def _slices(self, columns: Iterable[str] | None) -> Iterator[tuple[int, pa.Table]]:
        wanted = self._deferred if columns is None else self._deferred.intersection(columns)
        if self._files is not None and not wanted:
            yield from file_slices(self._files.index, self.rows, columns)
            return
        store = self._read_deferred().file if wanted and self._files is not None else None
        if self._files is not None and store is not None:  # both files, side by side
            assert self._deferral is not None
            yield from joined_file_slices(self._files.index, store, self.rows, columns, self._deferral)
            return
        # Items curated in memory, or deferred columns a cache could not keep: taken from the tables.
        source = select_present(self._index_with(columns), columns, keep_rows=True)
        for start in range(0, max(len(self), 1), SLICE_ROWS):
            yield start, take_rows(source, self.rows[start : start + SLICE_ROWS])

    def take(self, columns: Sequence[str], positions: np.ndarray) -> pa.Table:
        """The rows of the items at ``positions``, holding only those of ``columns`` the metadata has."""
        return take_rows(select_present(self._index_with(columns), columns), self.list.rows_at(positions))

    def _index_column(self, name: str) -> pa.ChunkedArray:
        if name not in self._columns:
            self._columns[name] = self._index_with([name]).column(name)
        return self._columns[name]

    def __len__(self) -> int:
        return len(self.list.rows)  # not ``rows``: a length reads no row

    def __repr__(self) -> str:
        classes = f", classes={len(self.classes)}" if self.classes else ""
        return f"{type(self).__name__}(items={len(self)}, task={self.options.task!r}{classes})"

    @property
    def class_to_idx(self) -> dict[str, int]:
        """Each class name's index."""
        return {name: i for i, name in enumerate(self.classes)}

    def media_id(self, index: int) -> str:
        """The media id of ``index``."""
        return self._index_column("media_id")[self.list.row(index)].as_py()

    def image_file(self, index: int) -> str:
        """Where ``index``'s image is, relative to the images' root."""
        return self.list.path(index)

    def original_size(self, index: int) -> tuple[int | None, int | None]:
        """(width, height) of ``index``'s image as the metadata gives it (None where it does not)."""
        row = self.list.row(index)
        return self._index_column("width")[row].as_py(), self._index_column("height")[row].as_py()

    def target(self, index: int) -> Any:
        """The target of ``index`` in plain values: a class index (classification), the class
        indices of its labels, ascending, as int64 numpy (multilabel), a dict of float32 xyxy ``boxes`` (N x 4),
        int64 ``labels`` and ``media_id`` (detection), or the metadata row (task None)."""
        task = self.options.task
        if task == "detection":
            return self._detection_target(index)
        if task is None:
            return self._index_with(None).slice(self.list.row(index), 1).to_pylist()[0]
        return self.list.target(index)

    def _detection_target(self, index: int) -> dict[str, Any]:
        class_to_idx = self.class_to_idx
        sources = label_sources(self._known_rules.label_source)
        chosen = None if sources is None else set(sources)
        drop = self.options.object_drop_issues or {}
        boxes, labels = [], []
        for obj in self._index_column("objects")[self.list.row(index)].as_py():
            if chosen is not None and obj.get("source") not in chosen:
                continue
            if obj.get("category_name") not in class_to_idx or has_issue(obj, drop):
                continue
            if obj.get("bbox") is None:  # a labelled object with no box (the metadata allows it) is no target box
                continue
            x, y, w, h = obj["bbox"]
            boxes.append((x, y, x + w, y + h))  # the export's xywh, top-left origin, to xyxy
            labels.append(class_to_idx[obj["category_name"]])
        return {
            "boxes": np.array(boxes, dtype=np.float32).reshape(-1, 4),
            "labels": np.array(labels, dtype=np.int64),
            "media_id": self.media_id(index),
        }

    def box_scale(self, index: int, width: int, height: int, media_id: str) -> np.ndarray | None:
        """The factors (x, y, x, y) that bring ``index``'s boxes to an image decoded at ``width`` x
        ``height``; None when it is the original's size. Raises ``SchemaError`` when the metadata
        gives no size to scale from."""
        original_w, original_h = self.original_size(index)
        if (original_w, original_h) == (width, height):
            return None
        if not original_w or not original_h:
            raise SchemaError(
                f"media_id {media_id!r}: its boxes cannot be scaled to the {width}x{height} image it is "
                "decoded to, for the metadata gives no width and height.",
                field="width",
                media_id=media_id,
            )
        return np.array([width / original_w, height / original_h] * 2, dtype=np.float32)

    def fingerprint(self) -> str:
        """A hash of the item list (the media ids in index order): what a loader state pins, so
        that it is never loaded into a dataset whose indices mean other items."""
        return self.list.fingerprint

    def curation_summary(self) -> CurationSummary:
        """How many items each curation rule removed."""
        return self.summary

    def curation_details(self, rows: pa.Table) -> pa.Table:
        """Every one of ``rows`` (the export's index, as given to the constructor), kept or not, with
        ``removed_by``: the first rule that removed it, or null when it is held here. The image
        path column is kept, for the caller to turn into locations."""
        reasons = removal_reasons(rows, self.rules)
        held = np.zeros(len(rows), dtype=bool)
        held[self.rows] = True
        # What curation kept but this does not hold went at a later step: no image, or not a
        # usable label for the task (the summary names which of these ran).
        later = pc.if_else(pc.is_valid(rows.column(IMAGE_COLUMN)), "invalid_labels", "missing_images")
        reasons = pc.if_else(pa.array(held), pa.scalar(None, pa.string()), pc.coalesce(reasons, later))
        return plain_table(rows).append_column("removed_by", reasons)


def _without_image(rows: pa.Table) -> pa.Table:
    return rows.drop_columns([IMAGE_COLUMN]) if IMAGE_COLUMN in rows.column_names else rows


def has_issue(obj: dict, thresholds: Mapping[str, float]) -> bool:
    """Whether object ``obj`` carries an issue at or above its type's threshold (``object_drop_issues``)."""
    return any(
        issue.get("issue_type") in thresholds and (issue.get("confidence") or 0) >= thresholds[issue["issue_type"]]
        for issue in obj.get("issues") or []
    )
