"""Tables of one metadata read in parts, given the one schema a whole read would have given them.

A JSON export streamed a slice at a time types its unknown keys per slice, and the metadata of a
selection exported in chunks comes as one file per chunk: a column may be all null in one part,
whole numbers in another, fractions or text in a third.
"""

from __future__ import annotations

import json

import pyarrow as pa


def unified_schema(schemas: list[pa.Schema]) -> pa.Schema:
    """One schema for every part: each column's types promoted to one, or text where none holds
    them all (as a whole-file read turns values of mixed types into text); schema metadata merged."""
    fields = []
    for name in dict.fromkeys(name for schema in schemas for name in schema.names):
        found = [pa.schema([schema.field(name)]) for schema in schemas if name in schema.names]
        try:
            fields.append(pa.unify_schemas(found, promote_options="permissive").field(0))
        except (pa.ArrowTypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
            fields.append(pa.field(name, pa.string()))
    metadata = {key: value for schema in schemas for key, value in (schema.metadata or {}).items()}
    return pa.schema(fields, metadata=metadata)


def conformed(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` under ``schema`` (one of ``unified_schema``'s): its columns cast, or turned into
    text, and the columns it lacks all null."""
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            columns.append(pa.chunked_array([pa.nulls(table.num_rows, field.type)]))
            continue
        column = table.column(field.name)
        if column.type != field.type:
            column = column.cast(field.type) if not _as_text(column, field) else _json_text(column)
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def _as_text(column: pa.ChunkedArray, field: pa.Field) -> bool:
    return pa.types.is_string(field.type) and not pa.types.is_null(column.type)


def _json_text(column: pa.ChunkedArray) -> pa.Array:
    # As json_export._infer does for a column of mixed types: strings as they are, the rest as JSON.
    values = column.to_pylist()
    return pa.array([v if v is None or isinstance(v, str) else json.dumps(v) for v in values], pa.string())
