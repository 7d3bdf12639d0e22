"""A shared prepared store, read: prepared pixels in a few large shards on object storage, for every node.

``prepare=S`` with ``prepared_root=URL`` reads the prepared images of one export (its content) and
settings from a store built once (``vl-datasets prepare SOURCE --size S --to URL``) and shared by
every node and job. Its files, each written whole and never changed::

    <store URL>/
        store.json                 {"format", "export", "settings", ...}: what the store holds
        shards/<share>-<n>.pixels  raw RGB8 pixels of images one after another, ~64 MiB each
        index/<share>.npy          a SHARD_RECORD per image of that share, sorted by key
        shares/<share>.json        the share's shards ({"name", "bytes", "xxh3"}), its image and failure counts
        manifest.json              written last: the shares, counts, bytes; a store without it is not read

``SharedStore`` reads the manifest, store.json and the shares' files when it is opened (``load``:
where the dataset is built, before any fork), merges the shares' indexes into one array sorted by
key and keeps it on this machine, memory-mapped, beside the shard cache: DataLoader workers share
its pages, and a spawned one maps the same file. Pixels come from the node's shard cache
(``shard_cache``), which downloads a shard once per node. Every read checks its pixels' xxh3-64
against the record's, as the node-local store does; pixels that differ are fetched again once (a
damaged local copy), and if the shard itself is damaged they read as missing (a WARNING names
the image), so the image is prepared from its original instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from ..atomic import replacing
from ..cache.readers import HeldLock, hold_merged_index, merged_index_folder, sweep_merged_indexes
from ..errors import ImageReadError, ShardReadError, SharedStoreError, SharedStoreNotFoundError
from .prepared import StoreSettings, image_key
from .shard_cache import ShardCache
from .shard_format import (
    MANIFEST_FILE,
    SHARD_RECORD,
    SHARDS,
    STORE_FILE,
    index_name,
    index_records,
    manifest_shares,
    share_file,
    store_identity,
)
from .sources import FsspecRoot

logger = logging.getLogger("vl_datasets")

_HI, _RECORDS, _SHARDS = ".hi.npy", ".records.npy", ".shards.json"  # a merged index's files
RETRY_FAILED_S = 60.0  # a shard whose download failed is asked for again after this long
# What a reader of a damaged store is told: a build checks the published shares and makes damaged ones again.
REPAIR = "; building it again repairs it ('vl-datasets prepare SOURCE --size S --to URL', or ds.prepare())."


@dataclass(frozen=True)
class Shard:
    """One shard of the store: its file name under ``shards/``, its size and xxh3-64 (None: not given)."""

    name: str
    size: int
    xxh3: int | str | None = None


class SharedStore:
    """The shared store at ``url`` (the store's own folder) of the export whose content is named
    ``export`` (``cache.layout.content_name``) with ``settings``;
    ``storage_options`` for its fsspec filesystem; shards read through ``cache``.

    Pickles to those (and, once loaded, the local path of its merged index): each process opens its
    own files. Its repr and errors show the URL without credentials or query string.
    """

    def __init__(
        self,
        url: str,
        storage_options: dict[str, Any] | None,
        settings: StoreSettings,
        export: str,
        cache: ShardCache,
    ) -> None:
        self.url, self.storage_options = url, dict(storage_options or {})
        self.settings, self.export, self.cache = settings, export, cache
        self._files = FsspecRoot(url, self.storage_options)
        self.display_url = self._files.display_root
        self._meta_dir: Path | None = None
        self._meta_lock: HeldLock | None = None  # the readers lock on the merged index (``hold_merged_index``)
        self._reset()

    def _reset(self) -> None:
        self._hi: np.ndarray | None = None
        self._records: np.ndarray | None = None
        self._shards: list[Shard] = []
        self._warned: set[tuple[int, int]] = set()
        self._failed: dict[str, tuple[float, ShardReadError]] = {}  # shard -> when its download failed, and why
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        keep = ("url", "storage_options", "settings", "export", "cache", "_files", "display_url", "_meta_dir")
        return {name: self.__dict__[name] for name in keep}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._meta_lock = None  # the process it came from holds it
        self._reset()

    def __repr__(self) -> str:
        return f"SharedStore({self.display_url!r}, size={self.settings.size})"

    # -- opening ---------------------------------------------------------------------------------

    def load(self) -> None:
        """Read the store's files, or this machine's copy of its merged index. Raises
        ``SharedStoreNotFoundError`` where no finished store is (no manifest), ``SharedStoreError``
        for a store of another export or settings, or one that cannot be read."""
        raw = self._read(MANIFEST_FILE)
        manifest = self._identity_checked(MANIFEST_FILE, raw)
        self._identity_checked(STORE_FILE, self._read(STORE_FILE))
        meta = merged_index_folder(self.cache.local_dir, hashlib.sha256(raw).hexdigest()[:20])
        # Held while this store lives (forked workers share it; spawned ones map what their parent
        # holds): no sweep or prune removes the merged index this process maps.
        held = hold_merged_index(meta)
        self._release()
        self._meta_lock = held
        if not (meta / _RECORDS).is_file():
            self._merge_into(meta, manifest)
        self._meta_dir = meta
        self._open_meta()
        sweep_merged_indexes(meta)  # those of earlier builds of the store no process holds

    def _release(self) -> None:
        held, self._meta_lock = getattr(self, "_meta_lock", None), None
        if held is not None:
            held.close()

    @property
    def build(self) -> str:
        """What names this build of the store (a digest of its manifest): a store built again is another."""
        self._loaded()
        assert self._meta_dir is not None
        return self._meta_dir.name

    @property
    def images(self) -> int:
        """How many images the store holds."""
        return len(self._loaded()[1])

    @property
    def shards(self) -> list[Shard]:
        """Every shard of the store, by its store-wide number (shares in manifest order)."""
        self._loaded()
        return self._shards

    def _read(self, name: str) -> bytes:
        try:
            return self._files.read(name)
        except Exception as exc:
            failure: Exception = exc
        raise self._read_error(name, failure)  # outside the handler: no __context__ with a signed URL

    def _read_error(self, name: str, exc: Exception) -> SharedStoreError:
        if isinstance(exc, FileNotFoundError):
            if name == MANIFEST_FILE:
                return SharedStoreNotFoundError(
                    f"No finished shared prepared store at {self.display_url}: it has no {MANIFEST_FILE} (written "
                    f"last, when a build finishes). Build it with ds.prepare() or 'vl-datasets prepare ... --to'.",
                    url=self.display_url,
                )
            return self._damaged(f"it lacks {name}")
        reason = self._files.scrub(str(exc) if isinstance(exc, ImageReadError) else f"{type(exc).__name__}: {exc}")
        return SharedStoreError(
            f"Cannot read {name} of the shared store {self.display_url}: {reason}", url=self.display_url
        )

    def _identity_checked(self, name: str, raw: bytes) -> dict[str, Any]:
        """The JSON object in ``raw`` (the store's file ``name``), once it says this store's format,
        export and settings."""
        try:
            found = json.loads(raw)
        except ValueError:
            found = None
        if not isinstance(found, dict):
            raise self._damaged(f"{name} is not JSON")
        expected = store_identity(self.export, self.settings.as_json())
        if {key: found.get(key) for key in expected} != expected:
            raise SharedStoreError(
                f"The shared store {self.display_url} holds another store ({found.get('format')}, export "
                f"{found.get('export')}, settings {found.get('settings')}) than the one asked for (export "
                f"{self.export}, settings {self.settings.as_json()}); remove it to build it again.",
                url=self.display_url,
            )
        return found

    def _merge_into(self, meta: Path, manifest: dict[str, Any]) -> None:
        """Every share's index, with store-wide shard numbers, merged by key into ``meta``."""
        shares = manifest_shares(manifest)
        if shares is None:
            raise self._damaged(f"{MANIFEST_FILE} names its shares in no known form")
        shards: list[Shard] = []
        parts = []
        for name, build in shares:
            found = self._share_json(share_file(name, build))
            listed = [self._shard_of(s, share_file(name, build)) for s in found.get("shards") or []]
            records = self._share_index(index_name(name, build))
            valid = (records["shard"] < len(listed)) if listed else np.zeros(len(records), bool)
            records = records[valid].copy()
            records["shard"] += len(shards)
            shards += listed
            parts.append(records)
        merged = np.concatenate(parts) if parts else np.empty(0, SHARD_RECORD)
        merged = merged[np.lexsort((merged["lo"], merged["hi"]))]
        meta.mkdir(parents=True, exist_ok=True)
        _save(meta / _HI, np.ascontiguousarray(merged["hi"]))
        with replacing(meta / _SHARDS) as tmp:
            tmp.write_text(json.dumps([[s.name, s.size, s.xxh3] for s in shards]))
        _save(meta / _RECORDS, merged)  # last: its presence says the folder is whole

    def _damaged(self, what: str) -> SharedStoreError:
        return SharedStoreError(
            f"The shared store {self.display_url} is damaged: {what}{REPAIR}", url=self.display_url, damaged=True
        )

    def _shard_of(self, listed: Any, share_json: str) -> Shard:
        """A shard as the share file ``share_json`` lists it (its name under ``shards/``, or with that
        folder); ``SharedStoreError`` for an entry that is not one (a damaged store, not a KeyError)."""
        try:
            name, size = str(listed["name"]), int(listed["bytes"])
            if size < 0:
                raise ValueError(size)
        except (KeyError, TypeError, ValueError):
            raise self._damaged(f"{share_json} lists a shard without a name and a size in bytes") from None
        return Shard(name.removeprefix(f"{SHARDS}/"), size, listed.get("xxh3"))

    def _share_json(self, name: str) -> dict[str, Any]:
        try:
            found = json.loads(self._read(name))
        except ValueError:
            found = None
        if not isinstance(found, dict):
            raise self._damaged(f"{name} is not a JSON object")
        return found

    def _share_index(self, name: str) -> np.ndarray:
        records = index_records(self._read(name))
        if records is None:
            raise self._damaged(f"{name} is not an index of this format")
        return records

    def _open_meta(self) -> None:
        assert self._meta_dir is not None
        self._hi = np.load(self._meta_dir / _HI, mmap_mode="r")
        self._records = np.load(self._meta_dir / _RECORDS, mmap_mode="r")
        self._shards = [Shard(n, s, x) for n, s, x in json.loads((self._meta_dir / _SHARDS).read_text())]

    def _loaded(self) -> tuple[np.ndarray, np.ndarray]:
        if self._records is None:
            with self._lock:
                if self._records is None:
                    if self._meta_dir is None:
                        self.load()
                    else:  # a spawned worker, or one whose parent never read: map the local copy
                        self._open_meta()
        assert self._hi is not None and self._records is not None
        return self._hi, self._records

    # -- reading ---------------------------------------------------------------------------------

    def get(self, path: str, *, source: int = 0) -> np.ndarray | None:
        """The prepared pixels (height x width x 3, uint8) of the image at ``path``, or None: not in
        the store, prepared from an original of another identity than ``source`` (0: any), or pixels
        that fail their checksum (a WARNING names the image). A shard that cannot be fetched raises
        ``ShardReadError``."""
        for record in self._records_of(image_key(path)):
            if _same_source(int(record["source"]), source):
                pixels = self._pixels(path, record)
                if pixels is not None:
                    return pixels
        return None

    def shard_numbers(self, keys: np.ndarray) -> np.ndarray:
        """The store-wide shard number of each of ``keys`` (``prepared.keys_of``), -1 where the store
        has no image of that key: the groups of a shard-aware epoch order."""
        hi, records = self._loaded()
        keys = np.asarray(keys, np.uint64).reshape(-1, 2)
        at = np.searchsorted(hi, keys[:, 0])
        inside = at < len(hi)
        found = np.full(len(keys), -1, np.int64)
        first = np.where(inside, at, 0)
        match = inside & (hi[first] == keys[:, 0]) if len(hi) else np.zeros(len(keys), bool)
        exact = match & (records["lo"][first] == keys[:, 1]) if len(hi) else match
        found[exact] = records["shard"][first[exact]]
        for query in np.flatnonzero(match & ~exact):  # another key with the same first half: look further
            numbers = [int(r["shard"]) for r in self._records_of((int(keys[query, 0]), int(keys[query, 1])))]
            found[query] = numbers[0] if numbers else -1
        return found

    def prefetch(self, paths: list[str]) -> None:
        """Start downloading, in the background, the shards holding the images at ``paths``."""
        wanted: dict[int, None] = {}
        for path in paths:
            for record in self._records_of(image_key(path)):
                wanted[int(record["shard"])] = None
        shards = self.shards
        self.cache.prefetch((shards[n].name, shards[n].size, shards[n].xxh3) for n in wanted)

    def _records_of(self, key: tuple[int, int]) -> list[np.void]:
        hi, records = self._loaded()
        at = int(np.searchsorted(hi, np.uint64(key[0])))
        found = []
        while at < len(hi) and int(hi[at]) == key[0]:
            if int(records["lo"][at]) == key[1]:
                found.append(records[at])
            at += 1
        return found

    def _pixels(self, path: str, record: np.void) -> np.ndarray | None:
        """``record``'s pixels, checked; fetched again once when the local copy of its shard fails the
        check; None (a WARNING, once a record) when the store's own copy does."""
        shard = self.shards[int(record["shard"])]
        height, width, offset = int(record["height"]), int(record["width"]), int(record["offset"])
        if height < 1 or width < 1 or offset < 0 or offset + height * width * 3 > shard.size:
            # A damaged record (a flipped bit in a size): missing, not an allocation of terabytes
            # blamed on the original, which is then prepared again.
            self._warn_damaged(path, shard, offset, f"its record says {width}x{height} at byte {offset}")
            return None
        pixels = np.empty((height, width, 3), np.uint8)
        for attempt in range(2):
            fd = self._open_shard(shard)
            try:
                whole = os.preadv(fd, [pixels.data], offset) == pixels.nbytes
            finally:
                os.close(fd)
            if whole and xxhash.xxh3_64_intdigest(pixels.data) == int(record["pixels"]):
                return pixels
            if attempt == 0:
                self.cache.discard(shard.name)  # a damaged local copy: the next open downloads it again
        self._warn_damaged(path, shard, offset)
        return None

    def _open_shard(self, shard: Shard) -> int:
        """A descriptor of ``shard``'s local copy. A shard whose download failed is not asked for again
        for ``RETRY_FAILED_S`` in this process: its images fail at once (and are prepared from their
        originals) instead of each spending the read policy's attempts on it."""
        failed = self._failed.get(shard.name)
        if failed is not None and time.monotonic() - failed[0] < RETRY_FAILED_S:
            raise failed[1].with_traceback(None)
        try:
            return self.cache.open(shard.name, shard.size, xxh3=shard.xxh3)
        except ShardReadError as exc:
            with self._lock:
                self._failed[shard.name] = (time.monotonic(), exc)
            raise

    def _warn_damaged(self, path: str, shard: Shard, offset: int, why: str = "its checksum does not match") -> None:
        with self._lock:
            named = (hash(shard.name), offset) in self._warned
            self._warned.add((hash(shard.name), offset))
        if not named:
            logger.warning(
                "The prepared copy of the image at %s in the shard %s of %s is damaged (%s); it is prepared "
                "again from its original",
                path,
                shard.name,
                self.display_url,
                why,
            )


def _same_source(recorded: int, expected: int) -> bool:
    return recorded == expected or not recorded or not expected


def _save(path: Path, array: np.ndarray) -> None:
    with replacing(path) as tmp, open(tmp, "wb") as out:
        np.save(out, array, allow_pickle=False)
