"""Read a Visual Layer export's metadata, in every variant of contract §6, into one Arrow table.

One row per media item, columns in this order (``NORMALIZED_SCHEMA``), then the export's unknown
top-level columns as they were (renamed ``raw_<name>`` if one collides with a name below):

    media_id            string, never null, unique
    media_type          string           "image" or "video_frame"
    file_name           string           as exported; the base name of file_path when absent
    file_path           string           file_path, else the older image_filename; never rewritten
    file_size_bytes     int64            "48.27KB" -> 49428 (binary units: 1 KB = 1024 B, see below)
    height, width       int32
    uniqueness_score    float64          null when the column or the value is absent
    cluster_id, url     string
    labels              list<struct<category_name, source, original_id: int64>>        image_label items
    issues              list<struct<issue_type, confidence, duplicate_group_id,       issue items, every
                             duplicate_threshold, suggested_label, description>>        one (duplicates: one
                                                                                       per threshold)
    objects             list<struct<bbox: list<float64> [x, y, w, h], category_name,  object_label items
                             source, original_id, uniqueness_score, url,
                             issues: list<issue>, tags: list<string>>>
    captions            list<struct<text, source>>        caption items ("text" or "caption")
    tags                list<string>                      user_tag items' tag_name
    video_name, video_id  string                          the first video_info item, either spelling
    frame_timestamp_s   float64          frame_timestamp, else timestamp "00:00:00.567" in seconds
    frame_number        int64

List columns are never null (an item without metadata_items has empty lists). The schema
metadata holds ``vl_datasets.normalized_version`` and, for a JSON export, ``vl_datasets.info``
(its ``info`` object as JSON bytes).

Decisions where the contract is silent:
- File sizes use binary units (KB = 1024 B, MB = 1024**2 ...), the convention of the file-size
  formatters these exports come from (and of our local server's ``human_size``); two decimals
  round away the exact byte count in either base, so the choice only has to be consistent.
  A bare number is bytes; anything else unreadable becomes null, never an error.
- ``file_path`` keeps a leading ``images/``: the contract calls it a path inside the dataset's
  source, where a folder named ``images`` is legitimate. Instead ``resolve_image_paths`` also tries
  such a value as a path from the export root, right after ``images/<value>``.
- ``suggested_label`` is only set for ``mislabels`` issues (the only type the contract says carries
  a suggested label); ``description`` keeps ``issues_description`` for every type.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .atomic import replacing
from .errors import ConfigurationError, ImageNotFoundError, SchemaError
from .metadata_items import ITEM_FIELDS, SCALAR_INPUT_TYPES, cast_or_raise, extract_item_columns, gc_paused
from .metadata_json import read_json_export, table_from_media_items

logger = logging.getLogger(__name__)

NORMALIZED_VERSION = "1"
VERSION_KEY = b"vl_datasets.normalized_version"
INFO_KEY = b"vl_datasets.info"
SOURCE_KEY = b"vl_datasets.source"

NORMALIZED_SCHEMA = pa.schema([
    pa.field("media_id", pa.string(), nullable=False),
    pa.field("media_type", pa.string()),
    pa.field("file_name", pa.string()),
    pa.field("file_path", pa.string()),
    pa.field("file_size_bytes", pa.int64()),
    pa.field("height", pa.int32()),
    pa.field("width", pa.int32()),
    pa.field("uniqueness_score", pa.float64()),
    pa.field("cluster_id", pa.string()),
    pa.field("url", pa.string()),
    *ITEM_FIELDS,
])

METADATA_FILE_NAMES = ("metadata.parquet", "metadata.json")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff", "jfif")

# Input columns this module maps; every other column is kept as it is.
_CONSUMED = set(SCALAR_INPUT_TYPES) | {"metadata_items"}
_SIZE_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_PATTERN = r"(?i)^\s*(?P<n>\d+(?:\.\d*)?|\.\d+)\s*(?P<u>(?:[KMGT]i?)?B?)\s*$"


# ---- reading ---------------------------------------------------------------------------------------

def find_metadata_file(export_dir: str | os.PathLike) -> Path:
    """``metadata.parquet`` (preferred) or ``metadata.json`` at the export folder's root."""
    folder = Path(export_dir)
    for name in METADATA_FILE_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise SchemaError(f"No metadata.parquet or metadata.json at the root of the export folder {folder}.",
                      field="metadata.parquet")


def read_metadata(export_dir: str | os.PathLike, *, cache_path: str | os.PathLike | None = None) -> pa.Table:
    """The normalized table of an export folder.

    With ``cache_path``, a normalized copy there is reused when it was written by this version of
    the library from the same metadata file (name, size, mtime), and is (re)written otherwise.
    """
    source = find_metadata_file(export_dir)
    if cache_path is not None:
        cached = read_normalized(cache_path, source=source)
        if cached is not None:
            return cached
    table = read_metadata_file(source)
    if cache_path is not None:
        try:
            write_normalized(table, cache_path)
        except OSError as exc:  # a read-only or full cache folder costs the next load time, not this one
            logger.warning("Could not cache the normalized metadata at %s: %s", cache_path, exc)
    return table


def read_metadata_file(path: str | os.PathLike) -> pa.Table:
    """The normalized table of one ``metadata.parquet`` or ``metadata.json`` file."""
    path = Path(path)
    with open(path, "rb") as stream:
        is_parquet = stream.read(4) == b"PAR1"
    if is_parquet:
        try:
            raw = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise SchemaError(f"{path} is not a readable parquet file ({exc}).", field="metadata") from None
        table = normalize(raw, source=str(path))
    else:
        parsed = read_json_export(path)
        table = normalize(_load_json(path), source=str(path)) if parsed is None else \
            _normalize_raw(parsed[0], str(path), parsed[1])
    return _with_metadata(table, {SOURCE_KEY: json.dumps(_fingerprint(path)).encode()})


def _load_json(path: Path) -> Any:
    with open(path, "rb") as stream, gc_paused():
        try:
            return json.load(stream)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SchemaError(f"{path} is not valid JSON ({exc}).", field="metadata") from None


def _fingerprint(path: Path) -> dict:
    stat = path.stat()
    return {"name": path.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


# ---- normalizing -----------------------------------------------------------------------------------

def normalize(data: pa.Table | pa.RecordBatch | list | Mapping, *, source: str = "metadata") -> pa.Table:
    """The normalized table (module docstring) of a raw metadata table, a list of media items, or a
    JSON export's ``{"info": ..., "media_items": [...]}``. An already normalized table is returned as is.

    ``source`` names the data in error messages (the file path, when there is one).
    """
    info = None
    if isinstance(data, Mapping):
        if not isinstance(data.get("media_items"), list):
            raise SchemaError(f"{source}: the JSON export has no 'media_items' list.", field="media_items")
        info, data = data.get("info"), data["media_items"]
    if isinstance(data, list):
        data = table_from_media_items(data, source)
    elif isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    elif not isinstance(data, pa.Table):
        raise SchemaError(f"{source}: metadata must be a table, a list of media items or a JSON export, "
                          f"not {type(data).__name__}.", field="media_items")
    return data if is_normalized(data) else _normalize_raw(data, source, info)


def _normalize_raw(raw: pa.Table, source: str, info: Any) -> pa.Table:
    extra = {VERSION_KEY: NORMALIZED_VERSION.encode()}
    if info is not None:
        extra[INFO_KEY] = json.dumps(info, default=str).encode()
    return _with_metadata(_normalize_table(raw, source), extra)


def is_normalized(table: pa.Table) -> bool:
    """Whether ``table`` was normalized by this version of the library."""
    return (table.schema.metadata or {}).get(VERSION_KEY) == NORMALIZED_VERSION.encode()


def _normalize_table(raw: pa.Table, source: str) -> pa.Table:
    names = set(raw.column_names)
    if "media_id" not in names:
        raise SchemaError(f"{source}: required column 'media_id' is missing (columns: {sorted(names)}).",
                          field="media_id")
    if raw.num_rows and not names & {"file_path", "file_name", "image_filename"}:
        raise SchemaError(f"{source}: no 'file_path', 'file_name' or 'image_filename' column to find the "
                          "images by.", field="file_path")
    n = raw.num_rows

    def column(name: str, type_: pa.DataType) -> pa.ChunkedArray:
        if name not in names:
            return pa.chunked_array([pa.nulls(n, type_)])
        return cast_or_raise(raw.column(name), type_, name, source)

    media_id = column("media_id", pa.string())
    _check_ids(media_id, source)
    file_path = pc.coalesce(column("file_path", pa.string()), column("image_filename", pa.string()))
    file_name = pc.coalesce(column("file_name", pa.string()), _basename(file_path))
    out = {
        "media_id": media_id,
        "media_type": column("media_type", pa.string()),
        "file_name": file_name,
        "file_path": file_path,
        "file_size_bytes": _file_size_bytes(raw.column("file_size") if "file_size" in names else None, n),
        "height": column("height", pa.int32()),
        "width": column("width", pa.int32()),
        "uniqueness_score": column("uniqueness_score", pa.float64()),
        "cluster_id": column("cluster_id", pa.string()),
        "url": column("url", pa.string()),
    }
    out.update(extract_item_columns(raw.column("metadata_items") if "metadata_items" in names else None,
                                    n, source))
    fields = list(NORMALIZED_SCHEMA)
    for name in raw.column_names:
        if name in _CONSUMED or name.startswith("__index_level_"):
            continue
        target = name if name not in out else f"raw_{name}"
        out[target] = raw.column(name)
        fields.append(raw.schema.field(name).with_name(target))
    return pa.table(out, schema=pa.schema(fields))


def _check_ids(media_id: pa.ChunkedArray, source: str) -> None:
    if media_id.null_count:
        row = pc.index(pc.is_null(media_id), True).as_py()
        raise SchemaError(f"{source}: row {row} has no media_id.", field="media_id")
    if pc.count_distinct(media_id).as_py() != len(media_id):
        counts = pc.value_counts(media_id)
        duplicate = pc.filter(counts.field("values"), pc.greater(counts.field("counts"), 1))[0].as_py()
        raise SchemaError(f"{source}: media_id {duplicate!r} appears more than once.", field="media_id")


def _basename(paths: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    return pc.replace_substring_regex(paths, r"^.*[/\\]", "")


def _file_size_bytes(column: pa.ChunkedArray | None, n: int) -> pa.ChunkedArray:
    """Human-readable sizes ("48.27KB", "3.38MB", "512B", "1.2GB") as bytes; null when unreadable."""
    if column is not None and (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        return pc.round(column.cast(pa.float64())).cast(pa.int64())
    if column is None or not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return pa.chunked_array([pa.nulls(n, pa.int64())])
    parts = pc.extract_regex(column, _SIZE_PATTERN)
    number = pc.struct_field(parts, "n").cast(pa.float64())
    unit = pc.utf8_slice_codeunits(pc.utf8_upper(pc.struct_field(parts, "u")), 0, 1)
    scale = pc.take(pa.array(list(_SIZE_UNITS.values()), pa.float64()), pc.index_in(unit, pa.array(list(_SIZE_UNITS))))
    return pc.round(pc.multiply(number, scale)).cast(pa.int64())


def _with_metadata(table: pa.Table, extra: dict[bytes, bytes]) -> pa.Table:
    return table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})


def info_of(table: pa.Table) -> dict | None:
    """The JSON export's ``info`` object kept in the table's schema metadata, if any."""
    raw = (table.schema.metadata or {}).get(INFO_KEY)
    return None if raw is None else json.loads(raw)


# ---- the normalized cache ---------------------------------------------------------------------------

def write_normalized(table: pa.Table, path: str | os.PathLike) -> None:
    """Write a normalized table as an uncompressed Arrow IPC file, atomically (temp file, rename).

    Arrow IPC rather than parquet: ``read_normalized`` memory-maps it, so opening a
    million-item export costs no decoding, and every process that opens it (DataLoader workers
    under spawn or forkserver too) shares the same page-cache pages.
    """
    if not is_normalized(table):
        raise SchemaError("write_normalized takes a table returned by normalize() or read_metadata().",
                          field="vl_datasets.normalized_version")
    with replacing(Path(path)) as tmp, pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        # One record batch: readers then get single-chunk columns they can use without copying.
        writer.write_table(table.combine_chunks(), max_chunksize=max(len(table), 1))


def read_normalized(path: str | os.PathLike, *, source: str | os.PathLike | None = None) -> pa.Table | None:
    """A table written by ``write_normalized``, memory-mapped; or None when there is none to reuse:
    the file is missing or unreadable, was written by another version of the library, or (with
    ``source``) was built from a metadata file of another name, size or modification time."""
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except (OSError, pa.ArrowException):
        return None
    if not is_normalized(table):
        return None
    if source is not None:
        built_from = (table.schema.metadata or {}).get(SOURCE_KEY)
        if built_from is None or json.loads(built_from) != _fingerprint(Path(source)):
            return None
    return table


# ---- images ------------------------------------------------------------------------------------------

def resolve_image_paths(table: pa.Table, member_names: Iterable[str], *, on_missing: str = "raise") -> pa.Array:
    """Each row's image as a path inside the export (e.g. ``images/train/cat/x.jpg``), contract §5:

    1. ``images/<file_path>`` (then ``<file_path>`` itself if it already starts with ``images/``);
    2. ``images/<file_name>`` (then ``<file_name>`` if it starts with ``images/``);
    3. the one member whose base name is the file name's base name;
    4. ``images/<media_id>.<ext>`` for an image extension.

    Steps 2-3 never hand one file to two rows: a file name that several files or several rows share,
    and that no other step settles, raises ``ImageNotFoundError`` naming the media_id and the
    candidates, whatever ``on_missing`` says (an ambiguous name is never resolved silently). A row
    with no image raises ``ImageNotFoundError`` (``on_missing="raise"``) or gets null (``"null"``),
    so the caller can drop it. ``table`` is a normalized table; ``member_names`` are the export's
    files relative to its root (a ZIP's names, or paths under the extracted folder).
    """
    if on_missing not in ("raise", "null"):
        raise ConfigurationError(f"on_missing must be 'raise' or 'null', not {on_missing!r}.")
    members = _member_array(member_names)
    media_id = table.column("media_id").combine_chunks()
    file_path = table.column("file_path").combine_chunks()
    file_name = table.column("file_name").combine_chunks()
    resolved, ambiguous = _exact_steps(file_path, file_name, members)
    pending = pc.indices_nonzero(pc.is_null(resolved))
    if len(pending):  # steps 3 and 4 only for the rows the exact paths left: usually none
        # A member another row found by its exact path is that row's image, whatever its name.
        members = members.filter(pc.invert(pc.is_in(members, value_set=pc.drop_null(resolved))))
        member_base = _basename(members)
        by_base, base_ambiguous = _unique_match(_basename(file_name.take(pending)), member_base, members)
        by_id, id_ambiguous = _unique_match(media_id.take(pending), _media_id_stems(members, member_base), members)
        resolved = _scatter(resolved, pending, pc.coalesce(by_base, by_id))
        ambiguous = _scatter(ambiguous, pending, pc.or_(ambiguous.take(pending),
                                                        pc.or_(base_ambiguous, id_ambiguous)))
    unresolved = pc.is_null(resolved)
    ambiguous = pc.and_(unresolved, ambiguous)
    if pc.any(ambiguous).as_py():
        row = pc.index(ambiguous, True).as_py()
        _raise_ambiguous(media_id[row].as_py(), file_name[row].as_py(), members, file_name)
    if on_missing == "raise" and pc.any(unresolved).as_py():
        row = pc.index(unresolved, True).as_py()
        count = pc.sum(unresolved).as_py()
        raise ImageNotFoundError(
            f"No image in the export for media_id {media_id[row].as_py()!r} (file_path "
            f"{file_path[row].as_py()!r}, file_name {file_name[row].as_py()!r}); {count} row(s) have none. "
            "Export with include_images=true, or pass on_missing='null' to drop them.",
            media_id=media_id[row].as_py())
    return resolved


_NO_STRING = pa.scalar(None, pa.string())


def _member_array(member_names: Iterable[str]) -> pa.Array:
    if isinstance(member_names, pa.ChunkedArray):
        members = member_names.combine_chunks()
    elif isinstance(member_names, pa.Array):
        members = member_names
    else:
        members = pa.array(list(member_names), pa.string())
    members = pc.replace_substring(members.cast(pa.string()), "\\", "/")
    return pc.drop_null(members) if members.null_count else members


def _exact_steps(file_path: pa.Array, file_name: pa.Array, members: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Steps 1 and 2: ``images/<file_path>`` for every row, the other candidates only where it fails.

    Also says which rows are ambiguous: those whose step-2 file another row claims too (frames named
    ``output_000001.jpg`` in an export laid out by file name).
    """
    resolved = _exact(pc.binary_join_element_wise("images/", file_path, ""), members)
    no_conflict = pa.array(np.zeros(len(resolved), dtype=bool))
    pending = pc.indices_nonzero(pc.is_null(resolved))
    if not len(pending):
        return resolved, no_conflict
    path, name = file_path.take(pending), file_name.take(pending)
    by_name = pc.binary_join_element_wise("images/", name, "")
    candidates = [_as_root_path(path),
                  pc.if_else(pc.fill_null(pc.equal(name, path), False), _NO_STRING, by_name),  # already tried
                  _as_root_path(name)]
    n = len(pending)
    tried = [c for c in candidates if c.null_count < n]
    if not tried:
        return resolved, no_conflict
    found = _exact(pa.concat_arrays(tried), members)  # one hash of the members for every step
    found = pc.coalesce(*(found.slice(i * n, n) for i in range(len(tried))))
    if found.null_count == n:
        return resolved, no_conflict
    shared = pc.and_(pc.is_valid(found), _repeated(found, pc.drop_null(pc.coalesce(resolved, _scatter(
        pa.nulls(len(resolved), pa.string()), pending, found)))))
    return (_scatter(resolved, pending, pc.if_else(shared, _NO_STRING, found)),
            _scatter(no_conflict, pending, shared))


def _as_root_path(value: pa.Array) -> pa.Array:
    return pc.if_else(pc.fill_null(pc.starts_with(value, "images/"), False), value, _NO_STRING)


def _exact(candidates: pa.Array, members: pa.Array) -> pa.Array:
    return pc.if_else(pc.fill_null(pc.is_in(candidates, value_set=members), False), candidates, _NO_STRING)


def _unique_match(keys: pa.Array, member_keys: pa.Array, members: pa.Array) -> tuple[pa.Array, pa.Array]:
    """For each key: the member with that key when exactly one member and one row have it (else
    null), and whether the key is ambiguous: several members have it, or several rows share it."""
    wanted = pc.fill_null(pc.is_in(member_keys, value_set=pc.drop_null(keys)), False)
    member_keys, members = member_keys.filter(wanted), members.filter(wanted)
    first = members.take(pc.index_in(keys, member_keys))
    several = pc.and_(pc.is_valid(first), pc.or_(_repeated(keys, keys), _repeated(keys, member_keys)))
    return pc.if_else(several, _NO_STRING, first), several


def _repeated(keys: pa.Array, among: pa.Array) -> pa.Array:
    """Whether each key occurs more than once in ``among``."""
    counts = pc.value_counts(among)
    if not len(counts) or pc.max(counts.field("counts")).as_py() == 1:
        return pa.array(np.zeros(len(keys), dtype=bool))
    return pc.fill_null(pc.greater(counts.field("counts").take(pc.index_in(keys, counts.field("values"))), 1), False)


def _media_id_stems(members: pa.Array, member_base: pa.Array) -> pa.Array:
    """``<stem>`` of each member ``images/<stem>.<image extension>``; null for every other member."""
    lower = pc.utf8_lower(member_base)
    is_image = pc.equal(members, pc.binary_join_element_wise("images/", member_base, ""))
    has_extension = pc.ends_with(lower, f".{IMAGE_EXTENSIONS[0]}")
    for ext in IMAGE_EXTENSIONS[1:]:
        has_extension = pc.or_(has_extension, pc.ends_with(lower, f".{ext}"))
    stems = pc.list_element(pc.split_pattern(member_base, ".", max_splits=1, reverse=True), 0)
    return pc.if_else(pc.and_(is_image, has_extension), stems, _NO_STRING)


def _scatter(target: pa.Array, positions: pa.Array, values: pa.Array) -> pa.Array:
    """``target`` with ``values`` written at ``positions``."""
    index = np.arange(len(target), dtype=np.int64)
    index[positions.to_numpy()] = len(target) + np.arange(len(positions), dtype=np.int64)
    return pa.concat_arrays([target, values.cast(target.type)]).take(pa.array(index))


def _raise_ambiguous(media_id: str, file_name: str | None, members: pa.Array, file_names: pa.Array) -> None:
    base = (file_name or "").replace("\\", "/").rsplit("/", 1)[-1]
    candidates = [m for m in members.to_pylist() if m.rsplit("/", 1)[-1] == base
                  or m.rsplit("/", 1)[-1].split(".", 1)[0] == media_id]
    shown = ", ".join(sorted(candidates)[:10]) + (" ..." if len(candidates) > 10 else "")
    sharing = pc.sum(pc.equal(_basename(file_names), base)).as_py() or 0
    raise ImageNotFoundError(
        f"The image of media_id {media_id!r} is ambiguous: there is no images/<file_path>, and its file name "
        f"{base!r}, shared by {sharing} row(s), matches {len(candidates)} file(s): {shown}.", media_id=media_id)
