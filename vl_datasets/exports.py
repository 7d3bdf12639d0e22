"""``fetch_export``: start an export only when no usable copy exists, and share it safely.

One process per cache key builds the entry under a file lock; the others wait and then read what
it published. A killed run leaves its export task id and its partial download behind, and the
next run resumes both instead of starting over.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from datetime import datetime, timezone
from collections.abc import Iterable
from pathlib import Path

import pyarrow.parquet as pq

from . import errors
from .cache.archive import extract_archive
from .cache.store import CacheStore, ExportKey, LocalExport
from .api.client import EXPORT_FORMATS, Client
from .config import env_flag, resolve_cache_dir
from .locks import hold_lock
from .api.records import ExportTask
from .cache.remote import RemoteCache

logger = logging.getLogger("vl_datasets")

DEFAULT_LOCK_TIMEOUT_S = 6 * 3600.0  # a multi-GB export can take hours; waiters must outlast it


def fetch_export(
    dataset_id: str,
    *,
    client: Client | None = None,
    cache_dir: str | os.PathLike | None = None,
    export_format: str = "parquet",
    include_images: bool = True,
    media_ids: Iterable[str] | None = None,
    cluster_ids: Iterable[str] | None = None,
    refresh: bool = False,
    offline: bool | None = None,
    export_timeout_s: float | None = 3 * 3600.0,
    lock_timeout_s: float | None = DEFAULT_LOCK_TIMEOUT_S,
) -> LocalExport:
    """Return a complete local copy of the export, starting one only when none is cached.

    ``cache_dir`` (else ``VL_DATASETS_CACHE``, else ``~/.cache/vl_datasets``) may be an fsspec
    URL such as ``s3://bucket/prefix``: entries are then shared through it and mirrored locally.
    ``offline=True`` (or ``VL_DATASETS_OFFLINE=1``) makes no network call at all.
    ``refresh=True`` starts a new export and replaces the entry once the new one is complete.
    """
    if export_format not in EXPORT_FORMATS:
        raise errors.ConfigurationError(f"export_format must be one of {EXPORT_FORMATS}, got {export_format!r}.")
    if media_ids is not None and cluster_ids is not None:
        raise errors.ConfigurationError("Give at most one of media_ids or cluster_ids.")
    offline = env_flag("VL_DATASETS_OFFLINE") if offline is None else offline
    client = client if client is not None else Client()
    key = ExportKey.build(client.base_url, dataset_id, export_format, include_images, media_ids, cluster_ids)
    root = resolve_cache_dir(cache_dir)
    remote = RemoteCache(root) if "://" in root else None
    store = CacheStore(remote.local_root if remote else root)

    if not refresh and (entry := store.lookup(key)) is not None:
        return entry  # the common case: no lock, no network
    if offline:
        raise errors.CacheMissError(
            f"Offline and no complete cache entry for {_describe(key)} in {store.root} (key {key.digest}). "
            "Run once with network access (offline=False, VL_DATASETS_OFFLINE unset) to fill it.",
            key=key.digest,
        )
    asked_at = datetime.now(timezone.utc)
    store.entry_dir(key).mkdir(parents=True, exist_ok=True)
    with hold_lock(store.lock_path(key), timeout_s=lock_timeout_s, what=f"export of {_describe(key)}"):
        entry = store.lookup(key)
        if entry is not None and (not refresh or entry.created_at >= asked_at):
            return entry  # another process published it (or refreshed it) while we waited
        if remote is not None and not refresh and (entry := remote.mirror(key, store)) is not None:
            return entry
        entry = _build_entry(client, store, key, export_timeout_s, lock_timeout_s)
        if remote is not None:
            remote.upload(key, entry, store)
        return entry


def _describe(key: ExportKey) -> str:
    selection = ""
    if key.media_ids is not None:
        selection = f", {len(key.media_ids)} media ids"
    elif key.cluster_ids is not None:
        selection = f", {len(key.cluster_ids)} clusters"
    images = "with images" if key.include_images else "without images"
    return f"dataset {key.dataset_id!r} on {key.api_host} ({key.export_format}, {images}{selection})"


def _build_entry(client: Client, store: CacheStore, key: ExportKey, export_timeout_s, lock_timeout_s) -> LocalExport:
    task = _start_or_resume(client, store, key)
    task = client.wait_for_export(key.dataset_id, task.id, timeout_s=export_timeout_s)
    zip_path = store.download_path(key)
    client.download_export(task, zip_path, lock_timeout_s=lock_timeout_s)
    staging = store.new_staging_dir(key)
    try:
        files = extract_archive(zip_path, staging)
        metadata_file, rows = _verify_metadata(staging, files, task, zip_path)
        entry = store.publish(key, staging, task=task, metadata_file=metadata_file, row_count=rows, files=files)
    except errors.CorruptArchiveError:
        # Neither the bad download nor its task may be resumed: the next run starts afresh.
        zip_path.unlink(missing_ok=True)
        store.remember_task(key, None)
        raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    store.remember_task(key, None)
    store.clean_work_files(key)
    logger.info("Cached export %s of dataset %r at %s", task.id, key.dataset_id, entry.path)
    return entry


def _start_or_resume(client: Client, store: CacheStore, key: ExportKey) -> ExportTask:
    """Reuse the export a killed run started, if the server still has it; else start one."""
    task_id = store.pending_task(key)
    if task_id is not None:
        try:
            task = client.get_export_status(key.dataset_id, task_id)
            if task.status not in ("FAILED", "REJECTED", "CANCELED"):
                logger.info("Resuming export %s of dataset %r", task_id, key.dataset_id)
                return task
        except errors.ExportTaskNotFoundError:
            pass  # the server forgot the task: start another
        except errors.APIStatusError as exc:
            if exc.status_code not in (410, 422):
                raise
    if key.media_ids is not None or key.cluster_ids is not None:
        task = client.start_selective_export(key.dataset_id, media_ids=key.media_ids, cluster_ids=key.cluster_ids,
                                             export_format=key.export_format, include_images=key.include_images)
    else:
        task = client.start_export(key.dataset_id, export_format=key.export_format,
                                   include_images=key.include_images)
    store.remember_task(key, task.id)
    return task


def _verify_metadata(staging: Path, files: dict[str, int], task: ExportTask, zip_path: Path) -> tuple[str, int]:
    """The metadata file must be present and readable, with the row count the task announced."""
    name = next((n for n in ("metadata.parquet", "metadata.json") if n in files), None)
    if name is None:
        raise errors.CorruptArchiveError(f"{zip_path} holds no metadata.parquet or metadata.json.", path=str(zip_path))
    try:
        if name.endswith(".parquet"):
            rows = pq.read_metadata(staging / name).num_rows
        else:
            with open(staging / name, encoding="utf-8") as handle:
                payload = json.load(handle)
            items = payload.get("media_items") if isinstance(payload, dict) else payload
            if not isinstance(items, list):
                raise ValueError("no media_items list")
            rows = len(items)
    except (OSError, ValueError) as exc:
        raise errors.CorruptArchiveError(f"{name} in {zip_path} cannot be read: {exc}", path=str(zip_path)) from None
    if task.entities_count is not None and rows != task.entities_count:
        raise errors.CorruptArchiveError(
            f"{name} in {zip_path} has {rows} rows but export {task.id} announced {task.entities_count}.",
            path=str(zip_path),
        )
    return name, rows
