"""The index's cold columns written behind: flushed, then dropped from the page cache, as it grows.

Most of an index's bytes are columns that only a user's own reads touch (the web app's link, the
cluster id, file names, the video columns): about 250 of its 420 bytes an item, 2.5 GB at 10M
items, 25 GB at 100M. Written through the page cache they all stay there, dirty until the kernel
writes them back and cached after, pushing out what the node does need (the columns curation reads
next, the images). And taking a page the machine has not used lately is the costly part of a
write: 3.2 s of system time per GB measured on this project's 2-core virtual machine, against
0.9 s for pages freed a moment before, whose backing the host still holds.

So, after each window of record batches, the byte ranges of the cold columns' buffers get
``POSIX_FADV_DONTNEED`` twice, a window apart: the first call starts their writeback without
waiting for it; the second, once they are written, frees them, and the next window's writes take
those pages again. The columns the first open reads next stay cached. A page still dirty at the
second call (a slow disk) is left as it is: nothing waits on the disk. Where the system has no
``posix_fadvise``, or refuses it, the file is written as it always was: the advice is about speed,
never about what the file holds.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from pathlib import Path

import pyarrow as pa

logger = logging.getLogger("vl_datasets")

WINDOW_BYTES = 64 << 20  # written between two rounds of advice: ~20 ms of writing, a few syscalls
_MAGIC_BYTES = 8  # an IPC file opens with "ARROW1" and padding; its schema follows, with the first batch


class ColdPages:
    """Follows one IPC file as it is written: ``written(start, end)`` after each record batch (its
    byte range in the file), ``close()`` at the end. ``hot``: the columns left cached."""

    def __init__(self, path: Path, schema: pa.Schema, hot: Collection[str]) -> None:
        self._path, self._schema = path, schema
        self._cold = [i for i, name in enumerate(schema.names) if name not in hot]
        self._batches: list[tuple[int, int]] = []  # written since the last round of advice
        self._flushing: list[tuple[int, int]] = []  # cold ranges whose writeback the last round started
        self._fd = os.open(path, os.O_RDONLY) if hasattr(os, "posix_fadvise") and self._cold else None

    def written(self, start: int, end: int) -> None:
        if self._fd is None:
            return
        self._batches.append((max(start, _MAGIC_BYTES), end))
        if end - self._batches[0][0] >= WINDOW_BYTES:
            try:
                self._advise()
            except (OSError, pa.ArrowException) as exc:  # refused, or a layout this does not read: advice ends
                logger.debug("Writing %s through the page cache: %s", self._path.name, exc)
                self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _advise(self) -> None:
        assert self._fd is not None
        cold = self._cold_ranges(self._batches)
        for start, length in self._flushing:  # written back since: their pages are clean, so freed
            os.posix_fadvise(self._fd, start, length, os.POSIX_FADV_DONTNEED)
        for start, length in cold:  # dirty: this starts their writeback, without waiting for it
            os.posix_fadvise(self._fd, start, length, os.POSIX_FADV_DONTNEED)
        self._flushing, self._batches = cold, []

    def _cold_ranges(self, batches: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """(offset, length) of each cold column's buffers in each batch, read back from the file:
        a batch's buffers are laid out column by column, so a column's span holds only its own."""
        ranges = []
        with pa.memory_map(str(self._path)) as mapped:
            for start, end in batches:
                mapped.seek(start)
                while mapped.tell() < end:  # the batch, after the schema when it is the first
                    message = pa.ipc.read_message(mapped)
                    if message.type == "record batch":
                        ranges += self._column_ranges(message, body_offset=mapped.tell() - message.body.size)
        return ranges

    def _column_ranges(self, message: pa.ipc.Message, body_offset: int) -> list[tuple[int, int]]:
        ranges = []
        body = message.body
        batch = pa.ipc.read_record_batch(message, self._schema)
        for column in self._cold:
            buffers = [b for b in batch.column(column).buffers() if b is not None and b.size]
            if buffers:
                first = min(b.address for b in buffers)
                last = max(b.address + b.size for b in buffers)
                ranges.append((body_offset + first - body.address, last - first))
        return ranges
