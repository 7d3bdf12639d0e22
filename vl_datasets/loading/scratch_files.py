"""Scratch files kept in the cache, not the system's temporary folder, and removed by the next
writer on the same host once the process that wrote one is gone.

A file in the temporary folder outlives a killed process for good (and that folder is often
memory); one in the cache is found again. Each writer holds an exclusive ``flock`` on its file for
as long as it uses it. The kernel drops the lock when the process ends, however it ends, so a file
whose lock another process can take belongs to a dead writer. Names carry the host, and a writer
sweeps only its own host's files: between hosts, ``flock`` on a network filesystem is not to be
trusted. Where there is no ``flock`` (Windows), nothing is swept.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

from ..cache.store import safe_name

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]


def this_host() -> str:
    """This host's name as scratch file names begin with."""
    return safe_name(socket.gethostname())[:40]


@contextlib.contextmanager
def scratch_file(folder: Path, suffix: str) -> Iterator[Path]:
    """A new empty file in ``folder`` (made if need be), this process's alone until the block ends,
    then removed; first, the files with ``suffix`` that dead writers on this host left there."""
    folder.mkdir(parents=True, exist_ok=True)
    sweep(folder, suffix)
    fd, path = _created(folder, suffix)
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)  # the lock goes with it


def _created(folder: Path, suffix: str) -> tuple[int, Path]:
    """(a descriptor holding the lock, the path) of a new file in ``folder``."""
    while True:
        path = folder / f"{this_host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        if fcntl is None:
            return fd, path
        fcntl.flock(fd, fcntl.LOCK_EX)  # held until the descriptor is closed or the process ends
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd, path
        os.close(fd)  # swept between its creation and its lock: another sweeper saw it unlocked


def sweep(folder: Path, suffix: str) -> list[Path]:
    """Remove the files with ``suffix`` in ``folder`` that writers on this host left when they
    died (their lock free); the paths removed."""
    if fcntl is None or not folder.is_dir():
        return []
    removed, ours = [], re.compile(re.escape(this_host()) + r"-\d+-[0-9a-f]{8}" + re.escape(suffix))
    for path in folder.glob(f"*{suffix}"):
        if not ours.fullmatch(path.name):  # another host's (a host "vm" must not take "vm-2"'s), or no scratch
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:  # removed meanwhile
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # its writer lives
            os.close(fd)
            continue
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
    return removed
