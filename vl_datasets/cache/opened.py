"""Open a local export the user hands us, through the same publication as a downloaded one.

A ZIP is unpacked once into the cache, through the same checks as a downloaded export. An
extracted folder is read where it is: only its index goes into the cache. Nothing is ever written
into the user's folder (nor into the installed package, when the sample is opened in place).
Both kinds are keyed by the source's path; a ZIP or a metadata file that changed since makes a
new version.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..config import is_remote, resolve_cache_dir
from ..errors import ConfigurationError, ExportNotFoundError
from ..locks import hold_lock
from .archive import extract_archive
from .store import CacheStore, LocalExport

logger = logging.getLogger("vl_datasets")

OPEN_LOCK_TIMEOUT_S = 3600.0  # unpacking a large ZIP takes a while; waiters must outlast it


def open_export(path: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None) -> LocalExport:
    """The published cache entry of the local export at ``path`` (a ZIP file or an extracted folder)."""
    if is_remote(path):
        # Taken for a local path, s3://bucket/x.zip became <cwd>/s3:/bucket/x.zip, "not found".
        raise ConfigurationError(
            f"from_export opens a local ZIP or export folder; {os.fspath(path)!r} is a URL. Copy it to "
            "this machine first, or export the dataset by its id, with a shared cache_dir for a cluster."
        )
    source = Path(path).expanduser().resolve()
    if not source.exists():
        raise ExportNotFoundError(
            f"No export at {source}: expected a ZIP file or an extracted export folder.", path=str(source)
        )
    store = local_store(cache_dir)
    entry_dir = store.opened_dir(source)
    current = _current(store, entry_dir, source)
    if current is not None:
        return current
    store.make_entry_dir(entry_dir)
    with hold_lock(store.lock_path(entry_dir), timeout_s=OPEN_LOCK_TIMEOUT_S, what=f"opening {source}"):
        current = _current(store, entry_dir, source)  # another process may have published it meanwhile
        if current is not None:
            return current
        store.remove_leftovers(entry_dir)
        with store.staging(entry_dir) as staging:
            if source.is_dir():
                return store.publish(entry_dir, staging, opened_from=source)
            extract_archive(source, staging)
            return store.publish(entry_dir, staging, archive=source)


def local_store(cache_dir: str | os.PathLike[str] | None) -> CacheStore:
    """The local cache: the root itself, or this machine's mirror of a shared (fsspec) root."""
    root = resolve_cache_dir(cache_dir)
    return CacheStore.mirror_of(root) if is_remote(root) else CacheStore(root)


def _current(store: CacheStore, entry_dir: Path, source: Path) -> LocalExport | None:
    """The newest version, unless ``source`` is a folder whose metadata file changed since it was
    published (a ZIP that changed has another entry folder altogether)."""
    versions = store.versions(entry_dir)
    if not versions:
        return None
    entry = versions[-1]
    return None if source.is_dir() and store.source_changed(entry) else entry
