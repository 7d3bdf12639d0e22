"""Which cached versions running jobs read: a shared lock each, so that a prune leaves them be.

A dataset holds a shared ``flock`` on its version's readers file (``<entry>/.readers-<version>``)
from the moment it opens the version until it is gone (collected, or its process ends). DataLoader
workers forked from it share the lock; spawned ones need not hold one (their parent does). ``cache
prune`` and ``cache rm`` take the readers files of what they remove exclusively, without waiting:
a version a job reads is skipped, said so, and goes at a later prune, when no job reads it.

A job that opens a version while a prune removes it waits for the removal to end (a few seconds),
then finds its version gone: ``CacheMissError``, and opening again gets the current one. Where
``flock`` does not work (some network filesystems, Windows) nothing is held and a prune removes
what it chooses, as it would without this module.

The merged indexes of shared prepared stores in the node's shard cache are held the same way by
the processes that map them (``hold_merged_index``): a new build's sweep and a prune leave those be.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
import weakref
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from ..errors import CacheMissError
from .store import CacheStore, LocalExport

try:
    import fcntl
except ImportError:  # Windows: nothing is held, nothing protected
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("vl_datasets")

READERS_PREFIX = ".readers-"
# A shared prepared store's merged indexes in the node's shard cache (``loading.shared_store``),
# each with the readers file its mapping processes hold shared: a prune removes none they hold.
MERGED_INDEXES, READERS_FILE = ".meta", ".readers"
WAIT_FOR_REMOVAL_S = 120.0  # a prune holds a version's readers file while it removes the version
_POLL_S = 0.05


def readers_path(entry_dir: Path, version: str) -> Path:
    return entry_dir / f"{READERS_PREFIX}{version}"


def reading_version(entry: LocalExport) -> ReadingVersion | None:
    """The shared lock on ``entry``'s version (None for an export read in place, outside the
    cache's versions); ``CacheMissError`` when a prune removed the version meanwhile."""
    if entry.entry_dir is None or entry.version is None:
        return None
    return ReadingVersion(entry.entry_dir, entry.version, CacheStore.manifest_of(entry))


class ReadingVersion:
    """A shared lock on one version's readers file, held until this object is collected (one
    file a process, however many datasets read the version). Pickles to one that holds nothing:
    the process it came from holds the lock."""

    def __init__(self, entry_dir: Path, version: str, manifest: Path) -> None:
        self.path = readers_path(entry_dir, version)
        self._held: HeldLock | None = None
        with _HELD_LOCK:
            held = _HELD.get(self.path)
        if held is None:
            fd, _ = lock_file(self.path, shared=True, wait_s=WAIT_FOR_REMOVAL_S)
            if fd is not None:
                held = HeldLock(fd)
                with _HELD_LOCK:
                    _HELD[self.path] = held
        self._held = held
        _mark_used(self.path)
        if not manifest.is_file():  # removed by the prune this waited for
            self.release()
            raise CacheMissError(
                f"The cached version {version} of {entry_dir} was removed (by 'vl-datasets cache prune' or "
                "'cache rm') while it was being opened; open the dataset again to get the current one."
            )

    def release(self) -> None:
        self._held = None  # the last of this process's holders to go closes the file

    def __getstate__(self) -> dict:
        return {"path": self.path, "_held": None}

    def __repr__(self) -> str:
        return f"ReadingVersion({str(self.path)!r}, held={self._held is not None})"


def _mark_used(path: Path) -> None:
    """The readers file's mtime is when the version was last opened: ``cache prune --older-than``
    ages an entry by it. A cache this user may not write (another's, read-only) keeps its times."""
    with contextlib.suppress(OSError):
        os.utime(path)


def last_used(entry_dir: Path, version: str) -> datetime | None:
    """When ``version`` was last opened by a dataset, if it ever was (``_mark_used``)."""
    try:
        mtime = readers_path(entry_dir, version).stat().st_mtime
    except OSError:
        return None
    return datetime.fromtimestamp(mtime, timezone.utc) if mtime > 0 else None  # 0: made by a prune


class HeldLock:
    """An open readers file holding its lock (shared by a process's holders of one version, or
    a store's of one merged index). Closing the file lets the lock go: ``close()``, or a finalizer
    when the last holder goes or at the interpreter's exit, whichever comes first (a ``__del__``
    run during the exit's teardown of modules found this module's ``os`` gone)."""

    def __init__(self, fd: int) -> None:
        self._close = weakref.finalize(self, os.close, fd)

    def close(self) -> None:
        self._close()  # runs once: a later call, or the finalizer, does nothing


_HELD: weakref.WeakValueDictionary[Path, HeldLock] = weakref.WeakValueDictionary()
_HELD_LOCK = threading.Lock()


@contextlib.contextmanager
def unread(entry_dir: Path, versions: list[str]) -> Iterator[list[str]]:
    """Hold the readers files of ``versions`` of the entry at ``entry_dir`` exclusively for the
    block, without waiting: yields the versions a running job reads (an empty list when none
    does, and then no job can open one until the block ends). Each readers file goes with the
    block when its version was removed in it."""
    held: list[tuple[int, Path, str]] = []
    read: list[str] = []
    try:
        for version in versions:
            path = readers_path(entry_dir, version)
            opened_before = path.exists()
            fd, busy = lock_file(path, shared=False, wait_s=0.0)
            if busy:
                read.append(version)
            elif fd is not None:
                held.append((fd, path, version))
                if not opened_before:  # made here, not by a reader: its time is no use (``last_used``)
                    with contextlib.suppress(OSError):
                        os.utime(path, (0, 0))
        yield read
    finally:
        for fd, path, version in held:
            if not (entry_dir / version).exists():
                path.unlink(missing_ok=True)  # a job waiting on it finds its version gone, as it checks
            os.close(fd)


def merged_index_folder(shard_cache: Path, name: str) -> Path:
    """Where a shared prepared store's merged index ``name`` lies in the node's shard cache of it."""
    return shard_cache / MERGED_INDEXES / name


def hold_merged_index(folder: Path) -> HeldLock | None:
    """The open readers file of the merged index ``folder`` (made if need be), holding a shared
    lock (None where nothing can be held): close it, or let it go, to let the index go."""
    fd = None
    for _ in range(3):  # another process's sweep may remove a folder just made, before its lock is held
        folder.mkdir(parents=True, exist_ok=True)
        fd, _ = lock_file(folder / READERS_FILE, shared=True, wait_s=WAIT_FOR_REMOVAL_S)
        if (folder / READERS_FILE).is_file():
            break  # held, or nothing can be held here
        if fd is not None:
            os.close(fd)
            fd = None
    return None if fd is None else HeldLock(fd)


def sweep_merged_indexes(kept: Path) -> None:
    """Remove the merged indexes beside ``kept`` (a store's earlier builds: hundreds of MiB at
    millions of images) that no process holds (``hold_merged_index``)."""
    remove_unheld_indexes(kept.parent, keep=kept)


def remove_unheld_indexes(folder: Path, *, keep: Path | None = None) -> list[Path]:
    """Remove the merged indexes in ``folder`` (a shard cache's ``MERGED_INDEXES``) but ``keep`` and
    those a process holds; returns those held (which stay). Where nothing can be locked, they stay."""
    held = []
    for index in sorted(folder.iterdir()) if folder.is_dir() else []:
        if index == keep or not index.is_dir():
            continue
        fd, busy = lock_file(index / READERS_FILE, shared=False, wait_s=0.0)
        if busy:
            held.append(index)
        if fd is None:
            continue  # a process maps it, or nothing can be locked here: it stays
        try:
            shutil.rmtree(index, ignore_errors=True)
            logger.debug("Removed %s, a merged index of a shared store no process maps", index)
        finally:
            os.close(fd)
    return held


def lock_file(path: Path, *, shared: bool, wait_s: float) -> tuple[int | None, bool]:
    """(the open file ``path`` (created if need be) holding a shared or exclusive ``flock``, taken
    within ``wait_s``; False) or (None, whether another process holds it). (None, False): nothing
    can be held there (no such folder, a read-only cache, no flock on the filesystem, Windows)."""
    if fcntl is None:
        return None, False
    try:  # open for writing: over NFS flock is a POSIX lock, and an exclusive one needs it
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        try:  # a file another user made, or a read-only cache: a shared lock still holds
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            logger.debug("Cannot lock %s (%s)", path, exc)
            return None, False
    try:
        taken = _locked(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX, wait_s)
    except BaseException:
        os.close(fd)
        raise
    if taken is True:
        return fd, False
    os.close(fd)
    return None, taken is None


def _locked(fd: int, operation: int, wait_s: float) -> bool | None:
    """True when ``flock(fd, operation)`` was taken within ``wait_s`` (0: one try), None when
    another process held it throughout, False where the filesystem has no flock."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return None
            time.sleep(_POLL_S)
        except OSError as exc:  # ENOLCK, EOPNOTSUPP: no flock here
            logger.debug("No flock on %s's filesystem (%s): what it guards is not protected", fd, exc)
            return False
