"""Which published shares of a shared store to build again: damaged, or made from replaced originals.

A shared store is keyed by what the export holds (its metadata file) and the settings, so a store
built before originals under an ``images_root`` were replaced in place is found again as it is.
Each share's index records the identity of the original each image was prepared from
(``sources.WithIdentity``), so when ``vl-datasets prepare --to`` (or ``ds.prepare()`` with
``prepared_root``) runs on a store already published, each share is compared with the originals
as they are now, and one holding an image of a replaced original is built again
(``shared_store_writer``; its new files get new names, ``shard_format``). So is a share whose
files cannot be read as one (its share file, its index, a shard it lists, gone or not the size
its share file says): a damaged store is repaired by the command that builds it.

Only identities every machine sees alike, and that one listing of each folder of originals tells,
are compared: an object store's ETag (S3 and GCS: a request per 1,000 objects). A local original's
identity is its size and modification time on one machine, and every node's copy of an export has
its own, so a share another node built would look replaced; over http there is no listing, and a
look-up per image would take hours at millions of images, on every build. Shares of such
originals are checked for damage only (remove the store to build it again after replacing them).
A share that holds images the building dataset lacks (a curated one) is not built again from it:
it would lose them; a WARNING says to build from the whole export.
"""

from __future__ import annotations

import logging

import numpy as np

from .prepare import listings
from .prepared_source import PreparedSource
from .shard_format import SHARDS, index_name, index_records, share_file, share_name, share_of
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
    location: SharedLocation,
    source: PreparedSource,
    published: dict[int, str | None],
    images: Images,
    shares: int,
) -> list[int]:
    """Those of the ``published`` shares (each with its build; of ``shares``) to build again (see
    the module), each said in a WARNING."""
    listed = None if source.checks_every_read else listings(source)  # None: identities are not compared
    stored = location.sizes(SHARDS)
    again: list[int] = []
    for share, build in sorted(published.items()):
        records, damage = _published(location, share_name(share), build, stored)
        if records is None:
            logger.warning(
                "Share %s of the shared store %s is damaged (%s): it is built again",
                share_name(share),
                location.display,
                damage,
            )
            again.append(share)
            continue
        if listed is None:
            continue
        positions = _positions_of(records, images, images.of_share(share, shares))
        recorded = records["source"][positions >= 0]
        paths = [images.paths[at] for at in positions[positions >= 0].tolist()]
        try:
            now = np.array(listed.identities(paths), np.uint64)
        except Exception as exc:  # a bucket this job may read but not list: nothing compared, and said so
            reason = source.source.scrub(f"{type(exc).__name__}: {exc}")
            logger.warning(
                "Cannot list the originals under %s (%s): the shared store is not compared with them",
                source.display_root,
                reason,
            )
            listed = None
            continue
        replaced = int(((recorded != 0) & (now != 0) & (recorded != now)).sum())  # 0: not known, or gone
        if replaced and (positions < 0).any():  # built again from this dataset, the share would lose those
            logger.warning(
                "%d image(s) of share %s of the shared store %s were prepared from originals replaced since, but "
                "the share also holds %d image(s) this dataset does not (a curated dataset: subset= or rules): "
                "build the store from the whole export to make it again",
                replaced,
                share_name(share),
                location.display,
                int((positions < 0).sum()),
            )
        elif replaced:
            logger.warning(
                "%d image(s) of share %s of the shared store %s were prepared from originals replaced since: "
                "the share is built again",
                replaced,
                share_name(share),
                location.display,
            )
            again.append(share)
    return again


def _published(
    location: SharedLocation, share: str, build: str | None, stored: dict[str, int]
) -> tuple[np.ndarray | None, str]:
    """(the index of the published ``share`` of ``build``, "") or (None, what is damaged).
    ``stored``: the size of each of the store's shard files. A failure to read is raised
    (``PreparedStoreError``), not damage."""
    name = share_file(share, build)
    found, damaged = location.read_object(name)
    if found is None or not isinstance(found.get("shards"), list):
        return None, f"{name} is gone" if found is None and not damaged else f"{name} is not a share's file"
    for shard in found["shards"]:
        if not (isinstance(shard, dict) and isinstance(shard.get("name"), str) and _is_size(shard.get("bytes"))):
            return None, f"{name} lists a shard without a name and a size in bytes"
        size = stored.get(shard["name"].removeprefix(f"{SHARDS}/"))
        if size != shard["bytes"]:
            return None, f"{shard['name']} is gone" if size is None else f"{shard['name']} is not the size it was"
    index = index_name(share, build)
    records = index_records(location.read_bytes(index))
    if records is None:
        return None, f"{index} is not a share's index"
    return records, ""


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


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
