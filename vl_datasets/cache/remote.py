"""A cache root on object storage (any fsspec URL), shared by every machine of a cluster.

Readers need files on a local disk, so each machine keeps a local mirror; the shared root saves
the export and the download. An entry is uploaded file by file, and its manifest goes up last:
a reader that finds a manifest finds every file it names.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import fsspec

from .store import MANIFEST, CacheStore, ExportKey, LocalExport, _safe_name
from ..config import resolve_cache_dir
from ..api.records import ExportTask

logger = logging.getLogger("vl_datasets")


class RemoteCache:
    """The shared root ``url`` and this machine's mirror of it."""

    def __init__(self, url: str, *, local_root: str | os.PathLike | None = None) -> None:
        self.url = url
        self.fs, self.prefix = fsspec.core.url_to_fs(url)
        self.prefix = self.prefix.rstrip("/")
        # The mirror lives in the user's local cache folder, whatever VL_DATASETS_CACHE points to.
        mirror_id = hashlib.sha256(url.encode()).hexdigest()[:16]
        default_local = Path(resolve_cache_dir(None, env={k: v for k, v in os.environ.items()
                                                         if k != "VL_DATASETS_CACHE"})) / "mirrors" / mirror_id
        self.local_root = Path(local_root) if local_root is not None else default_local

    def _entry_dir(self, key: ExportKey) -> str:
        return f"{self.prefix}/{_safe_name(key.dataset_id)}/{key.digest}"

    def read_manifest(self, key: ExportKey) -> dict | None:
        """The shared entry's manifest for ``key``, or None when there is no complete one."""
        try:
            manifest = json.loads(self.fs.cat_file(f"{self._entry_dir(key)}/{MANIFEST}"))
        except (FileNotFoundError, ValueError):
            return None
        return manifest if manifest.get("key") == key.as_json() else None

    def mirror(self, key: ExportKey, store: CacheStore) -> LocalExport | None:
        """Copy the shared entry for ``key`` into the local store; None when there is none."""
        manifest = self.read_manifest(key)
        if manifest is None:
            return None
        remote_version = f"{self._entry_dir(key)}/{manifest['version']}"
        staging = store.new_staging_dir(key)
        try:
            remote_files = [p for p in self.fs.find(remote_version) if not p.endswith("/")]
            local_files = [str(staging / os.path.relpath(p, remote_version)) for p in remote_files]
            for path in local_files:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.fs.get(remote_files, local_files)
            files = {os.path.relpath(p, staging).replace(os.sep, "/"): os.path.getsize(p) for p in local_files}
            if files.get(manifest["metadata_file"]) != manifest["metadata_bytes"]:
                logger.warning("Shared cache entry %s is incomplete; ignoring it", remote_version)
                return None
            task = _task_from_manifest(manifest)
            logger.info("Mirrored shared export %s from %s", task.id, self.url)
            return store.publish(key, staging, task=task, metadata_file=manifest["metadata_file"],
                                 row_count=manifest["row_count"], files=files)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def upload(self, key: ExportKey, entry: LocalExport, store: CacheStore) -> None:
        """Publish a local entry to the shared root: every file first, the manifest last."""
        manifest = json.loads((entry.path.parent / MANIFEST).read_text(encoding="utf-8"))
        remote_version = f"{self._entry_dir(key)}/{manifest['version']}"
        local_files = [p for p in entry.path.rglob("*") if p.is_file()]
        remote_files = [f"{remote_version}/{p.relative_to(entry.path).as_posix()}" for p in local_files]
        self.fs.put([str(p) for p in local_files], remote_files)
        self.fs.pipe_file(f"{self._entry_dir(key)}/{MANIFEST}", json.dumps(manifest, indent=1).encode())
        logger.info("Shared export %s at %s", manifest["version"], self.url)


def _task_from_manifest(manifest: dict) -> ExportTask:
    return ExportTask.from_json(manifest["task"], dataset_id=manifest["key"]["dataset_id"])
