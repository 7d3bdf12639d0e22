"""What the cache holds, and pruning it: ``scan()`` and ``prune()``, library functions that the
``vl-datasets cache`` command only prints.

``scan`` counts every kind of thing under the local root and its mirrors: entries with every
version, the derived stores of each version, what interrupted builds left, and the node-level
image caches. ``CacheInfo.prune_strategy(policy)`` says what a prune would remove and how many
bytes it would free before anything is removed; ``execute()`` removes it. As with huggingface_hub's
``scan_cache_dir`` and ``DeleteCacheStrategy``, every result is a frozen dataclass.

A derived store is read through two JSON files its owner writes (``store.json`` when it is
created, ``manifest.json`` last, when it is complete); the scan knows nothing of its format. The
identity may say how to count a partial store's items: ``{"count": {"what": "images", "files":
"parts/*.index", "bytes_each": 40}}``.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError, VersionInUseError
from .layout import CACHEDIR_TAG, DERIVED_IDENTITY, DERIVED_MANIFEST, read_json, split_derived_name
from .opened import local_store
from .readers import last_used, unread
from .store import CacheStore, LocalExport

_EPOCH = datetime.min.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class VersionInfo:
    """One complete version of an entry; ``size_on_disk`` is what its manifest recorded."""

    version: str
    path: Path
    created_at: datetime | None
    size_on_disk: int
    current: bool
    export: LocalExport = field(repr=False)
    opened_at: datetime | None = None  # when a dataset last opened it (``readers.last_used``)

    @property
    def used_at(self) -> datetime | None:
        """When it was last made or opened: what a prune by age or size goes by."""
        times = [t for t in (self.created_at, self.opened_at) if t is not None]
        return max(times) if times else None


@dataclass(frozen=True)
class DerivedInfo:
    """A store derived from one version (``kind``: "prepared", ...), complete once its owner
    finished it. ``items`` counts what it holds (``items_what``), when the store says how."""

    kind: str
    path: Path
    version: str | None
    settings_digest: str
    settings: Mapping[str, Any]
    complete: bool
    items: int | None
    items_what: str | None
    size_on_disk: int


@dataclass(frozen=True)
class EntryInfo:
    """A cache entry: its versions (oldest first, the newest current) and derived stores."""

    path: Path
    store_root: Path
    mirrored: bool
    versions: tuple[VersionInfo, ...]
    derived: tuple[DerivedInfo, ...]

    @property
    def key(self) -> str:
        return self.path.name

    @property
    def current(self) -> VersionInfo:
        return self.versions[-1]

    @property
    def host(self) -> str:
        key = self.current.export.key
        return key.api_host if key is not None else "(opened)"

    @property
    def dataset(self) -> str:
        export = self.current.export
        return export.key.dataset_id if export.key is not None else Path(export.opened_from or self.key).name

    @property
    def export_format(self) -> str | None:
        key = self.current.export.key
        return key.export_format if key is not None else None

    @property
    def size_on_disk(self) -> int:
        return sum(v.size_on_disk for v in self.versions) + sum(d.size_on_disk for d in self.derived)

    @property
    def current_size_on_disk(self) -> int:
        """What removing superseded versions and their derived stores leaves of it."""
        version = self.current.version
        return self.current.size_on_disk + sum(d.size_on_disk for d in self.derived if d.version == version)


@dataclass(frozen=True)
class LeftoverInfo:
    """What an interrupted (or an older library's) build left in an entry."""

    path: Path
    entry_dir: Path
    store_root: Path
    size_on_disk: int


@dataclass(frozen=True)
class NodeAreaInfo:
    """A node-level area (``kind`` "images": the copies of one images_root's files)."""

    kind: str
    path: Path
    size_on_disk: int
    nb_files: int
    last_modified: float | None


@dataclass(frozen=True)
class CacheInfo:
    """Everything under a cache root (and the mirrors of shared roots kept under it)."""

    root: Path
    entries: tuple[EntryInfo, ...]
    leftovers: tuple[LeftoverInfo, ...]
    node_areas: tuple[NodeAreaInfo, ...]

    @property
    def size_on_disk(self) -> int:
        return (
            sum(e.size_on_disk for e in self.entries)
            + sum(x.size_on_disk for x in self.leftovers)
            + sum(a.size_on_disk for a in self.node_areas)
        )

    def prune_strategy(self, policy: PrunePolicy | None = None) -> PruneStrategy:
        """What ``policy`` would remove; nothing is removed until ``execute()``."""
        from .pruning import plan

        return plan(self, policy or PrunePolicy())


@dataclass(frozen=True)
class PrunePolicy:
    """What a prune removes besides superseded versions (and their derived stores) and leftovers,
    which it always removes: entries (and image-cache files) last used more than ``older_than_days``
    ago, or the oldest of them until the cache fits in ``max_size`` bytes."""

    older_than_days: float | None = None
    max_size: int | None = None

    def __post_init__(self) -> None:
        days = self.older_than_days
        # NaN compares false with every age (it would remove nothing, silently), and a cutoff of
        # more days than the calendar goes back overflows.
        if days is not None and (
            isinstance(days, bool) or not isinstance(days, numbers.Real) or not 0 <= days <= _MAX_DAYS
        ):
            raise ConfigurationError(f"older_than_days must be a number of days from 0 to {_MAX_DAYS:,}, got {days!r}.")
        size = self.max_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 0):
            raise ConfigurationError(f"max_size must be a whole number of bytes, 0 or more, got {size!r}.")

    def cutoff(self, now: datetime) -> datetime | None:
        return None if self.older_than_days is None else now - timedelta(days=self.older_than_days)


_MAX_DAYS = 100_000  # about 270 years: further back, the cutoff is no date (before year 1)


@dataclass(frozen=True)
class Removal:
    """One thing a prune removes: ``what`` is "version", "derived store", "leftover", "entry",
    "image cache" (a whole area) or "image files" (the oldest ``files`` of an area)."""

    what: str
    path: Path
    size_on_disk: int
    entry: EntryInfo | None = None
    version: VersionInfo | None = None
    files: tuple[Path, ...] = field(default=(), repr=False)
    leftover: LeftoverInfo | None = None
    of_version: str | None = None  # a derived store's version

    def versions_read(self) -> list[str]:
        """The versions a job must not be reading for this to go (``readers``)."""
        if self.what == "version" and self.version is not None:
            return [self.version.version]
        if self.what == "derived store" and self.of_version is not None:
            return [self.of_version]
        if self.what == "entry" and self.entry is not None:
            return [v.version for v in self.entry.versions]
        return []


@dataclass(frozen=True)
class PruneResult:
    """What ``execute()`` removed, what it skipped (a leftover whose build still runs, a version a
    running job reads) and why (``skipped_why``, one each), the bytes it freed, and how many of the
    entries scanned it removed whole."""

    removed: tuple[Removal, ...]
    skipped: tuple[Removal, ...]
    freed_bytes: int
    entries_scanned: int
    skipped_why: tuple[str, ...] = ()

    @property
    def entries_removed(self) -> int:
        return sum(1 for r in self.removed if r.what == "entry")


@dataclass(frozen=True)
class PruneStrategy:
    """The removals a prune plans, in order; inspect ``expected_freed_bytes`` before ``execute()``."""

    removals: tuple[Removal, ...]
    entries_scanned: int

    @property
    def expected_freed_bytes(self) -> int:
        return sum(r.size_on_disk for r in self.removals)

    def execute(self) -> PruneResult:
        """Remove what was planned. A leftover whose entry a build holds, and a version a running job
        reads (with what is derived from it), are skipped, not waited for."""
        from .pruning import remove

        removed: list[Removal] = []
        skipped: list[tuple[Removal, str]] = []
        for removal in self.removals:
            why = remove(removal)
            if why is None:
                removed.append(removal)
            else:
                skipped.append((removal, why))
        freed = sum(r.size_on_disk for r in removed)
        return PruneResult(
            tuple(removed), tuple(r for r, _ in skipped), freed, self.entries_scanned, tuple(w for _, w in skipped)
        )


def scan(cache_dir: str | os.PathLike[str] | None = None) -> CacheInfo:
    """Everything the cache at ``cache_dir`` (else ``VL_DATASETS_CACHE``, else the default) holds:
    for a shared (fsspec) root, this machine's mirror of it."""
    store = local_store(cache_dir)
    if not store.is_cache():
        raise ConfigurationError(
            f"{store.root} is not a vl_datasets cache (it holds other files and no {CACHEDIR_TAG}, which "
            "every cache root gets): nothing there is listed or removed. Check --cache-dir / VL_DATASETS_CACHE."
        )
    entries: list[EntryInfo] = []
    leftovers: list[LeftoverInfo] = []
    areas: list[NodeAreaInfo] = []
    for each in (store, *store.mirror_stores()):
        for folder in each.entry_dirs():
            versions = each.versions(folder)
            if versions:
                entries.append(_entry_info(each, folder, versions, mirrored=each is not store))
            leftovers += [LeftoverInfo(p, folder, each.root, _bytes_under(p)[0]) for p in each.leftovers(folder)]
        areas += [_area_info(kind, path) for kind, path in each.node_areas()]
    entries.sort(key=lambda e: e.current.created_at or _EPOCH)
    return CacheInfo(store.root, tuple(entries), tuple(leftovers), tuple(areas))


def prune(
    info_or_cache_dir: CacheInfo | str | os.PathLike[str] | None = None, policy: PrunePolicy | None = None
) -> PruneResult:
    """Scan (unless given a ``CacheInfo``), plan with ``policy`` and execute: superseded versions,
    their derived stores and leftovers always go; with a policy, old or excess entries and image
    caches too. A job still reading a superseded version loses it: pruning is the caller's call."""
    info = info_or_cache_dir if isinstance(info_or_cache_dir, CacheInfo) else scan(info_or_cache_dir)
    return info.prune_strategy(policy).execute()


REMOVE_LOCK_TIMEOUT_S = 10.0  # "cache rm" of an entry a build holds: say so, rather than wait for hours


def remove_entry(entry: EntryInfo, *, lock_timeout_s: float | None = REMOVE_LOCK_TIMEOUT_S) -> None:
    """Delete a whole entry: every version and what is derived from them. ``LockTimeoutError``
    when a build holds it longer than ``lock_timeout_s``; ``VersionInUseError`` when a running
    job reads one of its versions (``readers``)."""
    with unread(entry.path, [v.version for v in entry.versions]) as read:
        if read:
            raise VersionInUseError(
                f"Not removing {entry.key} ({entry.dataset}): a running job reads its version {', '.join(read)}. "
                "Remove it once the job ends; nothing of it was removed.",
                versions=read,
            )
        CacheStore(entry.store_root).remove(entry.path, lock_timeout_s=lock_timeout_s)


def _entry_info(store: CacheStore, folder: Path, versions: list[LocalExport], *, mirrored: bool) -> EntryInfo:
    infos = tuple(
        VersionInfo(
            v.version or "?",
            v.path,
            v.created_at,
            v.total_bytes or 0,
            v is versions[-1],
            v,
            last_used(folder, v.version) if v.version else None,
        )
        for v in versions
    )
    derived = tuple(_derived_info(path) for path in store.derived_dirs(folder))
    return EntryInfo(folder, store.root, mirrored, infos, derived)


def _derived_info(path: Path) -> DerivedInfo:
    identity = read_json(path / DERIVED_IDENTITY) or {}  # a store killed before its identity: still listed
    manifest = read_json(path / DERIVED_MANIFEST)
    version, digest = split_derived_name(path.name)
    found = identity.get("count")
    count: dict[str, Any] = found if isinstance(found, dict) else {}
    what = count.get("what") if isinstance(count.get("what"), str) else None
    items = manifest.get(what) if manifest is not None and what is not None else None
    if items is None and manifest is None:
        items = _count_items(path, count)
    settings = identity.get("settings")
    return DerivedInfo(
        kind=path.parent.name,
        path=path,
        version=identity.get("version") or version,
        settings_digest=digest,
        settings=settings if isinstance(settings, dict) else {},
        complete=manifest is not None,
        items=items if isinstance(items, int) else None,
        items_what=what,
        size_on_disk=_bytes_under(path)[0],
    )


def _count_items(path: Path, count: Mapping[str, Any]) -> int | None:
    """Items of a partial store, as its identity says to count them: bytes of some files over a size."""
    pattern, each = count.get("files"), count.get("bytes_each")
    if not isinstance(pattern, str) or not isinstance(each, int) or each <= 0 or ".." in pattern:
        return None
    return sum(p.stat().st_size for p in path.glob(pattern) if p.is_file()) // each


def _area_info(kind: str, path: Path) -> NodeAreaInfo:
    size, files, newest = _bytes_under(path)
    return NodeAreaInfo(kind, path, size, files, newest)


def _bytes_under(path: Path) -> tuple[int, int, float | None]:
    """(bytes, files, newest modification time) of a file or everything under a folder."""
    if not path.is_dir():
        try:
            stat = path.stat()
        except OSError:
            return 0, 0, None
        return stat.st_size, 1, stat.st_mtime
    size = files = 0
    newest: float | None = None
    for entry in walk_files(path):
        try:
            stat = entry.stat(follow_symlinks=False)
        except OSError:
            continue  # removed while we looked (an image cache evicting)
        size, files = size + stat.st_size, files + 1
        newest = stat.st_mtime if newest is None else max(newest, stat.st_mtime)
    return size, files, newest


def walk_files(root: Path) -> Iterator[os.DirEntry[str]]:
    """Every file under ``root``, links not followed."""
    stack = [str(root)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            else:
                yield entry


__all__ = [
    "CacheInfo",
    "DerivedInfo",
    "EntryInfo",
    "LeftoverInfo",
    "NodeAreaInfo",
    "PrunePolicy",
    "PruneResult",
    "PruneStrategy",
    "Removal",
    "VersionInfo",
    "prune",
    "remove_entry",
    "scan",
]
