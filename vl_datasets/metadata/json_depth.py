"""A bound on how deeply metadata JSON nests, checked before any parser sees it.

A Visual Layer export nests at most about ten levels (the export, its media items, an item's
metadata items, their properties, an object's issues...). The parsers we hand JSON to recurse
once per level: ``json.loads`` raises a bare ``RecursionError`` at about 1,000 levels, and Arrow's
reader overflows the C stack and kills the process further down. So every JSON text is first
scanned here, as bytes, and a nesting past ``MAX_DEPTH`` is a ``SchemaError`` naming the file (or
row) and the byte offset, whatever reads the text afterwards.

The scan is vectorized (numpy over the bytes) and incremental: ``DepthScanner.feed`` takes a file
slice by slice, so a reader that parses a large export in pieces keeps the same bound. Brackets
inside strings do not count; a quote preceded by an odd run of backslashes is inside its string.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import SchemaError

MAX_DEPTH = 64  # six times what an export needs; far below where a parser's recursion fails
SLICE_BYTES = 4 << 20
_QUOTE, _BACKSLASH = 0x22, 0x5C
_OPEN_FOLDED, _CLOSE_FOLDED = 0x7B, 0x7D  # "{" and "}": "[" and "]" with bit 0x20 set
# A byte scan's block: numpy's temporaries for one are small enough for the allocator to reuse,
# where those for a whole slice's texts (~14 MB at 10M items) took fresh pages every time, and the
# kernel zeroing them cost more than the scan itself.
_SCAN_BYTES = 1 << 20


@dataclass
class _Carry:
    """What a slice leaves to the next: inside a string or not, the trailing backslashes, the depth."""

    in_string: int = 0
    backslashes: int = 0
    depth: int = 0


class DepthScanner:
    """The nesting of one JSON text, fed in slices; ``SchemaError`` once it passes ``max_depth``."""

    def __init__(self, source: str, *, max_depth: int = MAX_DEPTH) -> None:
        self.source, self.max_depth = source, max_depth
        self.offset = 0
        self._carry = _Carry()

    def feed(self, chunk: bytes | memoryview | np.ndarray) -> None:
        data = np.frombuffer(chunk, dtype=np.uint8) if not isinstance(chunk, np.ndarray) else chunk
        depth, position = _scan(data, np.zeros(1, np.int64), self._carry, max_depth=self.max_depth)
        if position is not None:
            raise too_deep(self.source, depth, self.offset + position, self.max_depth)
        self.offset += len(data)


def check_file_depth(path: Path, *, max_depth: int = MAX_DEPTH) -> None:
    """``SchemaError`` when the JSON file at ``path`` nests deeper than ``max_depth``."""
    scanner = DepthScanner(str(path), max_depth=max_depth)
    with open(path, "rb") as stream:
        while chunk := stream.read(SLICE_BYTES):
            scanner.feed(chunk)


def first_too_deep(strings: pa.Array, *, max_depth: int = MAX_DEPTH) -> tuple[int, int, int] | None:
    """(row, depth, offset in the row) of the first of ``strings``, each its own JSON text, that
    nests deeper than ``max_depth``; None when none does."""
    texts = text_bytes(strings)
    if texts is None:
        return None
    data, starts = texts
    depth, position = _scan(data, starts[:-1], None, max_depth=max_depth)
    if position is None:
        return None
    row = int(np.searchsorted(starts[:-1], position, side="right") - 1)
    return row, depth, position - int(starts[row])


def most_opening_brackets(strings: pa.Array) -> int:
    """The most opening brackets (``[`` or ``{``, in strings or not) that one of ``strings`` holds:
    a bound on how deeply each nests, read in one pass over the bytes, where ``first_too_deep``
    costs as much as parsing them. A text within ``MAX_DEPTH`` by it needs no scan to be safe."""
    texts = text_bytes(strings)
    if texts is None:
        return 0
    data, starts = texts
    # Where the opening brackets are, then how many lie between consecutive starts: a search per
    # text over a few per row, where a sum per text over every byte (reduceat) costs 8 times as much.
    opens = np.concatenate(
        [np.flatnonzero(np.bitwise_or(block, np.uint8(0x20)) == _OPEN_FOLDED) + at for at, block in byte_blocks(data)]
    )
    return int(np.diff(np.searchsorted(opens, starts)).max())


def count_byte(data: np.ndarray, value: int) -> int:
    """How many of ``data`` (bytes) are ``value``."""
    return sum(int(np.count_nonzero(block == value)) for _, block in byte_blocks(data))


def byte_blocks(data: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(offset, view) of consecutive blocks of ``data`` (bytes) of at most ``_SCAN_BYTES``."""
    for at in range(0, len(data), _SCAN_BYTES):
        yield at, data[at : at + _SCAN_BYTES]


def as_text(strings: pa.Array) -> pa.Array:
    """``strings`` as a string or large string array: such an array as it is (a cast to large
    strings would copy its data), any other text type cast."""
    if pa.types.is_string(strings.type) or pa.types.is_large_string(strings.type):
        return strings
    return strings.cast(pa.large_string())


def text_bytes(strings: pa.Array) -> tuple[np.ndarray, np.ndarray] | None:
    """The bytes of ``strings`` (``as_text``) as one array and where each text starts in it (and,
    last, where the last one ends); None when they hold no byte at all."""
    strings = as_text(strings)
    if not len(strings):
        return None
    width = "<i4" if pa.types.is_string(strings.type) else "<i8"
    offsets = np.frombuffer(strings.buffers()[1], dtype=width)[strings.offset : strings.offset + len(strings) + 1]
    data_buffer = strings.buffers()[2]
    if data_buffer is None or offsets[-1] == offsets[0]:
        return None
    data = np.frombuffer(data_buffer, dtype=np.uint8)[offsets[0] : offsets[-1]]
    return data, offsets.astype(np.int64) - offsets[0]


def text_bytes_or_empty(strings: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``text_bytes``, with texts holding no byte at all as no data and every bound 0."""
    texts = text_bytes(strings)
    return texts if texts is not None else (np.zeros(0, np.uint8), np.zeros(len(strings) + 1, np.int64))


def too_deep(source: str, depth: int, offset: int, max_depth: int = MAX_DEPTH) -> SchemaError:
    """The error for ``source``'s JSON, once the scan stopped at ``offset``."""
    return SchemaError(f"{source}: its JSON {describe(depth, offset, max_depth)}", field="metadata")


def describe(depth: int, offset: int, max_depth: int = MAX_DEPTH) -> str:
    what = f"nests {depth} levels deep" if depth > 0 else "closes a bracket it never opened"
    return f"{what} at byte offset {offset:,} (an export nests about ten levels; the limit is {max_depth})."


def _scan(
    data: np.ndarray, starts: np.ndarray, carry: _Carry | None, *, max_depth: int = MAX_DEPTH
) -> tuple[int, int | None]:
    """(depth, position) of the first bracket of ``data`` outside a string that takes the depth past
    ``max_depth`` or below 0, or (0, None). ``starts`` are where texts begin (each from depth 0, out
    of any string); with one text, ``carry`` continues it from the slice before and is updated."""
    quotes = _unescaped_quotes(data, starts, carry)
    folded = data | 0x20  # "[" and "{" differ by that bit alone, as "]" and "}" do
    opens = folded == _OPEN_FOLDED
    brackets = np.flatnonzero(opens | (folded == _CLOSE_FOLDED))
    text_of = np.searchsorted(starts, brackets, side="right") - 1 if len(starts) > 1 else None
    quotes_before = np.searchsorted(quotes, brackets)
    if text_of is not None:
        quotes_before -= np.searchsorted(quotes, starts)[text_of]
    in_string = carry.in_string if carry else 0
    outside = (quotes_before + in_string) % 2 == 0
    brackets = brackets[outside]
    running = np.cumsum(np.where(opens[brackets], 1, -1), dtype=np.int64)
    if text_of is not None:  # each text from depth 0: less the depth where the text before ended
        text_of = text_of[outside]
        first_of_text = np.searchsorted(brackets, starts)[text_of]
        running -= np.where(first_of_text > 0, running[np.maximum(first_of_text - 1, 0)], 0)
    if carry is not None:
        running += carry.depth
        carry.in_string = (in_string + len(quotes)) % 2
        carry.depth = int(running[-1]) if len(running) else carry.depth
    bad = np.flatnonzero((running > max_depth) | (running < 0))
    if len(bad):
        return int(running[bad[0]]), int(brackets[bad[0]])
    return 0, None


def _unescaped_quotes(data: np.ndarray, starts: np.ndarray, carry: _Carry | None) -> np.ndarray:
    """Positions of the quotes that open or close a string: those after an even run of backslashes
    (counted within their text, and from the slice before with ``carry``)."""
    quotes = np.flatnonzero(data == _QUOTE)
    slashes = np.flatnonzero(data == _BACKSLASH)
    carried = carry.backslashes if carry is not None else 0
    if carry is not None:
        last = np.array([len(data) - 1])
        ends_in_run = len(slashes) and slashes[-1] == last[0]
        carry.backslashes = int(_run_lengths(slashes, starts, last, carried)[0]) if ends_in_run else 0
    if not len(slashes) and not carried:
        return quotes
    # Only a quote right after a backslash (or at the slice's start) can be escaped.
    maybe = np.flatnonzero(data[np.maximum(quotes - 1, 0)] == _BACKSLASH)
    if carried and len(quotes) and quotes[0] == 0:
        maybe = np.union1d(maybe, [0])
    escaped = maybe[_run_lengths(slashes, starts, quotes[maybe] - 1, carried) % 2 == 1]
    return np.delete(quotes, escaped)


def _run_lengths(slashes: np.ndarray, starts: np.ndarray, ends: np.ndarray, carried: int) -> np.ndarray:
    """How many backslashes run back from each of ``ends`` (a backslash's position, or -1 for the
    slice's start), within its text; a run back to the slice's start adds ``carried``."""
    ends = np.asarray(ends, dtype=np.int64)
    if not len(slashes):
        return np.full(len(ends), carried, dtype=np.int64)  # every end is -1
    # Where each run of consecutive backslashes begins: a backslash whose predecessor is not one.
    breaks = np.flatnonzero(np.diff(slashes, prepend=-2) != 1)
    run_start = slashes[breaks][np.searchsorted(breaks, np.searchsorted(slashes, ends), side="right") - 1]
    text_start = starts[np.searchsorted(starts, ends, side="right") - 1] if len(starts) > 1 else starts[0]
    run_start = np.maximum(run_start, text_start)
    runs = np.where(ends >= 0, ends - run_start + 1, 0)
    return runs + np.where(runs == ends + 1, carried, 0)  # the run reaches back to the slice's start
