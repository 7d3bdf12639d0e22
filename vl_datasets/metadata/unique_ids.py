"""Media ids checked unique across an index written batch by batch, in 8 bytes per row.

A hash table of every id (Arrow's ``count_distinct``, a Python set) costs the ids themselves
again, gigabytes at 100M items. Instead each batch's ids are hashed to 64 bits in numpy, the hashes
are sorted at the end, and only equal hashes are compared as text: two different ids share a
hash about once in 2**64 / n**2 indexes, so that comparison is almost always of real duplicates.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from .json_depth import text_bytes_or_empty
from .ordered_map import WORKERS

# Odd 64-bit multipliers: each 8-byte word is mixed in, then spread over every bit (a murmur3 finalizer).
_BASE = np.uint64(0x100000001B3)
_MIX = (np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53))
_BLOCK_ROWS = 1 << 14
_SORTED_BY_ONE_THREAD = 1 << 20  # hashes below which a pool of threads costs more than it saves
_BUCKETS = 64  # ranges of hash values checked apart: the top 6 bits of the (uniform) hashes
_BUCKET_STARTS = np.arange(1, _BUCKETS, dtype=np.uint64) << np.uint64(58)


class IdHashes:
    """The hashes of every media id added so far, a part per batch."""

    def __init__(self) -> None:
        self._parts: list[np.ndarray] = []

    def add(self, ids: pa.Array | pa.ChunkedArray) -> None:
        """Hash the next rows' ids (text, no nulls)."""
        chunks = ids.chunks if isinstance(ids, pa.ChunkedArray) else [ids]
        self._parts.extend(uniqueness_hashes(chunk) for chunk in chunks)

    def first_duplicate(self, media_ids: Callable[[], pa.ChunkedArray]) -> str | None:
        """The duplicated id whose first row comes first, or None when every id is unique; the
        hashes are used up. ``media_ids()`` returns every id added, in order: called only when
        hashes collide, to find their rows and compare their ids."""
        parts, self._parts = self._parts, []
        repeated = _repeated(parts)
        del parts
        if not len(repeated):
            return None
        ids = media_ids()
        rows = _rows_with(ids, repeated)
        first_row: dict[str, int] = {}
        duplicated_at: list[int] = []
        for row, media_id in zip(rows.tolist(), ids.take(pa.array(rows)).to_pylist()):
            if media_id in first_row:
                duplicated_at.append(first_row[media_id])
            else:
                first_row[media_id] = row
        if not duplicated_at:
            return None  # hashes that collide for different ids
        earliest = min(duplicated_at)
        return next(media_id for media_id, row in first_row.items() if row == earliest)


def _rows_with(ids: pa.ChunkedArray, values: np.ndarray) -> np.ndarray:
    """The rows whose id hashes to one of ``values``, ascending (the ids hashed again)."""
    rows, start = [], 0
    for chunk in ids.chunks:
        rows.append(start + np.flatnonzero(np.isin(uniqueness_hashes(chunk), values)))
        start += len(chunk)
    return np.concatenate(rows) if rows else np.zeros(0, np.int64)


def _repeated(parts: list[np.ndarray]) -> np.ndarray:
    """The values found more than once in ``parts`` (each sorted in place), ascending.

    Not one sorted array of them all: its 8 bytes a row would be memory the process touches for
    the first time, which on a virtual machine costs as much as the sort itself (0.4-0.7 s for 80
    MB at 10M ids). Each part is sorted instead, a part per thread (numpy's sort releases the
    GIL), and equal values are looked for in ``_BUCKETS`` ranges of values at a time: each range's
    slices of the parts, put together (~1/64 of the ids, memory the allocator reuses) and merged by
    the stable sort (timsort, which takes them as sorted runs).
    """
    if sum(len(part) for part in parts) < _SORTED_BY_ONE_THREAD:
        ordered = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)
        return np.unique(_equal_neighbours(ordered))
    with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="vl_datasets-sort") as pool:
        for _ in pool.map(np.ndarray.sort, parts):
            pass
        bounds = [np.concatenate(([0], np.searchsorted(part, _BUCKET_STARTS), [len(part)])) for part in parts]

        def repeated_in(bucket: int) -> np.ndarray:
            values = np.concatenate([part[at[bucket] : at[bucket + 1]] for part, at in zip(parts, bounds)])
            values.sort(kind="stable")
            return _equal_neighbours(values)

        return np.unique(np.concatenate(list(pool.map(repeated_in, range(_BUCKETS)))))


def _equal_neighbours(ordered: np.ndarray) -> np.ndarray:
    return ordered[1:][ordered[1:] == ordered[:-1]]


def uniqueness_hashes(array: pa.Array) -> np.ndarray:
    """``hash_strings`` with each word multiplied in and the finalizer run once, not per word: a
    third of the passes over the ids (2.3 -> 0.6 s of CPU at 10M ids), for hashes that never leave
    the uniqueness check, which compares the ids of equal hashes as text anyway."""
    return hash_strings(array, mix=_mixed_once)


def hash_strings(array: pa.Array, *, mix: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """A 64-bit hash of each value of a string array without nulls, computed over its buffers:
    the ids of each length as rows of a matrix of 8-byte words (media ids mostly share one length,
    so that is usually one matrix, a view of the data itself), hashed by ``mix``, by default
    ``_hash_rows_mixed``: these hashes name cache files and group rows, so they stay as they are."""
    n, hash_rows = len(array), mix or _hash_rows_mixed
    data, offsets = text_bytes_or_empty(array)
    lengths = np.diff(offsets)
    if n and (lengths == lengths[0]).all():  # every id has one length: the data is the matrix
        return hash_rows(data.reshape(n, int(lengths[0])))
    hashes = np.empty(n, np.uint64)
    for length in np.unique(lengths).tolist():
        rows = np.flatnonzero(lengths == length)
        # A block of rows at a time: the gather's index matrix takes 8 bytes per byte hashed.
        for block in range(0, len(rows), _BLOCK_ROWS):
            some = rows[block : block + _BLOCK_ROWS]
            hashes[some] = hash_rows(data[offsets[some][:, None] + np.arange(length)])
    return hashes


def _hash_rows_mixed(matrix: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row of a matrix of bytes, its length included: each word mixed in."""
    hashes, words = _words(matrix)
    for word in words:
        hashes = _finalize((hashes ^ word) * _BASE)
    return hashes


def _mixed_once(matrix: np.ndarray) -> np.ndarray:
    """``_hash_rows_mixed`` with the finalizer run once, after the last word."""
    hashes, words = _words(matrix)
    for word in words:
        hashes ^= word
        hashes *= _BASE
    return _finalize(hashes)


def _words(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(each row's starting hash, from its length; its bytes as 8-byte words, zero-padded, a word
    of every row at a time)."""
    rows, length = matrix.shape
    padded = np.zeros((rows, -(-length // 8) * 8), np.uint8)
    padded[:, :length] = matrix
    return np.full(rows, length, np.uint64) * _MIX[1], padded.view(np.uint64).T


def _finalize(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h = h * _MIX[0]
    h = h ^ (h >> np.uint64(33))
    h = h * _MIX[1]
    return h ^ (h >> np.uint64(33))
