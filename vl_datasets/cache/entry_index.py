"""A published version's index, written again where it no longer reads.

The cache writes a version's index when it publishes it (``CacheStore.publish``). Should the
index or its items file later go missing, be damaged, or come from a version of the library whose
format this one does not read, every open would read the whole metadata into memory instead: at
10M items, gigabytes in each process, on every open. So the index is written again in its place,
from the version's own metadata, the way publication wrote it: streamed, atomically, under the
entry's lock (ranks opening at once wait for the one that writes it). A cache that cannot be
written to leaves the caller the whole read, with a warning saying why; so does an index a later
version of the library wrote (a cache shared by jobs of two versions): its jobs may be reading it.
"""

from __future__ import annotations

import logging

import pyarrow as pa

from ..errors import ImageNotFoundError, VLDatasetsError
from ..locks import hold_lock
from ..metadata.index import read_index, rewritable, write_export_index
from .layout import LOCK
from .store import LocalExport

logger = logging.getLogger("vl_datasets")

# Writing the index of 100M items takes minutes: the other ranks must outlast it.
REWRITE_LOCK_TIMEOUT_S = 3600.0


def entry_index(entry: LocalExport) -> pa.Table | None:
    """``entry``'s index, memory-mapped (``read_index``), written again first when it does not
    read. None when the version was published without one (an ambiguous image name, which the
    whole read then reports) or it cannot be written again."""
    path = entry.index_path
    if path is None:
        return None
    index = read_index(path)
    if index is not None or entry.entry_dir is None:
        return index
    what = f"writing the index of {entry.path} again"
    try:
        with hold_lock(entry.entry_dir / LOCK, timeout_s=REWRITE_LOCK_TIMEOUT_S, what=what):
            index = read_index(path)  # another process may have written it meanwhile
            if index is not None:
                return index
            if not rewritable(path):
                logger.warning(
                    "The index at %s was written by a later version of vl_datasets, which this one does not "
                    "read: reading the metadata into memory (upgrade vl_datasets to map it).",
                    path,
                )
                return None
            logger.warning(
                "The index at %s is missing, damaged or from another version of vl_datasets: writing it again from %s.",
                path,
                entry.metadata_path,
            )
            write_export_index(entry.path, path, images_dir=entry.images_dir)
    except ImageNotFoundError:
        return None
    except OSError as exc:
        if isinstance(exc, VLDatasetsError):  # a lock timeout: another process holds the entry
            raise
        logger.warning("Cannot write the index at %s again (%s): reading the metadata into memory.", path, exc)
        return None
    return read_index(path)
