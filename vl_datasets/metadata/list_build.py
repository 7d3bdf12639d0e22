"""A curated item list built as it is written: one streamed pass over slices of the index.

Each slice's kept rows with an image (their row, path, media id and, for classification and
multilabel, their label names) are made into items and appended to the list's files
(``item_list.ItemListWriter``) as they come, feeding the list's fingerprint, so that what the pass
holds is a slice, whatever the number of items. The targets need the classes, which are the sorted
names of every kept item unless ``classes=`` gives them: until the last slice is read, each name
is numbered as it is first met, and the numbers written are turned into class indices in place
once the names are all known (a file of 8 bytes per item or label), rather than the items being
kept, or spilled and read back, until then.
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import CurationError, ImageNotFoundError
from .curation import CurationSummary, list_offsets
from .index import IMAGE_COLUMN
from .item_codes import expanded
from .item_list import ItemList, ItemListWriter, TargetKind, map_item_list
from .json_depth import as_text, text_bytes
from .ordered_map import WORKERS, ordered_map
from .row_batches import one_array, release_pages, row_slices
from .targets import UnusableLabels, distinct_labels_once, object_labels, resolve_classes

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
        chunk = as_text(chunk)
        sizes = pc.fill_null(pc.binary_length(chunk), -1)  # a null id differs from an empty one
        self._lengths.update(np.ascontiguousarray(sizes.to_numpy(), dtype="<i8").data)  # hashed in place
        texts = text_bytes(chunk)
        if texts is not None:  # None: no byte to add
            self._data.update(texts[0].data)
        self.count += len(chunk)

    def hexdigest(self) -> str:
        """The fingerprint of every id given so far."""
        return hashlib.sha256(f"{self.count}:".encode() + self._lengths.digest() + self._data.digest()).hexdigest()


def _count(summary: CurationSummary, rule: str, removed: int) -> CurationSummary:
    return CurationSummary(
        total=summary.total, kept=summary.kept - removed, removed_by={**summary.removed_by, rule: removed}
    )


class _Found:
    """What crosses the slices besides the items: the kept rows without an image (how many, the
    first of them) and, for detection, the distinct names the classes are drawn from."""

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
    """An index's kept rows made into an item list, written as it is made in one pass over slices
    of rows (see the module): what the pass holds is a slice, whatever the number of items."""

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
        # The columns each slice reads: its image paths (or the file_path they are made of), its
        # media ids, and what its targets are made of (labels, objects; none for task None).
        self._path_column = IMAGE_COLUMN if paths_from_file_path is None else "file_path"
        self._target_column = _TARGET_COLUMNS.get(options.task or "")

    def write(self, curated: tuple[np.ndarray, CurationSummary], folder: Path) -> ItemList:
        """Write the list of the rows ``curated`` kept (``curate_mask``: whether each row is kept, and
        the summary) into ``folder`` (made here), and map it."""
        kept, summary = curated
        del curated  # the slices hold the kept rows until the pass ends, and nothing after
        release_pages(self.rows)  # what the rules read whole (the scores); their slices went as they were read
        task, found = self.options.task, _Found()
        targets = _Targets(task, self.options.classes) if task in _TARGET_KINDS else None
        with ItemListWriter(folder, _TARGET_KINDS.get(task or "")) as writer:
            with closing(self._kept_slices(kept, found)) as slices:  # its threads end here, whatever happens
                fingerprint = _write_items(writer, slices, targets)
            del kept
            summary = self._require_images(found, summary)
            if targets is not None:
                summary, classes = self._counted(targets, summary), targets.classes()
            else:
                classes = resolve_classes(found.names(), self.options.classes) if task == "detection" else []
            if writer.count == 0:
                raise CurationError(f"No item is left to load from {self.where}: {summary.removed_by}")
            writer.finish(
                classes=classes,
                summary=summary,
                fingerprint=fingerprint,
                index_rows=len(self.rows),
                renumber=None if targets is None else targets.renumbering(),
            )
        return map_item_list(folder, index_rows=len(self.rows))

    def _kept_slices(self, kept: np.ndarray, found: _Found) -> Generator[pa.RecordBatch, None, None]:
        """Per slice of the index, its kept rows with an image: ``row``, ``path``, ``media_id`` and
        (classification, multilabel) ``labels``, their distinct label names. Rows without an image
        are counted in ``found``, with (detection) the names classes are drawn from. The slices are
        made by a pool of threads (Arrow releases the GIL), and come in order."""
        columns = [self._path_column, "media_id"] + ([self._target_column] if self._target_column else [])
        slices = ((offset, part, kept) for offset, part in row_slices(self.rows, columns, release=False))
        made = ordered_map(self._kept_slice, slices, workers=WORKERS, ahead=WORKERS + 1, name=_slice_name)
        with closing(made):
            for batch, no_image, names in made:
                if len(no_image):
                    found.no_image(no_image)
                if names is not None:
                    found.add_names(names)
                yield batch

    def _kept_slice(self, item: tuple[int, pa.Table, np.ndarray]) -> tuple[pa.RecordBatch, np.ndarray, pa.Array | None]:
        """(the items of one slice of the index, its kept rows without an image, its objects' names)."""
        offset, part, kept = item
        in_part = np.flatnonzero(kept[offset : offset + len(part)])
        chosen = offset + in_part
        taken = part.take(pa.array(in_part))
        release_pages(part)  # here, once read: the slices are read by several threads at once
        paths = taken.column(self._path_column)
        # Under an images_root a path is made of the file_path of the kept rows alone, never of all.
        paths = one_array(paths if self.paths_from_file_path is None else self.paths_from_file_path(paths))
        present = pc.is_valid(paths).to_numpy(zero_copy_only=False)
        no_image = chosen[~present]
        if len(no_image):
            taken, paths, chosen = taken.filter(pa.array(present)), paths.filter(pa.array(present)), chosen[present]
        batch = {"row": pa.array(chosen, pa.int64()), "path": paths, "media_id": taken.column("media_id")}
        names = None
        if self._target_column == "labels":
            batch["labels"] = _coded(*distinct_labels_once(taken, self.label_source))
        elif self._target_column == "objects":
            names = object_labels(taken, self.label_source)
        return pa.RecordBatch.from_pydict({name: one_array(values) for name, values in batch.items()}), no_image, names

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
_TARGET_COLUMNS = {"classification": "labels", "multilabel": "labels", "detection": "objects"}  # what a target reads


def _slice_name(item: tuple[int, pa.Table, np.ndarray]) -> str:
    offset, part, _ = item
    return f"Raised while listing the kept items of rows {offset} to {offset + len(part) - 1} of the index."


def _coded(labels: pa.ListArray, rows: np.ndarray | None) -> pa.ListArray:
    """Each row's list of names with the names dictionary-encoded, by the thread that made the
    slice: the writer then numbers a slice's few distinct names, not each of its millions of labels
    (a null list becomes an empty one: neither holds a label). ``labels``: each row's, or with
    ``rows``, each distinct list's, ``rows`` giving each row's (its names are encoded once)."""
    counts = pc.fill_null(pc.list_value_length(labels), 0).to_numpy(zero_copy_only=False)
    names = pc.dictionary_encode(pc.list_flatten(labels))
    if rows is not None:
        positions, _ = expanded(np.repeat(np.arange(len(labels)), counts), rows, len(labels))
        indices = names.indices.to_numpy(zero_copy_only=False)[positions]
        names = pa.DictionaryArray.from_arrays(pa.array(indices), names.dictionary)
        counts = counts[rows]
    offsets = np.zeros(len(counts) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), names)


class _Targets:
    """The targets of classification or multilabel, made a batch of items at a time before every
    class is known. ``classes=`` given: each label's index among them, labels outside them unused.
    Otherwise the classes are the sorted names met (classification: of items with one label), so
    each name is numbered as it is first met and ``renumbering`` maps those numbers to its place
    among the sorted names once all are. ``invalid`` counts the items classification cannot use."""

    def __init__(self, task: str, classes: Sequence[str] | None) -> None:
        self.task, self.invalid, self._given = task, UnusableLabels(), classes is not None
        names = resolve_classes(pa.array([], pa.string()), classes) if classes is not None else []
        self._numbers = {name: number for number, name in enumerate(names)}  # a name's number: its place here
        self._known = pa.array(names, pa.string())

    def __call__(self, batch: pa.RecordBatch) -> tuple[np.ndarray | None, np.ndarray | pa.Array]:
        """(which items of ``batch`` to keep, None for all; the targets of all of them, as numbers).
        Its ``labels`` are ``_coded``: offsets from 0, names as a dictionary."""
        labels = batch.column("labels")
        names = labels.values
        codes = pc.fill_null(names.indices, -1).to_numpy(zero_copy_only=False)
        offsets = labels.offsets.to_numpy()
        if self.task == "multilabel":
            numbers = self._numbered(names.dictionary, codes)[codes]
            known = numbers >= 0
            parents, numbers = np.repeat(np.arange(len(labels)), np.diff(offsets))[known], numbers[known]
            if self._given:  # a row's names come sorted, their places among the given classes need not
                order = np.lexsort((numbers, parents))
                parents, numbers = parents[order], numbers[order]
            return None, pa.ListArray.from_arrays(list_offsets(parents, len(labels)), pa.array(numbers))
        single = np.diff(offsets) == 1
        numbers = np.full(len(labels), -1, dtype=np.int64)
        if single.any():
            firsts = codes[offsets[:-1][single]]
            numbers[single] = self._numbered(names.dictionary, firsts)[firsts]
        keep = self.invalid.add(labels, numbers, batch.column("media_id"))
        return (None if keep.all() else keep), numbers

    def _numbered(self, names: pa.Array, codes: np.ndarray) -> np.ndarray:
        """The number of each of ``names`` (a slice's distinct names), then -1 (a null name's code);
        -1 too for a name outside the given classes. Without given classes, the names ``codes``
        uses are numbered first, in the dictionary's order (``renumbering`` sorts them at the end)."""
        if not self._given:
            used = np.bincount(codes[codes >= 0], minlength=len(names)) > 0
            new = [name for name in names.filter(pa.array(used)).to_pylist() if name not in self._numbers]
            if new:
                self._numbers.update((name, len(self._numbers) + i) for i, name in enumerate(new))
                self._known = pa.array(list(self._numbers), pa.string())
        found = pc.fill_null(pc.index_in(names, value_set=self._known), -1).to_numpy(zero_copy_only=False)
        return np.append(found.astype(np.int64, copy=False), -1)

    def classes(self) -> list[str]:
        """The class names, in index order."""
        return list(self._numbers) if self._given else sorted(self._numbers)

    def renumbering(self) -> np.ndarray | None:
        """Each number's class index (None when they are the same: the classes were given)."""
        if self._given:
            return None
        place = {name: index for index, name in enumerate(self.classes())}
        return np.array([place[name] for name in self._numbers], dtype=np.int64)


def _write_items(writer: ItemListWriter, batches: Iterable[pa.RecordBatch], targets: _Targets | None) -> str:
    """Write the items of ``batches`` (those ``targets`` keep) and return their fingerprint.

    The fingerprint hashes the ids in order, a third of this thread's work (SHA-256 of ~40 bytes
    an item): a thread of its own hashes each batch's ids (hashlib lets go of the GIL) while this
    one makes the next batch's targets and writes its files, one batch in flight at a time."""
    fingerprint = IdsFingerprint()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vl_datasets-fingerprint") as hashing:
        hashed: Future[None] | None = None
        for batch in batches:
            keep, values = (None, None) if targets is None else targets(batch)
            if keep is not None:
                assert isinstance(values, np.ndarray)  # only classification drops items
                batch, values = batch.filter(pa.array(keep)), values[keep]
            if hashed is not None:
                hashed.result()  # the batch before, hashed: the ids go in in order
            hashed = hashing.submit(fingerprint.update, batch.column("media_id"))
            writer.append(batch.column("row").to_numpy(), batch.column("path"), values)
        if hashed is not None:
            hashed.result()
    return fingerprint.hexdigest()
