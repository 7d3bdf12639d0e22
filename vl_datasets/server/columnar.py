"""The columnar form of a dataset's metadata.json: built once by streaming it, read by record batches.

A folder of Arrow IPC files (LZ4) and ``summary.json``, written last as the commit marker:

    run-000.arrow ...   the rows in file order: the scalar fields of the contract (§6), typed as
                        pyarrow infers them from the values; ``metadata_items``, each item's list as
                        JSON text; ``_absent``, a bitmask of the scalar fields the item lacks
    repeated.arrow      the lower-cased image base names that more than one item shares
    summary.json        counts and ``info`` for the dataset object, which fields exist, the runs

A new run starts where a batch's inferred types differ from the previous one (a field null in the
first batches, hand-made data); readers cast every batch to the runs' unified schema.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from . import image_names
from .metadata_stream import iter_media_items, read_info

SCALAR_FIELDS = (
    "media_id",
    "media_type",
    "file_name",
    "file_path",
    "file_size",
    "height",
    "width",
    "uniqueness_score",
    "url",
    "cluster_id",
)
ABSENT = "_absent"
METADATA_ITEMS = "metadata_items"
SUMMARY = "summary.json"
REPEATED = "repeated.arrow"
FORMAT_VERSION = 1
BATCH_ROWS = 65_536
_WRITE_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")
_ALL_FIELDS = frozenset(SCALAR_FIELDS)


@dataclass(frozen=True)
class Summary:
    """What the dataset object and the exports need without reading the rows."""

    n_items: int
    n_images: int
    n_videos: int
    n_objects: int
    info: dict[str, Any]
    fields: list[str]
    """The scalar fields that some item has, in the contract's order."""
    runs: list[str]
    field_errors: dict[str, str]
    """Fields whose values take no single Arrow type (hand-made data): a Parquet export of them fails."""
    media_ids_unique: bool
    name_collision: str | None
    """Why image_filename cannot be given over the whole dataset, if it cannot."""

    @classmethod
    def load(cls, folder: Path) -> Summary:
        payload = json.loads((folder / SUMMARY).read_text(encoding="utf-8"))
        payload.pop("format_version", None)
        return cls(**payload)


class _Counts:
    """The dataset object's counts, gathered item by item as the platform reports them."""

    def __init__(self) -> None:
        self.n_images = self.n_objects = 0
        self.videos: set[str] = set()

    def add(self, item: dict[str, Any], entries: list[Any]) -> None:
        if item.get("media_type", "image") == "image":
            self.n_images += 1
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            kind = entry.get("type")
            if kind == "object_label":
                self.n_objects += 1
            elif kind == "video_info":
                # Real exports name a frame's video in video_name; the docs also show video_id.
                props = entry.get("properties") or {}
                name = props.get("video_name") or props.get("video_id")
                if name:
                    self.videos.add(str(name))


class _RunWriter:
    """Appends batches to the current run, starting a new run file when the schema changes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.runs: list[str] = []
        self._writer: pa.ipc.RecordBatchFileWriter | None = None
        self._schema: pa.Schema | None = None

    def write(self, batch: pa.RecordBatch) -> None:
        if self._writer is None or not batch.schema.equals(self._schema):
            self.close()
            self._schema = batch.schema
            name = f"run-{len(self.runs):03d}.arrow"
            self.runs.append(name)
            self._writer = pa.ipc.new_file(str(self.folder / name), batch.schema, options=_WRITE_OPTIONS)
        self._writer.write_batch(batch)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _column(name: str, values: list[Any], errors: dict[str, str]) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        errors.setdefault(name, f"{name}: {exc}")
        return pa.nulls(len(values))


def _absent_mask(item: dict[str, Any]) -> int:
    return sum(1 << bit for bit, name in enumerate(SCALAR_FIELDS) if name not in item)


@dataclass
class _Gathered:
    """What the build learns from the rows as it writes them."""

    n_items: int = 0
    counts: _Counts = field(default_factory=_Counts)
    present: set[str] = field(default_factory=set)
    errors: dict[str, str] = field(default_factory=dict)


def _batch(items: list[dict[str, Any]], gathered: _Gathered) -> pa.RecordBatch:
    # One comprehension per column: the per-item Python work is what bounds the build's speed.
    arrays = {name: _column(name, [item.get(name) for item in items], gathered.errors) for name in SCALAR_FIELDS}
    absent = [0 if item.keys() >= _ALL_FIELDS else _absent_mask(item) for item in items]
    entries = [item.get(METADATA_ITEMS) or [] for item in items]
    for item, listed in zip(items, entries):
        gathered.counts.add(item, listed if isinstance(listed, list) else [])
    for bit, name in enumerate(SCALAR_FIELDS):
        if any(not mask & (1 << bit) for mask in absent):
            gathered.present.add(name)
    gathered.n_items += len(items)
    arrays[METADATA_ITEMS] = pa.array([json.dumps(listed) for listed in entries], pa.string())
    arrays[ABSENT] = pa.array(absent, pa.uint16())
    return pa.RecordBatch.from_pydict(arrays)


def _write_runs(metadata: Path, runs: _RunWriter, report: Callable[[int], None] | None) -> _Gathered:
    gathered, pending = _Gathered(), []
    try:
        for item in iter_media_items(metadata, on_bytes=report):
            pending.append(item)
            if len(pending) == BATCH_ROWS:
                runs.write(_batch(pending, gathered))
                pending = []
        if pending or not runs.runs:  # an empty dataset still has a (typeless) run
            runs.write(_batch(pending, gathered))
    finally:
        runs.close()
    return gathered


def build(metadata: Path, folder: Path, *, on_progress: Callable[[float], None] | None = None) -> Summary:
    """Write the columnar form of ``metadata`` into the empty ``folder``; ``on_progress`` gets 0-1."""
    total = max(metadata.stat().st_size, 1)
    report = None if on_progress is None else (lambda n: on_progress(min(n / total, 1.0)))
    info = read_info(metadata)
    runs = _RunWriter(folder)
    gathered = _write_runs(metadata, runs, report)
    columns = Columns(folder, runs.runs)
    gathered.errors.update(columns.unify_errors())
    unique, collision = image_names.plan_whole(columns, folder / REPEATED)
    summary = {
        "format_version": FORMAT_VERSION,
        "n_items": gathered.n_items,
        "n_images": gathered.counts.n_images,
        "n_videos": len(gathered.counts.videos),
        "n_objects": gathered.counts.n_objects,
        "info": info,
        "fields": [name for name in SCALAR_FIELDS if name in gathered.present],
        "runs": runs.runs,
        "field_errors": gathered.errors,
        "media_ids_unique": unique,
        "name_collision": collision,
    }
    _write_last(folder / SUMMARY, json.dumps(summary))
    return Summary.load(folder)


def _write_last(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


class Columns:
    """The rows of a columnar form, read batch by batch (one batch in memory at a time)."""

    def __init__(self, folder: Path, runs: list[str]) -> None:
        self.folder, self.runs = folder, runs
        self._schema: pa.Schema | None = None

    def unify_errors(self) -> dict[str, str]:
        """Fields whose types differ across runs with no common type (none in real exports)."""
        try:
            self._schema = self.schema()
            return {}
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass
        errors = {}
        for name in SCALAR_FIELDS:
            try:
                pa.unify_schemas([s.select([name]) for s in self._run_schemas()], promote_options="permissive")
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                errors[name] = f"{name}: {exc}"
        return errors

    def _run_schemas(self) -> list[pa.Schema]:
        schemas = []
        for run in self.runs:
            with pa.OSFile(str(self.folder / run)) as source:
                schemas.append(pa.ipc.open_file(source).schema)
        return schemas

    def schema(self) -> pa.Schema:
        """The schema every batch is read as."""
        if self._schema is None:
            self._schema = pa.unify_schemas(self._run_schemas(), promote_options="permissive")
        return self._schema

    def batches(self, names: list[str]) -> Iterator[pa.RecordBatch]:
        """The rows in file order, only the columns ``names``, cast to their unified types."""
        try:
            target = self.schema()
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            target = None
        for run in self.runs:
            with pa.OSFile(str(self.folder / run)) as source:
                reader = pa.ipc.open_file(source)
                for i in range(reader.num_record_batches):
                    batch = reader.get_batch(i).select(names)
                    if target is not None:
                        batch = batch.cast(pa.schema([target.field(name) for name in names]))
                    yield batch
