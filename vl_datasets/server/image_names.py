"""``image_filename``: each row's name in the flat ``images/`` of a Parquet export, computed in Arrow.

The file name where it is unique in the scope; ``<media_id><ext>`` for every row whose name repeats
(video frames named ``output_000001.jpg`` under many videos), so that copying
``images/{image_filename}`` into one folder, as the docs' pandas snippet does, loses no image.
Names are compared ignoring case (that folder may be on a case-insensitive filesystem). Null for a
row with neither file name nor path: it has no image. The scope is the whole dataset, so that a
row's name never depends on the selection (the chunks of a large export land in one folder); only
hand-made metadata with repeated media ids is named within each export.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from .columnar import Columns

COLUMNS = ["file_name", "file_path", "media_id"]
COLLISION = "image_filename values collide even after disambiguating repeated names by media id"
# posixpath.splitext's extension: the last dot, when something other than dots comes before it.
_EXTENSION = r"(?s)^\.*[^.].*(?P<ext>\.[^.]*)$"


def _text(column: pa.Array) -> pa.Array:
    return column.cast(pa.string()) if column.type != pa.string() else column


def bases(batch: pa.RecordBatch) -> pa.Array:
    """posixpath.basename of the file name, else of the file path, else ``""``."""
    name, path = _text(batch.column("file_name")), _text(batch.column("file_path"))
    given = pc.if_else(pc.fill_null(pc.not_equal(name, ""), False), name, path)
    return pc.replace_substring_regex(pc.fill_null(given, ""), pattern="(?s)^.*/", replacement="")


def _by_media_id(batch: pa.RecordBatch, base: pa.Array) -> pa.Array:
    media_id = pc.fill_null(_text(batch.column("media_id")), "None")
    safe = pc.replace_substring_regex(media_id, pattern=r"[/\\]", replacement="_")
    ext = pc.fill_null(pc.struct_field(pc.extract_regex(base, _EXTENSION), "ext"), "")
    return pc.binary_join_element_wise(safe, ext, "")


def names(batch: pa.RecordBatch, repeated: pa.Array) -> pa.Array:
    """The ``image_filename`` of each row; ``repeated``: the lower-cased names shared in the scope."""
    base = bases(batch)
    shared = pc.is_in(pc.utf8_lower(base), value_set=repeated)
    named = pc.if_else(shared, _by_media_id(batch, base), base)
    return pc.if_else(pc.equal(base, ""), pa.scalar(None, pa.string()), named)


def plan(scope: Callable[[], Iterable[pa.RecordBatch]]) -> pa.Array:
    """The lower-cased names that repeat in ``scope`` (called twice: two passes over its batches).

    Raises ValueError when the names still collide once repeated ones are named by media id.
    """
    lowered = [pc.utf8_lower(bases(batch)) for batch in scope()]
    counts = pc.value_counts(pa.chunked_array(lowered, pa.string()))
    del lowered
    values, seen = counts.field("values"), counts.field("counts")
    named = pc.not_equal(values, "")
    repeated = values.filter(pc.and_(named, pc.greater(seen, 1)))
    once = values.filter(pc.and_(named, pc.equal(seen, 1)))
    renamed = [
        pc.utf8_lower(_by_media_id(batch, base)).filter(pc.is_in(pc.utf8_lower(base), value_set=repeated))
        for batch in scope()
        for base in (bases(batch),)
    ]
    others = pa.chunked_array(renamed, pa.string())
    if pc.any(pc.is_in(others, value_set=once)).as_py() or pc.count_distinct(others).as_py() != len(others):
        raise ValueError(COLLISION)  # a file named like another item's media id: never drop an image
    return repeated


def plan_whole(columns: Columns, path: Path) -> tuple[bool, str | None]:
    """Decide the names over the whole dataset and save the repeated ones at ``path``.

    Returns (media ids unique, why no name can be given). With repeated media ids (hand-made
    metadata) nothing is saved: each export names its own rows.
    """
    ids = pa.chunked_array([b.column(0) for b in columns.batches(["media_id"])])
    unique = pc.count_distinct(ids, mode="all").as_py() == len(ids)
    del ids
    if not unique:
        return False, None
    try:
        repeated = plan(lambda: columns.batches(COLUMNS))
    except ValueError as exc:
        return True, str(exc)
    save(repeated, path)
    return True, None


def save(repeated: pa.Array, path: Path) -> None:
    with pa.ipc.new_file(str(path), pa.schema([("name", pa.string())])) as writer:
        writer.write_batch(pa.record_batch([repeated], names=["name"]))


def load(path: Path) -> pa.Array:
    with pa.OSFile(str(path)) as source:
        return pa.ipc.open_file(source).read_all().column(0).combine_chunks()
