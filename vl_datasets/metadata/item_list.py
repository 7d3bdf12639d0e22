"""The curated item list on disk: what a dataset needs per item, written once per curation, mapped
by every process that opens it.

One uncompressed Arrow IPC file, one record batch, so every column maps as one buffer:

    row       int64         the item's row in the export's index (its metadata, media id, boxes)
    path      large_string  its image, relative to the images' root
    target    int64         classification: the class index
              large_list<int64>  multilabel: the class indices

The schema metadata holds what the rest of the dataset needs without reading a column: the
classes, the curation summary, the fingerprint of the item list, and the index's row count (a
list is only used against the index it was made from). A list of 100M items is about 5 GB, mostly
paths, and opening it reads its footer: a process pays only for the pages it touches, and every
process on a node shares them in the page cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .._version import __version__
from ..atomic import replacing
from ..errors import CacheMissError
from .curation import CurationRules, CurationSummary
from .index import read_index
from .media_ids import MediaIds

FORMAT = 1  # of the file below: a new format is a new settings digest, so a new list
LIST_FILE, SUBSET_FILE = "items.arrow", "subset.arrow"
_META_KEY = b"vl_datasets.items"


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


def list_settings(
    rules: CurationRules, task: str | None, classes: Any, invalid_labels: str, missing_images: str, own_root: bool
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
        "images_root": own_root,  # file_path under a root of its own, or the export's own images
    }


def settings_digest(settings: dict[str, Any]) -> str:
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def write_item_list(items: ItemList, path: str | os.PathLike) -> None:
    """Write ``items`` to ``path`` atomically (temp file, rename)."""
    columns: dict[str, pa.Array] = {
        "row": pa.array(items.rows, pa.int64()),
        "path": pa.array(items.paths).cast(pa.large_string()),
    }
    if isinstance(items.targets, np.ndarray):
        columns["target"] = pa.array(items.targets, pa.int64())
    elif items.targets is not None:
        columns["target"] = items.targets.cast(pa.large_list(pa.int64()))
    facts = {
        "classes": items.classes,
        "summary": {"total": items.summary.total, "kept": items.summary.kept, "removed_by": items.summary.removed_by},
        "fingerprint": items.fingerprint,
        "index_rows": items.index_rows,
    }
    batch = pa.RecordBatch.from_pydict(columns).replace_schema_metadata({_META_KEY: json.dumps(facts).encode()})
    _write_ipc(Path(path), batch)


def read_item_list(path: str | os.PathLike, *, index_rows: int) -> ItemList | None:
    """The list at ``path``, memory-mapped; None when there is none to use: missing, unreadable, or
    made from an index of another length."""
    try:
        reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
        facts = json.loads((reader.schema.metadata or {})[_META_KEY])
        batch = reader.get_batch(0) if reader.num_record_batches == 1 else None
    except (OSError, pa.ArrowException, KeyError, ValueError):
        return None
    if batch is None or facts.get("index_rows") != index_rows:
        return None
    rows = batch.column("row").to_numpy(zero_copy_only=True)
    if len(rows) and (rows[0] < 0 or rows[-1] >= index_rows):
        return None
    target = batch.column("target") if "target" in batch.schema.names else None
    summary = facts["summary"]
    return ItemList(
        rows=rows,
        paths=batch.column("path"),
        targets=target.to_numpy(zero_copy_only=True)
        if target is not None and pa.types.is_integer(target.type)
        else target,
        classes=list(facts["classes"]),
        summary=CurationSummary(summary["total"], summary["kept"], dict(summary["removed_by"])),
        fingerprint=facts["fingerprint"],
        index_rows=index_rows,
    )


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
        items = None if rows is None else read_item_list(self.folder / LIST_FILE, index_rows=len(rows))
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


def _write_ipc(path: Path, data: pa.Table | pa.RecordBatch) -> None:
    """An Arrow IPC file at ``path``, written atomically (temp file, rename)."""
    with replacing(path) as tmp, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, data.schema) as writer:
        writer.write(data)
