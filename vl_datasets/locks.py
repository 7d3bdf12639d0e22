"""Cross-process locks that say what they wait for and give up with a clear error.

Locks only keep concurrent processes from doing the same work twice; correctness comes from
atomic renames (a lock can lie on NFS or Lustre). Where the filesystem has no ``flock``, a soft
lock (a file that exists while held) stands in.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator

import filelock

from .config import check_seconds
from .errors import LockTimeoutError

logger = logging.getLogger("vl_datasets")

LOG_EVERY_S = 10.0


def _acquire(lock: filelock.BaseFileLock, timeout_s: float | None, what: str) -> None:
    check_seconds(f"The lock timeout for {what}", timeout_s)
    start = time.monotonic()
    tried = False  # a timeout of 0 (or past) still tries once: "do not wait", not "give up unasked"
    while True:
        waited = time.monotonic() - start
        remaining = None if timeout_s is None else timeout_s - waited
        if remaining is not None and remaining <= 0 and tried:
            raise LockTimeoutError(
                f"Gave up after {waited:.0f}s waiting for another process holding the lock on {what} "
                f"({lock.lock_file}). If no process is working on it, delete that file.",
                lock_path=lock.lock_file,
            )
        try:
            tried = True
            lock.acquire(timeout=LOG_EVERY_S if remaining is None else max(min(LOG_EVERY_S, remaining), 0.0))
            return
        except filelock.Timeout:
            logger.warning("Waiting for another process to finish %s (%.0fs so far)", what, time.monotonic() - start)


@contextlib.contextmanager
def hold_lock(path: str | os.PathLike, *, timeout_s: float | None, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) for the ``with`` block."""
    path = os.fspath(path)
    lock: filelock.BaseFileLock = filelock.FileLock(path)
    try:
        _acquire(lock, timeout_s, what)
    except (NotImplementedError, OSError) as exc:
        if isinstance(exc, LockTimeoutError):
            raise
        logger.info("No flock support for %s (%s); using a soft lock", path, exc)
        lock = filelock.SoftFileLock(path + ".soft")
        _acquire(lock, timeout_s, what)
    try:
        yield
    finally:
        lock.release()
