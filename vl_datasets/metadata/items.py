"""``metadata_items`` into typed Arrow columns, with no Python loop per row.

``metadata_items`` arrives in three shapes (contract §6): Python lists of ``{"type", "properties"}``
dicts (JSON export), one JSON string per row (parquet), or ``list<struct<type, properties>>``
(parquet, with whatever property types the writer inferred). Each becomes a list array, and then
one vectorized pass extracts every item type:

    list array ─ flatten ─> one struct per item + its row (``list_parent_indices``)
               ─ filter by ``type`` ─> typed child arrays ─ offsets from ``bincount`` ─> list<...> per row

JSON strings are parsed by Arrow's multithreaded JSON reader, slice by slice, with inferred types
(half the CPU time of ``json.loads`` + ``pa.array``, spread over every core), each distinct item
once where the texts allow it (``item_lines``); a slice whose
inferred types will not do is read again with an explicit schema, and a slice that reader refuses
too (a number where a string was expected, a trailing comma) is parsed with ``json.loads`` and
coerced field by field, so odd data costs time only where it occurs and a real error names the
row and field.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import SchemaError
from .item_codes import coded_columns, coded_type
from .item_lines import items_read_once, read_json_lines, text_body
from .json_depth import MAX_DEPTH, count_byte, describe, first_too_deep, most_opening_brackets
from .row_batches import one_array

# ---- output types ---------------------------------------------------------------------------------

ISSUE_TYPE = pa.struct(
    [
        ("issue_type", pa.string()),
        ("confidence", pa.float64()),
        ("duplicate_group_id", pa.string()),
        ("duplicate_threshold", pa.float64()),
        ("suggested_label", pa.string()),  # a mislabels issue's issues_description
        ("description", pa.string()),  # issues_description as exported, whatever the issue type
    ]
)
LABEL_TYPE = pa.struct([("category_name", pa.string()), ("source", pa.string()), ("original_id", pa.int64())])
OBJECT_TYPE = pa.struct(
    [
        ("bbox", pa.list_(pa.float64())),  # [x, y, width, height] in pixels, top-left origin, as exported
        ("category_name", pa.string()),
        ("source", pa.string()),
        ("original_id", pa.int64()),
        ("uniqueness_score", pa.float64()),
        ("url", pa.string()),
        ("issues", pa.list_(ISSUE_TYPE)),
        ("tags", pa.list_(pa.string())),
    ]
)
CAPTION_TYPE = pa.struct([("text", pa.string()), ("source", pa.string())])

ITEM_FIELDS = [
    pa.field("labels", pa.list_(LABEL_TYPE), nullable=False),
    pa.field("issues", pa.list_(ISSUE_TYPE), nullable=False),
    pa.field("objects", pa.list_(OBJECT_TYPE), nullable=False),
    pa.field("captions", pa.list_(CAPTION_TYPE), nullable=False),
    pa.field("tags", pa.list_(pa.string()), nullable=False),
    pa.field("video_name", pa.string()),
    pa.field("video_id", pa.string()),
    pa.field("frame_timestamp_s", pa.float64()),
    pa.field("frame_number", pa.int64()),
]

# ---- what raw items are read into: every documented property, typed ------------------------------

_ISSUE_PROPS = [
    ("issue_type", pa.string()),
    ("confidence", pa.float64()),
    ("duplicate_group_id", pa.string()),
    ("duplicate_threshold", pa.float64()),
    ("issues_description", pa.string()),
]
# An object's own metadata_items: its issues and tags.
_NESTED_PROPS = [*_ISSUE_PROPS, ("tag_name", pa.string())]
RAW_NESTED_ITEMS = pa.list_(pa.struct([("type", pa.string()), ("properties", pa.struct(_NESTED_PROPS))]))
ITEM_PROPS = [
    *_ISSUE_PROPS,
    ("category_name", pa.string()),
    ("source", pa.string()),
    ("original_id", pa.int64()),
    ("bbox", pa.list_(pa.float64())),
    ("uniqueness_score", pa.float64()),
    ("url", pa.string()),
    ("metadata_items", RAW_NESTED_ITEMS),
    ("tag_name", pa.string()),
    ("video_name", pa.string()),
    ("video_id", pa.string()),
    ("frame_timestamp", pa.float64()),
    ("frame_number", pa.int64()),
    ("timestamp", pa.string()),
    ("text", pa.string()),
    ("caption", pa.string()),
]
RAW_ITEMS = pa.list_(pa.struct([("type", pa.string()), ("properties", pa.struct(ITEM_PROPS))]))

# The documented scalar fields of a media item, as the JSON export writes them.
_STRING_FIELDS = ("media_id", "media_type", "file_name", "file_path", "image_filename", "cluster_id", "url")
SCALAR_INPUT_TYPES = {
    **{name: pa.string() for name in _STRING_FIELDS},
    "height": pa.int64(),
    "width": pa.int64(),
    "uniqueness_score": pa.float64(),
    "file_size": pa.string(),
}
# Rows per json-reader call: keeps a refused slice (and its slow re-parse) small.
JSON_SLICE_ROWS = 131_072
_SECONDS = r"^(?:(?:(?P<h>\d+):)?(?P<m>\d+):)?(?P<s>\d+(?:\.\d*)?)$"


class RowSchemaError(SchemaError):
    """A SchemaError about one row of the metadata. This module knows rows, not media ids:
    ``named`` turns it into a plain SchemaError that names the row's media id, once the caller
    has them."""

    row: int
    source: str
    detail: str


def row_error(source: str, row: int, detail: str, field: str) -> RowSchemaError:
    error = RowSchemaError(f"{source}: row {row}: {detail}", field=field)
    error.row, error.source, error.detail = row, source, detail
    return error


def named(error: RowSchemaError, media_id: Any) -> SchemaError:
    """``error`` as a SchemaError naming the media id of its row."""
    return SchemaError(
        f"{error.source}: media_id {media_id!r} (row {error.row}): {error.detail}",
        field=error.field,
        media_id=media_id if isinstance(media_id, str) else None,
    )


class _Items(NamedTuple):
    """Every item of a list array, one entry each: its row, its type and its (cast) properties."""

    n_rows: int
    parent: np.ndarray  # int64, ascending: the item's list
    rows: np.ndarray  # int64: the item's row in the whole table, for error messages
    types: pa.Array
    props: dict[str, pa.Array]


def extract_item_columns(
    column: pa.ChunkedArray | None, n_rows: int, source: str, *, coded: bool = False
) -> dict[str, pa.ChunkedArray]:
    """The ``ITEM_FIELDS`` columns for a ``metadata_items`` column of any shape (None: absent).
    With ``coded``, each is a dictionary array: the distinct lists once, a code per row sharing
    them (``item_codes``: what the index keeps), where a take would copy them per row."""
    if column is None:
        column = pa.chunked_array([pa.nulls(n_rows, RAW_ITEMS)])
    chunks, row = [], 0
    for chunk in column.chunks or [pa.nulls(0, RAW_ITEMS)]:
        # Parsed JSON strings come as slices whose inferred types may differ: each is flattened apart.
        for part in _as_list_parts(chunk, "metadata_items", source, row):
            # The items of each distinct text are made into columns once, then taken by its rows: in
            # the benchmark's export this halves what follows the parse. Each list is named in errors
            # by the first row holding it: the first row at fault, whichever that is.
            items = _flatten(part.lists, ITEM_PROPS, "metadata_items", source, rows=row + part.first_rows)
            columns = _item_columns(items, source)
            if coded:
                codes = pa.array(np.arange(part.n_rows, dtype=np.int32)) if part.rows is None else part.rows
                chunks.append(dict(zip(columns, coded_columns(list(columns.values()), codes))))
            elif part.rows is not None:
                chunks.append({name: _taken(c, part.rows) for name, c in columns.items()})
            else:
                chunks.append(columns)
            row += part.n_rows
    return {
        f.name: pa.chunked_array([c[f.name] for c in chunks], coded_type(f.type) if coded else f.type)
        for f in ITEM_FIELDS
    }


def _taken(column: pa.Array, rows: pa.Array) -> pa.Array:
    """``column.take(rows)``, made without a take when the column holds nothing (all null, or
    lists all empty): most exports hold no objects, captions, tags or video frames, and taking
    those per row cost a third of taking every column."""
    if column.null_count == len(column):
        return pa.nulls(len(rows), column.type)
    if pa.types.is_list(column.type) and not column.null_count and not len(column.flatten()):
        return pa.ListArray.from_arrays(pa.array(np.zeros(len(rows) + 1, np.int32)), column.flatten(), type=column.type)
    return column.take(rows)


def has_timestamp(type_: pa.DataType) -> bool:
    """Whether ``type_`` holds a timestamp or date: what Arrow's JSON reader makes of ISO-looking text."""
    return _holds(type_, lambda t: pa.types.is_timestamp(t) or pa.types.is_date(t))


# ---- parsing the three input shapes ----------------------------------------------------------------


class _Lists(NamedTuple):
    """A slice of rows' lists of items: ``lists``, one per row, or with ``rows``, one per distinct
    JSON text, ``rows`` giving each row's (a take makes them one per row)."""

    lists: pa.Array
    rows: pa.Array | None = None

    @property
    def n_rows(self) -> int:
        return len(self.lists if self.rows is None else self.rows)

    @property
    def first_rows(self) -> np.ndarray:
        """The first row (of the slice) holding each list: the distinct texts come in that order."""
        if self.rows is None:
            return np.arange(len(self.lists), dtype=np.int64)
        rows = self.rows.to_numpy(zero_copy_only=False)
        seen = np.maximum.accumulate(rows)  # a row holds a new text where its number passes every earlier one
        return np.flatnonzero(np.r_[True, seen[1:] > seen[:-1]]) if len(rows) else np.zeros(0, np.int64)

    def per_row(self) -> pa.Array:
        return self.lists if self.rows is None else self.lists.take(self.rows)


def _as_lists(array: pa.Array, where: str, source: str, row_offset: int = 0) -> pa.Array:
    """A list array from a list, JSON-string or all-null column; SchemaError for anything else."""
    if is_text(array.type):
        return parse_json_items(array, source, row_offset=row_offset)
    return _as_list_parts(array, where, source, row_offset)[0].lists


def _as_list_parts(array: pa.Array, where: str, source: str, row_offset: int = 0) -> list[_Lists]:
    """``_as_lists`` as consecutive parts; JSON strings are parsed with inferred types (faster)."""
    if pa.types.is_null(array.type):
        return [_Lists(pa.nulls(len(array), RAW_ITEMS))]
    if is_text(array.type):
        return _parse_json_parts(array, source, row_offset=row_offset, infer=True)
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        return [_Lists(array)]
    raise SchemaError(
        f"{source}: {where} has type {array.type}; expected a list of items or a JSON string.", field=where
    )


def is_text(type_: pa.DataType) -> bool:
    """Whether ``type_`` holds text: string, large string, or a dictionary of either (a Parquet
    column written dictionary-encoded, or read so)."""
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    return pa.types.is_string(type_) or pa.types.is_large_string(type_)


def first_seen(strings: pa.Array) -> pa.DictionaryArray:
    """``strings`` (text, or a dictionary of text) as a dictionary of exactly the values its rows
    hold, in the order of the first row holding each; null rows point at a null value.

    A dictionary read from a file may hold values no row holds, or in another order: re-encoding
    its indices (4 bytes a row) keeps only those rows hold, where encoding the text hashes it all.
    """
    if not pa.types.is_dictionary(strings.type):
        return pc.dictionary_encode(strings, null_encoding="encode")
    used = pc.dictionary_encode(strings.indices, null_encoding="encode")
    if _every_value_in_order(used.dictionary, len(strings.dictionary)):
        # What Parquet's reader gives: every value of its dictionary held, first seen first. Its
        # values are kept, not copied (~10 MiB of items a slice, twice: 1 s of CPU at 10M rows).
        return pa.DictionaryArray.from_arrays(used.indices, strings.dictionary)
    return pa.DictionaryArray.from_arrays(used.indices, strings.dictionary.take(used.dictionary))


def _every_value_in_order(positions: pa.Array, values: int) -> bool:
    """Whether ``positions`` (the first-seen order of a dictionary's positions) is 0, 1, ... ``values - 1``."""
    if len(positions) != values or positions.null_count:
        return False
    return bool(np.array_equal(positions.to_numpy(), np.arange(values)))


def parse_json_items(strings: pa.Array, source: str, *, row_offset: int = 0) -> pa.Array:
    """A ``RAW_ITEMS`` array from one JSON string per row (null or blank: no items)."""
    parts = _parse_json_parts(strings, source, row_offset=row_offset, infer=False)
    return pa.concat_arrays([part.per_row() for part in parts]) if parts else pa.array([], RAW_ITEMS)


def _parse_json_parts(strings: pa.Array, source: str, *, row_offset: int, infer: bool) -> list[_Lists]:
    """The lists of each slice of ``JSON_SLICE_ROWS`` strings.

    With ``infer``, Arrow's reader first infers each slice's types, which costs a quarter less than
    reading the two dozen documented properties into an explicit schema (it only builds the keys
    present); the slices' types then differ, and ``_flatten`` casts them. A slice whose inferred
    types are unusable, or that the reader refuses, is read with the explicit schema, then by
    ``json.loads``, row by row (its errors name the row). The readers see each distinct text of a
    slice once, and the rows repeating it take its items.
    """
    parts = [_Lists(pa.array([], RAW_ITEMS))] if not len(strings) else []
    for start in range(0, len(strings), JSON_SLICE_ROWS):
        # Each distinct text is parsed once: rows often repeat one (the same labels, no issue).
        # Its first occurrence orders the distinct texts, so inferred types come out as from all.
        distinct = first_seen(strings.slice(start, JSON_SLICE_ROWS))
        once = _json_lines_input(distinct.dictionary)
        n_rows = len(distinct)
        # No text of a slice within the bound can nest too deep for Arrow's reader: the exact scan
        # then waits until the reader refuses the slice, and runs before json.loads would, so a
        # fault is named as before.
        scanned = most_opening_brackets(once) > MAX_DEPTH
        if scanned:
            _check_depth(once.take(distinct.indices), source, row_offset + start)
        parsed = _read_json_fast(once, infer=True) if infer else None
        if parsed is None:
            parsed = _read_json_fast(once, infer=False)
        if parsed is not None:
            parts.append(_Lists(parsed, distinct.indices if len(once) < n_rows else None))
            continue
        texts = once.take(distinct.indices)
        if not scanned:
            _check_depth(texts, source, row_offset + start)
        values = [_loads_row(text, source, row_offset + start + i) for i, text in enumerate(texts.to_pylist())]
        parts.append(_Lists(python_items(values, source, row_offset=row_offset + start)))
    return parts


def _check_depth(
    strings: pa.Array, source: str, row_offset: int, *, field: str = "metadata_items", rows: np.ndarray | None = None
) -> None:
    """A row whose JSON nests past ``json_depth.MAX_DEPTH`` is refused before a parser recurses
    into it. Text ``i`` is in row ``row_offset + i``, or ``rows[i]``; ``field`` names what it is."""
    found = first_too_deep(strings)
    if found is not None:
        at, depth, offset = found
        row = row_offset + at if rows is None else int(rows[at])
        raise row_error(source, row, f"{field} is not JSON this library reads: it {describe(depth, offset)}", field)


def _json_lines_input(strings: pa.Array) -> pa.Array:
    """``strings`` as plain strings, with null and blank rows spelled ``null``."""
    strings = strings.cast(pa.string())
    if strings.null_count:
        strings = pc.fill_null(strings, "null")
    if pc.any(pc.equal(strings, "")).as_py():
        strings = pc.if_else(pc.equal(strings, ""), "null", strings)
    return strings


def _read_json_fast(strings: pa.Array, *, infer: bool) -> pa.Array | None:
    """Let Arrow's reader parse ``strings`` (JSON texts, ``null`` for none): with ``infer``, each
    distinct item on a line of its own where the texts allow it (``item_lines``), else each text
    wrapped as ``{"m": <text>}`` on its own line.

    None when the reader refuses the slice (a number where a string is expected, invalid JSON...),
    or, with ``infer``, when the types it inferred are not a list of items ``_flatten`` can take.
    """
    column = items_read_once(strings) if infer else None
    if column is None:
        column = _read_wrapped(strings, None if infer else pa.schema([("m", RAW_ITEMS)]))
    if column is None or not infer:
        return column
    if pa.types.is_null(column.type):
        return pa.nulls(len(strings), RAW_ITEMS)
    return column if inferred_items_usable(column.type, ITEM_PROPS) else None


def _read_wrapped(strings: pa.Array, schema: pa.Schema | None) -> pa.Array | None:
    """Each of ``strings`` (JSON texts, ``null`` for none) parsed by Arrow's reader, wrapped as
    ``{"m": <text>}`` on a line of its own: the types inferred, or ``schema``'s. None when the
    reader refuses them, or gives back other than one value per text."""
    body = text_body(pc.binary_join_element_wise('{"m":', strings, "}\n", ""))
    # The reader splits its input into blocks at newlines only when no value holds one: a value
    # holds one when the body holds more than the one that ends each line (a count over the bytes,
    # where a substring search per value costs about 30 times as much).
    newlines = count_byte(np.frombuffer(body, dtype=np.uint8), ord("\n")) > len(strings)
    table = read_json_lines(body, schema=schema, newlines=bool(newlines))
    if table is None or table.num_rows != len(strings) or "m" not in table.column_names:
        return None  # refused, or a value closed its wrapper early
    return one_array(table.column("m"))


def inferred_items_usable(type_: pa.DataType, spec: list) -> bool:
    """Whether inferred ``metadata_items`` are a list of objects whose ``type`` and documented
    properties are not timestamps: the reader turns ISO-looking text ("2025-01-01") into
    timestamps, which would come back as other text. (Undocumented keys, like ``assigned_date``,
    may be anything.)"""
    if pa.types.is_null(type_):
        return True
    if not pa.types.is_list(type_):
        return False
    item = type_.value_type
    if pa.types.is_null(item):
        return True
    if not pa.types.is_struct(item):
        return False
    documented = {name for name, _ in spec}
    for field in item:
        if field.name == "type" and has_timestamp(field.type):
            return False
        if field.name != "properties" or pa.types.is_null(field.type):
            continue
        if not pa.types.is_struct(field.type):
            return False
        for prop in field.type:
            if prop.name == "metadata_items" and "metadata_items" in documented:
                if not inferred_items_usable(prop.type, _NESTED_PROPS):
                    return False
            elif prop.name in documented and has_timestamp(prop.type):
                return False
    return True


def _loads_row(text: str | None, source: str, row: int, field: str = "metadata_items") -> Any:
    if text is None or not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise row_error(source, row, f"{field} is not valid JSON ({exc}).", field) from None


@contextmanager
def gc_paused():
    # Millions of new dicts make CPython's cyclic GC rescan the young heap over and over (3x here).
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def python_items(values: Sequence[Any], source: str, *, row_offset: int = 0) -> pa.Array:
    """A ``RAW_ITEMS`` array from one list of item dicts (or None, or a JSON string) per row."""
    with gc_paused():
        try:
            if not _items_are_objects(values):
                raise TypeError("an item is no object")  # the row by row conversion names its row
            array = pa.array(values, type=RAW_ITEMS)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
            rows = [_coerce_row(v, source, row_offset + i) for i, v in enumerate(values)]
            return pa.array(rows, type=RAW_ITEMS)
    _refuse_booleans(values, _rows_with_0_or_1(array), source, row_offset)
    _refuse_fractions(values, source, row_offset)
    return array


def _items_are_objects(values: Sequence[Any]) -> bool:
    """Whether every item of the rows that are lists is an object (or null), and so is every item of
    an item's own ``metadata_items`` (an object's issues). Arrow's conversion reads a list where it
    expects a struct as (key, value) pairs: ``[]`` as an item of no type."""
    for row in values:
        if type(row) is not list:
            continue
        for item in row:
            if type(item) is not dict:
                if item is None:
                    continue
                return False
            props = item.get("properties")
            nested = props.get("metadata_items") if type(props) is dict else None
            if type(nested) is list and not all(type(inner) is dict or inner is None for inner in nested):
                return False
    return True


# The integer properties of RAW_ITEMS: Arrow's conversion of Python values truncates 2.5 there to
# 2, where its JSON reader and ``_coerce_value`` refuse it. Read again as floats, they show it.
_INT_PROPS = tuple(name for name, type_ in ITEM_PROPS if pa.types.is_integer(type_))
_INT_PROPS_AS_FLOATS = pa.list_(pa.struct([("properties", pa.struct([(name, pa.float64()) for name in _INT_PROPS]))]))


def _refuse_fractions(values: Sequence[Any], source: str, row_offset: int) -> None:
    """A RowSchemaError for the first integer property of ``values`` that no integer equals."""
    lists = pa.array(values, type=_INT_PROPS_AS_FLOATS)  # these properties alone: a fraction of the whole conversion
    props = lists.flatten().field("properties")
    for name in _INT_PROPS:
        numbers = props.field(name)
        fractional = pc.and_(pc.is_valid(numbers), pc.not_equal(pc.floor(numbers), numbers))
        if pc.any(fractional).as_py():
            item = pc.index(fractional, True).as_py()
            row = int(pc.list_parent_indices(lists).to_numpy()[item])
            field = f"metadata_items.properties.{name}"
            detail = f"{field} = {numbers[item].as_py()!r}, which is not a int64 (not a whole number)."
            raise row_error(source, row_offset + row, detail, field)


# The float properties of RAW_ITEMS: Arrow's conversion of Python values reads a true or false
# there as 1.0 or 0.0 (a confidence of 1 out of nowhere). Integer ones refuse booleans already.
_FLOAT_PROPS = tuple(name for name, type_ in ITEM_PROPS if pa.types.is_floating(type_))
_NESTED_FLOAT_PROPS = tuple(name for name, type_ in _NESTED_PROPS if pa.types.is_floating(type_))


def _rows_with_0_or_1(array: pa.Array) -> np.ndarray:
    """The rows of a ``RAW_ITEMS`` array converted from Python values where a float property
    (bbox numbers and an object's own issues included) is 0 or 1: the only rows where a boolean
    can hide. Found vectorized, so that the Python walk of ``_refuse_booleans`` visits them alone."""
    items = array.flatten()
    props = items.field("properties")
    hit = np.zeros(len(items), dtype=bool)
    for name in _FLOAT_PROPS:
        hit |= _is_0_or_1(props.field(name))
    for lists, names in ((props.field("bbox"), None), (props.field("metadata_items"), _NESTED_FLOAT_PROPS)):
        owner = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False)
        values = lists.flatten()
        if names is None:
            hit[owner[_is_0_or_1(values)]] = True
        else:
            for name in names:
                hit[owner[_is_0_or_1(values.field("properties").field(name))]] = True
    return np.unique(pc.list_parent_indices(array).to_numpy(zero_copy_only=False)[hit])


def _is_0_or_1(values: pa.Array) -> np.ndarray:
    found = pc.is_in(values, value_set=pa.array([0.0, 1.0]))
    return pc.fill_null(found, False).to_numpy(zero_copy_only=False)


def _refuse_booleans(values: Sequence[Any], rows: np.ndarray, source: str, row_offset: int) -> None:
    """SchemaError for the first true or false among the float properties of Python items, looked
    for in ``rows`` only (``_rows_with_0_or_1``)."""
    for i in rows.tolist():
        for props in _properties(values[i]):
            where, name = "metadata_items", _boolean_prop(props, _FLOAT_PROPS)
            if name is None:  # an object label's own issues
                where = "metadata_items.properties.metadata_items"
                inner = (_boolean_prop(p, _NESTED_FLOAT_PROPS) for p in _properties(props.get("metadata_items")))
                name = next((found for found in inner if found is not None), None)
            if name is not None:
                field = f"{where}.properties.{name}"
                raise row_error(source, row_offset + i, f"{field} is true or false where a number belongs.", field)


def _properties(items: Any) -> Iterator[dict]:
    """The ``properties`` of each item of a list of Python items; whatever is not one is skipped
    (Arrow's conversion has already accepted it)."""
    if isinstance(items, list):
        for item in items:
            props = item.get("properties") if isinstance(item, dict) else None
            if isinstance(props, dict):
                yield props


def _boolean_prop(props: dict, names: Sequence[str]) -> str | None:
    for name in names:
        value = props.get(name)
        if value is True or value is False:
            return name
    bbox = props.get("bbox")
    if isinstance(bbox, list) and any(v is True or v is False for v in bbox):
        return "bbox"
    return None


def _coerce_row(value: Any, source: str, row: int) -> list | None:
    if isinstance(value, str):
        value = _loads_row(value, source, row)
    if value is None:
        return None
    if not isinstance(value, list):
        raise row_error(source, row, f"metadata_items is a {type(value).__name__}, not a list.", "metadata_items")
    return [_coerce_item(item, ITEM_PROPS, source, row, "metadata_items") for item in value]


def _coerce_item(item: Any, spec: list, source: str, row: int, where: str) -> dict | None:
    if item is None:
        return None
    if not isinstance(item, dict):
        raise row_error(source, row, f"an item in {where} is not an object.", where)
    props = item.get("properties") or {}
    if not isinstance(props, dict):
        raise row_error(source, row, f"{where} has 'properties' that is not an object.", f"{where}.properties")
    out = {}
    for name, type_ in spec:
        value = props.get(name)
        if value is None:
            continue
        if name == "metadata_items":
            nested = _loads_row(value, source, row) if isinstance(value, str) else value
            nested_where = f"{where}.properties.metadata_items"
            if not isinstance(nested, list):
                raise row_error(source, row, "an object label's metadata_items is not a list.", nested_where)
            out[name] = [_coerce_item(i, _NESTED_PROPS, source, row, nested_where) for i in nested]
        else:
            out[name] = _coerce_value(value, type_, f"{where}.properties.{name}", source, row)
    kind = item.get("type")
    return {"type": None if kind is None else str(kind), "properties": out}


def _coerce_value(value: Any, type_: pa.DataType, field: str, source: str, row: int) -> Any:
    try:
        if pa.types.is_string(type_):
            if isinstance(value, (dict, list)):
                raise TypeError("an object or list")
            return as_text_value(value)
        # float(True) is 1.0: a boolean is refused, not read as a number.
        if value is True or value is False or (isinstance(value, list) and any(isinstance(v, bool) for v in value)):
            raise TypeError("true or false")
        if pa.types.is_list(type_):
            return [float(v) for v in value]
        if pa.types.is_integer(type_):
            # An integer as it is (through a float, 2**63 - 1 would round past int64).
            whole = value if isinstance(value, int) else float(value)
            if no_integer_equals(whole):
                raise ValueError("not a whole number")
            if not _INT64_MIN <= whole <= _INT64_MAX:
                raise ValueError("outside int64")
            return int(whole)
        return float(value)
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: float() of an integer past 1e308
        raise row_error(source, row, f"{field} = {value!r}, which is not a {type_} ({exc}).", field) from None


_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def no_integer_equals(value: Any) -> bool:
    """Whether ``value`` is a float that no integer equals (NaN and infinities included): what
    Arrow's conversion of Python values would truncate into an integer column."""
    return isinstance(value, float) and not value.is_integer()


def as_text_value(value: Any) -> str:
    """A JSON value read where text belongs, spelled as Arrow's reader and casts spell the column
    they infer for it (``true``, ``5`` for 5.0, ``1e+20``), so that a row reads the same whichever
    reader its slice took, and as from a Parquet file whose column holds such numbers typed."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and _INT64_MIN <= value <= _INT64_MAX:
        return str(value)
    if isinstance(value, (int, float)):  # an integer past int64 is inferred as a float64 too
        return pa.scalar(float(value), pa.float64()).cast(pa.string()).as_py()
    return str(value)


# ---- flattening ------------------------------------------------------------------------------------


def _flatten(
    lists: pa.Array, spec: list, where: str, source: str, *, row_offset: int = 0, rows: np.ndarray | None = None
) -> _Items:
    """Flatten a list<struct<type, properties>> of any inferred types; cast the ``spec`` properties.

    The table row of list ``i`` is ``row_offset + i``, or ``rows[i]`` for the lists of nested items.
    """
    parent = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    item_rows = parent + row_offset if rows is None else rows[parent]
    flat = lists.flatten()
    n = len(flat)
    fields: dict[str, pa.Array] = {}
    if pa.types.is_struct(flat.type):
        fields = {flat.type.field(i).name: child for i, child in enumerate(flat.flatten())}
    elif not pa.types.is_null(flat.type):
        raise SchemaError(
            f"{source}: {where} holds {flat.type} values; expected objects with 'type' and 'properties'.", field=where
        )
    types = cast_or_raise(fields.get("type", pa.nulls(n)), pa.string(), f"{where}.type", source, rows=item_rows)
    raw_props = fields.get("properties", pa.nulls(n))
    present: dict[str, pa.Array] = {}
    if is_text(raw_props.type):
        raw_props = _properties_from_text(raw_props, where, source, item_rows)
    if pa.types.is_struct(raw_props.type):
        present = {raw_props.type.field(i).name: c for i, c in enumerate(raw_props.flatten())}
    elif not pa.types.is_null(raw_props.type):
        raise SchemaError(
            f"{source}: {where}.properties is {raw_props.type}, not an object.", field=f"{where}.properties"
        )
    props = {}
    for name, type_ in spec:
        array = present.get(name)
        if array is None:
            props[name] = pa.nulls(n, type_)
        elif name == "metadata_items":
            props[name] = array  # raw; only object labels' are flattened, by _objects
        else:
            props[name] = cast_or_raise(array, type_, f"{where}.properties.{name}", source, rows=item_rows)
    return _Items(len(lists), parent, item_rows, types, props)


_PROPERTIES = RAW_ITEMS.value_type.field("properties").type  # the documented properties, typed


def _properties_from_text(texts: pa.Array, where: str, source: str, rows: np.ndarray) -> pa.Array:
    """Items' ``properties`` kept as JSON text (a Parquet writer's way with objects whose keys differ
    from item to item), parsed into objects, to be typed as a JSON export's are. ``rows[i]``: the
    table row of text ``i``, named in errors."""
    field = f"{where}.properties"
    texts = _json_lines_input(texts)
    _check_depth(texts, source, 0, field=field, rows=rows)
    parsed = _read_wrapped(texts, None)
    if parsed is None:  # types inferred apart by key (an unknown key a number here, text there): the known keys alone
        parsed = _read_wrapped(texts, pa.schema([("m", _PROPERTIES)]))
    if parsed is not None and (pa.types.is_struct(parsed.type) or pa.types.is_null(parsed.type)):
        return parsed
    for at, text in enumerate(texts.to_pylist()):  # the first text at fault, named
        value = _loads_row(text, source, int(rows[at]), field)
        if value is not None and not isinstance(value, dict):
            raise row_error(source, int(rows[at]), f"{field} holds a {type(value).__name__}, not an object.", field)
    raise SchemaError(f"{source}: {field} holds objects whose values differ in type from item to item.", field=field)


def cast_or_raise(values, type_: pa.DataType, field: str, source: str, *, rows: np.ndarray | None = None):
    """``values`` (an Array or ChunkedArray) as ``type_``, or a SchemaError naming the field and
    the row of the first value at fault (a ``RowSchemaError``: value ``i`` is in row ``rows[i]``,
    or ``i`` without ``rows``).

    Booleans are refused where a number belongs: Arrow casts true to 1, which would make a
    uniqueness score or a confidence of 1 out of a value of another kind.
    """
    if values.type == type_:
        return values
    if _holds(values.type, pa.types.is_boolean) and _holds(type_, _is_number):
        at = _first_true(pc.is_valid(values)) if not _is_list(values.type) else _first_true(_non_empty(values))
        if at is not None:
            raise _value_error(values, at, f"{field} is true or false where a number belongs.", field, source, rows)
    try:
        return values.cast(type_)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        detail = f"{field} has type {values.type} and values that cannot be read as {type_} ({exc})."
        if pa.types.is_nested(values.type):  # a bisection over nested values would cast their children over and over
            raise SchemaError(f"{source}: {detail}", field=field) from None
        at = first_failing(values, lambda part: part.cast(type_))
        raise _value_error(values, at, detail, field, source, rows) from None


def _is_number(type_: pa.DataType) -> bool:
    return pa.types.is_integer(type_) or pa.types.is_floating(type_)


def _is_list(type_: pa.DataType) -> bool:
    return pa.types.is_list(type_) or pa.types.is_large_list(type_)


def _holds(type_: pa.DataType, test: Callable[[pa.DataType], bool]) -> bool:
    """Whether ``type_``, or a type nested in it, passes ``test``."""
    return test(type_) or any(_holds(type_.field(i).type, test) for i in range(type_.num_fields))


def _non_empty(lists):
    return pc.greater(pc.fill_null(pc.list_value_length(lists), 0), 0)


def _first_true(mask) -> int | None:
    """The position of the first true value of a boolean Array or ChunkedArray (nulls are false)."""
    at = pc.index(pc.fill_null(mask, False), True).as_py()
    return None if at < 0 else at


def first_failing(values, operation: Callable[[Any], Any]) -> int | None:
    """The position of the first value on which ``operation`` raises, by bisection: each step runs
    it over half of what is left, so the search costs about two runs over all the values. Only
    for an error message: it runs once the whole has failed."""
    values = one_array(values)
    low, high = 0, len(values)  # the first failing value is in [low, high)
    errors = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError)
    try:
        operation(values)
        return None
    except errors:
        pass
    while high - low > 1:
        middle = (low + high) // 2
        try:
            operation(values.slice(low, middle - low))
            low = middle
        except errors:
            high = middle
    return low


def _value_error(values, at: int | None, detail: str, field: str, source: str, rows: np.ndarray | None):
    if at is None:
        return SchemaError(f"{source}: {detail}", field=field)
    return row_error(source, int(at if rows is None else rows[at]), detail, field)


def check_unit_interval(values, field: str, source: str, rows: np.ndarray | None = None) -> None:
    """A RowSchemaError for the first value of ``values`` (float64) outside 0..1, or NaN; nulls
    (absent values) pass. Value ``i`` is in row ``rows[i]``, or ``i`` without ``rows``."""
    # NaN compares false both ways: it fails the test like a value out of range.
    inside = pc.and_(pc.greater_equal(values, 0.0), pc.less_equal(values, 1.0))
    if pc.all(inside).as_py() is not False:  # all() skips nulls; None when there is nothing to test
        return
    at = _first_true(pc.invert(inside))
    assert at is not None
    raise _value_error(values, at, f"{field} is {values[at].as_py()}, not a number from 0 to 1.", field, source, rows)


def check_not_negative(values, field: str, source: str) -> None:
    """A RowSchemaError for the first value of ``values`` (integers: an image's height or width)
    below 0; nulls (absent values) pass. Value ``i`` is in row ``i``."""
    if pc.all(pc.greater_equal(values, 0)).as_py() is not False:
        return
    at = _first_true(pc.less(values, 0))
    assert at is not None
    raise _value_error(values, at, f"{field} is {values[at].as_py()}, not a size in pixels.", field, source, None)


def check_boxes(boxes: pa.Array, field: str, source: str, rows: np.ndarray) -> None:
    """A RowSchemaError for the first bbox that is not [x, y, width, height]: 4 finite numbers with
    width and height not negative. A null bbox (absent) passes. Box ``i`` is in row ``rows[i]``."""
    if not len(boxes):
        return
    lengths = pc.list_value_length(boxes)
    at = _first_true(pc.not_equal(lengths, 4))
    if at is None:
        present = np.flatnonzero(pc.is_valid(boxes).to_numpy(zero_copy_only=False))
        # Every present box holds 4 values, in order; a null number becomes NaN, and fails isfinite too.
        xywh = boxes.flatten().to_numpy(zero_copy_only=False).reshape(-1, 4)
        bad = ~np.isfinite(xywh).all(axis=1) | (xywh[:, 2] < 0) | (xywh[:, 3] < 0)
        if not bad.any():
            return
        at = int(present[np.argmax(bad)])
    detail = (
        f"{field} is {boxes[at].as_py()}, not [x, y, width, height]: "
        "4 finite numbers, with width and height not negative."
    )
    raise _value_error(boxes, at, detail, field, source, rows)


def _select(items: _Items, kind: str) -> tuple[pa.Array, np.ndarray]:
    """Positions of the items of type ``kind`` and the list offsets that regroup them by row."""
    index = pc.indices_nonzero(pc.fill_null(pc.equal(items.types, kind), False))
    rows = items.parent[index.to_numpy()]
    offsets = np.zeros(items.n_rows + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=items.n_rows), out=offsets[1:])
    return index, offsets


def _lists(
    items: _Items,
    kind: str,
    names: Sequence[str],
    build: Callable[[dict[str, pa.Array], np.ndarray], pa.Array],
) -> pa.Array:
    """The ``kind`` items of each row as a list array: ``build`` makes the list values from the
    items' ``names`` properties and the table row of each item (for error messages)."""
    index, offsets = _select(items, kind)
    props = {name: items.props[name].take(index) for name in names}
    return pa.ListArray.from_arrays(pa.array(offsets), build(props, items.rows[index.to_numpy()]))


def _struct(arrays: dict[str, pa.Array], type_: pa.StructType) -> pa.Array:
    return pa.StructArray.from_arrays([arrays[f.name] for f in type_], fields=list(type_))


_ISSUE_NAMES = [name for name, _ in _ISSUE_PROPS]


def _issue_values(p: dict[str, pa.Array]) -> pa.Array:
    suggested = pc.if_else(
        pc.fill_null(pc.equal(p["issue_type"], "mislabels"), False),
        p["issues_description"],
        pa.scalar(None, pa.string()),
    )
    return _struct(dict(p, suggested_label=suggested, description=p["issues_description"]), ISSUE_TYPE)


def _item_columns(items: _Items, source: str) -> dict[str, pa.Array]:
    # Values are checked as they are read, so that a bad one is refused, naming its row, when the
    # export is opened, instead of being met by the loader or counted by a curation rule.
    def issues(where: str) -> Callable[[dict[str, pa.Array], np.ndarray], pa.Array]:
        def build(p: dict[str, pa.Array], rows: np.ndarray) -> pa.Array:
            check_unit_interval(p["confidence"], f"{where}.properties.confidence", source, rows)
            return _issue_values(p)

        return build

    def objects(p: dict[str, pa.Array], rows: np.ndarray) -> pa.Array:
        check_boxes(p["bbox"], "metadata_items.properties.bbox", source, rows)
        check_unit_interval(p["uniqueness_score"], "metadata_items.properties.uniqueness_score", source, rows)
        where = "metadata_items.properties.metadata_items"
        nested = _flatten(_as_lists(p["metadata_items"], where, source), _NESTED_PROPS, where, source, rows=rows)
        p["issues"] = _lists(nested, "issue", _ISSUE_NAMES, issues(where))
        p["tags"] = _lists(nested, "user_tag", ["tag_name"], lambda q, _: q["tag_name"])
        return _struct(p, OBJECT_TYPE)

    def captions(p: dict[str, pa.Array], _: np.ndarray) -> pa.Array:
        return _struct({"text": pc.coalesce(p["text"], p["caption"]), "source": p["source"]}, CAPTION_TYPE)

    columns = {
        "labels": _lists(items, "image_label", LABEL_TYPE.names, lambda p, _: _struct(p, LABEL_TYPE)),
        "issues": _lists(items, "issue", _ISSUE_NAMES, issues("metadata_items")),
        "objects": _lists(
            items,
            "object_label",
            ["bbox", "category_name", "source", "original_id", "uniqueness_score", "url", "metadata_items"],
            objects,
        ),
        "captions": _lists(items, "caption", ["text", "caption", "source"], captions),
        "tags": _lists(items, "user_tag", ["tag_name"], lambda p, _: p["tag_name"]),
    }
    columns.update(_video_columns(items))
    return columns


_VIDEO_COLUMNS = ("video_name", "video_id", "frame_timestamp_s", "frame_number")


def _video_columns(items: _Items) -> dict[str, pa.Array]:
    """The row's first ``video_info`` item; both spellings (contract §6) folded together."""
    index, _ = _select(items, "video_info")
    if not len(index):  # most exports: no frame; each column null, without a take or a parse
        return {field.name: pa.nulls(items.n_rows, field.type) for field in ITEM_FIELDS if field.name in _VIDEO_COLUMNS}
    positions = index.to_numpy()
    rows, first = np.unique(items.parent[positions], return_index=True)
    take = np.full(items.n_rows, -1, dtype=np.int64)
    take[rows] = positions[first]
    take_array = pa.array(take, mask=take < 0)
    p = {
        name: items.props[name].take(take_array)
        for name in ("video_name", "video_id", "frame_timestamp", "frame_number", "timestamp")
    }
    return {
        "video_name": p["video_name"],
        "video_id": p["video_id"],
        "frame_timestamp_s": pc.coalesce(p["frame_timestamp"], parse_seconds(p["timestamp"])),
        "frame_number": p["frame_number"],
    }


def parse_seconds(text: pa.Array) -> pa.Array:
    """``"00:00:00.567"``, ``"01:02.5"`` or ``"1.5"`` as float seconds; null when unreadable."""
    parts = pc.extract_regex(pc.utf8_trim_whitespace(text), _SECONDS)
    seconds = []
    for name, scale in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        part = pc.struct_field(parts, name)  # an empty string where an optional group did not take part
        seconds.append(pc.multiply(pc.if_else(pc.equal(part, ""), "0", part).cast(pa.float64()), scale))
    return pc.add(pc.add(seconds[0], seconds[1]), seconds[2])
