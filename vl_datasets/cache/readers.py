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
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import CacheMissError
from .store import CacheStore, LocalExport

try:
    import fcntl
except ImportError:  # Windows: nothing is held, nothing protected
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("vl_datasets")

READERS_PREFIX = ".readers-"
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
    """A shared lock on one version's readers file, held until this object is collected. Pickles
    to one that holds nothing: the process it came from holds the lock."""

    def __init__(self, entry_dir: Path, version: str, manifest: Path) -> None:
        self.path = readers_path(entry_dir, version)
        self._fd: int | None = None
        if fcntl is None:
            return
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:  # a read-only cache: no prune can remove it either
            logger.debug("Cannot hold %s (%s): a prune may remove this version under the job", self.path, exc)
            return
        try:
            held = _locked(fd, fcntl.LOCK_SH, WAIT_FOR_REMOVAL_S)
        except BaseException:
            os.close(fd)
            raise
        if held:
            self._fd = fd
        else:  # no flock on this filesystem, or a removal that never ends: hold nothing
            os.close(fd)
        if not manifest.is_file():  # removed by the prune this waited for
            self.release()
            raise CacheMissError(
                f"The cached version {version} of {entry_dir} was removed (by 'vl-datasets cache prune' or "
                "'cache rm') while it was being opened; open the dataset again to get the current one."
            )

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the file lets the lock go
            self._fd = None

    def __del__(self) -> None:
        self.release()

    def __getstate__(self) -> dict:
        return {"path": self.path, "_fd": None}

    def __repr__(self) -> str:
        return f"ReadingVersion({str(self.path)!r}, held={self._fd is not None})"


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
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError:
                continue  # gone with its entry, or a read-only cache: no job holds what cannot be opened
            if fcntl is None or _locked(fd, fcntl.LOCK_EX, 0.0):
                held.append((fd, path, version))
            else:
                os.close(fd)
                read.append(version)
        yield read
    finally:
        for fd, path, version in held:
            if not (entry_dir / version).exists():
                path.unlink(missing_ok=True)  # a job waiting on it finds its version gone, as it checks
            os.close(fd)


def _locked(fd: int, operation: int, wait_s: float) -> bool:
    """Whether ``flock(fd, operation)`` was taken within ``wait_s`` (0: one try). False also where
    the filesystem has no flock."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)
        except OSError as exc:  # ENOLCK, EOPNOTSUPP: no flock here
            logger.debug("No flock on the cache's readers files (%s): running jobs are not protected from prune", exc)
            return False
