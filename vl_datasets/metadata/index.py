"""An export's index: its normalized metadata plus each row's image file, as one Arrow table.

The cache builds the index once, when it publishes an entry, and every later open memory-maps
it instead of parsing the metadata and listing the images again. The image column holds the
path under ``images/`` (null when the export has no image for the row) and travels with the rows
through every filter until the dataset moves it out.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ImageNotFoundError, SchemaError
from .image_paths import resolve_image_paths
from .read import find_metadata_file, read_metadata_file
from .table_file import read_normalized, write_normalized

logger = logging.getLogger("vl_datasets")

IMAGE_COLUMN = "__image_path__"
INDEX_FILE = ".vl_datasets_index.arrow"  # hidden, so no export member can take its name


@dataclass(frozen=True)
class IndexedExport:
    """What ``index_export`` found: the metadata file's name, its rows, and the index written
    (None when an ambiguous image name kept it from being built)."""

    metadata_file: str
    rows: int
    index_file: str | None


def index_export(export_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> IndexedExport | None:
    """Read and count the export folder's metadata and write its index into ``out_dir``: the one
    function the cache calls to publish a version. None when the folder has no metadata file at
    its root; a metadata file that does not parse raises ``SchemaError``."""
    try:
        metadata = find_metadata_file(export_dir)
    except SchemaError:
        return None
    try:
        index = build_index(export_dir)
    except ImageNotFoundError as exc:
        logger.warning("Publishing %s without an index: %s", export_dir, exc)
        return IndexedExport(metadata.name, read_metadata_file(metadata).num_rows, None)  # still counted and checked
    write_index(index, Path(out_dir) / INDEX_FILE)
    return IndexedExport(metadata.name, index.num_rows, INDEX_FILE)


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


def write_index(table: pa.Table, path: str | os.PathLike) -> None:
    """Write an index built by ``build_index`` atomically."""
    write_normalized(table, path)


def read_index(path: str | os.PathLike, *, source: str | os.PathLike | None = None) -> pa.Table | None:
    """The index at ``path``, memory-mapped; None when it is missing, unreadable, from another
    version of the library, or (with ``source``) built from another state of that metadata file."""
    table = read_normalized(path, source=source)
    return table if table is not None and IMAGE_COLUMN in table.column_names else None


def list_files(root: str | os.PathLike) -> list[str]:
    """Every file under ``root``, as a ``/``-separated path relative to it. Links are not followed:
    an export's images are its own files."""
    root = os.fspath(root)
    found, stack = [], [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            elif entry.is_file(follow_symlinks=False):
                found.append(os.path.relpath(entry.path, root).replace(os.sep, "/"))
    return found
