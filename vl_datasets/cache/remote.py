"""A cache root on object storage (any fsspec URL), shared by every machine of a cluster.

Readers need files on a local disk, so each machine keeps a local mirror; the shared root saves
the export and the download. An entry is uploaded file by file, and its manifest goes up last:
a reader that finds a manifest finds every file it names.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import fsspec

from ..errors import RemoteCacheError
from ..records import ExportTask
from ..redaction import redact_logs_of, redact_text_of, redact_url
from .layout import MANIFEST_SUFFIX
from .store import CacheStore, ExportKey, LocalExport, created_after

logger = logging.getLogger("vl_datasets")

T = TypeVar("T")


class RemoteCache:
    """The shared root ``url`` (laid out like a local cache root) and this machine's mirror of it."""

    def __init__(self, url: str, *, local_root: str | os.PathLike[str] | None = None) -> None:
        self.url = url
        self.display_url = redact_url(url)
        redact_logs_of()  # the storage libraries' DEBUG lines hold the root's URL, credentials and all
        self.fs, prefix = self._storage("open", fsspec.core.url_to_fs, url)
        self.prefix = prefix.rstrip("/")
        self.local_root = Path(local_root) if local_root is not None else CacheStore.mirror_of(url).root

    def _storage(self, doing: str, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)``, a storage call; its failure raised as ``RemoteCacheError``, saying what
        failed, with the root and the reason shown without the root's credentials.

        Raised outside the ``except`` block: there the storage library's error (aiohttp's names the
        signed URL, botocore's the bucket of s3://KEY:SECRET@bucket) would travel with it as its
        ``__context__``, which ``from None`` only hides from tracebacks, not from error trackers."""
        try:
            return call(*args)
        except Exception as exc:
            reason = redact_text_of(f"{type(exc).__name__}: {exc}", self.url)
        raise RemoteCacheError(f"Cannot {doing} the shared cache {self.display_url}: {reason}", url=self.display_url)

    def _entry_dir(self, key: ExportKey) -> str:
        return f"{self.prefix}/{CacheStore.entry_name(key)}"

    def _manifests(self, key: ExportKey) -> list[str]:
        """The paths of the shared entry's manifests for ``key``: one listing, made anew (a listing
        the filesystem object kept from earlier in the call would hide a version published since)."""
        entry_dir = self._entry_dir(key)
        self.fs.invalidate_cache(entry_dir)
        return self._storage("list", self.fs.glob, f"{entry_dir}/{CacheStore.manifest_name('*')}")

    def version_names(self, key: ExportKey) -> frozenset[str]:
        """The names of the shared entry's versions for ``key``, from one listing (no manifest read)."""
        return frozenset(path.rsplit("/", 1)[-1].removesuffix(MANIFEST_SUFFIX) for path in self._manifests(key))

    def read_manifest(self, key: ExportKey) -> dict[str, Any] | None:
        """The manifest of the shared entry's newest complete version for ``key``, or None."""
        newest: dict[str, Any] | None = None
        newest_at: datetime | None = None
        for path in self._manifests(key):
            manifest = self._storage("read", self._manifest_at, path)
            if not isinstance(manifest, dict) or manifest.get("key") != key.as_json():
                continue
            if not isinstance(manifest.get("version"), str):
                continue  # damaged, or of another format: not a version to mirror
            created_at = _created_at(manifest)
            if created_at is not None and (newest_at is None or created_at > newest_at):
                newest, newest_at = manifest, created_at
        return newest

    def _manifest_at(self, path: str) -> Any:
        """The JSON at ``path``; None when it is gone (pruned since listed) or no JSON."""
        try:
            return json.loads(self.fs.cat_file(path))
        except (FileNotFoundError, ValueError, RecursionError):  # nested past what json.loads takes
            return None

    def mirror(self, key: ExportKey, store: CacheStore, manifest: dict[str, Any]) -> LocalExport | None:
        """Copy the shared version ``manifest`` describes (as ``read_manifest`` returned it) into the
        local store as a new version, under the same name; None when the shared copy is incomplete."""
        remote_version = f"{self._entry_dir(key)}/{manifest['version']}"
        entry_dir = store.entry_dir(key)
        with store.staging(entry_dir) as staging:
            remote_files = [p for p in self._storage("list", self.fs.find, remote_version) if not p.endswith("/")]
            local_files = [str(staging / os.path.relpath(p, remote_version)) for p in remote_files]
            for path in local_files:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._storage("download from", self.fs.get, remote_files, local_files)
            metadata = staging / manifest["metadata_file"]
            if not metadata.is_file() or metadata.stat().st_size != manifest["metadata_bytes"]:
                logger.warning("Shared cache entry %s is incomplete; ignoring it", remote_version)
                return None
            task = ExportTask.from_json(manifest["task"], dataset_id=key.dataset_id) if manifest.get("task") else None
            logger.info("Mirrored shared export %s from %s", manifest["version"], self.display_url)
            rows, version = manifest.get("row_count"), manifest["version"]
            return store.publish(entry_dir, staging, key=key, task=task, expected_rows=rows, version=version)

    def upload(self, key: ExportKey, entry: LocalExport) -> None:
        """Publish a local version to the shared root: every file first, the manifest last."""
        assert entry.version is not None
        remote_version = f"{self._entry_dir(key)}/{entry.version}"
        local_files = [p for p in entry.path.rglob("*") if p.is_file()]
        remote_files = [f"{remote_version}/{p.relative_to(entry.path).as_posix()}" for p in local_files]
        self._storage("upload to", self.fs.put, [str(p) for p in local_files], remote_files)
        manifest = json.loads(CacheStore.manifest_of(entry).read_bytes())
        # Shared versions are ordered by the clocks of the machines that uploaded them: one that ran
        # ahead must not leave this later version ranked below its own, and new nodes mirroring that.
        newest = self.read_manifest(key)
        manifest["created_at"] = created_after(_created_at(newest) if newest else None).isoformat()
        manifest_path = f"{self._entry_dir(key)}/{CacheStore.manifest_name(entry.version)}"
        self._storage("upload to", self.fs.pipe_file, manifest_path, json.dumps(manifest).encode())
        logger.info("Shared export %s at %s", entry.version, self.display_url)


def _created_at(manifest: dict[str, Any]) -> datetime | None:
    """When a shared manifest's version was made; None when it says nothing comparable (no version)."""
    try:
        created_at = datetime.fromisoformat(manifest["created_at"])
    except (KeyError, TypeError, ValueError):
        return None
    return created_at if created_at.tzinfo is not None else None
