"""``prepare=S`` with ``prepared_root=URL``: prepared pixels from a shared store, the rest prepared here.

``SharedPreparedSource`` is a ``PreparedSource`` (the node-local store in front of the originals)
with a ``SharedStore`` in front of both: an image the shared store holds is read from it, through
the node's shard cache; any other image (one added to the export since the store was built, or
whose preparation failed there) is read from its original and prepared into the node-local store,
exactly as without ``prepared_root``. Opening the dataset says how many images that is (a WARNING
when some are, naming the shared store). A store that cannot be read under a running job (a shard
that stays unreachable, or is damaged) changes speed, never results: the image is prepared from
its original, and a WARNING says so once per process.

A shared copy is not compared with its original's identity on each read: it was prepared on
another machine, where a local original's size and mtime are not this machine's. The store is
keyed by what the export holds (a digest of its metadata file: a refreshed export whose
metadata changed has a new one) and the settings; the build run again on a published store makes
again the shares of originals replaced under an object store (``shared_store_check``).

Where the store is: ``<prepared_root>/exports/<dataset>/<key digest>/derived/prepared/<content>-
<settings digest>``, laid out as the cache lays out its node-local store (``shared_store_url``), so
every machine that opens the same dataset with the same settings finds the same store. Its shards
are kept in the cache's node area ``shards/``, up to ``prepared_cache_limit`` (else
``VL_DATASETS_PREPARED_CACHE_LIMIT``, else 50 GiB).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..atomic import replacing
from ..cache.opened import local_store
from ..cache.store import CacheStore, LocalExport
from ..config import parse_size
from ..errors import ConfigurationError, SharedStoreError, SharedStoreNotFoundError
from .prepared import StoreSettings, keys_of
from .prepared_source import PreparedSource
from .shard_cache import ShardCache
from .shard_format import SHARDS
from .shared_location import join_url, shared_store_url
from .shared_store import SharedStore
from .sources import FsspecRoot, root_endpoint, whole_root

logger = logging.getLogger("vl_datasets")

LIMIT_ENV = "VL_DATASETS_PREPARED_CACHE_LIMIT"
DEFAULT_LIMIT = "50G"


class SharedPreparedSource(PreparedSource):
    """``local``'s images (a ``PreparedSource``), read from ``shared`` first where it has them."""

    def __init__(self, local: PreparedSource, shared: SharedStore | None, item_shards: np.ndarray | None) -> None:
        super().__init__(local.source, local.store)
        self.shared = shared
        # Each item's shard number (-1: not in the store), for the shard-aware order; the sampler's,
        # in the process that builds the loader, so workers are not sent it.
        self.item_shards = item_shards

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "item_shards": None}

    def read(self, path: str) -> bytes | np.ndarray:
        """The image's pixels from the shared store, else as ``PreparedSource.read`` gives them."""
        if self.shared is not None:
            try:
                pixels = self.shared.get(path)
            except SharedStoreError as exc:  # unreachable or damaged under this job: the originals still are
                self._warn_once("shared", "%s; preparing images from their originals instead", exc)
                pixels = None
            if pixels is not None:
                return pixels
        return super().read(path)

    def prefetch(self, paths: list[str]) -> None:
        """Start downloading the shards of the images at ``paths`` (the loader's next batch)."""
        if self.shared is not None:
            with contextlib.suppress(SharedStoreError):  # the read that needs them says so
                self.shared.prefetch(paths)

    def __repr__(self) -> str:
        return f"SharedPreparedSource({self.source!r}, {self.shared!r}, {self.store!r})"


ITEM_SHARDS = "shards"  # beside the item list: each item's shard number, a file per build of the store
# Set on the warning that no store is published yet: the command that is about to build it drops it.
NO_STORE_YET = "vl_datasets_no_shared_store_yet"


def with_shared_store(
    local: PreparedSource,
    *,
    prepared_root: str | os.PathLike,
    storage_options: Mapping[str, Any] | None,
    entry: LocalExport,
    cache_dir: str | os.PathLike | None,
    cache_limit: str | int | None,
    paths: pa.Array | pa.ChunkedArray,
    list_folder: Path | None = None,
) -> SharedPreparedSource:
    """``local`` behind the shared store of ``entry``'s version under ``prepared_root``; without a
    finished store there, every image is prepared locally (a WARNING says so). ``list_folder``: the
    item list's, where each item's shard number is kept for later opens (``_item_shards``)."""
    url = shared_store_url(os.fspath(prepared_root), entry, local.store.settings)
    try:
        shared = open_shared_store(
            url, storage_options, local.store.settings, entry, cache_dir=cache_dir, cache_limit=cache_limit
        )
    except SharedStoreNotFoundError as exc:
        logger.warning(
            "%s All %d images are prepared from their originals on this node.",
            exc,
            len(paths),
            extra={NO_STORE_YET: True},
        )
        return SharedPreparedSource(local, None, None)
    except SharedStoreError as exc:
        if not exc.damaged:
            raise  # unreachable (a retry may do), or another store than this dataset's
        # As under a running job: speed, not results. The command that builds it repairs it.
        logger.warning("%s All %d images are prepared from their originals on this node.", exc, len(paths))
        return SharedPreparedSource(local, None, None)
    item_shards = _item_shards(shared, paths, list_folder)
    _say_what_is_missing(shared, item_shards, local)
    return SharedPreparedSource(local, shared, item_shards)


def _item_shards(shared: SharedStore, paths: pa.Array | pa.ChunkedArray, list_folder: Path | None) -> np.ndarray:
    """Each item's shard number in ``shared`` (-1: none), int32. Finding them keys every item's path
    (about 0.65 s per million items, every rank of every open), so the first open of a node keeps
    them beside the item list, for this build of the store, and the later ones map that file."""
    kept = None if list_folder is None else list_folder / ITEM_SHARDS / f"{shared.build}.i32"
    if kept is not None:
        found = _read_item_shards(kept, len(paths), len(shared.shards))
        if found is not None:
            return found
    # int32: 4 bytes an item. Every item has a path (an item list holds none without one).
    item_shards = shared.shard_numbers(keys_of(paths.to_pylist())).astype(np.int32)
    if kept is not None:
        try:
            kept.parent.mkdir(parents=True, exist_ok=True)
            with replacing(kept) as tmp:
                item_shards.tofile(tmp)
        except OSError as exc:  # a read-only cache: the next open keys the items again
            logger.debug("Cannot keep the items' shard numbers in %s: %s", kept, exc)
    return item_shards


def _read_item_shards(path: Path, items: int, shards: int) -> np.ndarray | None:
    """The shard numbers kept at ``path``, mapped read-only; None unless they are one per item and
    each a shard of the store or -1."""
    try:
        if path.stat().st_size != 4 * items:
            return None
        found = np.memmap(path, dtype=np.int32, mode="r") if items else np.zeros(0, np.int32)
    except (OSError, ValueError):
        return None
    if items and (int(found.min()) < -1 or int(found.max()) >= shards):
        return None
    return found


def open_shared_store(
    url: str,
    storage_options: Mapping[str, Any] | None,
    settings: StoreSettings,
    entry: LocalExport,
    *,
    cache_dir: str | os.PathLike | None,
    cache_limit: str | int | None,
) -> SharedStore:
    """The shared store at ``url``, loaded (before any fork: workers share its index), its shards
    read through this node's cache of them (``url``: ``shared_store_url``)."""
    shards_url = join_url(url, SHARDS)
    shards = FsspecRoot(shards_url, storage_options)
    folder = local_store(cache_dir).node_area("shards", _store_digest(shards_url, shards.display_root, storage_options))
    cache = ShardCache(folder, resolve_cache_limit(cache_limit), shards)
    store = SharedStore(url, dict(storage_options or {}), settings, CacheStore.content_name(entry), cache)
    store.load()
    return store


def resolve_cache_limit(value: str | int | None, env: Mapping[str, str] | None = None) -> int:
    """The shard cache's size limit in bytes: ``value`` (``"50G"`` or bytes), else
    ``VL_DATASETS_PREPARED_CACHE_LIMIT``, else 50 GiB."""
    env = os.environ if env is None else env
    where = "prepared_cache_limit"
    if value is None and env.get(LIMIT_ENV, "").strip():
        value, where = env[LIMIT_ENV], LIMIT_ENV
    if value is None:
        value = DEFAULT_LIMIT
    try:
        limit = parse_size(value) if isinstance(value, str) else value
    except ConfigurationError:
        limit = None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise ConfigurationError(f"{where} must be a positive size such as 50G, got {value!r}.")
    return limit


def check_prepared_root(
    prepared_root: str | os.PathLike | None, prepare: int | None, cache_limit: str | int | None
) -> None:
    """Refuse a ``prepared_root`` without ``prepare``, or a cache limit that is not a size."""
    if prepared_root is None:
        if cache_limit is not None:
            raise ConfigurationError("prepared_cache_limit applies to a prepared_root; none was given.")
        return
    if prepare is None:
        raise ConfigurationError("prepared_root holds prepared images: it needs prepare=S (the shorter side).")
    resolve_cache_limit(cache_limit)


def _say_what_is_missing(shared: SharedStore, item_shards: np.ndarray, local: PreparedSource) -> None:
    missing = int((item_shards < 0).sum())
    if missing:
        logger.warning(
            "%d of the %d images are not in the shared store %s; they are prepared from their originals into "
            "the node-local store %s",
            missing,
            len(item_shards),
            shared.display_url,
            local.store.path,
        )
    else:
        logger.info("All %d images are read from the shared store %s", len(item_shards), shared.display_url)


def _store_digest(url: str, display_root: str, storage_options: Mapping[str, Any] | None) -> str:
    """The shard cache folder of a store: the same bucket behind another endpoint is another store,
    and so is the same path under another query string or user info (``whole_root``; hashed,
    never written)."""
    blob = json.dumps(
        {"root": whole_root(url, display_root), "endpoint": root_endpoint(url, storage_options)}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]
