"""A JSON export's ``media_items`` into a raw Arrow table, one column per key.

Arrow's JSON reader parses the file in one block (``read_json_export``); when it refuses the file,
``json.load`` + ``table_from_media_items`` take over. Either way ``metadata_items`` becomes a list
array that ``metadata_items.extract_item_columns`` turns into typed columns.
"""

from __future__ import annotations

import codecs
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from types import NoneType
from typing import Any, Literal, overload

import numpy as np
import pyarrow as pa
import pyarrow.json as pa_json

from ..errors import SchemaError
from .item_lines import reader_output_valid
from .items import (
    ITEM_PROPS,
    RAW_ITEMS,
    SCALAR_INPUT_TYPES,
    RowSchemaError,
    as_text_value,
    has_timestamp,
    inferred_items_usable,
    named,
    no_integer_equals,
    python_items,
    row_error,
)
from .row_batches import one_array

_MAX_BLOCK_BYTES = (1 << 31) - 1  # the JSON reader's block size is an int32
_UTF8_SLICE_BYTES = 16 << 20
_BLANKS = b" \t\r\n"  # JSON's whitespace
# Typed, so that the reader leaves the ISO times as text; other keys are inferred (a time among
# them becomes a datetime, kept in the info as str(datetime)).
_INFO_TYPE = pa.struct(
    [
        (name, pa.string())
        for name in (
            "schema_version",
            "dataset",
            "description",
            "dataset_url",
            "export_time",
            "dataset_creation_time",
            "exported_by",
        )
    ]
    + [("total_media_items", pa.int64())]
)


def check_utf8(path: Path) -> None:
    """SchemaError naming the byte offset of the first byte of ``path`` that is not UTF-8.

    JSON is UTF-8 (RFC 8259). Arrow's JSON reader does not check it (invalid bytes come out as
    strings that fail later, wherever a value is turned into Python), and ``json.load`` would
    take UTF-16 or UTF-32 as well: so the file is checked once, up front, by Arrow's UTF-8
    validation, slice by slice (a GiB in well under a second; a memory map of the whole would
    count the whole file in the process's resident memory). A UTF-8 byte-order mark is UTF-8,
    and allowed.
    """
    carried = b""
    with open(path, "rb") as stream:
        while chunk := stream.read(_UTF8_SLICE_BYTES):
            data = carried + chunk
            cut = _last_sequence_start(data)  # a character the slice cuts in two goes with the next
            if not _is_utf8(data[:cut]):
                break
            carried = data[cut:]
        else:
            if _is_utf8(carried):
                return
    offset, reason = _first_invalid_utf8(path)
    raise not_utf8(path, offset, reason)


def _last_sequence_start(data: bytes) -> int:
    """Where the last character of ``data`` starts when that may be a multi-byte one; else its end."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # not a continuation byte: the start of the last character
            return len(data) - back if byte >= 0xC0 else len(data)
    return len(data)


def _is_utf8(data: bytes) -> bool:
    whole = pa.Array.from_buffers(
        pa.large_string(), 1, [None, pa.py_buffer(np.array([0, len(data)], np.int64)), pa.py_buffer(data)]
    )
    try:
        whole.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _first_invalid_utf8(path: Path) -> tuple[int, str]:
    """The offset of the first byte that is not UTF-8, and why; read in slices, as the file may be large."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as stream:
        while chunk := stream.read(16 << 20):
            pending = len(decoder.getstate()[0])  # the start of a sequence the last slice cut in two
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                return offset - pending + exc.start, exc.reason
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:  # the file ends inside a sequence
        return offset - len(exc.object) + exc.start, exc.reason
    raise AssertionError(f"{path} is valid UTF-8 after all")  # Arrow and Python disagree: a bug, not bad input


def not_utf8(path: Path, offset: int, reason: str) -> SchemaError:
    """The error for a metadata file that is not UTF-8: the offset, and the bytes around it as a
    bytes literal (never decoded: a message must not fail while it is built)."""
    with open(path, "rb") as stream:
        stream.seek(max(offset - 16, 0))
        around = stream.read(min(offset, 16) + 16)
    return SchemaError(
        f"{path} is not UTF-8 text: the byte at offset {offset:,} is invalid ({reason}), in {around!r}. "
        "Visual Layer writes metadata.json as UTF-8; was the file re-encoded?",
        field="metadata",
    )


def opening_byte(path: Path, *, past_bom: bool) -> bytes:
    """The first byte of the JSON text of ``path`` past its blanks (and, ``past_bom``, a byte-order
    mark); ``b""`` for a file of blanks."""
    with open(path, "rb") as stream:
        head = stream.read(4096)
        head = (head.removeprefix(codecs.BOM_UTF8) if past_bom else head).lstrip(_BLANKS)
        while not head and (more := stream.read(4096)):
            head = more.lstrip(_BLANKS)
    return head[:1]


def check_export_opening(path: Path) -> None:
    """SchemaError unless the JSON text of ``path`` opens with ``{`` or ``[`` (past blanks and a
    byte-order mark), as an export object or a list of media items does. Checked before Arrow's
    reader sees the text: one that opens with ``null`` crashes it (SIGSEGV)."""
    if opening_byte(path, past_bom=True) not in (b"{", b"["):
        raise SchemaError(f"{path} is neither a JSON export object nor a list of media items.", field="metadata")


def read_json_export(path: Path) -> tuple[pa.Table, Any] | None:
    """The raw media-items table and the ``info`` of a JSON export, parsed by Arrow's JSON reader.

    The file is one object, so it is parsed as one block: single-threaded, but 2-3x faster than
    ``json.load`` and a third of its memory (1M items: 14 s and 1.5 GiB against 37 s and 4.8 GiB).
    The media items' types are inferred (15% faster than reading every documented field into an
    explicit schema); when the inference fails (a field whose type changes between items) or
    yields timestamps, the file is read again with the explicit schema. None when the reader
    cannot take it (over 2 GiB, a bare list, invalid JSON...): the caller then falls back to
    ``json.load`` and ``table_from_media_items``.
    """
    size = path.stat().st_size
    if size >= _MAX_BLOCK_BYTES:
        return None
    parsed = _read_json_export(path, size, infer=True)
    return _read_json_export(path, size, infer=False) if parsed == "retry" else parsed


@overload
def _read_json_export(path: Path, size: int, *, infer: Literal[False]) -> tuple[pa.Table, Any] | None: ...
@overload
def _read_json_export(path: Path, size: int, *, infer: bool) -> tuple[pa.Table, Any] | Literal["retry"] | None: ...
def _read_json_export(path: Path, size: int, *, infer: bool) -> tuple[pa.Table, Any] | Literal["retry"] | None:
    """``read_json_export`` with inferred or explicit item types; "retry" when the inferred ones fail."""
    item = pa.struct([*SCALAR_INPUT_TYPES.items(), ("metadata_items", RAW_ITEMS)])
    schema = pa.schema([("info", _INFO_TYPE)] + ([] if infer else [("media_items", pa.list_(item))]))
    try:
        table = pa_json.read_json(
            path,
            read_options=pa_json.ReadOptions(block_size=max(size + 1, 1 << 20)),
            parse_options=pa_json.ParseOptions(
                explicit_schema=schema, newlines_in_values=True, unexpected_field_behavior="infer"
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        return "retry" if infer and "changed from" in str(exc) else None
    if table.num_rows != 1 or "media_items" not in table.column_names:
        return None
    if not reader_output_valid(table):  # a list opening with null, its types inferred
        return "retry" if infer else None
    lists = one_array(table.column("media_items"))
    if not pa.types.is_list(lists.type) or lists.null_count:
        return None
    items = lists.flatten()
    if not pa.types.is_struct(items.type):  # "media_items": [] is inferred as list<null>
        return (pa.table({"media_id": pa.array([], pa.string())}), _info(table)) if not len(items) else None
    columns = {}
    for field, array in zip(items.type, items.flatten()):
        if field.name in SCALAR_INPUT_TYPES and 0 < len(array) == array.null_count:
            continue  # the explicit schema adds every known field: keep only those the file has
        if field.name == "metadata_items" and infer:
            if not inferred_items_usable(field.type, ITEM_PROPS):
                return "retry"
        elif has_timestamp(field.type) and (infer or field.name not in SCALAR_INPUT_TYPES):
            # The reader turned ISO strings into timestamps; the explicit schema or json.load keeps them as text.
            return "retry" if infer and field.name in SCALAR_INPUT_TYPES else None
        columns[field.name] = array
    table_out = pa.table(columns) if columns else pa.table({"media_id": pa.array([], pa.string())})
    return table_out, _info(table)


def _info(table: pa.Table) -> Any:
    info = table.column("info")[0].as_py()
    if info is not None:  # the explicit schema adds the documented keys; drop those the file lacks
        info = {key: value for key, value in info.items() if value is not None or key not in _INFO_TYPE.names}
    return info


def table_from_media_items(items: list, source: str = "metadata", *, row_offset: int = 0) -> pa.Table:
    """A raw table (not yet normalized) from JSON media items: one column per key seen. ``items``
    may be a slice of an export's, from its item ``row_offset`` on: errors name rows of the whole."""
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise SchemaError(
                f"{source}: media_items[{i + row_offset}] is a {type(item).__name__}, not an object.",
                field="media_items",
            )
    keys: dict[str, None] = {}
    for item in items:
        keys.update(dict.fromkeys(item))
    known = [name for name in keys if name in SCALAR_INPUT_TYPES]
    try:
        return _table_from_media_items(items, keys, known, source)
    except RowSchemaError as error:
        media_id = items[error.row].get("media_id")
        error.row += row_offset
        raise named(error, media_id) from None


def _table_from_media_items(items: list, keys: dict[str, None], known: list[str], source: str) -> pa.Table:
    for name in known:
        if pa.types.is_floating(SCALAR_INPUT_TYPES[name]):
            # Arrow's conversion reads true as 1.0, whatever the type asked (or inferred after a float).
            row = next((i for i, item in enumerate(items) if isinstance(item.get(name), bool)), None)
            if row is not None:
                raise row_error(source, row, f"{name} is true or false where a number belongs.", name)
        elif pa.types.is_integer(SCALAR_INPUT_TYPES[name]):
            # And 2.5 as 2 where an integer is asked, where Arrow's JSON reader refuses it.
            row = next((i for i, item in enumerate(items) if no_integer_equals(item.get(name))), None)
            if row is not None:
                raise row_error(source, row, f"{name} = {items[row][name]!r} is not a whole number.", name)
    columns: dict[str, pa.Array] = {}
    try:  # one C++ pass for the documented scalar fields, when their types are what the docs say
        struct = pa.array(items, type=pa.struct([(name, SCALAR_INPUT_TYPES[name]) for name in known]))
        columns.update(zip(known, struct.flatten()))
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        if "media_id" in known:  # _infer would turn a number into text: a media id must be text already
            row = next(
                (i for i, item in enumerate(items) if not isinstance(item.get("media_id", ""), (str, NoneType))), None
            )
            if row is not None:
                kind = type(items[row]["media_id"]).__name__
                raise row_error(source, row, f"media_id has type {kind}, not str.", "media_id") from None
        columns.update((name, _infer([item.get(name) for item in items], as_text_value)) for name in known)
    for name in keys:
        if name == "metadata_items":
            columns[name] = python_items([item.get(name) for item in items], source)
        elif name not in columns:
            columns[name] = _infer([item.get(name) for item in items])
    return pa.table(columns) if columns else pa.table({"media_id": pa.array([], pa.string())})


def _infer(values: list, spell: Callable[[Any], str] = json.dumps) -> pa.Array:
    """Arrow's own inference; values of mixed types become text (JSON for objects and lists, other
    values as ``spell`` writes them), which a numeric column then casts back or refuses with a
    SchemaError naming it. A documented field's numbers are spelled as Arrow spells them
    (``as_text_value``: 3.0 as "3", which an int32 takes as when the field holds numbers only,
    where json.dumps wrote "3.0", which it refused); another column's as JSON."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        pass
    if all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values):
        # Numbers only, one past 64 bits among them: doubles, as Arrow's JSON reader infers them
        # (past a double's range too, text).
        with contextlib.suppress(OverflowError):
            return pa.array([None if v is None else float(v) for v in values], pa.float64())
    texts = [
        v if v is None or isinstance(v, str) else json.dumps(v) if isinstance(v, (dict, list)) else spell(v)
        for v in values
    ]
    return pa.array(texts, pa.string())
