"""A node-local copy of images read from an images_root, under a size limit, shared by every process.

Every DataLoader worker of every rank on the node reads and fills the same folder, with no
coordination on the read path:

- An image is written to a process-unique temp file and renamed into place (``atomic.replacing``),
  so a reader sees a whole file or none. Two processes fetching the same image both write it; the
  second rename replaces identical bytes.
- Files are named by a digest of the image's path under the root, never by the path itself, so no
  ``file_path`` can reach outside the folder, and names stay short.
- Least recently used first: a hit bumps the file's mtime (at most every ``touch_after_s``, to
  spare the disk a metadata write per read), and eviction removes the oldest mtimes.
- Eviction is bounded work per write. Each write appends one byte per 4 KiB written to a shared
  ledger file (O_APPEND writes of a few bytes are atomic on a local disk, so its size counts every
  process's writes). Once the ledger holds a tenth of the limit, the process that sees it scans
  the folder under a non-blocking lock (another process scanning means this one needn't), removes
  the oldest files down to 90% of the limit, and empties the ledger. A scan is thus paid once per
  tenth of the limit written on the node, whatever the number of processes.
- A file removed by a scan while another process looks for it is a miss there, read again from
  the root: the cache changes speed, never results.
- A cache it cannot write or touch (a read-only disk, files of another user) changes speed, never
  results either: a failed access-time update or write is logged once per process, naming the
  folder, and the image is served all the same, from the copy when it reads, else from the root;
  after a refused write (read-only, no permission) this process stops writing there.
- Files are not fsynced (a sync per image would cost more than the read it saves). Each ends with
  a trailer holding the xxh3-64 of its bytes instead, checked on every read (~1 us
  for a 100 KiB JPEG): what a power loss leaves behind (an empty or torn file renamed before its
  data reached the disk), and bytes changed anywhere in the file (a failing disk, a hand edit),
  fail the check, read as a miss, and are fetched again and replaced; a WARNING names the file.
- A copy is not checked against its original (that would cost a request per read): an image
  replaced under the root is served from the copy until the copy is evicted or removed
  (``vl-datasets cache prune``). The prepared store does check (``prepared_source``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import time
from pathlib import Path

import filelock
import xxhash

from ..atomic import replacing

logger = logging.getLogger("vl_datasets")

LEDGER, LOCK = ".written", ".evict.lock"
LEDGER_UNIT = 4096  # bytes written per ledger byte
SCAN_EVERY = 0.1  # a scan per this fraction of the limit written
LOW_WATER = 0.9  # a scan evicts down to this fraction of the limit, so the next one is not at once
STALE_TEMP_S = 3600.0  # a temp file this old belongs to a process that died mid-write
# Then the data's xxh3-64, 8 bytes little-endian: a torn file fails it as a changed one does. (Files
# of the first format, "VLic" and the data's length, read as misses and are replaced.)
TRAILER_MAGIC = b"VLi2"
TRAILER_SIZE = len(TRAILER_MAGIC) + 8
# Write failures that will not pass while this process runs: it stops writing to the folder.
REFUSED = (errno.EROFS, errno.EACCES, errno.EPERM)
_warned: set[tuple[int, str]] = set()  # (process, folder): one warning each


class ImageCache:
    """Image bytes under ``folder``, at most about ``limit_bytes`` of them.

    Safe to share between processes and threads; pickles to its settings (the ledger is reopened
    in each process).
    """

    touch_after_s = 10.0

    def __init__(self, folder: str | os.PathLike, limit_bytes: int) -> None:
        self.folder = Path(folder)
        self.limit_bytes = int(limit_bytes)
        self._ledger: int | None = None
        self._pid: int | None = None
        self._writable = True
        self._damage_named: int | None = None  # the process that warned of a damaged copy

    def __getstate__(self) -> dict:
        return {"folder": self.folder, "limit_bytes": self.limit_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["folder"], state["limit_bytes"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"ImageCache({str(self.folder)!r}, limit_bytes={self.limit_bytes})"

    def path(self, key: str) -> Path:
        """Where the image at ``key`` (its path under the root) is kept."""
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.folder / digest[:2] / digest[2:32]

    def get(self, key: str) -> bytes | None:
        """The cached bytes of ``key``, or None (no copy, or one this process cannot read)."""
        path = self.path(key)
        try:
            with open(path, "rb") as handle:
                stored = handle.read()
                mtime = os.fstat(handle.fileno()).st_mtime
        except FileNotFoundError:
            return None
        except OSError as exc:  # another user's file, a failing disk: read from the root instead
            self._warn_once("read", exc)
            return None
        data = _unwrap(stored)
        if data is None:  # the next put replaces it
            # Once a cache and process at WARNING: a power loss may leave thousands, each read once.
            level = logging.DEBUG if self._damage_named == os.getpid() else logging.WARNING
            self._damage_named = os.getpid()
            logger.log(level, "Ignoring the damaged copy %s (%d bytes): read from the root again", path, len(stored))
            return None
        if time.time() - mtime > self.touch_after_s:
            try:
                os.utime(path)
            except FileNotFoundError:  # evicted meanwhile: the bytes are still good
                pass
            except OSError as exc:  # a read-only disk: eviction order suffers, this read does not
                self._warn_once("mark as recently used", exc)
        return data

    def put(self, key: str, data: bytes) -> None:
        """Keep ``data`` as ``key``'s bytes, and evict if the node has written enough since the last
        scan. A write that fails is logged (once per process) and dropped: never an error here."""
        if not self._writable:
            return
        try:
            self._put(key, data)
        except OSError as exc:
            self._warn_once("write", exc)
            if exc.errno in REFUSED:
                self._writable = False

    def _put(self, key: str, data: bytes) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as tmp, open(tmp, "wb") as out:
            out.write(data)
            out.write(_trailer(data))
        ledger = self._ledger_fd()
        os.write(ledger, b"\0" * -(-len(data) // LEDGER_UNIT))
        if os.fstat(ledger).st_size * LEDGER_UNIT >= max(1, int(self.limit_bytes * SCAN_EVERY)):
            self.evict()

    def _warn_once(self, action: str, exc: OSError) -> None:
        if (os.getpid(), str(self.folder)) in _warned:
            return
        _warned.add((os.getpid(), str(self.folder)))
        logger.warning(
            "Cannot %s images in the image cache %s (%s: %s). Images are served all the same, from the "
            "root when the cache has no copy this process can read; this process reports no more of "
            "this folder's failures.",
            action,
            self.folder,
            type(exc).__name__,
            exc.strerror or exc,
        )

    def evict(self) -> None:
        """Remove the least recently used files down to ``LOW_WATER`` of the limit, unless another
        process is doing it now."""
        lock = filelock.FileLock(str(self.folder / LOCK))
        try:
            lock.acquire(blocking=False)
        except filelock.Timeout:
            return
        try:
            os.truncate(self.folder / LEDGER, 0)  # first: writes during the scan count toward the next
            files, total = self._scan()
            if total > self.limit_bytes:
                files.sort()
                goal = self.limit_bytes * LOW_WATER
                for _, size, path in files:
                    if total <= goal:
                        break
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                        total -= size
        finally:
            lock.release()

    def size_bytes(self) -> int:
        """The bytes the cached images take now (a scan)."""
        return self._scan()[1]

    def _scan(self) -> tuple[list[tuple[float, int, str]], int]:
        """(mtime, size, path) of every cached image, and their total size; stale temp files removed."""
        files: list[tuple[float, int, str]] = []
        total = 0
        now = time.time()
        with contextlib.suppress(FileNotFoundError), os.scandir(self.folder) as shards:
            for shard in shards:
                if not shard.is_dir(follow_symlinks=False):
                    continue
                with os.scandir(shard.path) as entries:
                    for entry in entries:
                        with contextlib.suppress(FileNotFoundError):  # another scan removed it
                            stat = entry.stat(follow_symlinks=False)
                            if entry.name.endswith(".tmp"):
                                if now - stat.st_mtime > STALE_TEMP_S:
                                    os.unlink(entry.path)
                                continue
                            files.append((stat.st_mtime, stat.st_size, entry.path))
                            total += stat.st_size
        return files, total

    def _ledger_fd(self) -> int:
        # Opened lazily in each process: a descriptor inherited through fork would work, but one
        # from a pickled copy would not exist, so every process opens its own.
        if self._ledger is None or self._pid != os.getpid():
            self.folder.mkdir(parents=True, exist_ok=True)
            self._ledger = os.open(self.folder / LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._pid = os.getpid()
        return self._ledger


def _trailer(data: bytes | memoryview) -> bytes:
    return TRAILER_MAGIC + xxhash.xxh3_64_intdigest(data).to_bytes(8, "little")


def _unwrap(stored: bytes) -> bytes | None:
    """The data of a stored file, or None when its trailer does not match it (a torn write, bytes
    changed since)."""
    if len(stored) < TRAILER_SIZE:
        return None
    data = memoryview(stored)[:-TRAILER_SIZE]
    return bytes(data) if stored[-TRAILER_SIZE:] == _trailer(data) else None
