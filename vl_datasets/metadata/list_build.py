"""A curated item list built as it is written: two streamed passes over slices of the index.

The first pass takes each kept row with an image (its row, path, media id and label names) out of
the index and spills them to a file, while the names the classes are drawn from are gathered; the
second reads them back a batch at a time, makes the targets, drops what they refuse and writes the
rest (``item_list.ItemListWriter``), feeding the list's fingerprint. What either pass holds is a
slice, whatever the number of items. Tasks with no per-item target (detection, None) need no
classes first: one pass writes them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import CurationError, ImageNotFoundError
from .curation import CurationSummary
from .index import IMAGE_COLUMN
from .item_list import ItemList, ItemListWriter, TargetKind, map_item_list
from .row_batches import release_pages, row_slices
from .targets import (
    UnusableLabels,
    classification_targets,
    distinct_labels,
    multilabel_indices,
    object_labels,
    resolve_classes,
)

if TYPE_CHECKING:
    from .curated import TargetOptions


def fingerprint_ids(ids: pa.ChunkedArray | pa.Array) -> str:
    """A hash of ``ids`` (strings) in order, the same however the column is chunked: what pins an
    item list. Hashes the Arrow buffers, ~1 ms per 100,000 ids, with no Python string per id."""
    fingerprint = IdsFingerprint()
    for chunk in ids.chunks if isinstance(ids, pa.ChunkedArray) else [ids]:
        fingerprint.update(chunk)
    return fingerprint.hexdigest()


class IdsFingerprint:
    """``fingerprint_ids`` of ids given a chunk at a time (``update``), as curation writes them."""

    def __init__(self) -> None:
        self.count, self._lengths, self._data = 0, hashlib.sha256(), hashlib.sha256()

    def update(self, chunk: pa.Array) -> None:
        """Add the ids of ``chunk`` (strings), after those given before."""
        chunk = chunk.cast(pa.large_string())
        sizes = pc.fill_null(pc.binary_length(chunk), -1)  # a null id differs from an empty one
        self._lengths.update(np.ascontiguousarray(sizes.to_numpy(), dtype="<i8").tobytes())
        offsets = np.frombuffer(chunk.buffers()[1], dtype="<i8")[chunk.offset : chunk.offset + len(chunk) + 1]
        if len(chunk) and offsets[-1] > offsets[0]:
            self._data.update(memoryview(chunk.buffers()[2])[offsets[0] : offsets[-1]])
        self.count += len(chunk)

    def hexdigest(self) -> str:
        """The fingerprint of every id given so far."""
        return hashlib.sha256(f"{self.count}:".encode() + self._lengths.digest() + self._data.digest()).hexdigest()


def _count(summary: CurationSummary, rule: str, removed: int) -> CurationSummary:
    return CurationSummary(
        total=summary.total, kept=summary.kept - removed, removed_by={**summary.removed_by, rule: removed}
    )


class _Found:
    """What crosses the slices of the first pass besides the items: the kept rows without an image
    (how many, the first of them) and the distinct names the classes are drawn from."""

    def __init__(self) -> None:
        self.missing = 0
        self.first_missing: int | None = None
        self._names: list[pa.Array] = []

    def no_image(self, rows: np.ndarray) -> None:
        self.missing += len(rows)
        if self.first_missing is None:
            self.first_missing = int(rows[0])

    def add_names(self, names: pa.Array) -> None:
        self._names.append(pc.unique(names))

    def names(self) -> pa.Array:
        """Every distinct name added."""
        return pa.concat_arrays(self._names).unique() if self._names else pa.array([], pa.string())


class ListBuild:
    """An index's kept rows made into an item list, written as it is made, in two passes over
    slices of rows: the first takes each kept row with an image (its row, path, media id and label
    names) out of the index and spills them to a file, while the names of the classes are
    gathered; the second reads them back a batch at a time, makes the targets, drops what they
    refuse and writes the rest. What either pass holds is a slice, whatever the number of items.
    Tasks with no per-item target (detection, None) need no classes first: one pass writes them."""

    def __init__(
        self,
        rows: pa.Table,
        options: TargetOptions,
        label_source: Any,
        missing_images: str,
        paths_from_file_path: Any,
        where: str,
    ) -> None:
        self.rows, self.options, self.label_source = rows, options, label_source
        self.missing_images, self.paths_from_file_path, self.where = missing_images, paths_from_file_path, where

    def write(self, curated: tuple[np.ndarray, CurationSummary], folder: Path) -> ItemList:
        """Write the list of the rows ``curated`` kept into ``folder`` (made here), and map it."""
        kept, summary = curated
        del curated  # the slices hold the kept rows until the first pass ends, and nothing after
        release_pages(self.rows)  # what the rules read whole (the scores); their slices went as they were read
        task, found = self.options.task, _Found()
        slices = self._kept_slices(kept, found)
        del kept
        with ItemListWriter(folder, _TARGET_KINDS.get(task or "")) as writer:
            if task in ("classification", "multilabel"):
                _spill(slices, folder / _SPILL_FILE)
                summary = self._require_images(found, summary)
                targets = _Targets(task, resolve_classes(found.names(), self.options.classes))
                fingerprint = _write_items(writer, _spilled(folder / _SPILL_FILE), targets)
                (folder / _SPILL_FILE).unlink()
                summary, classes = self._counted(targets, summary), targets.classes
            else:
                fingerprint = _write_items(writer, slices, None)
                summary = self._require_images(found, summary)
                classes = resolve_classes(found.names(), self.options.classes) if task == "detection" else []
            if writer.count == 0:
                raise CurationError(f"No item is left to load from {self.where}: {summary.removed_by}")
            writer.finish(classes=classes, summary=summary, fingerprint=fingerprint, index_rows=len(self.rows))
        return map_item_list(folder, index_rows=len(self.rows))

    def _kept_slices(self, kept: np.ndarray, found: _Found) -> Iterator[pa.RecordBatch]:
        """Per slice of the index, its kept rows with an image: ``row``, ``path``, ``media_id`` and
        (classification, multilabel) ``labels``, their distinct label names. Rows without an image
        are counted in ``found``, with the names classes are drawn from."""
        task, paths_from_file_path = self.options.task, self.paths_from_file_path
        path_column = IMAGE_COLUMN if paths_from_file_path is None else "file_path"
        target_column = {"classification": "labels", "multilabel": "labels", "detection": "objects"}.get(task or "")
        columns = [path_column, "media_id"] + ([target_column] if target_column else [])
        for offset, part in row_slices(self.rows, columns):
            lo, hi = np.searchsorted(kept, [offset, offset + len(part)])
            chosen = kept[lo:hi]
            taken = part.take(pa.array(chosen - offset))
            paths = taken.column(path_column)
            # Under an images_root a path is made of the file_path of the kept rows alone, never of all.
            paths = (paths if paths_from_file_path is None else paths_from_file_path(paths)).combine_chunks()
            present = pc.is_valid(paths).to_numpy(zero_copy_only=False)
            if not present.all():
                found.no_image(chosen[~present])
                taken, paths, chosen = taken.filter(pa.array(present)), paths.filter(pa.array(present)), chosen[present]
            ids = taken.column("media_id").combine_chunks()
            batch = {"row": pa.array(chosen, pa.int64()), "path": paths, "media_id": ids}
            if target_column == "labels":
                batch["labels"] = names = distinct_labels(taken, self.label_source)
                # Classification draws its classes from the items it can use: those with one label.
                usable = names if task == "multilabel" else names.filter(pc.equal(pc.list_value_length(names), 1))
                found.add_names(pc.list_flatten(usable))
            elif target_column == "objects":
                found.add_names(object_labels(taken, self.label_source))
            yield pa.RecordBatch.from_pydict(batch).cast(_SPILL_SCHEMA if target_column == "labels" else _ITEM_SCHEMA)

    def _require_images(self, found: _Found, summary: CurationSummary) -> CurationSummary:
        """An error naming a kept row without an image, or the summary counting those dropped."""
        if not found.missing:
            return summary
        if self.missing_images == "raise":
            row, rows = found.first_missing, self.rows
            media_id = rows.column("media_id")[row].as_py()
            raise ImageNotFoundError(
                f"No image in the export for media_id {media_id!r} (file_path "
                f"{rows.column('file_path')[row].as_py()!r}); {found.missing:,} item(s) have none. Export with "
                "include_images=True, pass images_root= where the images live, or missing_images='drop'.",
                media_id=media_id,
            )
        return _count(summary, "missing_images", found.missing)

    def _counted(self, targets: _Targets, summary: CurationSummary) -> CurationSummary:
        """The summary counting the items classification dropped, or the error refusing them."""
        invalid = targets.invalid
        if not invalid.total:
            return summary
        if self.options.invalid_labels == "raise":
            raise invalid.error()
        return _count(summary, "invalid_labels", invalid.total)


_TARGET_KINDS: dict[str, TargetKind] = {"classification": "class", "multilabel": "classes"}
_SPILL_FILE = "kept.arrow"  # the first pass's items, in the list's folder until the second has read them
_ITEM_SCHEMA = pa.schema([("row", pa.int64()), ("path", pa.large_string()), ("media_id", pa.large_string())])
_SPILL_SCHEMA = _ITEM_SCHEMA.append(pa.field("labels", pa.list_(pa.string())))


class _Targets:
    """The targets of a batch of items, for classification or multilabel over ``classes``;
    ``invalid`` counts the items classification cannot use."""

    def __init__(self, task: str, classes: list[str]) -> None:
        self.task, self.classes, self.invalid = task, classes, UnusableLabels()

    def __call__(self, batch: pa.RecordBatch) -> tuple[np.ndarray | None, np.ndarray | pa.Array]:
        """(which items of ``batch`` to keep, None for all; the targets of all of them)."""
        labels = batch.column("labels")
        if self.task == "multilabel":
            return None, multilabel_indices(labels, self.classes)
        index = classification_targets(labels, self.classes)
        keep = self.invalid.add(labels, index, batch.column("media_id"))
        return (None if keep.all() else keep), index


def _write_items(writer: ItemListWriter, batches: Iterable[pa.RecordBatch], targets: _Targets | None) -> str:
    """Write the items of ``batches`` (those ``targets`` keep) and return their fingerprint."""
    fingerprint = IdsFingerprint()
    for batch in batches:
        keep, values = (None, None) if targets is None else targets(batch)
        if keep is not None:
            assert isinstance(values, np.ndarray)  # only classification drops items
            batch, values = batch.filter(pa.array(keep)), values[keep]
        writer.append(batch.column("row").to_numpy(), batch.column("path"), values)
        fingerprint.update(batch.column("media_id"))
    return fingerprint.hexdigest()


def _spill(batches: Iterable[pa.RecordBatch], path: Path) -> None:
    """``batches`` into an Arrow IPC file at ``path``, one record batch each."""
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, _SPILL_SCHEMA) as spill:
        for batch in batches:
            spill.write_batch(batch)


def _spilled(path: Path) -> Iterator[pa.RecordBatch]:
    """The batches ``_spill`` wrote, one at a time, with ordinary reads (no map whose pages stay)."""
    with pa.OSFile(str(path)) as source:
        reader = pa.ipc.open_file(source)
        for number in range(reader.num_record_batches):
            yield reader.get_batch(number)
