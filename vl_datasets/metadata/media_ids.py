"""A read-only sequence of media ids held as Arrow strings: each part of a split, and a ``subset=``.

Millions of media ids as Python strings cost about 90 bytes each (a list of 10M is about 0.9 GB);
as one Arrow string column they cost their own bytes and a 4-byte offset. ``MediaIds`` is that
column behind the ``Sequence[str]`` interface a list of ids has: ``len``, indexing, slicing,
iteration, ``in``, ``+`` and equality with a list or tuple of str, so code written for the lists
``leakage_safe_split`` used to return keeps working. ``subset=`` takes it as it is, and curation
reads its Arrow column: no id becomes a Python string on the way.

It pickles as the ids' bytes (Arrow IPC, zstd: about half a list's pickle for hex ids, and no Python
string per id when unpickled), or, once written to a file
with ``write`` and opened with ``MediaIds.read`` (memory-mapped), as that file's path.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..atomic import replacing
from ..errors import CacheMissError, ConfigurationError
from .options import string_list
from .unique_ids import hash_strings

_BLOCK = 1 << 16  # ids turned into Python strings at a time, when iterated or compared with a list
MEDIA_ID = "media_id"  # the one column of a file of media ids


class MediaIds(Sequence[str]):
    """Media ids in order, as an Arrow string column (one per item; see the module).

    ``MediaIds(["a", "b"])`` or ``MediaIds(pa.array([...]))`` (strings, no nulls). Read-only: it
    has no method that changes it, and ``to_arrow`` hands out Arrow's immutable arrays.
    """

    __slots__ = ("_ids", "_path")

    def __init__(self, ids: pa.Array | pa.ChunkedArray | Iterable[str]) -> None:
        source = ids.to_arrow() if isinstance(ids, MediaIds) else ids
        if not isinstance(source, (pa.Array, pa.ChunkedArray)):
            source = _from_python(source)
        if not (pa.types.is_string(source.type) or pa.types.is_large_string(source.type)):
            raise ConfigurationError(f"MediaIds holds strings, got an Arrow array of {source.type}.")
        if source.null_count:
            raise ConfigurationError(f"MediaIds holds no null: {source.null_count:,} of these ids are null.")
        chunks = source.chunks if isinstance(source, pa.ChunkedArray) else [source]
        self._ids: pa.ChunkedArray = pa.chunked_array(
            [chunk.cast(pa.string()) for chunk in chunks if len(chunk)], pa.string()
        )
        self._path: Path | None = None

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> MediaIds:
        """The ids ``write`` put at ``path``, memory-mapped (pickles as the path); ``CacheMissError``
        when the file is gone or unreadable."""
        try:
            table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
            ids = cls(table.column(MEDIA_ID))
        except (OSError, pa.ArrowException, KeyError, ConfigurationError):
            raise CacheMissError(f"The media ids file {path} is gone or unreadable.") from None
        ids._path = Path(path)
        return ids

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write the ids to ``path`` as an Arrow IPC file, atomically, for ``MediaIds.read``."""
        table = pa.table({MEDIA_ID: self._ids})
        with (
            replacing(Path(path)) as tmp,
            pa.OSFile(str(tmp), "wb") as sink,
            pa.ipc.new_file(sink, table.schema) as out,
        ):
            out.write_table(table)

    def to_arrow(self) -> pa.ChunkedArray:
        """The ids as an Arrow string column (no copy)."""
        return self._ids

    def to_pylist(self) -> list[str]:
        """The ids as a list of str (about 90 bytes per id: at millions, iterate instead)."""
        return list(self)

    def __len__(self) -> int:
        return len(self._ids)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> MediaIds: ...

    def __getitem__(self, index: int | slice) -> str | MediaIds:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return MediaIds(self._ids.slice(start, max(stop - start, 0)))
            return MediaIds(self._ids.take(pa.array(np.arange(start, stop, step, dtype=np.int64))))
        position = int(index)  # an int-like (numpy integer) too; a str or float raises TypeError here
        if position < 0:
            position += len(self)
        if not 0 <= position < len(self):
            raise IndexError(f"media id index {index} out of range for {len(self):,} ids")
        return self._ids[position].as_py()

    def __iter__(self) -> Iterator[str]:
        for chunk in self._ids.chunks:
            for start in range(0, len(chunk), _BLOCK):
                yield from chunk.slice(start, _BLOCK).to_pylist()

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, str) or not len(self):
            return False
        return bool(pc.any(pc.equal(self._ids, value)).as_py())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, MediaIds):
            return len(self) == len(other) and self._ids.equals(other._ids)
        if isinstance(other, (list, tuple)):
            if len(self) != len(other):
                return False
            blocks = (self._ids.slice(start, _BLOCK).to_pylist() for start in range(0, len(self), _BLOCK))
            return all(block == list(other[i * _BLOCK : (i + 1) * _BLOCK]) for i, block in enumerate(blocks))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # equal to a list, which has no hash

    def __add__(self, other: object) -> Any:
        """Another ``MediaIds`` gives one (no copy); a list or tuple gives a list, as list + list does."""
        if isinstance(other, MediaIds):
            return MediaIds(pa.chunked_array([*self._ids.chunks, *other._ids.chunks], pa.string()))
        if isinstance(other, (list, tuple)):
            return [*self, *other]
        return NotImplemented

    def __radd__(self, other: object) -> Any:
        if isinstance(other, (list, tuple)):
            return [*other, *self]
        return NotImplemented

    def __repr__(self) -> str:
        shown = ", ".join(repr(media_id) for media_id in self[:3])
        more = ", ..." if len(self) > 3 else ""
        return f"MediaIds({len(self):,} ids: [{shown}{more}])"

    # Pickled, the ids are their Arrow bytes, compressed (a worker or another rank gets no Python
    # string per id), or the path of the file they were read from, which the unpickler maps again.
    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        if self._path is not None:
            return (MediaIds.read, (str(self._path),))
        sink = pa.BufferOutputStream()
        table = pa.table({MEDIA_ID: self._ids})
        with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
            writer.write_table(table)
        return (_from_ipc, (sink.getvalue(),))

    def set_digest(self) -> str:
        """A digest of the set of these ids, whatever their order and repeats: the SHA-256 of their
        distinct 64-bit hashes (``unique_ids.hash_strings``), sorted, as little-endian words. A cache
        names what a ``subset=`` chose by it: about 40 ms per million ids, where a sort of the ids as
        text takes 25 times as long (every rank opening a part of a split pays it)."""
        parts = [hash_strings(chunk) for chunk in self._ids.chunks]
        hashes = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.uint64)
        return hashlib.sha256(hashes.astype("<u8").tobytes()).hexdigest()


def _from_python(values: Iterable[str]) -> pa.Array:
    return pa.array(string_list("MediaIds", values), pa.string())


def _from_ipc(blob: pa.Buffer | bytes) -> MediaIds:
    return MediaIds(pa.ipc.open_stream(pa.py_buffer(blob)).read_all().column(MEDIA_ID))
