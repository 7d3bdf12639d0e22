"""Which published shares of a shared store to build again: damaged, or made from replaced originals.

A shared store is keyed by what the export holds (its metadata file) and the settings, so a store
built before originals under an ``images_root`` were replaced in place is found again as it is.
Each share's index records the identity of the original each image was prepared from
(``sources.WithIdentity``), so when ``vl-datasets prepare --to`` (or ``ds.prepare()`` with
``prepared_root``) runs on a store already published, each share is compared with the originals
as they are now, and one holding an image of a replaced original is built again
(``shared_store_writer``; its new files get new names, ``shard_format``). So is a share whose
files cannot be read as one (its share file, its index, a shard it lists): a damaged store is
repaired by the command that builds it.

Only identities that every machine sees alike are compared: an object store's ETag (from listings,
a request per 1,000 objects on S3 and GCS) or an http server's headers (a look-up per image). A
local original's identity is its size and modification time on one machine, and every node's copy
of an export has its own, so a share another node built would look replaced: shares of local
originals are checked for damage only (remove the store to rebuild it after replacing them).
"""

from __future__ import annotations

import io
import json
import logging

import numpy as np

from .prepare import listings, original_identities
from .prepared_source import PreparedSource
from .shard_format import SHARD_RECORD, SHARDS, index_name, is_build, share_file, share_name, share_of
from .shared_location import SharedLocation

logger = logging.getLogger("vl_datasets")


class Images:
    """The dataset's distinct images: their paths and keys (``prepared.keys_of``), grouped by share."""

    def __init__(self, paths: list[str], keys: np.ndarray) -> None:
        self.paths, self.keys = paths, keys
        self._groups: dict[int, dict[int, np.ndarray]] = {}  # share count -> each share's images

    def of_share(self, share: int, shares: int) -> np.ndarray:
        """The positions of the images of ``share`` (of ``shares``), in the order of their keys."""
        if shares not in self._groups:
            keys = self.keys
            order = np.lexsort((keys[:, 1], keys[:, 0])) if len(keys) else np.empty(0, np.int64)
            grouped: dict[int, list[int]] = {}
            for at, number in zip(order.tolist(), share_of(keys, shares)[order].tolist()):
                grouped.setdefault(number, []).append(at)
            self._groups[shares] = {number: np.array(found, np.int64) for number, found in grouped.items()}
        return self._groups[shares].get(share, np.empty(0, np.int64))


def shares_to_build_again(
    location: SharedLocation, source: PreparedSource, published: list[int], images: Images, shares: int
) -> list[int]:
    """Those of the ``published`` shares (of ``shares``) to build again (see the module), each said
    in a WARNING."""
    compared = not source.checks_every_read  # a remote root: identities every machine sees alike
    listed = listings(source) if compared else None
    stored = location.names(SHARDS)
    again: list[int] = []
    for share in published:
        records, damage = _published(location, share_name(share), stored)
        if records is None:
            logger.warning(
                "Share %s of the shared store %s is damaged (%s): it is built again",
                share_name(share),
                location.display,
                damage,
            )
            again.append(share)
            continue
        if not compared:
            continue
        positions = _positions_of(records, images, images.of_share(share, shares))
        recorded = records["source"][positions >= 0]
        paths = [images.paths[at] for at in positions[positions >= 0].tolist()]
        current, listed = original_identities(source, paths, listed)
        now = np.array(current, np.uint64)
        replaced = int(((recorded != 0) & (now != 0) & (recorded != now)).sum())  # 0: not known, or gone
        if replaced:
            logger.warning(
                "%d image(s) of share %s of the shared store %s were prepared from originals replaced since: "
                "the share is built again",
                replaced,
                share_name(share),
                location.display,
            )
            again.append(share)
    return again


def _published(location: SharedLocation, share: str, stored: set[str]) -> tuple[np.ndarray | None, str]:
    """(the index of the published ``share``, "") or (None, what is damaged). ``stored``: the names
    of the store's shard files. A failure to read is raised (``PreparedStoreError``), not damage."""
    raw = location.read_bytes(share_file(share))
    try:
        found = json.loads(raw) if raw is not None else None
    except ValueError:
        found = None
    if not isinstance(found, dict) or ("build" in found and not is_build(found["build"])):
        return None, f"{share_file(share)} is not a share's file"
    shards = found.get("shards")
    if not isinstance(shards, list) or not all(isinstance(s, dict) and isinstance(s.get("name"), str) for s in shards):
        return None, f"{share_file(share)} lists no shards"
    lost = [s["name"] for s in shards if s["name"].removeprefix(f"{SHARDS}/") not in stored]
    if lost:
        return None, f"{lost[0]} is gone"
    name = index_name(share, found.get("build"))
    raw = location.read_bytes(name)
    try:
        records = np.load(io.BytesIO(raw), allow_pickle=False) if raw is not None else None
    except ValueError:
        records = None
    if records is None or records.dtype != SHARD_RECORD or records.ndim != 1:
        return None, f"{name} is not a share's index"
    return records, ""


def _positions_of(records: np.ndarray, images: Images, positions: np.ndarray) -> np.ndarray:
    """The position among ``images`` of each record's image, -1 for an image the dataset lacks;
    ``positions``: those of the share's images. Both in key order: a search of each record's first
    half, the second compared."""
    if not len(positions):
        return np.full(len(records), -1, np.int64)
    his, los = images.keys[positions, 0], images.keys[positions, 1]
    at = np.searchsorted(his, records["hi"])
    at[at == len(his)] = 0
    same = (his[at] == records["hi"]) & (los[at] == records["lo"])
    return np.where(same, positions[at], -1)
