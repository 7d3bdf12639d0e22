"""The curated item list in the cache: built once per curation, then mapped by every process.

A dataset's items (which rows of the export, their image paths, their targets) are written into
the cache entry beside the index, as a derived store of kind ``items`` keyed by everything that
decides them (``item_list.list_settings``). The first open curates, writing the list a slice
at a time into a folder of its own that is moved into place once whole; every later open,
on any rank, and every spawned DataLoader worker maps the file: no curation, no copy, and a
pickled dataset is the files' paths. Ranks opening at once wait on a lock for the one that builds.

A cache it cannot write to (read-only, full) costs each open a curation into a temporary folder
(mapped, then removed), with a warning; the items are the same either way.
"""

from __future__ import annotations

import functools
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from ..atomic import beside
from ..cache.store import LocalExport, derived_dir, write_json_atomic
from ..errors import VLDatasetsError
from ..locks import hold_lock
from ..metadata.curated import CuratedItems, MissingImages, TargetOptions
from ..metadata.curation import CurationRules
from ..metadata.item_codes import with_items
from ..metadata.item_list import LIST_DIR, ItemFiles, list_settings, publish_item_list, read_item_list, settings_digest
from ..metadata.row_batches import ReleasingMap
from .sources import RootReading, source_paths

logger = logging.getLogger("vl_datasets")

KIND = "items"  # the kind of derived store this is, to the cache
# Who the store is (written first) and that it is complete (last): the two files the cache's scan reads.
STORE_FILE, MANIFEST_FILE, LOCK_FILE = "store.json", "manifest.json", "build.lock"
BUILD_LOCK_TIMEOUT_S = 3600.0  # curating 100M items takes minutes: the other ranks must outlast it


def open_items(
    entry: LocalExport,
    index: pa.Table,
    rules: CurationRules,
    targets: TargetOptions,
    *,
    missing_images: MissingImages,
    own_root: RootReading | None,
) -> CuratedItems:
    """The curated items of ``entry`` (whose index, memory-mapped, is ``index``): the list in the
    cache when there is one for these settings, else curated now and written there."""
    assert entry.index_path is not None
    settings = list_settings(
        rules, targets.task, targets.classes, targets.invalid_labels, missing_images, own_root=own_root
    )
    files = ItemFiles(entry.index_path, derived_dir(entry, KIND, settings_digest(settings)))

    def curated(folder: Path | None) -> CuratedItems:
        paths = None if own_root is None else functools.partial(source_paths, reading=own_root)
        mapped = _releasing(files.index, index)  # held to the end of the curation: its pages go as they are read
        return CuratedItems(
            with_items(index, files.index) if mapped is None else mapped.table,
            rules,
            targets,
            missing_images=missing_images,
            where=str(entry.path),
            paths_from_file_path=paths,
            folder=folder,
            index_path=files.index,
        )

    found = _opened(files, index, rules, targets)
    if found is not None:
        return found
    try:
        files.folder.mkdir(parents=True, exist_ok=True)
        with hold_lock(files.folder / LOCK_FILE, timeout_s=BUILD_LOCK_TIMEOUT_S, what=f"curating {entry.path}"):
            found = _opened(files, index, rules, targets)  # another rank may have built it meanwhile
            if found is not None:
                return found
            identity = {"version": entry.version, "settings": settings, "count": {"what": KIND}}
            items = _built(files, curated, identity)
    except OSError as exc:
        if isinstance(exc, VLDatasetsError):  # the export's fault (an image missing) or a lock timeout
            raise
        logger.warning(
            "Cannot keep the curated item list in %s (%s): curating into a temporary folder.", files.folder, exc
        )
        return curated(None)
    # The built copy is dropped for the map: this process then shares its pages with every other.
    return _opened(files, index, rules, targets) or items


def _built(files: ItemFiles, curated: Callable[[Path], CuratedItems], identity: dict) -> CuratedItems:
    """The items curated into a folder where no reader looks, moved into place with the rest of
    the store (``_write``); what a failed build left is removed."""
    building = beside(files.folder / LIST_DIR)
    try:
        items = curated(building)
        _write(files, items, building, identity)
        return items
    finally:
        shutil.rmtree(building, ignore_errors=True)


def _releasing(path: Path, index: pa.Table) -> ReleasingMap | None:
    """The index mapped again, by a map whose pages the curation hands back as it reads them
    (``row_batches.ReleasingMap``): a first open's resident memory stays bounded at any size.
    None when the file does not map so, or is no longer the one ``index`` was read from."""
    try:
        mapped = ReleasingMap(path)
    except (OSError, ValueError, pa.ArrowException):
        return None
    same = mapped.index.schema.equals(index.schema, check_metadata=True) and len(mapped.index) == len(index)
    return mapped if same else None


def _opened(files: ItemFiles, index: pa.Table, rules: CurationRules, targets: TargetOptions) -> CuratedItems | None:
    if not (files.folder / MANIFEST_FILE).is_file():
        return None
    items = read_item_list(files.folder / LIST_DIR, index_rows=len(index))
    return None if items is None else CuratedItems.from_list(index, items, rules, targets, files=files)


def _write(files: ItemFiles, items: CuratedItems, built: Path, identity: dict) -> None:
    """Who the store is, the subset ids the list was chosen from, the list ``built`` moved into
    place, then the manifest that says it is complete: all once the curation has succeeded."""
    write_json_atomic(files.folder / STORE_FILE, identity)
    if items.rules.subset is not None:
        files.write_subset(items.rules.subset)
    publish_item_list(built, files.folder / LIST_DIR)
    write_json_atomic(files.folder / MANIFEST_FILE, {KIND: len(items), "created_at": time.time()})
