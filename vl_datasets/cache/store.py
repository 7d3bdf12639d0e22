"""The export cache on disk: keys, entries, manifests, atomic publication.

Layout under the cache root::

    <dataset>/<digest>/manifest.json     the commit marker, written last (atomic replace)
    <dataset>/<digest>/<version>/        the unpacked export: metadata file, images/
    <dataset>/<digest>/.lock             held while one process builds the entry
    <dataset>/<digest>/.task.json        the export task in flight, so a killed run resumes it
    <dataset>/<digest>/.download/        the ZIP and its resumable partial file
    <dataset>/<digest>/.staging-*/       process-unique unpacking folders

An entry exists only when its manifest exists, parses, names this key and points to a version
folder whose metadata file has the recorded size. A crash at any point leaves either the old
entry or none, never a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

from .._version import __version__
from ..atomic import replacing
from ..api.records import ExportTask

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ExportKey:
    """What makes two exports interchangeable: host, dataset, format, images, selection."""

    api_host: str
    dataset_id: str
    export_format: str
    include_images: bool
    media_ids: tuple[str, ...] | None = None
    cluster_ids: tuple[str, ...] | None = None

    @classmethod
    def build(cls, base_url: str, dataset_id: str, export_format: str, include_images: bool,
              media_ids: Iterable[str] | None = None, cluster_ids: Iterable[str] | None = None) -> ExportKey:
        def canonical(ids):  # selections are sets: order and repeats do not matter
            return None if ids is None else tuple(sorted({str(i) for i in ids}))

        return cls(api_host=urlsplit(base_url).netloc.lower(), dataset_id=dataset_id, export_format=export_format,
                   include_images=include_images, media_ids=canonical(media_ids), cluster_ids=canonical(cluster_ids))

    @property
    def digest(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def as_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict) -> ExportKey:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


@dataclass(frozen=True)
class LocalExport:
    """A complete export in the cache (or a folder the user opened)."""

    path: Path
    metadata_path: Path
    images_dir: Path | None
    task: ExportTask | None
    created_at: datetime | None
    library_version: str | None
    key: ExportKey | None = None
    row_count: int | None = None
    total_bytes: int | None = None


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:80] or "_"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` to a process-unique temp file beside ``path``, fsync, and rename it into place."""
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=1, sort_keys=True)
        out.flush()
        os.fsync(out.fileno())


class CacheStore:
    """A cache root on the local filesystem."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def entry_dir(self, key: ExportKey) -> Path:
        return self.root / _safe_name(key.dataset_id) / key.digest

    def lock_path(self, key: ExportKey) -> Path:
        return self.entry_dir(key) / ".lock"

    def download_path(self, key: ExportKey) -> Path:
        return self.entry_dir(key) / ".download" / "export.zip"

    def new_staging_dir(self, key: ExportKey) -> Path:
        path = self.entry_dir(key) / f".staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path

    # -- reading ---------------------------------------------------------------------------

    def lookup(self, key: ExportKey) -> LocalExport | None:
        """The complete entry for ``key``, or None. Never raises for a damaged entry."""
        entry = self.read_entry(self.entry_dir(key))
        return entry if entry is not None and entry.key == key else None

    def read_entry(self, entry_dir: Path) -> LocalExport | None:
        try:
            manifest = json.loads((entry_dir / MANIFEST).read_text(encoding="utf-8"))
            if manifest.get("format_version") != FORMAT_VERSION:
                return None
            version_dir = entry_dir / manifest["version"]
            metadata_path = version_dir / manifest["metadata_file"]
            if metadata_path.stat().st_size != manifest["metadata_bytes"]:
                return None
            task = manifest.get("task")
            return LocalExport(
                path=version_dir,
                metadata_path=metadata_path,
                images_dir=version_dir / "images" if manifest["images"] else None,
                task=ExportTask.from_json(task, dataset_id=manifest["key"]["dataset_id"]) if task else None,
                created_at=datetime.fromisoformat(manifest["created_at"]),
                library_version=manifest.get("library_version"),
                key=ExportKey.from_json(manifest["key"]),
                row_count=manifest.get("row_count"),
                total_bytes=manifest.get("total_bytes"),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def entries(self) -> Iterator[LocalExport]:
        """Every complete entry under the root."""
        if not self.root.is_dir():
            return
        for manifest in sorted(self.root.glob(f"*/*/{MANIFEST}")):
            entry = self.read_entry(manifest.parent)
            if entry is not None:
                yield entry

    # -- writing ---------------------------------------------------------------------------

    def publish(self, key: ExportKey, staging: Path, *, task: ExportTask, metadata_file: str, row_count: int,
                files: dict[str, int]) -> LocalExport:
        """Move a verified staging folder into place, then write the manifest that makes it exist."""
        entry_dir = self.entry_dir(key)
        previous = self.read_entry(entry_dir)
        version = f"v-{_safe_name(task.id)[:40]}-{uuid.uuid4().hex[:6]}"
        os.rename(staging, entry_dir / version)  # same filesystem: atomic
        task_record = {k: v for k, v in task.raw.items() if k != "download_uri"}  # presigned URLs are secrets
        task_record.setdefault("id", task.id)
        manifest = {
            "format_version": FORMAT_VERSION,
            "key": key.as_json(),
            "version": version,
            "task": task_record,
            "created_at": _utcnow().isoformat(),
            "library_version": __version__,
            "metadata_file": metadata_file,
            "metadata_bytes": files[metadata_file],
            "images": any(name.startswith("images/") for name in files),
            "row_count": row_count,
            "file_count": len(files),
            "total_bytes": sum(files.values()),
            "files": {name: size for name, size in files.items() if not name.startswith("images/")},
        }
        write_json_atomic(entry_dir / MANIFEST, manifest)
        if previous is not None and previous.path != entry_dir / version:
            # Readers of the old version that are still running lose their files: documented on refresh.
            shutil.rmtree(previous.path, ignore_errors=True)
        entry = self.read_entry(entry_dir)
        assert entry is not None
        return entry

    def remove(self, entry: LocalExport) -> None:
        """Delete an entry: the manifest first, so a half-deleted entry is never taken for complete."""
        entry_dir = entry.path.parent
        (entry_dir / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(entry_dir, ignore_errors=True)

    # -- the task in flight ----------------------------------------------------------------

    def pending_task(self, key: ExportKey) -> str | None:
        try:
            data = json.loads((self.entry_dir(key) / ".task.json").read_text(encoding="utf-8"))
            return data["task_id"] if data.get("key") == key.as_json() else None
        except (OSError, ValueError, KeyError):
            return None

    def remember_task(self, key: ExportKey, task_id: str | None) -> None:
        path = self.entry_dir(key) / ".task.json"
        if task_id is None:
            path.unlink(missing_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, {"key": key.as_json(), "task_id": task_id})

    def clean_work_files(self, key: ExportKey) -> None:
        """Drop downloads and staging folders once an entry is published."""
        entry_dir = self.entry_dir(key)
        shutil.rmtree(entry_dir / ".download", ignore_errors=True)
        for staging in entry_dir.glob(".staging-*"):
            shutil.rmtree(staging, ignore_errors=True)
