"""The node-local copy of a shared prepared store's shards, under a size limit shared by every process.

A shared store (``shared_store``) keeps its pixels in a few large shards on object storage. Every
DataLoader worker of every rank on a node reads them through one folder here:

- A shard is downloaded once per node, whatever the number of processes asking: the first takes
  the shard's file lock and downloads; the others wait for the lock, then find the shard there.
  Their wait is bounded by the download's progress, not by a total: the partial file must keep
  growing (a range at a time), and a waiter that sees it stall for ``stall_s`` downloads the shard
  itself (a hung downloader cannot stop the node; a dead one releases its lock at once).
- Whole or absent: a download goes to a process-unique temp file (``atomic.replacing``), is checked
  against the size the store's files give (and their xxh3-64 of the shard, when given), and only
  then renamed into place. A download killed midway leaves a temp file no reader takes, removed by
  a later eviction scan once it is an hour old. Correctness comes from that rename; the lock only
  spares the node duplicate downloads (locks can lie on network filesystems).
- One GET per shard of the store's size (``shard_format.SHARD_BYTES``), as litData fetches its
  chunks; a larger shard is fetched ``CHUNK_BYTES`` at a time, ``RANGES_IN_FLIGHT`` ranges at once,
  written in order. Each GET is retried and bounded in time by the image read policy
  (``retries.py``: ``VL_DATASETS_READ_*``), so a transient failure costs one GET, and a waiter's
  patience (``stall_s``) outlasts one.
- Least recently used first, across processes: a use bumps the shard's mtime (at most every
  ``TOUCH_AFTER_S``), and after each download the folder is scanned under a lock and the oldest
  shards are removed until the whole is within ``limit_bytes`` (the one just downloaded is kept
  even when it alone is over). Removal is an unlink: a process reading an evicted shard keeps its
  open descriptor and its bytes; one that finds it gone asks again and it is downloaded again.
- Counts (``stats()``: this process; ``node_stats()``: every process that used the folder) are kept
  in a small file per process, so a job's hit rate can be read where its workers are gone.

A cache pickles as its folder, limit and the opener of the remote shards folder (a
``sources.FsspecRoot``, which opens its filesystem in each process, after a fork or a spawn).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import filelock
import numpy as np
import xxhash

from ..atomic import replacing
from ..backoff import RetryPolicy
from ..errors import ImageReadError, ShardReadError, SharedStoreError
from .shard_format import SHARD_BYTES

logger = logging.getLogger("vl_datasets")

# One GET: a whole shard of the store's size. A cold epoch downloads several shards at once anyway
# (PREFETCH_THREADS a process), and four 16 MiB ranges a shard cost 4x the requests (each billed on
# S3) and, from moto's S3 on loopback, halved the cold epoch (447 against 846 img/s in one run of
# benchmarks/bench_shared_peers.py): that server reads the whole object for every range.
CHUNK_BYTES = SHARD_BYTES
RANGES_IN_FLIGHT = 4  # a larger shard's ranges fetched at once (4 x CHUNK_BYTES held at most)
LOCKS, STATS, EVICT_LOCK = ".locks", ".stats", ".evict.lock"
TOUCH_AFTER_S = 5.0  # a use bumps the shard's mtime at most this often: a metadata write per image would cost
POLL_S = 1.0  # a waiter looks at the download's progress this often
STALE_TEMP_S = 3600.0  # a temp file this old belongs to a process that died mid-download
STALE_STATS_S = 7 * 86400.0  # the counts of a process gone this long are dropped
PREFETCH_THREADS = 4  # downloads in the background per process
MAX_PENDING = 16  # shards waiting to be prefetched per process; more hints are dropped
COUNTS = ("hits", "misses", "waits", "bytes_downloaded")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")


class RemoteShards(Protocol):
    """Where shards come from (``sources.FsspecRoot`` of the store's shards folder)."""

    display_root: str
    retry: RetryPolicy

    def read_range(self, path: str, start: int, end: int) -> bytes: ...

    def location(self, path: str) -> str: ...

    def scrub(self, text: str) -> str: ...


class ShardCache:
    """Shards of ``opener``'s folder kept under ``local_dir``, at most about ``limit_bytes`` of them.

    Safe to share between threads and processes (see the module). ``stall_s``: how long a process
    waits for another's download that makes no progress (default: the read policy's deadline for a
    range, plus 30 s).
    """

    def __init__(
        self,
        local_dir: str | os.PathLike,
        limit_bytes: int,
        opener: RemoteShards,
        *,
        stall_s: float | None = None,
        prefetch_threads: int = PREFETCH_THREADS,
    ) -> None:
        self.local_dir, self.limit_bytes, self.opener = Path(local_dir), int(limit_bytes), opener
        self.stall_s = stall_s if stall_s is not None else (opener.retry.deadline_s or 300.0) + 30.0
        self.prefetch_threads = prefetch_threads
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._name_locks: dict[str, threading.Lock] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._pending: set[str] = set()
        self._counts = [0] * len(COUNTS)
        self._stats_fd: int | None = None
        self._no_flock = False

    def __getstate__(self) -> dict:
        return {
            "local_dir": self.local_dir,
            "limit_bytes": self.limit_bytes,
            "opener": self.opener,
            "stall_s": self.stall_s,
            "prefetch_threads": self.prefetch_threads,
        }

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def __repr__(self) -> str:
        return (
            f"ShardCache({str(self.local_dir)!r}, limit_bytes={self.limit_bytes}, shards={self.opener.display_root!r})"
        )

    # -- what readers ask ------------------------------------------------------------------------

    def path(self, name: str, size: int, *, xxh3: int | str | None = None) -> Path:
        """The local file of shard ``name`` (``size`` bytes, and that xxh3-64 when given), downloaded
        now if the node has no copy (by this process, or by another while this one waits)."""
        return Path(self._ensure(name, size, xxh3, count=True))

    def open(self, name: str, size: int, *, xxh3: int | str | None = None) -> int:
        """A read-only descriptor of shard ``name``'s local file: ``path`` and an open, asked again
        when an eviction removed the file in between (its bytes stay readable once open)."""
        for _ in range(3):
            try:
                return os.open(self._ensure(name, size, xxh3, count=True), os.O_RDONLY)
            except FileNotFoundError:
                continue
        raise ShardReadError(
            f"The shard {self.opener.location(name)} was evicted from {self.local_dir} three times before it could "
            f"be opened: prepared_cache_limit ({self.limit_bytes} bytes) is too small for the shards in use on this "
            "node.",
            url=self.opener.location(name),
        )

    def discard(self, name: str) -> None:
        """Remove the local copy of ``name`` (found damaged), so the next ``path`` downloads it again."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._local(name))

    def prefetch(self, names: Iterable[tuple[str, int] | tuple[str, int, int | str | None]]) -> None:
        """Start downloading the shards ``names`` ((name, size[, xxh3])) that the node has no copy
        of, on at most ``prefetch_threads`` background threads; a failure is left for ``path`` to
        raise. At most ``MAX_PENDING`` wait: later hints are dropped (a hint is only a hint)."""
        self._own_process()
        for name, size, *rest in names:
            local = self._local(name)
            with self._lock:
                if name in self._pending or len(self._pending) >= MAX_PENDING or _has_size(local, size):
                    continue
                self._pending.add(name)
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.prefetch_threads, thread_name_prefix="vl-shard-prefetch")
                pool = self._pool
            pool.submit(self._prefetch_one, name, size, rest[0] if rest else None)

    def stats(self) -> dict[str, int]:
        """This process's counts: ``hits`` (uses answered by the local copy), ``misses`` (downloads
        it made), ``waits`` (shards another process downloaded while this one waited),
        ``bytes_downloaded``."""
        self._own_process()
        return dict(zip(COUNTS, self._counts))

    def node_stats(self) -> dict[str, float]:
        """The counts of every process that used this folder (in the last week), and ``hit_rate``:
        the share of uses that needed no download by the process that asked."""
        totals = np.zeros(len(COUNTS), np.uint64)
        with contextlib.suppress(FileNotFoundError), os.scandir(self.local_dir / STATS) as entries:
            for entry in entries:
                with contextlib.suppress(OSError), open(entry.path, "rb") as handle:
                    counts = np.frombuffer(handle.read(), np.uint64)
                if len(counts) == len(COUNTS):
                    totals += counts
        stats: dict[str, float] = dict(zip(COUNTS, map(int, totals)))
        uses = stats["hits"] + stats["misses"] + stats["waits"]
        stats["hit_rate"] = (stats["hits"] + stats["waits"]) / uses if uses else 0.0
        return stats

    def size_bytes(self) -> int:
        """The bytes the cached shards take now (a scan)."""
        return self._scan()[1]

    # -- inside ----------------------------------------------------------------------------------

    def _ensure(self, name: str, size: int, xxh3: int | str | None, *, count: bool, wait: bool = True) -> str:
        """The local file of ``name``, downloaded first unless the node has it. Without ``wait`` (a
        prefetch): ``_Busy`` at once when another thread or process is downloading it."""
        self._own_process()
        local = self._local(name)
        if _has_size(local, size, touch=True):
            if count:
                self._count("hits")
            return local
        with self._exclusive(name, wait=wait):
            if _has_size(local, size):  # downloaded by another process while this one waited
                self._count("waits")
                return local
            self._download(name, size, _as_int(xxh3), Path(local))
        self._count("misses", size)
        self._evict(keep=local)
        return local

    def _prefetch_one(self, name: str, size: int, xxh3: int | str | None) -> None:
        # Without waiting: a prefetch thread that waited for another process's download of a shard
        # would leave the shards behind it to wait too (measured: the last of a cold epoch's first
        # 8 shards started 1.2 s late, its 4 threads busy with 3 downloads and a wait).
        try:
            self._ensure(name, size, xxh3, count=False, wait=False)
        except _Busy:
            pass  # the process downloading it is the one that makes it local
        except Exception as exc:  # the read that needs the shard raises it, typed
            logger.debug("Prefetching shard %s failed: %s", name, type(exc).__name__)
        finally:
            with self._lock:
                self._pending.discard(name)

    def _local(self, name: str) -> str:
        if not _SAFE_NAME.fullmatch(name):  # a name from the store's files: never a path out of the folder
            raise SharedStoreError(
                f"The shared store {self.opener.display_root} names a shard {name!r}, which is not a file name: "
                "the store is damaged.",
                url=self.opener.display_root,
            )
        return os.path.join(self.local_dir, name)  # a str: a Path costs more than the rest of a hit

    def _download(self, name: str, size: int, xxh3: int | None, local: Path) -> None:
        self.local_dir.mkdir(parents=True, exist_ok=True)
        # The last range asks one byte past the expected end: an object longer than the store says
        # is caught too (a range that starts past the end would be refused).
        ranges = [(start, min(start + CHUNK_BYTES, size)) for start in range(0, size, CHUNK_BYTES)]
        ranges[-1:] = [(ranges[-1][0], size + 1)] if ranges else []
        digest = xxhash.xxh3_64()
        received = 0
        with replacing(local) as tmp, open(tmp, "wb") as out:
            for (start, end), data in zip(ranges, self._ranges_in_order(name, ranges)):
                out.write(data)
                digest.update(data)
                received += len(data)
                if len(data) < end - start:  # the object ends early: the ranges after it would be refused
                    break
            if received != size or (xxh3 is not None and digest.intdigest() != xxh3):
                found = "bytes whose xxh3 differs" if received == size else f"{received} bytes"
                found = f"more than {size} bytes" if received > size else found
                raise ShardReadError(
                    f"The shard {self.opener.location(name)} holds {found}, where the shared store's files say "
                    f"{size} bytes{'' if xxh3 is None else f' of xxh3 {xxh3:016x}'}: the store is damaged.",
                    url=self.opener.location(name),
                )

    def _ranges_in_order(self, name: str, ranges: list[tuple[int, int]]) -> Iterator[bytes]:
        """The bytes of ``ranges`` of ``name``, in order, ``RANGES_IN_FLIGHT`` of them fetched at once:
        one GET at a time leaves a shard's download waiting on every range's first byte, and on one
        connection's rate (72 against 119 MB/s for four at once, from moto on loopback at 50 ms)."""
        pool = ThreadPoolExecutor(RANGES_IN_FLIGHT, thread_name_prefix="vl-shard-range")
        pending: collections.deque[Future[bytes]] = collections.deque()
        try:
            for start, end in ranges:
                pending.append(pool.submit(self._fetch, name, start, end))
                if len(pending) >= RANGES_IN_FLIGHT:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # a failed or short range: the ranges not started are dropped, those in flight end
            pool.shutdown(wait=True, cancel_futures=True)

    def _fetch(self, name: str, start: int, end: int) -> bytes:
        try:
            return self.opener.read_range(name, start, end)
        except Exception as exc:
            failure: Exception = exc
        raise self._error(name, failure)  # outside the handler: no __context__ with a signed URL

    def _error(self, name: str, exc: Exception) -> ShardReadError:
        where = self.opener.location(name)
        if isinstance(exc, FileNotFoundError):
            return ShardReadError(
                f"The shard {where} is missing from the shared store: the store is damaged.", url=where
            )
        attempts = exc.attempts if isinstance(exc, ImageReadError) else None
        reason = self.opener.scrub(str(exc) if isinstance(exc, ImageReadError) else f"{type(exc).__name__}: {exc}")
        return ShardReadError(f"Cannot fetch the shard {where}: {reason}", url=where, attempts=attempts)

    @contextlib.contextmanager
    def _exclusive(self, name: str, *, wait: bool = True) -> Iterator[None]:
        """This process's only download of ``name``, and the node's while the file lock holds.
        Without ``wait``: ``_Busy`` at once while another thread or process holds it."""
        with self._lock:
            thread_lock = self._name_locks.setdefault(name, threading.Lock())
        if not thread_lock.acquire(blocking=wait):
            raise _Busy(name)
        try:
            lock = None if self._no_flock else self._file_lock(name)
            held = False
            if lock is not None and wait:
                held = self._wait_for(lock, name)
            elif lock is not None:
                taken = self._try_lock(lock, 0)
                if taken is False:
                    raise _Busy(name)
                held = bool(taken)
            try:
                yield
            finally:
                if held:
                    lock.release()  # type: ignore[union-attr]
        finally:
            thread_lock.release()

    def _file_lock(self, name: str) -> filelock.BaseFileLock | None:
        try:
            (self.local_dir / LOCKS).mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
        return filelock.FileLock(str(self.local_dir / LOCKS / f".{name}.lock"))

    def _wait_for(self, lock: filelock.BaseFileLock, name: str) -> bool:
        """Take ``lock``; False (go on without it) when another process's download stops growing for
        ``stall_s``, or the filesystem has no locks."""
        seen, progress_at = -1, time.monotonic()
        while True:
            taken = self._try_lock(lock, POLL_S)
            if taken is not False:
                return bool(taken)
            partial = self._partial_bytes(name)
            if partial != seen:
                seen, progress_at = partial, time.monotonic()
            elif time.monotonic() - progress_at > self.stall_s:
                logger.warning(
                    "Another process's download of the shard %s made no progress for %.0f s; downloading it here too",
                    self.opener.location(name),
                    self.stall_s,
                )
                return False

    def _try_lock(self, lock: filelock.BaseFileLock, timeout_s: float) -> bool | None:
        """True once ``lock`` is taken within ``timeout_s`` (0: one try); False while another
        process holds it; None on a filesystem with no locks, remembered (the rename alone keeps a
        download right)."""
        try:
            lock.acquire(timeout=timeout_s)
            return True
        except filelock.Timeout:
            return False
        except (NotImplementedError, OSError) as exc:
            logger.info("No file locks in %s (%s): processes may download a shard twice", self.local_dir, exc)
            self._no_flock = True
            return None

    def _partial_bytes(self, name: str) -> int:
        """The bytes the downloads of ``name`` in progress on the node have written (their temp files)."""
        total = 0
        for tmp in self.local_dir.glob(f".{glob_escape(name)}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                total += tmp.stat().st_size
        return total

    def _evict(self, *, keep: str) -> None:
        """Remove the least recently used shards (never ``keep``) until the folder is within the limit."""
        lock = filelock.FileLock(str(self.local_dir / EVICT_LOCK))
        try:
            lock.acquire(timeout=60)
        except (filelock.Timeout, NotImplementedError, OSError):
            return  # another process is scanning (or cannot lock): the next download scans again
        try:
            files, total = self._scan()
            for _, size, path in sorted(files):
                if total <= self.limit_bytes:
                    break
                if path != keep:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                        total -= size
        finally:
            lock.release()

    def _scan(self) -> tuple[list[tuple[float, int, str]], int]:
        """(mtime, size, path) of every cached shard and their total size; stale temp files and the
        counts of long-gone processes removed."""
        files: list[tuple[float, int, str]] = []
        now = time.time()
        with contextlib.suppress(FileNotFoundError), os.scandir(self.local_dir) as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    stat = entry.stat(follow_symlinks=False)
                    if not entry.name.startswith("."):
                        files.append((stat.st_mtime, stat.st_size, entry.path))
                    elif entry.name.endswith(".tmp") and now - stat.st_mtime > STALE_TEMP_S:
                        os.unlink(entry.path)
        with contextlib.suppress(FileNotFoundError), os.scandir(self.local_dir / STATS) as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    if now - entry.stat().st_mtime > STALE_STATS_S:
                        os.unlink(entry.path)
        return files, sum(size for _, size, _ in files)

    def _own_process(self) -> None:
        if self._pid != os.getpid():  # a forked child: locks, threads and counts are the parent's
            self._reset()

    def _count(self, what: str, downloaded: int = 0) -> None:
        with self._lock:
            self._counts[COUNTS.index(what)] += 1
            self._counts[-1] += downloaded
            counts = struct.pack(f"<{len(COUNTS)}Q", *self._counts)
            with contextlib.suppress(OSError):  # counts are for people: a read-only folder must not stop reads
                os.pwrite(self._stats_file(), counts, 0)

    def _stats_file(self) -> int:
        if self._stats_fd is None:
            (self.local_dir / STATS).mkdir(parents=True, exist_ok=True)
            name = f".{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            self._stats_fd = os.open(self.local_dir / STATS / name, os.O_WRONLY | os.O_CREAT, 0o644)
        return self._stats_fd


class _Busy(Exception):
    """A shard another thread or process is downloading, met by a prefetch that does not wait."""


def _has_size(path: str | Path, size: int, *, touch: bool = False) -> bool:
    """Whether ``path`` is there with ``size`` bytes; with ``touch``, marked as recently used (for
    eviction) unless it was lately."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return False
    if touch and stat.st_size == size and time.time() - stat.st_mtime > TOUCH_AFTER_S:
        with contextlib.suppress(OSError):  # evicted meanwhile, or a read-only folder: the order suffers, not the read
            os.utime(path)
    return stat.st_size == size


def _as_int(xxh3: Any) -> int | None:
    """A shard's xxh3-64 as the store's files give it: an int, or its hex digest."""
    if xxh3 is None or isinstance(xxh3, int):
        return xxh3
    return int(str(xxh3), 16)


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters taken literally (a safe name has none but ``.``)."""
    return re.sub(r"([*?\[])", r"[\1]", name)
