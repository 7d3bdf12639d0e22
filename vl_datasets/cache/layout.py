"""The names and places of everything in a cache root: only ``cache/`` spells them.

Layout under the cache root::

    CACHEDIR.TAG                         tells backup tools the folder can be rebuilt
    exports/<dataset>/<digest>/          one entry per ExportKey (API host, dataset, format, ...)
        <version>/                       an unpacked export (metadata file, images/), its index and,
                                         once read, its metadata file's SHA-256
        <version>.manifest.json          the version's commit marker, written last
        derived/<kind>/<version>-<settings digest>/
                                         what is built from a version (prepared images, ...)
        .lock  .task.json  .download/  .staging-*/     a build in progress (see exports.py)
        .chunks/                         the work area of a chunked export (see chunks.py)
    opened/<name>-<digest>/              exports opened from a ZIP or a folder, in the same layout
    mirrors/<digest>/                    local copies of a shared cache root, each a cache root itself
    images/<digest>/                     a node-level area: images read from an images_root
    shards/<digest>/                     a node-level area: shards of a shared prepared store

Other sides ask the store (``CacheStore``, ``derived_dir``) for a folder; none of them joins
these names itself (tests/test_layout.py checks it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import replacing
from ..config import resolve_cache_dir
from ..errors import CacheError

if TYPE_CHECKING:
    from .store import LocalExport

logger = logging.getLogger("vl_datasets")

FORMAT_VERSION = 2
MANIFEST_SUFFIX = ".manifest.json"
EXPORTS, OPENED, MIRRORS = "exports", "opened", "mirrors"
CACHEDIR_TAG = "CACHEDIR.TAG"
LOCK, TASK, DOWNLOAD, STAGING = ".lock", ".task.json", ".download", ".staging-"
WORK_AREA = ".chunks"  # the selective exports a chunked export is built from, until it is published
DERIVED = "derived"
# Where prepared images lived before derived/ (a previous layout): now a leftover, pruned.
LEGACY_DERIVED = (".prepared",)
# What derived stores there are, and the node-level areas (shared by every entry on the node).
DERIVED_KINDS = ("prepared", "items")
NODE_AREAS = ("images", "shards")
# The two files a derived store's owner writes for the scan: who it is (at creation), and that
# it is complete (last). Both are JSON objects; the scan reads them without knowing the format.
DERIVED_IDENTITY, DERIVED_MANIFEST = "store.json", "manifest.json"
# A version's metadata SHA-256, kept in its folder once read (hidden: no export member takes it).
METADATA_DIGEST = ".vl_datasets_metadata.sha256"
# How every file the library writes into a version folder beside the export's members begins: the
# digest above, the index and its deferred columns and lock (metadata/), and, with one more leading
# dot, the temp names they are written under (``atomic.beside``). The archive check refuses a
# member that takes it, so no export can hold, or block, one of them.
RESERVED_PREFIX = ".vl_datasets"


def safe_name(text: str) -> str:
    """A folder name made of ``text``: other characters become ``_``, and so do the dots of a name
    of dots alone ("." and ".." are no folder of their own: "exports/../x" would leave exports/)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", text)[:80]
    return name if name.strip(".") else "_" * max(len(name), 1)


def mirror_root(url: str) -> Path:
    """This machine's mirror of the shared root ``url``: in the user's local cache folder, whatever
    VL_DATASETS_CACHE points to, so `vl-datasets cache list` there shows it. Needs no fsspec, so a
    cache hit on a shared root loads no filesystem."""
    local_cache = resolve_cache_dir(None, env={k: v for k, v in os.environ.items() if k != "VL_DATASETS_CACHE"})
    return Path(local_cache) / MIRRORS / hashlib.sha256(url.encode()).hexdigest()[:16]


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to a process-unique temp file beside ``path``, fsync, and rename it into place."""
    with replacing(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=1, sort_keys=True)
        out.flush()
        os.fsync(out.fileno())


def remove_tree(path: Path) -> None:
    """Delete a file or a folder, whichever ``path`` is (a link as a link: never what it points to)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # RecursionError: nested past what json.loads takes
        return None
    return data if isinstance(data, dict) else None


def derived_dir(entry: LocalExport, kind: str, settings_digest: str) -> Path:
    """The folder of what is derived from ``entry``'s version with the settings of digest
    ``settings_digest`` (e.g. its prepared images). Keyed by version, so a refreshed export gets
    a new one; inside the entry, so it goes with it, and ``derived/`` is never taken for a version."""
    if kind not in DERIVED_KINDS:
        raise ValueError(f"Unknown derived store kind {kind!r}; expected one of {DERIVED_KINDS}.")
    if entry.entry_dir is None or entry.version is None:
        raise ValueError(f"A derived store needs a version published in the cache; {entry.path} is not one.")
    if not re.fullmatch(r"[0-9a-f]{4,64}", settings_digest):
        raise ValueError(f"A settings digest is lowercase hex, got {settings_digest!r}.")
    return entry.entry_dir / DERIVED / kind / f"{entry.version}-{settings_digest}"


def shared_derived_name(entry: LocalExport, kind: str, settings_digest: str) -> str:
    """Where what ``derived_dir`` holds is kept under a root shared by machines (``/``-separated,
    relative): the entry's place under its cache root (``exports/<dataset>/<key digest>``;
    ``opened/<name>-<digest>`` for an opened export), then ``derived/<kind>/<content>-<settings
    digest>``, named by what the export holds (``content_name``), not by this node's version name.
    Every machine holding the same export (its own export of the same state of the dataset, a
    shared cache root's mirror, a copy of the cache) thus names the same store."""
    if entry.entry_dir is None:
        raise ValueError(f"A derived store needs a version published in the cache; {entry.path} is not one.")
    entry_parts = entry.entry_dir.parts
    if len(entry_parts) >= 3 and entry_parts[-3] == EXPORTS:
        place = entry_parts[-3:]
    elif len(entry_parts) >= 2 and entry_parts[-2] == OPENED:
        place = entry_parts[-2:]
    else:
        raise ValueError(f"{entry.entry_dir} is not a cache entry's folder.")
    return "/".join((*place, DERIVED, kind, f"{content_name(entry)}-{settings_digest}"))


def content_name(entry: LocalExport) -> str:
    """What ``entry`` holds, named the same on every machine: ``m`` and the first 16 hex digits of
    its metadata file's SHA-256. Version names are drawn per node (time and a random part), so
    two nodes that each export the same state of a dataset name it differently; what is shared
    between machines (a shared prepared store) is keyed by this instead."""
    return f"m{metadata_sha256(entry)[:16]}"


def metadata_sha256(entry: LocalExport) -> str:
    """The SHA-256 of ``entry``'s metadata file: the manifest's, where it recorded one, else read
    the first time it is asked for and kept in the version's folder for every later ask.

    Only what is shared between machines is named by it, so it is not read at publish: there it
    was 1.2 s of CPU per 1.5 GB of metadata (10M items) on every first open, beside a build that
    keeps every core busy. The metadata of a version published from a user's folder lies outside
    the cache: one that changed since is refused, its digest would name a state the version does
    not hold."""
    if entry.metadata_digest:
        return entry.metadata_digest
    kept = manifest = None
    if entry.entry_dir is not None and entry.version is not None:  # a version read from a store
        kept = entry.entry_dir / entry.version / METADATA_DIGEST
        manifest = entry.entry_dir / f"{entry.version}{MANIFEST_SUFFIX}"
    if kept is not None:
        try:
            digest = kept.read_text(encoding="ascii").strip()
            if re.fullmatch(r"[0-9a-f]{64}", digest):
                return digest
        except (OSError, UnicodeDecodeError):
            pass  # not read yet, or unreadable: read the metadata again
    metadata = entry.metadata_path
    published = _published_stat(manifest) if manifest is not None and entry.opened_from is not None else None
    before = _stat_of(metadata)
    if published is not None and before != published:
        raise CacheError(f"{metadata} changed since version {entry.version} was published: open the export again.")
    digest = file_sha256(metadata)
    if _stat_of(metadata) != before:
        raise CacheError(f"{metadata} changed while its SHA-256 was read: open the export again.")
    if kept is not None:
        try:
            with replacing(kept) as tmp:
                tmp.write_text(digest + "\n", encoding="ascii")
        except OSError as exc:  # a read-only cache: read again by the next process that asks
            logger.debug("Not keeping the metadata digest in %s: %s", kept, exc)
    return digest


def _published_stat(manifest_path: Path) -> tuple[int, int] | None:
    """(size, mtime in ns) of the metadata file as the version's manifest recorded it, if it did."""
    manifest = read_json(manifest_path) or {}
    size, mtime = manifest.get("metadata_bytes"), manifest.get("metadata_mtime_ns")
    return (size, mtime) if isinstance(size, int) and isinstance(mtime, int) else None


def _stat_of(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def file_sha256(path: Path) -> str:
    """The SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def split_derived_name(name: str) -> tuple[str, str]:
    """(version, settings digest) of a derived store's folder name."""
    version, _, digest = name.rpartition("-")
    return version, digest


class TaskRecord:
    """The export task a build started, in one small JSON file, so a killed run resumes it.

    ``key`` (an ``ExportKey.as_json()``) guards against a record left by another key's build.
    """

    def __init__(self, path: Path, *, key: dict[str, Any] | None = None) -> None:
        self.path, self.key = path, key

    def __repr__(self) -> str:
        return f"TaskRecord({str(self.path)!r})"

    def read(self) -> str | None:
        """The recorded task id, or None when there is none (or it belongs to another key)."""
        data = read_json(self.path)
        if data is None or (self.key is not None and data.get("key") != self.key):
            return None
        task_id = data.get("task_id")
        return task_id if isinstance(task_id, str) and task_id else None

    def write(self, task_id: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path, {"task_id": task_id, **({"key": self.key} if self.key is not None else {})})

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
