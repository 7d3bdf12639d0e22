"""A cache root on object storage (any fsspec URL), shared by every machine of a cluster.

Readers need files on a local disk, so each machine keeps a local mirror; the shared root saves
the export and the download. An entry is uploaded file by file, and its manifest goes up last:
a reader that finds a manifest finds every file it names.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import fsspec

from ..records import ExportTask
from .store import CacheStore, ExportKey, LocalExport

logger = logging.getLogger("vl_datasets")


class RemoteCache:
    """The shared root ``url`` (laid out like a local cache root) and this machine's mirror of it."""

    def __init__(self, url: str, *, local_root: str | os.PathLike[str] | None = None) -> None:
        self.url = url
        self.fs, prefix = fsspec.core.url_to_fs(url)
        self.prefix = prefix.rstrip("/")
        self.local_root = Path(local_root) if local_root is not None else CacheStore.mirror_of(url).root

    def _entry_dir(self, key: ExportKey) -> str:
        return f"{self.prefix}/{CacheStore.entry_name(key)}"

    def read_manifest(self, key: ExportKey) -> dict[str, Any] | None:
        """The manifest of the shared entry's newest complete version for ``key``, or None."""
        newest: dict[str, Any] | None = None
        for path in self.fs.glob(f"{self._entry_dir(key)}/{CacheStore.manifest_name('*')}"):
            try:
                manifest = json.loads(self.fs.cat_file(path))
            except (FileNotFoundError, ValueError, RecursionError):  # nested past what json.loads takes
                continue
            if not isinstance(manifest, dict):
                continue
            if manifest.get("key") == key.as_json() and (
                newest is None or manifest["created_at"] > newest["created_at"]
            ):
                newest = manifest
        return newest

    def mirror(self, key: ExportKey, store: CacheStore) -> LocalExport | None:
        """Copy the shared entry for ``key`` into the local store as a new version; None when there is none."""
        manifest = self.read_manifest(key)
        if manifest is None:
            return None
        remote_version = f"{self._entry_dir(key)}/{manifest['version']}"
        entry_dir = store.entry_dir(key)
        with store.staging(entry_dir) as staging:
            remote_files = [p for p in self.fs.find(remote_version) if not p.endswith("/")]
            local_files = [str(staging / os.path.relpath(p, remote_version)) for p in remote_files]
            for path in local_files:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.fs.get(remote_files, local_files)
            metadata = staging / manifest["metadata_file"]
            if not metadata.is_file() or metadata.stat().st_size != manifest["metadata_bytes"]:
                logger.warning("Shared cache entry %s is incomplete; ignoring it", remote_version)
                return None
            task = ExportTask.from_json(manifest["task"], dataset_id=key.dataset_id) if manifest.get("task") else None
            logger.info("Mirrored shared export %s from %s", manifest["version"], self.url)
            return store.publish(
                entry_dir, staging, key=key, task=task, expected_rows=manifest["row_count"], version=manifest["version"]
            )

    def upload(self, key: ExportKey, entry: LocalExport) -> None:
        """Publish a local version to the shared root: every file first, the manifest last."""
        assert entry.version is not None
        manifest_name = CacheStore.manifest_name(entry.version)
        manifest = CacheStore.manifest_of(entry).read_bytes()
        remote_version = f"{self._entry_dir(key)}/{entry.version}"
        local_files = [p for p in entry.path.rglob("*") if p.is_file()]
        remote_files = [f"{remote_version}/{p.relative_to(entry.path).as_posix()}" for p in local_files]
        self.fs.put([str(p) for p in local_files], remote_files)
        self.fs.pipe_file(f"{self._entry_dir(key)}/{manifest_name}", manifest)
        logger.info("Shared export %s at %s", entry.version, self.url)
