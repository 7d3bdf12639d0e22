"""How a prune is planned from a scan and carried out (``CacheInfo.prune_strategy``, ``execute``)."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path

from ..errors import LockTimeoutError
from ..locks import hold_lock
from .layout import DERIVED_MANIFEST, remove_tree
from .readers import MERGED_INDEXES, remove_unheld_indexes, unread
from .scan import CacheInfo, EntryInfo, NodeAreaInfo, PrunePolicy, PruneStrategy, Removal, walk_files
from .store import CacheStore

logger = logging.getLogger("vl_datasets")

LEFTOVER_LOCK_TIMEOUT_S = 1.0  # a build holds its entry's lock for hours: skip it, never wait
BUILD_RUNNING = "a build is running there"


def plan(info: CacheInfo, policy: PrunePolicy) -> PruneStrategy:
    """Superseded versions and their derived stores, leftovers, then what ``policy`` asks for."""
    removals: list[Removal] = []
    for entry in info.entries:
        removals += [Removal("version", v.path, v.size_on_disk, entry, v) for v in entry.versions[:-1]]
        superseded = [d for d in entry.derived if d.version != entry.current.version]
        removals += [Removal("derived store", d.path, d.size_on_disk, entry, of_version=d.version) for d in superseded]
    removals += [Removal("leftover", x.path, x.size_on_disk, leftover=x) for x in info.leftovers]
    removals += _by_policy(info, policy, datetime.now(timezone.utc))
    return PruneStrategy(tuple(removals), len(info.entries))


def _by_policy(info: CacheInfo, policy: PrunePolicy, now: datetime) -> list[Removal]:
    """Entries and image-cache files, least recently used first (an entry by when its current
    version was made or last opened): those unused since the cutoff, then as many more as it takes
    to fit in ``max_size`` (an entry counts its current version and derived stores)."""
    cutoff = policy.cutoff(now)
    if cutoff is None and policy.max_size is None:
        return []
    # (age, size, entry or (area, file)): one list, so the oldest thing goes first whatever it is.
    candidates: list[tuple[float, int, EntryInfo | tuple[NodeAreaInfo, Path]]] = [
        ((e.current.used_at or now).timestamp(), e.current_size_on_disk, e) for e in info.entries
    ]
    images = {area: _trimmable(area.path) for area in info.node_areas}
    for area, found in images.items():
        candidates += [(mtime, size, (area, path)) for path, size, mtime in found]
    candidates.sort(key=lambda c: c[0])
    total = sum(size for _, size, _ in candidates)
    doomed: list[Removal] = []
    files: dict[NodeAreaInfo, list[tuple[Path, int]]] = {}
    for age, size, what in candidates:
        old = cutoff is not None and age < cutoff.timestamp()
        over = policy.max_size is not None and total > policy.max_size
        if not (old or over):
            continue
        total -= size
        if isinstance(what, EntryInfo):
            doomed.append(Removal("entry", what.path, size, what))
        else:
            files.setdefault(what[0], []).append((what[1], size))
    return doomed + [_area_removal(area, chosen, len(images[area])) for area, chosen in files.items()]


def _area_removal(area: NodeAreaInfo, chosen: list[tuple[Path, int]], held: int) -> Removal:
    """The whole image cache once every image in it goes (its bookkeeping too), else those images."""
    if len(chosen) == held:
        return Removal("image cache", area.path, area.size_on_disk)
    return Removal("image files", area.path, sum(size for _, size in chosen), files=tuple(p for p, _ in chosen))


def _trimmable(folder: Path) -> list[tuple[Path, int, float]]:
    """The image files of an image cache, with their sizes and last use (its own bookkeeping and
    temp files, whose names start with a dot, are not images)."""
    found = []
    for entry in walk_files(folder):
        if entry.name.startswith("."):
            continue
        try:
            stat = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        found.append((Path(entry.path), stat.st_size, stat.st_mtime))
    return found


def remove(removal: Removal) -> str | None:
    """Carry out one removal; or, when it was skipped, why: a build holds the entry, or a running
    job reads a version it would remove (``readers``)."""
    if removal.entry is None:  # no version of an entry: nothing a job holds
        return _remove(removal)
    with unread(removal.entry.path, removal.versions_read()) as read:
        if not read:
            return _remove(removal)
    named = ", ".join(read)
    logger.info("Skipped %s %s: a running job reads version %s", removal.what, removal.path, named)
    return f"a running job reads version {named}"


def _remove(removal: Removal) -> str | None:
    what, path = removal.what, removal.path
    if what == "version" and removal.entry is not None and removal.version is not None:
        CacheStore(removal.entry.store_root).remove_version(removal.version.export)
    elif what == "derived store":
        (path / DERIVED_MANIFEST).unlink(missing_ok=True)  # first: a half-removed store is never complete
        remove_tree(path)
    elif what == "leftover" and removal.leftover is not None:
        return None if _remove_leftover(removal) else BUILD_RUNNING
    elif what == "entry" and removal.entry is not None:
        try:
            CacheStore(removal.entry.store_root).remove(path, lock_timeout_s=LEFTOVER_LOCK_TIMEOUT_S)
        except LockTimeoutError:  # a build holds it: it goes at a later prune
            return BUILD_RUNNING
    elif what == "image cache":
        _remove_area(path)
    elif what == "image files":
        for file in removal.files:
            file.unlink(missing_ok=True)  # a reader that misses it reads the image from its root again
    else:
        raise ValueError(f"Cannot carry out {removal!r}")
    logger.info("Pruned %s %s", what, path)
    return None


def _remove_area(path: Path) -> None:
    """Remove a node area but the merged indexes of shared stores a running process maps (each
    held by a shared lock, ``shared_store``): a spawned worker maps them by path."""
    held = [index for folder in path.rglob(MERGED_INDEXES) for index in remove_unheld_indexes(folder)]
    if not held:
        remove_tree(path)
        return
    for child in [c for c in path.rglob("*") if not c.is_dir()]:
        if not any(index in child.parents for index in held):
            child.unlink(missing_ok=True)
    logger.info("Kept %d merged index(es) of shared stores under %s: a running process maps them", len(held), path)


def _remove_leftover(removal: Removal) -> bool:
    leftover = removal.leftover
    assert leftover is not None
    store = CacheStore(leftover.store_root)
    try:
        with hold_lock(
            store.lock_path(leftover.entry_dir), timeout_s=LEFTOVER_LOCK_TIMEOUT_S, what=f"pruning {leftover.entry_dir}"
        ):
            # Listed again under the lock: a build that held it may have published this folder since.
            if leftover.path in store.leftovers(leftover.entry_dir):
                remove_tree(leftover.path)
    except LockTimeoutError:
        return False
    return True
