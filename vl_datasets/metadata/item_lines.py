"""A slice's ``metadata_items`` texts parsed one distinct item at a time.

Rows repeat items far more than whole texts: every row's ``User`` label is one of a few objects,
and only its issues carry a confidence of their own. On a slice of the benchmark's export, 29
thousand distinct texts hold 93 thousand items, 39 thousand of them distinct: cutting, hashing and
reading those costs 58 ms against 84 ms for reading the texts whole, the parse that dominates the
first open of a large export.

A text ``[{...}, {...}]`` is cut into its items at each separator its slice's first text shows
(``}, {`` from Python's json, ``},{`` from compact writers), and each item goes on a line of its own.
The cut needs no scan of where strings and brackets are, because a wrong cut cannot pass unseen:

- a cut inside a string leaves that string open at the end of its line, which JSON forbids
  (a string holds no raw newline);
- a cut inside a nested list or object leaves a bracket unclosed on the line before and one
  unopened on the line after;
- a text whose items are not separated by exactly that separator (``[{...} {...}]``) gives a line
  the reader reads as several rows, or refuses.

Every line starts with ``{`` and ends with ``}``, so each is read as one row or more, or refused:
the reader refusing the items, or returning other than one row per line, sends the whole slice to
the texts' reader instead (``items._read_json_fast``). Texts of another shape (a newline in them, a
nested list of objects, items that are not objects) go there at once.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from .row_batches import one_array

# The reader parses a block per task and returns a chunk per block: a slice's texts in one block
# (~30 MiB of realistic items a slice) make its columns come out in one chunk.
JSON_BLOCK_BYTES = 64 << 20


def read_json_lines(body: pa.Buffer, *, schema: pa.Schema | None = None, newlines: bool = False) -> pa.Table | None:
    """``body`` (JSON objects, one a line) read by Arrow's reader: its types inferred, or
    ``schema``'s (other keys ignored). None when the reader refuses it or returns a table that is
    not valid (``reader_output_valid``). ``newlines``: whether a value may hold a newline."""
    try:
        table = pa_json.read_json(
            pa.BufferReader(body),
            read_options=pa_json.ReadOptions(block_size=JSON_BLOCK_BYTES),
            parse_options=pa_json.ParseOptions(
                explicit_schema=schema,
                newlines_in_values=newlines,
                unexpected_field_behavior="infer" if schema is None else "ignore",
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    return table if reader_output_valid(table) else None


def reader_output_valid(table: pa.Table) -> bool:
    """Whether what Arrow's JSON reader returned is a valid table. Inferring the types of a list that
    opens with null (``[null, {...}]``, ``"bbox": [null, 1]``), it builds a list whose offsets run
    past its values, which a take or a concatenation refuses, or reads beyond. The check reads each
    array's bounds, not its values (microseconds a slice)."""
    try:
        table.validate()
    except pa.ArrowInvalid:
        return False
    return True


def text_body(strings: pa.Array) -> pa.Buffer:
    """The bytes of ``strings`` (plain strings) one after the other, as one buffer, not copied."""
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int32, count=len(strings) + 1, offset=strings.offset * 4)
    data = strings.buffers()[2]
    return pa.py_buffer(b"") if data is None else data.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))


def items_read_once(texts: pa.Array) -> pa.Array | None:
    """A list of item structs per text of ``texts`` (plain strings without nulls, ``null`` for no
    items), with the types Arrow's reader infers from the texts whole; each distinct item parsed
    once. None when a text is not of the shape this reads, or an item is refused."""
    null = pc.equal(texts, "null")
    no_items = pc.or_(null, pc.equal(texts, "[]"))
    shaped = pc.and_(pc.starts_with(texts, "[{"), pc.ends_with(texts, "}]"))
    if not pc.all(pc.or_(no_items, shaped)).as_py() or not pc.any(shaped).as_py():
        return None
    # Bytes, not text: each cut falls beside ASCII brackets, so every piece stays valid UTF-8.
    inner = pc.binary_slice(texts.cast(pa.binary()), 2, -2)  # "[{" and "}]" off; each item gets its braces back
    if pc.any(no_items).as_py():
        inner = pc.if_else(no_items, pa.scalar(None, pa.binary()), inner)
    data = text_body(inner).to_pybytes()
    if b"\n" in data or _nests_objects(data):
        return None
    per_text = pc.split_pattern(inner, _separator(texts[pc.index(shaped, True).as_py()].as_py()))
    items = pc.dictionary_encode(per_text.flatten())
    distinct = items.dictionary
    table = read_json_lines(text_body(pc.binary_join_element_wise(b"{", distinct, b"}\n", b"")))
    if table is None or table.num_rows != len(distinct) or not table.num_columns:
        return None
    values = one_array(table.to_struct_array()).take(items.indices)
    return pa.ListArray.from_arrays(per_text.offsets, values, mask=null, type=pa.list_(values.type))


def _separator(text: str) -> str:
    """What the export puts between two items, as its first text with items shows: ``}, {``
    (Python's json) unless that text has ``},{`` (compact writers) only."""
    return "},{" if "},{" in text and "}, {" not in text else "}, {"


def _nests_objects(items: bytes) -> bool:
    """Whether a list of objects opens inside the items (``"metadata_items": [{...}, {...}]`` in an
    object label): the cut would part its objects, the reader refuse the lines, and the slice be
    read twice. Looked for with ``memchr`` first: the items of a classification export hold no
    list at all."""
    return b"[" in items and b"[{" in items
