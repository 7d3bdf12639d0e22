"""A dataset's ``metadata.json`` read item by item: a 10 GB file never lies in memory whole.

ijson's C backend (yajl) parses the bytes incrementally and builds Python objects only for the
value asked for, so memory holds one media item at a time whatever the file's size; yajl keeps
its nesting on a heap stack, never the C stack, so a deeply nested item cannot crash the service.
The file is ``{"info": {...}, "media_items": [...]}`` in either key order, or a bare list of
media items (hand-made folders often start that way).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import ijson

# Bytes handed to yajl per read: measured faster than 1 MiB, whose buffer no longer fits the CPU cache.
READ_BYTES = 64 << 10
_ITEMS_PREFIX = {b"{": "media_items.item", b"[": "item"}
_SCHEMA = "{'info': ..., 'media_items': [...]}"


class MetadataFormatError(ValueError):
    """A metadata.json that is not Visual Layer's JSON export schema, or not JSON at all."""


def _top_level(path: Path) -> bytes:
    """``{`` or ``[``: the first byte of the document that is not whitespace (a BOM is no JSON)."""
    with open(path, "rb") as source:
        while chunk := source.read(4096):
            stripped = chunk.lstrip(b" \t\r\n")
            if stripped:
                first = stripped[:1]
                if first not in _ITEMS_PREFIX:
                    raise MetadataFormatError(f"{path} is not a Visual Layer JSON export ({_SCHEMA}).")
                return first
    raise MetadataFormatError(f"{path} is empty.")


def read_info(path: Path) -> dict[str, Any]:
    """The ``info`` block ({} for a bare list). Stops reading once it is parsed when it comes first."""
    if _top_level(path) == b"[":
        return {}
    with open(path, "rb") as source:
        try:
            info: Any = next(ijson.items(source, "info", use_float=True, buf_size=READ_BYTES), {})
        except ijson.JSONError as exc:
            raise MetadataFormatError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(info, dict):
        raise MetadataFormatError(f"{path}: 'info' is not an object.")
    return info


def iter_media_items(path: Path, *, on_bytes: Any = None) -> Iterator[dict[str, Any]]:
    """Each media item of ``path`` in file order, as a dict; the whole document is checked to be JSON.

    ``on_bytes(n)`` is called with the bytes read so far, about once per read.
    """
    prefix = _ITEMS_PREFIX[_top_level(path)]
    count = 0
    with open(path, "rb") as raw:
        source = raw if on_bytes is None else _Counting(raw, on_bytes)
        try:
            for item in ijson.items(source, prefix, use_float=True, buf_size=READ_BYTES):
                if not isinstance(item, dict):
                    raise MetadataFormatError(f"{path}: media item {count} is not an object.")
                count += 1
                yield item
        except ijson.JSONError as exc:
            raise MetadataFormatError(f"{path} is not valid JSON (after {count} media items): {exc}") from None
    if count == 0 and prefix == "media_items.item":
        _check_items_is_a_list(path)


def _check_items_is_a_list(path: Path) -> None:
    # Only reached when no item was found: a media_items that is no list is small hand-made data.
    with open(path, "rb") as source:
        items: Any = next(ijson.items(source, "media_items", use_float=True), [])
    if not isinstance(items, list):
        raise MetadataFormatError(f"{path}: 'media_items' is not a list.")


class _Counting:
    """A binary file that reports how far it has been read (the index build's progress)."""

    def __init__(self, source: BinaryIO, on_bytes: Any) -> None:
        self._source, self._on_bytes, self._read = source, on_bytes, 0

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._read += len(data)
        self._on_bytes(self._read)
        return data
