"""``fetch_export``: the one module that joins the API side to the cache.

A cached export is found without importing the API side at all; the client is built only when an
export has to be started. One process per cache key builds the entry under a file lock; the
others wait and then read what it published. A killed run leaves its export task id and its
partial download behind, and the next run resumes both instead of starting over.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from . import errors
from .cache.archive import extract_archive
from .cache.opened import local_store
from .cache.store import CacheStore, ExportKey, LocalExport
from .chunks import (
    DEFAULT_CHUNKS_IN_FLIGHT,
    DEFAULT_IMAGES_PER_EXPORT,
    build_chunked,
    build_chunked_metadata,
    is_too_large,
    limit_named_in,
    planned_chunk_size,
)
from .config import check_seconds, env_flag, is_remote, resolve_cache_dir, resolve_client_settings
from .locks import hold_lock
from .records import check_export_format
from .tasks import start_or_resume

if TYPE_CHECKING:
    from .api.client import Client
    from .cache.remote import RemoteCache

logger = logging.getLogger("vl_datasets")

DEFAULT_LOCK_TIMEOUT_S = 6 * 3600.0  # a multi-GB export can take hours; waiters must outlast it


def fetch_export(
    dataset_id: str,
    *,
    client: Client | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    export_format: str = "parquet",
    include_images: bool = True,
    media_ids: Iterable[str] | None = None,
    cluster_ids: Iterable[str] | None = None,
    refresh: bool = False,
    offline: bool | None = None,
    export_timeout_s: float | None = 3 * 3600.0,
    lock_timeout_s: float | None = DEFAULT_LOCK_TIMEOUT_S,
    version: str | None = None,
    max_images_per_export: int | None = None,
    chunks_in_flight: int = DEFAULT_CHUNKS_IN_FLIGHT,
) -> LocalExport:
    """Return a complete local copy of the export, starting one only when none is cached.

    ``cache_dir`` (else ``VL_DATASETS_CACHE``, else ``~/.cache/vl_datasets``) may be an fsspec
    URL such as ``s3://bucket/prefix``: entries are then shared through it and mirrored locally,
    and each call returns the newest version the shared root holds (one listing of the entry and a
    read of its manifests), mirrored when this machine's copy is older; offline, the mirror alone.
    ``offline=True`` (or ``VL_DATASETS_OFFLINE=1``) makes no network call at all; with no client
    and no ``VL_API_URL`` it takes the newest copy cached from any API host.
    ``refresh=True`` starts a new export and publishes it as a new version of the entry; the
    previous version stays on disk, for jobs still reading it, until ``vl-datasets cache prune``.
    A refresh resumes nothing recorded before it was asked for (a task, a download, chunks), and
    a chunked export's metadata-only entry is refreshed with it.
    ``version`` opens exactly that version of the entry (the one a loader state names), from the
    cache alone: ``VersionNotFoundError`` when it is not there.

    Images beyond what one export may carry come in chunks (see ``vl_datasets.chunks``): when the
    platform rejects the export as too large, or when ``max_images_per_export`` says so before
    asking, the metadata is exported alone and the images by selective exports of at most that
    many media ids, ``chunks_in_flight`` at a time, into one entry.
    """
    check_export_format(export_format)
    if media_ids is not None and cluster_ids is not None:
        raise errors.ConfigurationError("Give at most one of media_ids or cluster_ids.")
    if max_images_per_export is not None and max_images_per_export < 1:
        raise errors.ConfigurationError(f"max_images_per_export must be at least 1, got {max_images_per_export}.")
    check_seconds("export_timeout_s", export_timeout_s)  # before an export starts, not at its wait
    check_seconds("lock_timeout_s", lock_timeout_s)
    offline = env_flag("VL_DATASETS_OFFLINE") if offline is None else offline
    explicit_host = client is not None or bool(os.environ.get("VL_API_URL"))
    base_url = client.base_url if client is not None else resolve_client_settings().base_url
    key = ExportKey.build(base_url, dataset_id, export_format, include_images, media_ids, cluster_ids)
    store = local_store(cache_dir)
    if version is not None:
        return _exact_version(store, key, version, refresh=refresh)

    if offline and refresh:
        raise errors.ConfigurationError(
            "refresh=True starts a new export, which offline=True (or VL_DATASETS_OFFLINE=1) forbids."
        )
    root = resolve_cache_dir(cache_dir)
    # A shared root is asked for its newest version at every open: another node may have published
    # one since this node's mirror was made, and a job's nodes must read the same export.
    remote = _remote(root) if is_remote(root) and not offline else None
    if not refresh and remote is None and (entry := store.lookup(key)) is not None:
        return entry  # the common case: no lock, no network, no API import
    if offline:
        return _offline_lookup(store, key, explicit_host)
    job = _Fetch(
        client,
        store,
        remote,
        export_timeout_s,
        lock_timeout_s,
        max_images_per_export,
        chunks_in_flight,
        superseded=_cached_versions(store, remote, key) if refresh else None,
    )
    return job.entry(key)


class _Fetch:
    """One ``fetch_export`` call's settings, shared by the entries it may need (a chunked export
    needs the metadata-only entry too).

    ``superseded`` names the versions cached when a refresh was asked for (None: no refresh). It
    holds for every entry the call builds, the nested metadata-only one included: each must be a
    version other than those, so a refreshed chunked export is never cut from metadata older than
    the refresh. What was there is compared, not clocks: a version written while the clock ran
    ahead (stepped back since, another machine's) would read as made after the refresh."""

    def __init__(
        self,
        client: Client | None,
        store: CacheStore,
        remote: RemoteCache | None,
        export_timeout_s: float | None,
        lock_timeout_s: float | None,
        max_images_per_export: int | None,
        chunks_in_flight: int,
        *,
        superseded: frozenset[str] | None = None,
    ) -> None:
        self._client, self.store, self.remote, self.superseded = client, store, remote, superseded
        self.export_timeout_s, self.lock_timeout_s = export_timeout_s, lock_timeout_s
        self.max_images_per_export, self.chunks_in_flight = max_images_per_export, chunks_in_flight

    @property
    def client(self) -> Client:
        if self._client is None:
            from .api.client import Client  # the network stack loads only when an export must be made

            self._client = Client()
        return self._client

    def entry(self, key: ExportKey) -> LocalExport:
        """The entry of ``key``: cached, mirrored from the shared root, or built, under its lock."""
        store = self.store
        refresh = self.superseded is not None
        # A refresh listed the shared root as it was asked for; it looks again under the lock.
        shared = None if refresh else self._shared_newest(key)
        if (entry := self._current(key, shared)) is not None:
            return entry
        entry_dir = store.entry_dir(key)
        store.make_entry_dir(entry_dir)
        with hold_lock(store.lock_path(entry_dir), timeout_s=self.lock_timeout_s, what=f"export of {_describe(key)}"):
            shared = self._shared_newest(key)  # what another node published while we waited counts too
            if (entry := self._current(key, shared)) is not None:
                return entry  # another process published it (or refreshed it) while we waited
            # A killed build's task, download and chunks resume, but never into a refresh: they were
            # asked for before it, and chunks may be those of a version already published.
            store.remove_leftovers(entry_dir, keep_resumable=not refresh)
            if refresh:
                store.task_record(key).clear()
            if self.remote is not None and shared is not None and (entry := self.remote.mirror(key, store, shared)):
                return entry
            entry = self._build(key)
            if self.remote is not None:
                self.remote.upload(key, entry)
            return entry

    def _shared_newest(self, key: ExportKey) -> dict[str, Any] | None:
        """The manifest of the shared root's newest version of ``key`` if this call may return it
        (with a refresh, only one published since it was asked for); None without a shared root."""
        if self.remote is None:
            return None
        manifest = self.remote.read_manifest(key)
        if manifest is None or (self.superseded is not None and manifest["version"] in self.superseded):
            return None
        return manifest

    def _current(self, key: ExportKey, shared: dict[str, Any] | None) -> LocalExport | None:
        """The cached version of ``key`` this call may return: the ``shared`` root's newest once it
        is mirrored here; else any, or with a refresh, one published since it was asked for (by this
        call, or by another process meanwhile)."""
        if shared is not None:
            return self.store.lookup(key, version=shared["version"])
        entry = self.store.lookup(key)
        if entry is None or self.superseded is None:
            return entry
        return None if entry.version in self.superseded else entry

    def _build(self, key: ExportKey) -> LocalExport:
        limit = self.max_images_per_export
        if (planned := planned_chunk_size(self.store, key)) is not None:  # a killed run's chunks: finish them
            return self._build_in_chunks(key, planned)
        if key.include_images and self._over(key, limit):
            return self._build_chunked(key, limit or DEFAULT_IMAGES_PER_EXPORT)
        try:
            return _build_entry(self.client, self.store, key, self.export_timeout_s, self.lock_timeout_s)
        except errors.RequestTooLargeError as exc:
            # More ids than one request carries (a 413, from the server or a proxy before it, whose
            # limit is in bytes and unknown): halves, halved again while a chunk's request is refused.
            if key.media_ids is None:  # only a selection of ids makes a request body
                raise
            size = _half(key.media_ids)
            if key.include_images:
                size = min(size, limit or DEFAULT_IMAGES_PER_EXPORT)
            why = f"The request for the export of {_describe(key)} was refused as too large ({exc})"
        except errors.ExportFailedError as exc:
            if not is_too_large(exc):
                raise
            if not key.include_images and key.media_ids is None:
                raise _metadata_too_large(key, exc) from None
            self.store.task_record(key).clear()
            fallback = (limit or DEFAULT_IMAGES_PER_EXPORT) if key.include_images else _half(key.media_ids or ())
            size = limit_named_in(exc) or fallback
            why = f"Visual Layer rejected the export of {_describe(key)} as too large ({exc.result_message})"
        how = (
            f"its metadata, then its images in chunks of {size} (pass max_images_per_export / "
            "--max-images-per-export to start that way)"
            if key.include_images
            else f"it in chunks of {size} media ids"
        )
        logger.warning("%s; exporting %s", why, how)
        return self._build_in_chunks(key, size)

    def _build_in_chunks(self, key: ExportKey, size: int) -> LocalExport:
        """``key`` from exports of ``size`` media ids each: its images (the metadata from an export of
        its own), or, without images, its selection's metadata."""
        if key.include_images:
            return self._build_chunked(key, size)
        return self._build_chunked_metadata(key, size)

    def _over(self, key: ExportKey, limit: int | None) -> bool:
        """Whether the export is known to exceed ``limit`` before asking for it."""
        if limit is None:
            return False
        if key.media_ids is not None:
            return len(key.media_ids) > limit
        return (self.client.get_dataset(key.dataset_id).n_images or 0) > limit

    def _build_chunked_metadata(self, key: ExportKey, ids_per_export: int) -> LocalExport:
        return build_chunked_metadata(
            self.client,
            self.store,
            key,
            ids_per_export,
            in_flight=self.chunks_in_flight,
            export_timeout_s=self.export_timeout_s,
            lock_timeout_s=self.lock_timeout_s,
        )

    def _build_chunked(self, key: ExportKey, images_per_export: int) -> LocalExport:
        metadata = self.entry(replace(key, include_images=False))
        return build_chunked(
            self.client,
            self.store,
            key,
            metadata,
            images_per_export,
            in_flight=self.chunks_in_flight,
            export_timeout_s=self.export_timeout_s,
            lock_timeout_s=self.lock_timeout_s,
        )


def _cached_versions(store: CacheStore, remote: RemoteCache | None, key: ExportKey) -> frozenset[str]:
    """The versions cached now of ``key``'s entry and of the metadata-only entry a chunked export
    of it is cut from, here and on the shared root: those a refresh must not return. A node whose
    disk is new (or was wiped) holds none here, and its refresh must not take the shared ones."""
    keys = (key, replace(key, include_images=False))
    local = {v.version for k in keys for v in store.versions(store.entry_dir(k)) if v.version is not None}
    shared = {name for k in keys for name in remote.version_names(k)} if remote is not None else set()
    return frozenset(local | shared)


def _remote(root: str) -> RemoteCache:
    from .cache.remote import RemoteCache  # fsspec's protocols load only for a shared root

    return RemoteCache(root)


def _offline_lookup(store: CacheStore, key: ExportKey, explicit_host: bool) -> LocalExport:
    """Offline: the entry of this host, or with no host asked for, the newest from any host."""
    others = store.lookup_any_host(key)
    hosts = sorted({e.key.api_host for e in others if e.key is not None})
    if others and not explicit_host:
        newest = others[-1]
        if len(hosts) > 1:
            logger.warning(
                "Offline: dataset %r is cached from several API hosts (%s); using the newest (%s). "
                "Set VL_API_URL to choose.",
                key.dataset_id,
                ", ".join(hosts),
                newest.version,
            )
        return newest
    hint = (
        f" It is cached from {', '.join(hosts)}: set VL_API_URL to that host, or leave it unset."
        if hosts
        else " Run once with network access (offline=False, VL_DATASETS_OFFLINE unset) to fill it."
    )
    raise errors.CacheMissError(
        f"Offline and no complete cache entry for {_describe(key)} in {store.root} (key {key.digest}).{hint}",
        key=key.digest,
    )


def _exact_version(store: CacheStore, key: ExportKey, version: str, *, refresh: bool) -> LocalExport:
    """Exactly ``version`` of the entry, from the cache alone: a pinned version is never exported again."""
    if refresh:
        raise errors.ConfigurationError(
            "Give refresh=True or version=, not both: a pinned version is never exported again."
        )
    entry = store.lookup(key, version=version)
    if entry is not None:
        return entry
    held = [v.version or "?" for v in store.versions(store.entry_dir(key)) if v.key == key]
    raise errors.VersionNotFoundError(
        f"Version {version!r} of {_describe(key)} is not in the cache at {store.root}: it was pruned "
        "(`vl-datasets cache prune` keeps only the newest version) or fetched on another machine. "
        f"Versions cached: {', '.join(held) or 'none'}.",
        key=key.digest,
        version=version,
    )


def _half(ids: tuple[str, ...]) -> int:
    """Half of a selection's ids, rounded up: two chunks, not three for an odd count."""
    return (len(ids) + 1) // 2


def _metadata_too_large(key: ExportKey, exc: errors.ExportFailedError) -> errors.ExportFailedError:
    """The error for a metadata-only export of a whole dataset (or of clusters) rejected as too
    large. A selection of media ids is exported in chunks of them, but no documented call lists a
    dataset's media ids without an export (contract §5: third parties split such exports by
    selections of their own)."""
    return errors.ExportFailedError(
        f"Visual Layer rejected the metadata-only export of {_describe(key)} as too large "
        f"({exc.result_message}). Its metadata cannot be split without its media ids: export it in "
        "parts with media_ids= (a selection too large for one export is exported in chunks of its ids) "
        "or cluster_ids=, or ask Visual Layer to raise the limit on entities per export.",
        task_id=exc.task_id,
        dataset_id=exc.dataset_id,
        status=exc.status,
        result_message=exc.result_message,
    )


def _describe(key: ExportKey) -> str:
    selection = ""
    if key.media_ids is not None:
        selection = f", {len(key.media_ids)} media ids"
    elif key.cluster_ids is not None:
        selection = f", {len(key.cluster_ids)} clusters"
    images = "with images" if key.include_images else "without images"
    return f"dataset {key.dataset_id!r} on {key.api_host} ({key.export_format}, {images}{selection})"


def _build_entry(
    client: Client,
    store: CacheStore,
    key: ExportKey,
    export_timeout_s: float | None,
    lock_timeout_s: float | None,
) -> LocalExport:
    record = store.task_record(key)
    task = start_or_resume(client, record, key)
    task = client.wait_for_export(key.dataset_id, task.id, timeout_s=export_timeout_s)
    entry_dir = store.entry_dir(key)
    zip_path = store.download_path(entry_dir, task.id)
    if zip_path.is_file():  # complete (a download is renamed into place whole): a run killed unpacking it
        logger.info("Unpacking the download of export %s that an earlier run left", task.id)
    else:
        client.download_export(task, zip_path, lock_timeout_s=lock_timeout_s)
    try:
        with store.staging(entry_dir) as staging:
            extract_archive(zip_path, staging)
            entry = store.publish(entry_dir, staging, key=key, task=task)
    except (errors.CorruptArchiveError, errors.UnsafeArchiveError):
        # Neither the bad download nor its task may be resumed: the next run starts afresh.
        zip_path.unlink(missing_ok=True)
        record.clear()
        raise
    record.clear()
    store.remove_leftovers(entry_dir)  # the download, now unpacked
    if task.entities_count is not None and task.entities_count != entry.row_count:
        # Not a refusal: the contract does not say what entities_count counts (a dataset's objects
        # too, the ids asked for?), and refusing on it would refuse a good export on every run.
        logger.warning(
            "Export %s of dataset %r announced %d entities; its metadata holds %d media items.",
            task.id, key.dataset_id, task.entities_count, entry.row_count,
        )  # fmt: skip
    logger.info("Cached export %s of dataset %r at %s", task.id, key.dataset_id, entry.path)
    return entry
