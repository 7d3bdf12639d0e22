"""The curated item list on disk: what a dataset needs per item, written once per curation, mapped
by every process that opens it.

A folder (``LIST_DIR``) of raw little-endian Arrow buffers, one file each, appended a slice of
items at a time as curation makes them, so that writing a list of any length holds one slice:

    rows.i64            int64 per item: its row in the export's index (its metadata, media id, boxes)
    path.offsets.i64    int64, one more than the items: the large_string offsets of its image path,
    path.data           and their UTF-8 bytes (the path is relative to the images' root)
    target.i64          classification: int64 per item, its class index
    target.offsets.i64  multilabel: the large_list<int64> offsets of its class indices,
    target.values.i64   and the indices

``list.json``, written last, says how many items the files hold and what the rest of the dataset
needs without reading a column: the classes, the curation summary, the fingerprint of the item
list, and the index's row count (a list is only used against the index it was made from); files
whose lengths disagree with it are no list. Opening one maps each file and wraps its bytes as they
are (numpy for the rows and class indices, one Arrow array for the paths or the multilabel
targets): a process pays only for the pages it touches, and every process on a node shares them
in the page cache. A list of 100M items is about 5 GB, mostly paths.

So nothing reads a whole list to check it when it opens. Bytes changed in place (a bad copy, a
failing disk) are found where they are read: an item's row, path and target are checked against
their bounds as it is read (``row``, ``path``, ``target``), and a whole column the first time one
is read whole (``checked_rows``, ``checked_paths``). Found damaged, the list is set aside (its
``list.json`` renamed) and ``CacheMissError`` says to open the dataset again, which rebuilds it:
never a process killed by a wild offset, nor a class index past the classes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import pickle
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .._version import __version__
from ..atomic import beside
from ..errors import CacheMissError
from .curation import CurationRules, CurationSummary
from .index import read_index
from .json_depth import text_bytes_or_empty
from .media_ids import MediaIds

FORMAT = 2  # of the files below: a new format is a new settings digest, so a new list
LIST_DIR, SUBSET_FILE, FACTS_FILE = "list", "subset.arrow", "list.json"
_ROWS, _PATH_OFFSETS, _PATH_DATA = "rows.i64", "path.offsets.i64", "path.data"
_TARGET, _TARGET_OFFSETS, _TARGET_VALUES = "target.i64", "target.offsets.i64", "target.values.i64"
TargetKind = Literal["class", "classes"] | None
_TARGET_FILES = {None: (), "class": (_TARGET,), "classes": (_TARGET_OFFSETS, _TARGET_VALUES)}


@dataclass(frozen=True)
class ItemList:
    """A curated item list, as its columns (memory-mapped when read from a file) and its facts."""

    rows: np.ndarray  # int64, ascending
    paths: pa.Array  # (large) strings
    targets: np.ndarray | pa.Array | None  # int64 class indices, a list array of them, or None
    classes: list[str]
    summary: CurationSummary
    fingerprint: str
    index_rows: int
    folder: Path | None = None  # where its files are; None: not from files
    facts_id: tuple[int, int] | None = None  # (device, inode) of the list.json it was read with

    # -- an item, checked as it is read (see the module) ------------------------------------------

    def _position(self, index: int) -> int:
        """``index`` from 0 (a negative one counts from the end, as a sequence's does)."""
        count = len(self.rows)
        if not -count <= index < count:
            raise IndexError(f"item {index} of a list of {count:,}")
        return index + count if index < 0 else index

    def row(self, index: int) -> int:
        """Item ``index``'s row in the index."""
        index = self._position(index)
        row = int(self.rows[index])
        if not 0 <= row < self.index_rows:
            raise self.damaged(_ROWS, f"gives item {index} row {row} of an index of {self.index_rows:,}")
        return row

    def rows_at(self, positions: np.ndarray) -> np.ndarray:
        """The rows of the items at ``positions``, each checked to lie inside the index."""
        rows = self.rows[positions]
        if len(rows) and (rows.min() < 0 or rows.max() >= self.index_rows):
            raise self.damaged(_ROWS, f"holds rows outside an index of {self.index_rows:,}")
        return rows

    def path(self, index: int) -> str:
        """Item ``index``'s image path."""
        index = self._position(index)
        offsets, size = self._path_bounds
        if not 0 <= offsets[index] <= offsets[index + 1] <= size:
            raise self.damaged(_PATH_OFFSETS, f"gives item {index} bytes outside {_PATH_DATA}")
        try:
            return self.paths[index].as_py()
        except UnicodeDecodeError:
            raise self.damaged(_PATH_DATA, f"holds bytes of item {index}'s path that are not UTF-8") from None

    @functools.cached_property
    def _path_bounds(self) -> tuple[np.ndarray, int]:
        """The paths' offsets, read as numbers (Arrow trusts them), and their data's size."""
        return _bounds(self.paths)

    @functools.cached_property
    def _target_bounds(self) -> tuple[np.ndarray, int]:
        assert isinstance(self.targets, pa.Array)  # multilabel's
        return _bounds(self.targets)

    @functools.cached_property
    def _target_values(self) -> np.ndarray:
        assert isinstance(self.targets, pa.Array)
        return self.targets.values.to_numpy()  # int64 without nulls: a view of the mapped file

    def target(self, index: int) -> int | np.ndarray:
        """Item ``index``'s class index (classification), or its class indices (multilabel)."""
        index = self._position(index)
        targets, classes = self.targets, len(self.classes)
        assert targets is not None  # built for classification and multilabel
        if isinstance(targets, np.ndarray):
            value = int(targets[index])
            if not 0 <= value < classes:
                raise self.damaged(_TARGET, f"gives item {index} class {value} of {classes}")
            return value
        offsets, size = self._target_bounds
        start, end = offsets[index], offsets[index + 1]
        if not 0 <= start <= end <= size:
            raise self.damaged(_TARGET_OFFSETS, f"gives item {index} values outside {_TARGET_VALUES}")
        values = self._target_values[start:end]
        if len(values) and (values.min() < 0 or values.max() >= classes):
            raise self.damaged(_TARGET_VALUES, f"gives item {index} a class outside the {classes}")
        return values

    def checked_rows(self) -> np.ndarray:
        """``rows``, each checked (ascending, inside the index), a block at a time."""
        rows = self.rows
        for start in range(0, len(rows), _CHECK_BLOCK):
            block = rows[start : start + _CHECK_BLOCK + 1]
            if (np.diff(block) <= 0).any():
                raise self.damaged(_ROWS, f"is out of order between items {start:,} and {start + len(block) - 1:,}")
        if len(rows) and (rows[0] < 0 or rows[-1] >= self.index_rows):  # ascending: the ends bound the rest
            raise self.damaged(_ROWS, f"holds rows outside an index of {self.index_rows:,}")
        return rows

    def checked_paths(self) -> pa.Array:
        """``paths``, checked whole: offsets in order and inside the data, and UTF-8."""
        try:
            self.paths.validate(full=True)
        except pa.ArrowInvalid as exc:
            raise self.damaged(f"{_PATH_OFFSETS} or {_PATH_DATA}", f"does not hold paths ({exc})") from None
        return self.paths

    def damaged(self, file: str, detail: str) -> CacheMissError:
        """The error for damage found in ``file``, once the list is set aside to be rebuilt."""
        where = self.folder if self.folder is not None else "in memory"
        if self.folder is not None and self.facts_id is not None:
            facts = self.folder / FACTS_FILE
            with contextlib.suppress(OSError):  # set aside only the list.json it was read with, not a newer one
                found = facts.stat()
                if (found.st_dev, found.st_ino) == self.facts_id:
                    os.replace(facts, beside(facts, "damaged"))
        return CacheMissError(
            f"The curated item list {where} is damaged: {file} {detail}. It is set aside; open the dataset "
            "again to rebuild it."
        )


_CHECK_BLOCK = 1 << 20  # rows checked at once: 8 MiB of them


def _bounds(array: pa.Array) -> tuple[np.ndarray, int]:
    """The offsets of a large_string or large_list ``array``, as numbers from its first element,
    and the size of the data they point into (bytes, or values)."""
    buffers = array.buffers()
    offsets = np.frombuffer(buffers[1], "<i8")[array.offset : array.offset + len(array) + 1]
    if pa.types.is_large_string(array.type):
        return offsets, buffers[2].size if buffers[2] is not None else 0
    return offsets, len(array.values)


def list_settings(
    rules: CurationRules, task: str | None, classes: Any, invalid_labels: str, missing_images: str, own_root: str | None
) -> dict[str, Any]:
    """Everything that decides which items a list holds, their paths and their targets: its identity,
    as JSON. The subset (possibly millions of ids) and a ``where`` expression enter as digests."""
    subset = None
    if rules.subset is not None:  # a part of a split as it is, a list of ids through Arrow: one digest of the set
        ids = rules.subset if isinstance(rules.subset, MediaIds) else MediaIds(rules.subset)
        subset = ids.set_digest()
    where = None if rules.where is None else hashlib.sha256(pickle.dumps(rules.where)).hexdigest()
    return {
        "format": FORMAT,
        "library": __version__,
        "rules": {
            "subset": subset,
            "min_uniqueness": rules.min_uniqueness,
            "keep_unscored": rules.keep_unscored,
            "drop_issues": sorted((rules.drop_issues or {}).items()),
            "dedupe": rules.dedupe,
            "labels": sorted(rules.labels) if rules.labels is not None else None,
            "label_source": rules.label_source,
            "where": where,
        },
        "targets": {"task": task, "classes": list(classes) if classes is not None else None, "invalid": invalid_labels},
        "missing_images": missing_images,
        # file_path under a root of its own ("literal", or "decoded" by an http server: which paths
        # could leave it differ), or the export's own images (None)
        "images_root": own_root,
    }


def settings_digest(settings: dict[str, Any]) -> str:
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ItemListWriter:
    """An item list written into ``folder`` (made here) a slice of items at a time: each column's
    buffers appended to its file as they come; ``finish`` writes ``list.json``, last. ``target`` is
    ``"class"`` (classification), ``"classes"`` (multilabel) or None (no target column)."""

    def __init__(self, folder: Path, target: TargetKind) -> None:
        folder.mkdir(parents=True)
        self.folder, self.target, self.count = folder, target, 0
        self._ends = {_PATH_DATA: 0, _TARGET_VALUES: 0}  # bytes, values: what the next offsets start at
        names = (_ROWS, _PATH_OFFSETS, _PATH_DATA, *_TARGET_FILES[target])
        with contextlib.ExitStack() as opened:  # all of them open, or none
            self._files: dict[str, BinaryIO] = {n: opened.enter_context(open(folder / n, "wb")) for n in names}
            self._closing = opened.pop_all()
        for name in (_PATH_OFFSETS, _TARGET_OFFSETS):
            if name in self._files:
                self._files[name].write(np.zeros(1, "<i8").tobytes())

    def __enter__(self) -> ItemListWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.close()

    def append(self, rows: np.ndarray, paths: pa.Array, targets: np.ndarray | pa.Array | None) -> None:
        """Add items: their rows in the index, image paths (no null) and targets (as ``ItemList``)."""
        assert len(paths) == len(rows) and paths.null_count == 0
        self._files[_ROWS].write(np.ascontiguousarray(rows, "<i8").data)
        data, bounds = text_bytes_or_empty(paths)  # read as they are: a cast to large strings copied every path
        self._append_bounds(_PATH_OFFSETS, _PATH_DATA, bounds, data.data)
        if self.target == "class":
            assert isinstance(targets, np.ndarray) and len(targets) == len(rows)
            self._files[_TARGET].write(np.ascontiguousarray(targets, "<i8").data)
        elif self.target == "classes":
            assert isinstance(targets, pa.Array) and len(targets) == len(rows)
            self._append_offsets(_TARGET_OFFSETS, _TARGET_VALUES, targets.cast(pa.large_list(pa.int64())))
        self.count += len(rows)

    def _append_offsets(self, offsets_file: str, data_file: str, array: pa.Array) -> None:
        """A large_list<int64>'s offsets and values (``_append_bounds``)."""
        offsets = np.frombuffer(array.buffers()[1], "<i8")[array.offset : array.offset + len(array) + 1]
        data = pc.list_flatten(array).to_numpy().astype("<i8", copy=False).data
        self._append_bounds(offsets_file, data_file, offsets - offsets[0], data)

    def _append_bounds(self, offsets_file: str, data_file: str, bounds: np.ndarray, data: memoryview) -> None:
        """Where each value ends in ``data`` (``bounds``, from 0: after the first, moved to follow what
        the data file holds), then the data."""
        self._files[offsets_file].write((bounds[1:] + self._ends[data_file]).astype("<i8").data)
        self._files[data_file].write(data)
        self._ends[data_file] += int(bounds[-1])

    def finish(
        self,
        *,
        classes: list[str],
        summary: CurationSummary,
        fingerprint: str,
        index_rows: int,
        renumber: np.ndarray | None = None,
    ) -> None:
        """Close the column files and write what says they are complete. ``renumber``: the class
        index of each number the targets were appended as, when they were not yet indices."""
        self._closing.close()
        if renumber is not None:
            _renumber(self.folder / (_TARGET if self.target == "class" else _TARGET_VALUES), renumber)
        facts = {
            "format": FORMAT,
            "count": self.count,
            "target": self.target,
            "path_bytes": self._ends[_PATH_DATA],
            "target_values": self._ends[_TARGET_VALUES],
            "classes": classes,
            "summary": {"total": summary.total, "kept": summary.kept, "removed_by": summary.removed_by},
            "fingerprint": fingerprint,
            "index_rows": index_rows,
        }
        (self.folder / FACTS_FILE).write_text(json.dumps(facts))


def _renumber(path: Path, numbering: np.ndarray) -> None:
    """Replace each int64 ``n`` in the file at ``path`` by ``numbering[n]``, in place, a chunk at a time."""
    with open(path, "r+b") as file:
        while chunk := file.read(_RENUMBER_BYTES):
            numbers = np.frombuffer(chunk, "<i8")
            assert numbers.min() >= 0  # a target is never written unless it has a number
            file.seek(-len(chunk), os.SEEK_CUR)
            file.write(numbering[numbers].astype("<i8", copy=False).data)


_RENUMBER_BYTES = 8 << 20


def publish_item_list(built: Path, folder: Path) -> None:
    """Put the list written in ``built`` at ``folder``, in place of any there (a damaged one: a
    process that maps its files keeps them until it lets them go)."""
    if folder.exists():
        stale = beside(folder, "stale")
        os.replace(folder, stale)
        shutil.rmtree(stale, ignore_errors=True)  # only a stale copy's disk space is at stake
    os.replace(built, folder)


def read_item_list(folder: str | os.PathLike, *, index_rows: int) -> ItemList | None:
    """The list in ``folder``, memory-mapped; None when there is none to use: missing, unreadable,
    inconsistent (files of other lengths than ``list.json`` says), or made from an index of
    another length."""
    try:
        return map_item_list(Path(folder), index_rows=index_rows)
    except (OSError, ValueError, KeyError, TypeError, pa.ArrowException):
        return None


def map_item_list(folder: Path, *, index_rows: int) -> ItemList:
    """``read_item_list``, raising ``ValueError`` (or the ``OSError``) where that returns None."""
    with open(folder / FACTS_FILE, "rb") as stream:
        facts, stat = json.loads(stream.read()), os.fstat(stream.fileno())
    if facts.get("format") != FORMAT or facts.get("index_rows") != index_rows:
        raise ValueError(f"{folder} is a list of another format or index")
    count = facts["count"]
    if not all(isinstance(facts[key], int) and facts[key] >= 0 for key in ("count", "path_bytes", "target_values")):
        raise ValueError(f"{folder} gives no count of its items, path bytes or target values")
    rows = np.frombuffer(_mapped(folder / _ROWS, count * 8), "<i8")
    if len(rows) and (rows[0] < 0 or rows[-1] >= index_rows):
        raise ValueError(f"{folder} holds rows outside the index")
    paths = _with_offsets(
        pa.large_string(), folder / _PATH_OFFSETS, count, _mapped(folder / _PATH_DATA, facts["path_bytes"])
    )
    targets: np.ndarray | pa.Array | None = None
    if facts["target"] == "class":
        targets = np.frombuffer(_mapped(folder / _TARGET, count * 8), "<i8")
    elif facts["target"] == "classes":
        values = _mapped(folder / _TARGET_VALUES, facts["target_values"] * 8)
        targets = _with_offsets(
            pa.large_list(pa.int64()),
            folder / _TARGET_OFFSETS,
            count,
            pa.Array.from_buffers(pa.int64(), facts["target_values"], [None, values]),
        )
    summary = facts["summary"]
    return ItemList(
        rows=rows,
        paths=paths,
        targets=targets,
        classes=list(facts["classes"]),
        summary=CurationSummary(summary["total"], summary["kept"], dict(summary["removed_by"])),
        fingerprint=facts["fingerprint"],
        index_rows=index_rows,
        folder=folder,
        facts_id=(stat.st_dev, stat.st_ino),
    )


def _mapped(path: Path, size: int) -> pa.Buffer:
    """The bytes of ``path``, mapped; ``ValueError`` unless there are ``size`` of them."""
    buffer = pa.memory_map(str(path), "r").read_buffer()
    if buffer.size != size:
        raise ValueError(f"{path} holds {buffer.size:,} bytes, not {size:,}")
    return buffer


def _with_offsets(kind: pa.DataType, offsets_path: Path, count: int, data: pa.Buffer | pa.Array) -> pa.Array:
    """A large_string (``data`` its bytes) or large_list (``data`` its values) of ``count`` items,
    whose offsets are mapped from ``offsets_path``: they must start at 0 and end at ``data``'s end."""
    offsets = _mapped(offsets_path, (count + 1) * 8)
    first, last = np.frombuffer(offsets, "<i8")[[0, -1]]
    if first != 0 or last != (data.size if isinstance(data, pa.Buffer) else len(data)):
        raise ValueError(f"{offsets_path} does not span its data")
    if isinstance(data, pa.Buffer):
        return pa.Array.from_buffers(kind, count, [None, offsets, data])
    return pa.Array.from_buffers(kind, count, [None, offsets], children=[data])


@dataclass(frozen=True)
class ItemFiles:
    """Where a list read from files lives: the export's index and the list's folder. This is what a
    dataset pickles as, for a spawned worker to map the same files."""

    index: Path
    folder: Path

    def open(self) -> tuple[pa.Table, ItemList]:
        """(the index, the list), memory-mapped; ``CacheMissError`` if either is gone (a cache
        pruned under a running job: the dataset must be opened again)."""
        rows = read_index(self.index)
        items = None if rows is None else read_item_list(self.folder / LIST_DIR, index_rows=len(rows))
        if rows is None or items is None:
            raise CacheMissError(
                f"The curated item list {self.folder} or the index {self.index} it was made from is gone "
                "or unreadable (was the cache pruned while this job ran?); open the dataset again."
            )
        return rows, items

    def write_subset(self, subset: Iterable[str]) -> None:
        """Keep the ``subset=`` ids beside the list, for a pickled dataset to restore its rules from."""
        MediaIds(subset).write(self.folder / SUBSET_FILE)

    def read_subset(self) -> MediaIds:
        """The ids ``write_subset`` kept, memory-mapped (they pickle as the file's path)."""
        try:
            return MediaIds.read(self.folder / SUBSET_FILE)
        except CacheMissError:
            raise CacheMissError(f"The subset= ids kept in {self.folder} are gone or unreadable.") from None
