"""The export cache on disk, and the one owner of its protocol: stage, verify, publish, clean up.

The layout is drawn in ``cache/layout.py``. Dataset ids live one level down, so no id can take a
reserved name. A version exists only when its manifest exists, parses, and its metadata file has
the recorded size; the current version of an entry is the newest. Publishing never deletes: an
older version stays, for the jobs still reading it, until ``prune`` or ``cache rm``. A crash
leaves complete versions and work files that the next build of the entry (or ``prune``)
collects, never a version that reads as complete when it is not. Every other side asks the store
for its folders: an entry's versions, its task record and work area, the derived stores of a
version, and the node-level areas.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .._version import __version__
from ..atomic import replacing
from ..errors import CorruptArchiveError, ExportNotFoundError
from ..locks import hold_lock
from ..metadata.index import index_export, metadata_below_root
from ..records import ExportTask
from .layout import (
    CACHEDIR_TAG,
    DERIVED,
    DOWNLOAD,
    EXPORTS,
    FORMAT_VERSION,
    LEGACY_DERIVED,
    LOCK,
    MANIFEST_SUFFIX,
    METADATA_DIGEST,
    MIRRORS,
    NODE_AREAS,
    OPENED,
    STAGING,
    TASK,
    WORK_AREA,
    TaskRecord,
    content_name,
    derived_dir,
    mirror_root,
    read_json,
    remove_tree,
    safe_name,
    shared_derived_name,
    write_json_atomic,
)

logger = logging.getLogger("vl_datasets")

_TAG_TEXT = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file marks a cache folder of vl_datasets; see https://bford.info/cachedir/\n"
)


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
    def build(
        cls,
        base_url: str,
        dataset_id: str,
        export_format: str,
        include_images: bool,
        media_ids: Iterable[str] | None = None,
        cluster_ids: Iterable[str] | None = None,
    ) -> ExportKey:
        def canonical(ids: Iterable[str] | None) -> tuple[str, ...] | None:  # selections are sets
            return None if ids is None else tuple(sorted({str(i) for i in ids}))

        url = urlsplit(base_url)
        return cls(
            # With the base URL's path: two services published behind one host at /a and /b (a
            # reverse proxy's) are two Visual Layers. Without one, the host alone, as ever.
            api_host=url.netloc.lower() + url.path.rstrip("/"),
            dataset_id=dataset_id,
            export_format=export_format,
            include_images=include_images,
            media_ids=canonical(media_ids),
            cluster_ids=canonical(cluster_ids),
        )

    @functools.cached_property
    def digest(self) -> str:
        """The key's name in the cache: a hash of its fields as JSON. Worked out once per key: a
        selection of a million media ids is 40 MB of JSON, and every path of its entry, its work
        area and each chunk's task record is named by it."""
        blob = json.dumps(self._fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def on_host(self, api_host: str) -> ExportKey:
        """The same export asked of another API host."""
        return replace(self, api_host=api_host)

    def as_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self._fields().items()}

    def _fields(self) -> dict[str, Any]:
        # As they are: ``asdict`` would deep-copy a selection's ids.
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExportKey:
        def ids(value: list[str] | None) -> tuple[str, ...] | None:
            return None if value is None else tuple(value)

        return cls(
            api_host=data["api_host"],
            dataset_id=data["dataset_id"],
            export_format=data["export_format"],
            include_images=bool(data["include_images"]),
            media_ids=ids(data.get("media_ids")),
            cluster_ids=ids(data.get("cluster_ids")),
        )


@dataclass(frozen=True)
class LocalExport:
    """One complete version of a cache entry.

    ``path`` is the export folder (for an opened folder: the user's own, which is never written
    to); ``index_path`` the memory-mappable index of its rows and images, or None when it could
    not be built at publication (an ambiguous image name: opening the dataset says which).
    """

    path: Path
    metadata_path: Path
    images_dir: Path | None
    task: ExportTask | None
    created_at: datetime | None
    library_version: str | None
    key: ExportKey | None = None
    row_count: int | None = None
    total_bytes: int | None = None
    version: str | None = None
    entry_dir: Path | None = None
    index_path: Path | None = None
    opened_from: str | None = None
    # The metadata file's SHA-256 where the manifest recorded it (versions published while it was
    # read at publish); None: ``layout.metadata_sha256`` reads it when first asked, and keeps it.
    metadata_digest: str | None = None


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def created_after(newest: datetime | None) -> datetime:
    """The ``created_at`` of a version published now beside one made at ``newest``: now, or just
    after ``newest`` where the clock reads earlier. Versions are ordered by it, and a clock that was
    ahead when ``newest`` was written (stepped back since, another machine's) must not rank the new
    version below the one it replaces."""
    now = _utcnow()
    return now if newest is None or now > newest else newest + timedelta(microseconds=1)


class CacheStore:
    """A cache root on the local filesystem."""

    def __init__(self, root: str | os.PathLike[str], *, within: Path | None = None) -> None:
        self.root = Path(root)
        self.within = within  # a mirror's: the cache root holding it, a cache too once it is written

    # -- where things live -----------------------------------------------------------------

    def entry_dir(self, key: ExportKey) -> Path:
        return self.root / self.entry_name(key)

    @staticmethod
    def entry_name(key: ExportKey) -> str:
        """Where ``key``'s entry lies under any root, ``/``-separated (a shared root is laid out the same)."""
        return f"{EXPORTS}/{safe_name(key.dataset_id)}/{key.digest}"

    def opened_dir(self, source: Path) -> Path:
        """The entry of an export the user opened from ``source``: a folder by its path, a ZIP by its
        path, size and modification time (a ZIP replaced in place is another export)."""
        stamp = "" if source.is_dir() else f"|{source.stat().st_size}|{source.stat().st_mtime_ns}"
        digest = hashlib.sha256(f"{source}{stamp}".encode()).hexdigest()[:20]
        return self.root / OPENED / f"{safe_name(source.stem)[:40]}-{digest}"

    @staticmethod
    def manifest_name(version: str) -> str:
        """The file name of ``version``'s manifest, beside the version's folder."""
        return f"{version}{MANIFEST_SUFFIX}"

    @classmethod
    def manifest_of(cls, entry: LocalExport) -> Path:
        """The manifest of a version read from a store."""
        if entry.entry_dir is None or entry.version is None:
            raise ValueError("manifest_of takes a version read from a store")
        return entry.entry_dir / cls.manifest_name(entry.version)

    def lock_path(self, entry_dir: Path) -> Path:
        return entry_dir / LOCK

    def download_path(self, entry_dir: Path, task_id: str) -> Path:
        """Where the archive of export ``task_id`` is downloaded to: by task, so that a complete
        download is reused only by the task that made it."""
        return entry_dir / DOWNLOAD / f"{safe_name(task_id)}-{hashlib.sha256(task_id.encode()).hexdigest()[:8]}.zip"

    def task_record(self, key: ExportKey, *, chunk: int | None = None) -> TaskRecord:
        """The record of the export task building ``key``'s entry, or with ``chunk``, the task of
        that chunk of a chunked export (in the entry's work area)."""
        if chunk is None:
            return TaskRecord(self.entry_dir(key) / TASK, key=key.as_json())
        return TaskRecord(self.work_area(key) / f"{chunk}.task")

    def work_area(self, key: ExportKey) -> Path:
        """The folder a chunked export of ``key`` is built in, kept across runs until it is
        published (a leftover to the sweep, except to the build of the entry, which resumes it)."""
        return self.entry_dir(key) / WORK_AREA

    @staticmethod
    def content_name(entry: LocalExport) -> str:
        """What ``entry`` holds, named the same on every machine (``layout.content_name``)."""
        return content_name(entry)

    @staticmethod
    def shared_derived_name(entry: LocalExport, kind: str, settings_digest: str) -> str:
        """Where ``derived_dir``'s store lives under a shared root (an fsspec URL), ``/``-separated."""
        return shared_derived_name(entry, kind, settings_digest)

    def derived_dir(self, entry: LocalExport, kind: str, settings_digest: str) -> Path:
        """See ``layout.derived_dir``: what is derived from ``entry``'s version with those settings."""
        return derived_dir(entry, kind, settings_digest)

    @staticmethod
    def derived_dirs(entry_dir: Path, kind: str | None = None) -> list[Path]:
        """Every derived store of the entry at ``entry_dir`` (of ``kind``, or of every kind)."""
        pattern = f"{kind}/*" if kind is not None else "*/*"
        return [p for p in sorted((entry_dir / DERIVED).glob(pattern)) if p.is_dir()]

    def node_area(self, kind: str, digest: str) -> Path:
        """A folder shared by every job on this node, outside any entry: ``images`` for the copies
        of an images_root's files (``digest`` names the root), ``shards`` for those of a shared
        prepared store's shards (``digest`` names the store's shards folder)."""
        if kind not in NODE_AREAS:
            raise ValueError(f"Unknown node-level area {kind!r}; expected one of {NODE_AREAS}.")
        self._tag_root()  # the area is written next: the root is a cache from now on (``is_cache``)
        return self.root / kind / safe_name(digest)

    def node_areas(self) -> list[tuple[str, Path]]:
        """Every node-level area under this root, as (kind, folder)."""
        return [(kind, p) for kind in NODE_AREAS for p in sorted((self.root / kind).glob("*")) if p.is_dir()]

    def mirror_stores(self) -> list[CacheStore]:
        """The local copies of shared cache roots kept under this root."""
        folder = self.root / MIRRORS
        return [CacheStore(p) for p in sorted(folder.iterdir()) if p.is_dir()] if folder.is_dir() else []

    @classmethod
    def mirror_of(cls, url: str) -> CacheStore:
        """This machine's mirror of the shared root ``url``."""
        root = mirror_root(url)
        return cls(root, within=root.parent.parent)

    # -- reading ---------------------------------------------------------------------------

    def lookup(self, key: ExportKey, *, version: str | None = None) -> LocalExport | None:
        """The current version of ``key``'s entry (or exactly ``version``), or None. Never raises for
        a damaged entry: a damaged version is not a version."""
        versions = [v for v in self.versions(self.entry_dir(key)) if v.key == key]
        if version is not None:
            versions = [v for v in versions if v.version == version]
        return versions[-1] if versions else None

    def lookup_any_host(self, key: ExportKey) -> list[LocalExport]:
        """The current version of the same export from every API host that has one, newest last."""
        found = []
        for entry_dir in sorted((self.root / EXPORTS / safe_name(key.dataset_id)).glob("*")):
            versions = [v for v in self.versions(entry_dir) if v.key is not None and v.key.on_host(key.api_host) == key]
            if versions:
                found.append(versions[-1])
        return sorted(found, key=_age_order)

    def versions(self, entry_dir: Path) -> list[LocalExport]:
        """Every complete version of the entry at ``entry_dir``, oldest first."""
        if not entry_dir.is_dir():
            return []
        found = (self.read_version(m) for m in entry_dir.glob(f"*{MANIFEST_SUFFIX}"))
        return sorted((v for v in found if v is not None), key=_age_order)

    def read_version(self, manifest_path: Path) -> LocalExport | None:
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            if manifest.get("format_version") != FORMAT_VERSION:
                return None
            version_dir = manifest_path.parent / manifest["version"]
            export_dir = Path(manifest["opened_from"]) if manifest.get("opened_from") else version_dir
            metadata_path = export_dir / manifest["metadata_file"]
            if metadata_path.stat().st_size != manifest["metadata_bytes"]:
                return None
            task, key = manifest.get("task"), manifest.get("key")
            index = manifest.get("index")
            return LocalExport(
                path=export_dir,
                metadata_path=metadata_path,
                images_dir=export_dir / "images" if manifest["images"] else None,
                task=ExportTask.from_json(task, dataset_id=key["dataset_id"]) if task and key else None,
                created_at=datetime.fromisoformat(manifest["created_at"]),
                library_version=manifest.get("library_version"),
                key=ExportKey.from_json(key) if key else None,
                row_count=manifest.get("row_count"),
                total_bytes=manifest.get("total_bytes"),
                version=manifest["version"],
                entry_dir=manifest_path.parent,
                index_path=version_dir / index if index else None,
                opened_from=manifest.get("opened_from"),
                metadata_digest=manifest.get("metadata_sha256"),
            )
        # A damaged manifest is no version: valid JSON of another shape too (a list, a field of
        # another type: AttributeError), and JSON nested past what json.loads takes.
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
            return None

    def entry_dirs(self) -> Iterator[Path]:
        """Every entry folder under this root: exports and opened ones (mirrors are stores of their own)."""
        yield from sorted((self.root / EXPORTS).glob("*/*"))
        yield from sorted((self.root / OPENED).glob("*"))

    def leftovers(self, entry_dir: Path) -> list[Path]:
        """What a killed build left in ``entry_dir``: staging folders, downloads, and version folders
        that never got their manifest. Only safe to remove while holding the entry's lock."""
        published = {v.version for v in self.versions(entry_dir)}
        children = sorted(entry_dir.iterdir()) if entry_dir.is_dir() else []
        work_files = [p for p in children if p.name.startswith((STAGING, DOWNLOAD, WORK_AREA, *LEGACY_DERIVED))]
        # By rule, not by a leading dot: derived/ is the entry's own, whatever it holds.
        reserved = {DERIVED, *published}
        orphans = [p for p in children if p.is_dir() and not p.name.startswith(".") and p.name not in reserved]
        return work_files + orphans

    # -- writing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def staging(self, entry_dir: Path) -> Iterator[Path]:
        """A process-unique folder inside ``entry_dir`` (same filesystem, so publishing is a
        rename), removed when the block ends, whether or not it was published."""
        self._tag_root()
        path = entry_dir / f".staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def publish(
        self,
        entry_dir: Path,
        staging: Path,
        *,
        key: ExportKey | None = None,
        task: ExportTask | None = None,
        expected_rows: int | None = None,
        opened_from: Path | None = None,
        archive: Path | None = None,
        version: str | None = None,
    ) -> LocalExport:
        """Make the export in ``staging`` (or, with ``opened_from``, the user's folder it indexes) a
        new version of the entry: verify its metadata, write its index, move the folder into place,
        then write the manifest that makes it exist. Older versions are kept. ``version`` names the
        new version (a mirror keeps the shared one's name); by default a fresh, time-ordered name.
        ``archive``: the ZIP a user handed over, that ``staging`` holds unpacked (named in errors)."""
        export_dir = opened_from if opened_from is not None else staging
        source = str(archive) if archive is not None else _describe_source(key, task, export_dir)
        _check_images_folder(export_dir, source)
        indexed = index_export(export_dir, staging)
        if indexed is None:
            missing = f"no metadata.parquet or metadata.json at its root{_found_deeper(export_dir)}"
            if opened_from is not None:  # a folder the user named: not an export, rather than a damaged one
                raise ExportNotFoundError(f"{source} is no Visual Layer export: it holds {missing}.", path=source)
            raise CorruptArchiveError(f"{source} holds {missing}.", path=str(archive or export_dir))
        metadata_file, rows = indexed.metadata_file, indexed.rows
        if expected_rows is not None and rows != expected_rows:
            raise CorruptArchiveError(
                f"{metadata_file} of {_describe_source(key, task, export_dir)} has {rows} rows but the export "
                f"announced {expected_rows}.",
                path=str(export_dir),
            )
        # Read only once asked for (``layout.metadata_sha256``): a digest an archive brought is not the file's.
        (staging / METADATA_DIGEST).unlink(missing_ok=True)
        files = _file_sizes(staging)  # what the version holds in the cache (for an opened folder: its index)
        # The state the index was built from, taken before it was: the user's folder may change while
        # it is built (seconds at 10M rows), and then the next open finds it changed and builds again.
        metadata_stat = indexed.metadata_stat
        has_images = (export_dir / "images").is_dir()
        existing = self.versions(entry_dir)
        created_at = created_after(existing[-1].created_at if existing else None)
        version = version or f"v{created_at:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        os.rename(staging, entry_dir / version)  # same filesystem: atomic
        manifest = {
            "format_version": FORMAT_VERSION,
            "key": key.as_json() if key is not None else None,
            "opened_from": str(opened_from) if opened_from is not None else None,
            "version": version,
            "task": _task_record(task),
            "created_at": created_at.isoformat(),
            "library_version": __version__,
            "metadata_file": metadata_file,
            "metadata_bytes": metadata_stat.st_size,
            "metadata_mtime_ns": metadata_stat.st_mtime_ns,
            **(_change_marks(metadata_stat) if opened_from is not None else {}),
            "images": has_images,
            "index": indexed.index_file,
            "row_count": rows,
            "file_count": len(files),
            "total_bytes": sum(files.values()),
            "files": {name: size for name, size in files.items() if not name.startswith("images/")},
        }
        write_json_atomic(entry_dir / self.manifest_name(version), manifest)
        entry = self.read_version(entry_dir / self.manifest_name(version))
        if entry is None:
            raise CorruptArchiveError(
                f"The version just published at {entry_dir / version} does not read back.",
                path=str(entry_dir / version),
            )
        return entry

    def remove_version(self, entry: LocalExport) -> None:
        """Delete one version: its manifest first, so a half-deleted version is never taken for complete."""
        if entry.entry_dir is None or entry.version is None:
            raise ValueError("remove_version takes a version read from this store")
        self.manifest_of(entry).unlink(missing_ok=True)
        shutil.rmtree(entry.entry_dir / entry.version, ignore_errors=True)

    def remove(self, entry_dir: Path, *, lock_timeout_s: float | None) -> None:
        """Delete a whole entry, every version: the manifests first. Under the entry's lock (a build
        in it would lose its staging folder halfway; ``LockTimeoutError`` after ``lock_timeout_s``).
        The lock file stays, in the emptied folder: a process waiting on it then locks the file the
        next one will, not a deleted one that another would create again beside it."""
        if not entry_dir.is_dir():
            return
        with hold_lock(self.lock_path(entry_dir), timeout_s=lock_timeout_s, what=f"removing {entry_dir}"):
            for manifest in entry_dir.glob(f"*{MANIFEST_SUFFIX}"):
                manifest.unlink(missing_ok=True)
            for child in entry_dir.iterdir():
                if not child.name.startswith(LOCK):  # the lock held, or its soft fallback (.lock.soft)
                    remove_tree(child)

    def source_changed(self, entry: LocalExport) -> bool:
        """Whether the metadata file of an export opened from a folder changed since ``entry`` was
        published from it (a manifest that did not record it counts as changed). Its images/ is
        not compared: a version's prepared images are keyed by it, and a job that prepared them
        may remove the originals; touching the metadata file builds the index again."""
        if entry.entry_dir is None or entry.version is None:
            return True
        manifest = read_json(self.manifest_of(entry)) or {}
        try:
            stat = entry.metadata_path.stat()
        except OSError:
            return True
        if manifest.get("metadata_mtime_ns") != stat.st_mtime_ns:
            return True
        marks = _change_marks(stat)  # a manifest from before they were recorded compares its mtime alone
        return any(manifest.get(name, now) != now for name, now in marks.items())

    def remove_leftovers(self, entry_dir: Path, *, keep_resumable: bool = False) -> list[Path]:
        """Delete what ``leftovers`` lists (but, with ``keep_resumable``, a download or the chunks of
        a chunked export, which the next build resumes); the caller holds the entry's lock."""
        resumable = (DOWNLOAD, WORK_AREA)
        doomed = [p for p in self.leftovers(entry_dir) if not (keep_resumable and p.name in resumable)]
        for path in doomed:
            logger.info("Removing %s, left by an interrupted or finished build", path)
            remove_tree(path)
        return doomed

    def is_cache(self) -> bool:
        """Whether the root is a cache of this library, or nothing yet: every build tags the root it
        writes in (``CACHEDIR.TAG``), so a folder of other files without one (an export's, a home
        folder, whose ``images/`` would read as image caches) is none, and is never pruned."""
        tagged = (self.root / CACHEDIR_TAG).is_file()
        return tagged or not self.root.is_dir() or not any(self.root.iterdir())

    def make_entry_dir(self, entry_dir: Path) -> None:
        """Make ``entry_dir``, the root tagged first: a build killed before it publishes leaves a
        root ``cache prune`` must still take for a cache, to clean."""
        self._tag_root()
        entry_dir.mkdir(parents=True, exist_ok=True)

    def _tag_root(self) -> None:
        # A mirror's writes make the root holding it a cache too (it may hold nothing else).
        for root in [self.root] if self.within is None else [self.root, self.within]:
            tag = root / CACHEDIR_TAG
            if not tag.exists():
                root.mkdir(parents=True, exist_ok=True)
                with replacing(tag) as tmp:
                    tmp.write_text(_TAG_TEXT, encoding="utf-8")


def _age_order(entry: LocalExport) -> tuple[datetime, str]:
    return (entry.created_at or datetime.min.replace(tzinfo=timezone.utc), entry.version or "")


def _task_record(task: ExportTask | None) -> dict[str, Any] | None:
    if task is None:
        return None
    record = {k: v for k, v in task.raw.items() if k != "download_uri"}  # presigned URLs are secrets
    if "result_message" in record:
        record["result_message"] = task.result_message  # the server's free text, as redacted (records.py)
    record.setdefault("id", task.id)
    return record


def _file_sizes(export_dir: Path) -> dict[str, int]:
    sizes = {}
    for folder, _, names in os.walk(export_dir):
        for name in names:
            path = os.path.join(folder, name)
            sizes[os.path.relpath(path, export_dir).replace(os.sep, "/")] = os.path.getsize(path)
    return sizes


def _check_images_folder(export_dir: Path, source: str) -> None:
    """Refuse an export whose ``images`` is a file: the index lists that folder, and would fail
    with a bare OSError naming neither the export nor its ``images``. (An archive's ``images`` is
    refused by the archive check, before it is unpacked.)"""
    images = export_dir / "images"
    if images.exists() and not images.is_dir():
        raise CorruptArchiveError(
            f"{source} holds a file named 'images' where its images/ folder belongs.",
            path=str(export_dir),
            member="images",
        )


def _change_marks(stat: os.stat_result) -> dict[str, int]:
    """What changes with a file's content even when its size and mtime are put back (``touch -r``,
    ``cp -p``, ``rsync -a`` after an edit, an editor saving a new file over it): its inode change
    time, which no call sets. Recorded for an opened folder's own metadata file only: a chmod also
    moves it, and then the index is built again, which is safe. (Not the inode: some mounts number
    files anew at each mount, and each open would then build the index again.)"""
    return {"metadata_ctime_ns": stat.st_ctime_ns}


def _found_deeper(export_dir: Path) -> str:
    """Where a metadata file lies below the root, if one does: said, the fault is plain (a ZIP made
    of the export's folder, not of what is in it); unsaid, the error named a staging folder."""
    found = metadata_below_root(export_dir)
    return "" if found is None else f" (there is one at {found}: the export must be at the root)"


def _describe_source(key: ExportKey | None, task: ExportTask | None, export_dir: Path) -> str:
    if task is not None:
        return f"export {task.id}"
    return f"dataset {key.dataset_id!r}" if key is not None else str(export_dir)
