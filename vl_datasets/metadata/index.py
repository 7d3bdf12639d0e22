"""An export's index: its normalized metadata plus each row's image file, as one Arrow table.

The cache builds the index once, when it publishes an entry, a slice of rows at a time
(``index_writer``: the file holds many record batches, so its columns come chunked), and every
later open memory-maps it instead of parsing the metadata and listing the images again. The image column holds the
path under ``images/`` (null when the export has no image for the row) and travels with the rows
through every filter until the dataset moves it out. The index of a Parquet export leaves the
columns nothing but the user reads (url, media_type, cluster_id) in the metadata file until they
are asked for (``deferred``), and holds each row's items (labels, issues, objects...) as a code
into a second file beside it, which keeps each distinct list once (``item_codes``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ImageNotFoundError, SchemaError
from .deferred import plan, skipped_on_read
from .image_paths import resolve_image_paths
from .index_writer import IMAGE_COLUMN, write_index_file
from .item_codes import ITEMS_COLUMN, items_beside
from .normalize import normalized_by_newer
from .read import METADATA_FILE_NAMES, find_metadata_file, metadata_slices, read_metadata_file
from .table_file import read_normalized

logger = logging.getLogger("vl_datasets")

PathLike = str | os.PathLike[str]
INDEX_FILE = ".vl_datasets_index.arrow"  # hidden, so no export member can take its name
_NAMES_PER_BLOCK = 64 << 10


@dataclass(frozen=True)
class IndexedExport:
    """What ``index_export`` found: the metadata file's name, its rows, the index written (None
    when an ambiguous image name kept it from being built), and the metadata file's state before
    it was read (a file changed while it was, differs from it afterwards)."""

    metadata_file: str
    rows: int
    index_file: str | None
    metadata_stat: os.stat_result


def metadata_below_root(export_dir: Path) -> str | None:
    """Where below ``export_dir``'s root a metadata file lies (relative, with '/'), if one does:
    what a ZIP made of the export's folder, rather than of what is in it, holds."""
    for path in sorted(export_dir.rglob("metadata.*")):
        if path.name in METADATA_FILE_NAMES and path.is_file():
            return path.relative_to(export_dir).as_posix()
    return None


def index_export(export_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> IndexedExport | None:
    """Read and count the export folder's metadata and write its index into ``out_dir``: the one
    function the cache calls to publish a version. None when the folder has no metadata file at
    its root; a metadata file that does not parse raises ``SchemaError``."""
    try:
        metadata = find_metadata_file(export_dir)
    except SchemaError:
        return None
    before = metadata.stat()
    rows, index_file = _indexed(Path(export_dir), Path(out_dir), metadata)
    return IndexedExport(metadata.name, rows, index_file, before)


def _indexed(export_dir: Path, out_dir: Path, metadata: Path) -> tuple[int, str | None]:
    """(rows, the index's file name) of ``index_export``: None for an index an ambiguous image
    name kept from being built, whose metadata is still counted and checked."""
    try:
        return write_export_index(export_dir, out_dir / INDEX_FILE), INDEX_FILE
    except ImageNotFoundError as exc:
        logger.warning("Publishing %s without an index: %s", export_dir, exc)
        return read_metadata_file(metadata).num_rows, None


def write_export_index(
    export_dir: PathLike, path: PathLike, *, images_dir: PathLike | None = None, batch_rows: int | None = None
) -> int:
    """Write the index ``build_index`` would return to ``path`` (atomically) without holding the
    whole table: the metadata is read, normalized, given its image column and written ``batch_rows``
    rows at a time (``index_writer``; by default ``stream.BATCH_ROWS``). An export with images holds
    its file names, and the four columns the image lookup reads only when some row's image must be
    found by file name across the rows. Returns its rows; raises as ``build_index`` does."""
    export_dir = Path(export_dir)
    metadata = find_metadata_file(export_dir)
    members = image_members(export_dir / "images" if images_dir is None else images_dir)
    deferral = plan(metadata, has_images=members is not None)
    skip, left_out = skipped_on_read(deferral, metadata), deferral.columns if deferral is not None else ()
    slices = metadata_slices(metadata, batch_rows=batch_rows, skip=skip, left_out=left_out)
    return write_index_file(slices, Path(path), metadata, members, deferral)


def build_index(export_dir: str | os.PathLike[str], *, images_dir: str | os.PathLike[str] | None = None) -> pa.Table:
    """Read the metadata of the export folder ``export_dir`` and resolve each row's image in its
    ``images/`` folder (or in ``images_dir``, laid out the same way). An ambiguous image name
    raises ``ImageNotFoundError``; a missing one is null."""
    export_dir = Path(export_dir)
    table = read_metadata_file(find_metadata_file(export_dir))
    images_dir = export_dir / "images" if images_dir is None else images_dir
    members = [f"images/{rel}" for rel in list_files(images_dir)]
    resolved = resolve_image_paths(table, members, on_missing="null")
    return table.append_column(IMAGE_COLUMN, pc.utf8_slice_codeunits(resolved, len("images/")))


def read_index(path: str | os.PathLike, *, source: str | os.PathLike | None = None) -> pa.Table | None:
    """The index at ``path``, memory-mapped, its items as their codes (``with_items`` joins them);
    None when it or its items are missing or unreadable, they are not a pair, the index is from
    another version of the library, or (with ``source``) was built from another state of that
    metadata file."""
    table = read_normalized(path, source=source)
    if table is None or IMAGE_COLUMN not in table.column_names:
        return None
    if ITEMS_COLUMN in table.column_names and not items_beside(path, table):
        return None
    return table


def rewritable(path: str | os.PathLike) -> bool:
    """Whether an index at ``path`` that does not read (``read_index``) may be written again in its
    place: not when a later version of the library wrote it, whose jobs may be reading it."""
    try:
        with pa.memory_map(os.fspath(path), "r") as source:
            schema = pa.ipc.open_file(source).schema
    except (OSError, pa.ArrowException):
        return True  # missing or damaged
    return not normalized_by_newer(schema)


def list_files(root: str | os.PathLike) -> list[str]:
    """Every file under ``root``, as a ``/``-separated path relative to it. Links are not followed:
    an export's images are its own files."""
    return list(iter_files(root))


def iter_files(root: str | os.PathLike) -> Iterator[str]:
    """``list_files`` one at a time."""
    # Each folder with its path relative to the root: a name is joined to it, where os.path.relpath
    # per file (two absolute paths made and compared) took 12 of the 18 s indexing 1M images.
    stack = [(os.fspath(root), "")]
    while stack:
        folder, relative = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                stack.append((entry.path, f"{relative}{entry.name}/"))
            elif entry.is_file(follow_symlinks=False):
                yield relative + entry.name


def image_members(images_dir: str | os.PathLike) -> pa.Array | None:
    """Every file under an export's ``images/`` folder, as ``images/<path>`` in one Arrow array
    (about the names' own size: millions of Python strings would take several times it); None
    when there is none, as in a metadata-only export."""
    blocks, block = [], []
    for name in iter_files(images_dir):
        block.append(f"images/{name}")
        if len(block) == _NAMES_PER_BLOCK:
            blocks.append(pa.array(block, pa.string()))
            block = []
    if block:
        blocks.append(pa.array(block, pa.string()))
    return pa.concat_arrays(blocks) if blocks else None
