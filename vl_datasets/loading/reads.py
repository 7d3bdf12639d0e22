"""Image reads in flight: many at once per process, and read-ahead for the indices needed next.

Object storage answers a read after 50-100 ms (contract §7). One read at a time leaves a worker
idle for most of that, so every read of a batch starts at once, on a thread pool, and the caller
decodes each image as its bytes arrive. Threads suit this: a read spends its time waiting (on a
socket, or on fsspec's event loop for async filesystems such as s3fs and HTTP, which serve calls
from many threads), and the decode that follows stays on the worker's own thread, one core per
worker as the loader intends.

Memory stays bounded: a batch holds at most its own images' bytes, and the read-ahead table at
most ``max_ahead_reads`` reads and about ``max_ahead_bytes`` of bytes read but not yet asked for;
past either, its oldest reads are dropped (a read-ahead is only a hint: an index asked for
without one is simply read then).

The pool is created in the process that first reads, after any fork, and is never pickled: a
DataLoader worker starts its own.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

# What a read gives: an image's bytes, or its pixels from the prepared store (prepared_source.py).
ReadData = bytes | np.ndarray

READ_THREADS = 64  # reads in flight per process: 64 x 80 ms is ~800 images/s per worker
MAX_AHEAD_READS = 256
MAX_AHEAD_BYTES = 256 << 20


class Reads:
    """A per-process thread pool for reads, and the table of reads started ahead of need."""

    def __init__(
        self,
        *,
        threads: int = READ_THREADS,
        max_ahead_reads: int = MAX_AHEAD_READS,
        max_ahead_bytes: int = MAX_AHEAD_BYTES,
    ) -> None:
        self.threads, self.max_ahead_reads, self.max_ahead_bytes = threads, max_ahead_reads, max_ahead_bytes
        self._reset()

    def _reset(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pid = os.getpid()
        self._ahead: OrderedDict[Hashable, Future] = OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {
            "threads": self.threads,
            "max_ahead_reads": self.max_ahead_reads,
            "max_ahead_bytes": self.max_ahead_bytes,
        }

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def start(self, read: Callable[[], ReadData]) -> Future:
        """Start ``read`` now; its future holds the bytes (or prepared pixels) or the error."""
        return self._executor().submit(read)

    def take(self, key: Hashable) -> Future | None:
        """The read started ahead for ``key``, now the caller's; None if there is none."""
        self._in_this_process()
        with self._lock:
            return self._ahead.pop(key, None)

    def ahead(self, reads: list[tuple[Hashable, Callable[[], ReadData] | bytes]]) -> None:
        """Start the reads of keys not already in flight ahead, making room by dropping the oldest.

        A read given as bytes (from a copy on this machine) is held as done, with no thread.
        """
        self._in_this_process()
        with self._lock:
            held = sum(_size(f) for f in self._ahead.values())
            for key, read in reads:
                if key in self._ahead:
                    continue
                while self._ahead and (len(self._ahead) >= self.max_ahead_reads or held >= self.max_ahead_bytes):
                    _, oldest = self._ahead.popitem(last=False)
                    oldest.cancel()
                    held -= _size(oldest)
                self._ahead[key] = self._executor().submit(read) if callable(read) else _done(read)

    def pending(self) -> int:
        """How many read-aheads wait to be taken."""
        self._in_this_process()
        with self._lock:
            return len(self._ahead)

    def _in_this_process(self) -> None:
        # A forked child: the parent's threads do not exist here, and a lock one of them held at
        # the fork would stay held forever.
        if self._pid != os.getpid():
            self._reset()

    def _executor(self) -> ThreadPoolExecutor:
        self._in_this_process()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="vl-read")
        return self._pool


def _size(future: Future) -> int:
    """Bytes a finished read holds; 0 while it runs or when it failed."""
    if not future.done() or future.cancelled() or future.exception() is not None:
        return 0
    data = future.result()
    return data.nbytes if isinstance(data, np.ndarray) else len(data)


def _done(data: ReadData) -> Future:
    future: Future = Future()
    future.set_result(data)
    return future
