"""The prepared-image store: each image decoded once, at a bounded size, in a few large shard files.

``VisualLayerDataset(..., prepare=S)`` keeps every image with its shorter side resized to ``S``
(``vl_datasets.loading.prepared_source`` makes the pixels; ``vl_datasets.loading.prepare`` fills
the store ahead of training). This module is the store on disk. It lives beside the cache entry it
was prepared from, one per export version and preparation settings, so a refreshed export gets a
new one. The cache hands out its folder (``derived_dir(entry, "prepared", settings digest)``)::

    <the store's folder>/
        store.json             the version and settings it holds, written when it is created
        parts/<writer>.pixels  raw pixels, one image after another: one file per writing process
        parts/<writer>.index   64 bytes per image: its key, offset, height, width, its original's
                               identity, its pixels' checksum, when it was written, and a check
                               of the record itself
        manifest.json          written last by a finished preparation: counts, parts, bytes
        packing/               the shard each process packs for a shared store, while it packs
                               (``shard_packer``)

``vl_datasets.cache.scan`` reads the two JSON files (store.json says how to count a partial
store's images), so ``vl-datasets cache list`` and ``prune`` show and remove the store.

Format: raw RGB pixels (height x width x 3 bytes), not re-encoded JPEG, for speed, since speed is
the store's point. Measured at ``S=256`` on 2 cores (benchmarks/bench_prepared.py): a raw image
becomes a 224 px tensor in 0.13 ms on a core, a JPEG in 0.35-0.6 ms (quality 90 4:2:0 to 95
4:4:4), 3-4x longer, so epochs would run at a fraction of the rate; and JPEG's loss puts it 1.1-2.1
grey levels from the direct path, against 0.6-1.0 for raw (the limit is 1.5; only quality 95 4:4:4
stays under it). Raw costs 3 x S x (S x aspect) bytes: ~256 KiB an image at ``S=256``, where
quality 95 4:4:4 would take ~50 KiB.

Keys are a 128-bit hash of the image's path under its root: two rows with one image share it, and
the store does not depend on curation, so every dataset cut from the export version shares it.

Writing needs no lock. Every process (a DataLoader worker, a ``prepare()`` process, any rank on the
node) appends to its own part. An image's pixels are written before its index record, and a reader
takes a record only once the record is whole (its check matches) and its pixels lie inside the
pixel file. A process killed anywhere thus leaves records that are complete or absent, and the next
run goes on from there.

Pixels are never served unverified: each record holds the xxh3-64 of its pixels, checked on every
read (~3 us for a 256 KiB image, against ~190 us to make its tensor). Pixels that differ (zeroed
by a machine crash before they reached the disk, a file truncated or overwritten under a running
job, a failing disk) read as a missing record: a WARNING names the image, and it is prepared again
from its original. That check is what keeps a record that points at unwritten bytes from being
served, so images are not fsynced one by one (that would wait for a full writeback, longer than
the preparation itself on a slow disk). A finished ``prepare()`` fsyncs every part once before its
manifest, which notes how many pixel bytes of each part are on the disk; ``prepare()`` reads back
and checks any written since (``missing``), so after a power loss it leaves no damaged image
behind for a job to find once its original is gone.

Each record also holds its original's identity (``sources.WithIdentity``: size and mtime on a local
disk, the ETag or size and modification time of a remote object), and a record of another
identity is stale: a replaced original is prepared again. Who compares them is
``prepared_source`` (every read, for a local original) and ``prepare`` (every image).

A store pickles to its location; each process opens its own files (after any fork).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from .._version import __version__
from ..cache.store import CacheStore, LocalExport, derived_dir, safe_name, write_json_atomic
from ..errors import ConfigurationError, PreparedStoreError

logger = logging.getLogger("vl_datasets")

FORMAT = 2  # of the files below; a new format is a new settings digest, so a new store
KIND = "prepared"  # the kind of derived store this is, to the cache
STORE_FILE, MANIFEST_FILE, PARTS = "store.json", "manifest.json", "parts"
PIXELS, INDEX = ".pixels", ".index"
# How images are shrunk (prepared_source.py): part of the settings, so a change makes a new store.
RESAMPLE = "dct-scaled decode + antialiased bicubic"
RECORD = np.dtype(
    [
        ("hi", "<u8"),
        ("lo", "<u8"),
        ("offset", "<u8"),
        ("height", "<u4"),
        ("width", "<u4"),
        ("source", "<u8"),  # the original's identity when it was prepared; 0: not known
        ("pixels", "<u8"),  # xxh3-64 of the pixel bytes
        ("written", "<u8"),  # when, in ns since 1970: of two copies of an image, the newer is served first
        ("check", "<u8"),
    ]
)
COLUMNS = ("hi", "lo", "offset", "height", "width", "source", "pixels", "written")
_RECORD_FIELDS = ("part", *COLUMNS[2:])  # a Record's, in order, from the sorted columns
_SALT = 0x766C5F7072657061  # "vl_prepa": an all-zero (never written) record fails its check
# New records wait in a dict until there are this many, then join the sorted arrays: a merge
# sorts everything, so merging each new record would cost a sort per image in the first epoch.
MERGE_AT = 65536
# How the cache's scan counts a partial store's images without knowing the format (a failure or
# a repeat counts too); a finished store's manifest says "images".
_COUNT = {"what": "images", "files": f"{PARTS}/*{INDEX}", "bytes_each": RECORD.itemsize}


@dataclass(frozen=True)
class StoreSettings:
    """What a store's images are: the shorter side ``size``, from images under ``source`` (None:
    the export's own images; else the images_root's identity, without credentials)."""

    size: int
    source: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "size": self.size, "resample": RESAMPLE, "pixels": "rgb8", "source": self.source}

    @property
    def digest(self) -> str:
        blob = json.dumps(self.as_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def image_key(path: str) -> tuple[int, int]:
    """The store's key of the image at ``path`` (under its root): 128 bits, as two uint64."""
    digest = hashlib.blake2b(path.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")


def store_path(entry: LocalExport, settings: StoreSettings) -> Path:
    """Where the store of ``entry``'s version with ``settings`` lives."""
    if entry.entry_dir is None or entry.version is None:
        raise ConfigurationError(f"prepare= needs an export published in the cache; {entry.path} is not one.")
    return derived_dir(entry, KIND, settings.digest)


def open_store(entry: LocalExport, settings: StoreSettings) -> PreparedStore:
    """The store of ``entry``'s version with ``settings``, created (empty) if there is none yet."""
    path = store_path(entry, settings)
    identity = {"version": entry.version, "settings": settings.as_json()}
    facts = {"created_at": _now(), "library_version": __version__, "count": _COUNT}
    if not (path / STORE_FILE).is_file():
        (path / PARTS).mkdir(parents=True, exist_ok=True)
        # Every process creating it at once writes the same bytes; the renames replace each other.
        write_json_atomic(path / STORE_FILE, {**identity, **facts})
    try:
        text = (path / STORE_FILE).read_bytes()
    except OSError as exc:  # unreadable (permissions, a failing disk) is not damaged: nothing is rewritten
        raise PreparedStoreError(f"Cannot read {path / STORE_FILE}: {exc}", path=str(path)) from None
    found = _json_object_of(text)
    if found is None:
        # Damaged (truncated, a byte flipped, a JSON list): what it says is what the folder's name
        # says, so it is written again; the prepared images stay, each checked as it is read.
        logger.warning("%s was damaged and is written again; the images it prepared are kept", path / STORE_FILE)
        write_json_atomic(path / STORE_FILE, {**identity, **facts})
        found = identity
    if {k: found.get(k) for k in identity} != identity:
        raise PreparedStoreError(
            f"{path / STORE_FILE} describes another store ({found.get('version')}, {found.get('settings')}); "
            f"remove {path} to prepare it again.",
            path=str(path),
        )
    return PreparedStore(path, settings)


# A record as this process holds it: part number, offset, height, width, source identity, pixels'
# xxh3, when it was written.
Record = tuple[int, int, int, int, int, int, int]


class PreparedStore:
    """Reads and writes the records of one store; safe to share between threads and processes."""

    def __init__(self, path: str | os.PathLike, settings: StoreSettings) -> None:
        self.path, self.settings = Path(path), settings
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._writer: _Writer | None = None
        self._parts: list[_Part] = []
        self._by_name: dict[str, int] = {}
        self._recent: dict[tuple[int, int], list[Record]] = {}  # key -> its records not yet merged, oldest first
        self._sorted = _columns_of(np.empty(0, RECORD), 0)  # the other records, by key: a column each
        self._warned: set[tuple[int, int]] = set()  # damaged records (part, offset) this process named
        self._manifest: tuple[int, dict[str, int]] = (0, {})  # (its mtime, its parts' synced bytes) as last read

    def __getstate__(self) -> dict:
        return {"path": self.path, "settings": self.settings}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["settings"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"PreparedStore({str(self.path)!r}, size={self.settings.size})"

    # -- reading ---------------------------------------------------------------------------------

    def load(self) -> None:
        """Take in every record now: done where a dataset is built, before its DataLoader forks, the
        workers share these arrays (numpy buffers stay shared) instead of each building its own
        (~60 bytes an image)."""
        with self._process_lock():
            self._refresh()
            self._merge()

    def get(self, path: str, *, source: int = 0) -> np.ndarray | None:
        """The prepared pixels (height x width x 3, uint8) of the image at ``path``, or None: not in
        the store, prepared from an original of another identity than ``source`` (0: any), or
        pixels that fail their checksum (a WARNING names the image; it is never served)."""
        found = self.get_with_source(path, source=source)
        return None if found is None else found[0]

    def get_with_source(self, path: str, *, source: int = 0) -> tuple[np.ndarray, int] | None:
        """As ``get``, with the identity of the original the pixels were prepared from (0: not known)."""
        key, tried = image_key(path), []
        for refresh in (False, True):  # another process may have prepared it (again) since
            with self._process_lock():
                if refresh:
                    self._refresh()
                records = [r for r in self._records(key) if _same_source(r[4], source) and r[:2] not in tried]
                opened = [(r, self._pixel_fd(r[0])) for r in records]  # opened once per process: under the lock
            for record, fd in opened:
                pixels = self._read_checked(path, record, fd)
                if pixels is not None:
                    return pixels, record[4]
                tried.append(record[:2])
        return None

    def status(self, keys: np.ndarray, sources: np.ndarray | None = None) -> np.ndarray:
        """For each of ``keys`` (``keys_of``): 1 if its image is in the store (prepared from an
        original of the identity in ``sources``, where given and not 0), 2 if preparing it failed,
        else 0. Every process's latest records count; pixels are checked when read, not here."""
        with self._process_lock():
            self._refresh()
            self._merge()
            columns = self._sorted
        count = len(keys)
        left = np.searchsorted(columns["hi"], keys[:, 0], "left")
        lengths = np.searchsorted(columns["hi"], keys[:, 0], "right") - left
        # Every record whose key shares its first half with a query's, beside that query's number.
        query = np.repeat(np.arange(count), lengths)
        at = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths - left, lengths)
        match = columns["lo"][at] == keys[query, 1]
        prepared = match & (columns["height"][at] > 0)
        if sources is not None:
            expected, recorded = sources[query], columns["source"][at]
            prepared &= (expected == 0) | (recorded == 0) | (recorded == expected)
        result = np.zeros(count, np.int8)
        result[np.bincount(query[match & (columns["height"][at] == 0)], minlength=count) > 0] = 2
        result[np.bincount(query[prepared], minlength=count) > 0] = 1
        return result

    def missing(self, paths: list[str], sources: list[int]) -> list[int]:
        """The positions of ``paths`` with no good prepared record from an original of the identity
        in ``sources`` (0: any). Every process's latest records count. Pixels that the last manifest
        found on the disk are taken as they are (reads check them); any written since are read and
        checked here: a machine crash may have left them zeroed, and ``prepare()`` must not leave
        an image that only its original can give back."""
        with self._process_lock():
            self._refresh()
            synced = self._synced()
            found = []
            for at, (path, source) in enumerate(zip(paths, sources)):
                records = [r for r in self._records(image_key(path)) if _same_source(r[4], source)]
                found.append((at, path, [(r, self._pixel_fd(r[0])) for r in records]))
        return [at for at, path, records in found if not any(self._good(path, r, fd, synced) for r, fd in records)]

    def _synced(self) -> dict[int, int]:
        """Part number -> how many of its pixel bytes the last manifest fsynced (none without one)."""
        try:
            stat = os.stat(self.path / MANIFEST_FILE)
        except OSError:
            return {}
        if self._manifest[0] != stat.st_mtime_ns:
            self._manifest = (stat.st_mtime_ns, _synced_parts(self.path / MANIFEST_FILE))
        return {self._by_name[name]: size for name, size in self._manifest[1].items() if name in self._by_name}

    def _good(self, path: str, record: Record, fd: int | None, synced: dict[int, int]) -> bool:
        number, offset, height, width = record[:4]
        on_disk = offset + height * width * 3 <= synced.get(number, 0)
        return on_disk or self._read_checked(path, record, fd) is not None

    def counts(self) -> tuple[int, int]:
        """(images in the store, images whose preparation failed and that are not in it)."""
        with self._process_lock():
            self._refresh()
            self._merge()
            hi, lo, height = (self._sorted[name] for name in ("hi", "lo", "height"))
        if len(hi) == 0:
            return 0, 0
        first = np.ones(len(hi), bool)  # sorted by key: where each key's records start
        first[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
        prepared = np.maximum.reduceat(height > 0, np.flatnonzero(first))
        return int(prepared.sum()), int((~prepared).sum())

    # -- writing ---------------------------------------------------------------------------------

    def put(self, path: str, pixels: np.ndarray, *, source: int = 0) -> None:
        """Add the prepared ``pixels`` (height x width x 3, uint8, C-contiguous) of the image at
        ``path``, prepared from an original whose identity is ``source`` (``sources.identity``)."""
        height, width, channels = pixels.shape
        if channels != 3 or pixels.dtype != np.uint8 or not pixels.flags.c_contiguous:
            raise ValueError(f"prepared pixels must be C-contiguous uint8 HxWx3, got {pixels.dtype} {pixels.shape}")
        self._append(image_key(path), pixels, height, width, source)

    def put_failed(self, path: str) -> None:
        """Note that the image at ``path`` could not be prepared, so ranks waiting for it stop waiting.
        Readers still try it again (a failed read may be transient)."""
        self._append(image_key(path), None, 0, 0, 0)

    def write_manifest(self, **facts: Any) -> dict[str, Any]:
        """Mark the store finished, with its counts and parts: written last, atomically, once every
        part is on the disk (fsynced), so a store marked complete survives a machine crash.

        Readers trust the records alone (each is checked); the manifest says that a preparation
        finished, for the cache commands and for people."""
        images, failed = self.counts()
        parts = {}
        for index in sorted((self.path / PARTS).glob(f"*{INDEX}")):
            name = index.name[: -len(INDEX)]
            pixel_bytes = _fsync(index.with_name(name + PIXELS))
            parts[name] = {"records": _fsync(index) // RECORD.itemsize, "pixel_bytes": pixel_bytes}
        manifest = {
            "format": FORMAT,
            "settings": self.settings.as_json(),
            "images": images,
            "failed": failed,
            "bytes": sum(p["pixel_bytes"] + p["records"] * RECORD.itemsize for p in parts.values()),
            "parts": parts,
            "created_at": _now(),
            "library_version": __version__,
            **facts,
        }
        try:
            kept = json.loads((self.path / MANIFEST_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            kept = None
        if isinstance(kept, dict) and _same_but_when(kept, manifest):
            return kept  # a run that prepared nothing: no write (the store may be read-only by now)
        write_json_atomic(self.path / MANIFEST_FILE, manifest)
        return manifest

    # -- inside ----------------------------------------------------------------------------------

    def _process_lock(self) -> threading.Lock:
        """This process's lock (a plain lock, not a generator: it is taken on every read)."""
        if self._pid != os.getpid():
            # A forked child: the view (arrays, open descriptors) stays valid, but a lock held by
            # another thread at the fork would never be released, and the writer's part is the
            # parent's: this process writes its own.
            self._pid, self._lock, self._writer = os.getpid(), threading.Lock(), None
        return self._lock

    def _read_checked(self, path: str, record: Record, fd: int | None) -> np.ndarray | None:
        """``record``'s pixels, or None (with a WARNING, once a record) when they are not what was written."""
        number, offset, height, width, _, digest, _ = record
        pixels = np.empty((height, width, 3), np.uint8)
        whole = fd is not None and _read_into(fd, pixels, offset) == pixels.nbytes
        if whole and xxhash.xxh3_64_intdigest(pixels.data) == digest:
            return pixels
        with self._process_lock():
            named, part = record[:2] in self._warned, self._parts[number]
            self._warned.add(record[:2])
        if not named:
            logger.warning(
                "The prepared copy of the image at %s in %s is damaged (%s); it is prepared again from its original",
                path,
                part.pixel_path(self.path),
                "its checksum does not match" if whole else "its pixels are missing or cut short",
            )
        return None

    def _pixel_fd(self, number: int) -> int | None:
        try:
            return self._parts[number].pixel_fd(self.path)
        except PreparedStoreError:  # its pixel file is gone: every record of it is damaged
            return None

    def _append(self, key: tuple[int, int], pixels: np.ndarray | None, height: int, width: int, source: int) -> None:
        with self._process_lock():
            if self._writer is None:
                self._writer = _Writer(self.path / PARTS)
                self._register(self._writer.name)
            offset, digest, written = self._writer.append(key, pixels, height, width, source)
            number = self._by_name[self._writer.name]
            self._parts[number].consumed += RECORD.itemsize  # taken in here: no refresh reads it back
            self._add_one(key, (number, offset, height, width, source, digest, written))

    def _records(self, key: tuple[int, int]) -> list[Record]:
        """The prepared records of ``key`` (not its failures), the newest first."""
        hi, lo = key
        found = [r for r in self._recent.get(key, ()) if r[2] > 0]
        columns = self._sorted
        his = columns["hi"]
        # Method calls and .item(): this runs on every read, where numpy's dispatch and scalars cost
        # more than the lookup itself.
        at = int(his.searchsorted(np.uint64(hi)))
        while at < len(his) and his.item(at) == hi:
            if columns["lo"].item(at) == lo and columns["height"].item(at) > 0:
                found.append(tuple([columns[name].item(at) for name in _RECORD_FIELDS]))
            at += 1
        return found if len(found) < 2 else sorted(found, key=lambda record: record[6], reverse=True)

    def _refresh(self) -> None:
        """Take in the records every process has appended since the last refresh."""
        try:
            names = sorted(n[: -len(INDEX)] for n in os.listdir(self.path / PARTS) if n.endswith(INDEX))
        except FileNotFoundError:
            raise PreparedStoreError(
                f"The prepared-image store {self.path} is gone (removed by 'vl-datasets cache rm' or 'prune'?).",
                path=str(self.path),
            ) from None
        for name in names:
            if name not in self._by_name:
                with contextlib.suppress(FileNotFoundError):  # a part removed meanwhile has nothing to give
                    self._register(name)
        for number, part in enumerate(self._parts):
            self._take(number, part)

    def _register(self, name: str) -> None:
        index_fd = os.open(self.path / PARTS / (name + INDEX), os.O_RDONLY)
        self._by_name[name] = len(self._parts)
        self._parts.append(_Part(name, index_fd))

    def _take(self, number: int, part: _Part) -> None:
        whole = (os.fstat(part.index_fd).st_size - part.consumed) // RECORD.itemsize * RECORD.itemsize
        if whole <= 0:  # nothing new, or only a record still being written: next time
            return
        records = np.frombuffer(os.pread(part.index_fd, whole, part.consumed), RECORD)
        part.consumed += whole
        fd = self._pixel_fd(number)
        good = _valid(records, -1 if fd is None else os.fstat(fd).st_size)
        if not good.all():
            logger.warning(
                "Dropping %d damaged record(s) of %s (a crash?); those images are prepared again",
                int((~good).sum()),
                part.index_path(self.path),
            )
        self._add_many(records[good], number)

    def _add_one(self, key: tuple[int, int], record: Record) -> None:
        self._recent.setdefault(key, []).append(record)
        if len(self._recent) >= MERGE_AT:
            self._merge()

    def _add_many(self, records: np.ndarray, part: int) -> None:
        if len(records) + len(self._recent) >= MERGE_AT:
            self._merge(_columns_of(records, part))
            return
        columns = [records[name].tolist() for name in COLUMNS]
        for hi, lo, *rest in zip(*columns):
            self._add_one((hi, lo), (part, *rest))

    def _merge(self, more: dict[str, np.ndarray] | None = None) -> None:
        """Fold the recent records (and ``more``) into the sorted columns."""
        if not self._recent and more is None:
            return  # nothing new: spare a sort of everything (status polls while ranks wait)
        rows = [(key, record) for key, records in self._recent.items() for record in records]
        recent = {name: np.array([r[i] for _, r in rows], dtype) for i, (name, dtype) in _RECENT}
        recent["hi"] = np.array([k[0] for k, _ in rows], np.uint64)
        recent["lo"] = np.array([k[1] for k, _ in rows], np.uint64)
        parts = [self._sorted, recent, *([] if more is None else [more])]
        joined = {name: np.concatenate([p[name] for p in parts]) for name in self._sorted}
        # By key, an image's prepared records before its failures; in columns, each gathered on its own.
        order = np.lexsort((joined["height"] == 0, joined["lo"], joined["hi"]))
        self._sorted = {name: column[order] for name, column in joined.items()}
        self._recent = {}


# What a Record holds, in order, and the types of their columns.
_RECENT = tuple(
    enumerate(
        (
            ("part", np.int32),
            ("offset", np.uint64),
            ("height", np.uint32),
            ("width", np.uint32),
            ("source", np.uint64),
            ("pixels", np.uint64),
            ("written", np.uint64),
        )
    )
)


def _same_source(recorded: int, expected: int) -> bool:
    """Whether a record prepared from an original of identity ``recorded`` stands for one of ``expected``."""
    return recorded == expected or not recorded or not expected


def _synced_parts(path: Path) -> dict[str, int]:
    """Part name -> the pixel bytes the manifest at ``path`` says were fsynced. A damaged manifest
    (hand-edited, overwritten) vouches for nothing: a WARNING names it, and every image is checked."""
    try:
        parts = json.loads(path.read_bytes())["parts"]
        synced = {name: part["pixel_bytes"] for name, part in parts.items()}
    except FileNotFoundError:  # removed since its stat: no manifest
        return {}
    except (OSError, ValueError, LookupError, TypeError, AttributeError, RecursionError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    else:
        if all(type(size) is int and size >= 0 for size in synced.values()):
            return synced
        reason = "a part's pixel_bytes is not a count of bytes"
    logger.warning("Ignoring the damaged %s (%s); the images it lists are read and checked again", path, reason)
    return {}


def _columns_of(records: np.ndarray, part: int) -> dict[str, np.ndarray]:
    """Index records as columns (contiguous, for fast sorts and lookups), with their part's number."""
    columns = {name: np.ascontiguousarray(records[name]) for name in COLUMNS}
    columns["part"] = np.full(len(records), part, np.int32)
    return columns


def _valid(records: np.ndarray, pixel_bytes: int) -> np.ndarray:
    """Which index records are whole (their check matches) and point inside the pixel file."""
    ends = records["offset"] + records["height"].astype(np.uint64) * records["width"] * 3
    return (_checks(records) == records["check"]) & (ends.astype(np.int64) <= pixel_bytes)


def keys_of(paths: list[str]) -> np.ndarray:
    """The keys of the images at ``paths`` (``image_key`` of each), as an (n, 2) uint64 array for
    ``PreparedStore.status``."""
    # The digests joined and read as little-endian words: half the time of a tuple of two Python
    # ints per path (opening 100M items behind a shared store keys every one of them).
    blake2b = hashlib.blake2b
    digests = b"".join([blake2b(p.encode("utf-8", "surrogatepass"), digest_size=16).digest() for p in paths])
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64).reshape(-1, 2)


def _checks(records: np.ndarray) -> np.ndarray:
    """The check of each record: a torn or zeroed index record fails it."""
    size = (records["height"].astype(np.uint64) << 32) | records["width"]
    mixed = records["hi"] ^ records["lo"] ^ records["offset"] ^ size ^ records["source"] ^ records["pixels"]
    return mixed ^ records["written"] ^ np.uint64(_SALT)


def _same_but_when(kept: dict[str, Any], manifest: dict[str, Any]) -> bool:
    """Whether two manifests say the same but when, and by which version, they were written."""
    fleeting = ("created_at", "library_version")
    return {k: v for k, v in kept.items() if k not in fleeting} == {
        k: v for k, v in manifest.items() if k not in fleeting
    }


def _fsync(path: Path) -> int:
    """Flush ``path`` to the disk; how many of its bytes are surely there (it may grow meanwhile)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        os.fsync(fd)
        return size
    finally:
        os.close(fd)


class _Part:
    """One writer's pair of files, as a reader sees them: descriptors opened once per process."""

    def __init__(self, name: str, index_fd: int) -> None:
        self.name, self.index_fd = name, index_fd
        self._pixel_fd: int | None = None
        self.consumed = 0  # index bytes taken in so far

    def index_path(self, store: Path) -> Path:
        return store / PARTS / (self.name + INDEX)

    def pixel_path(self, store: Path) -> Path:
        return store / PARTS / (self.name + PIXELS)

    def pixel_fd(self, store: Path) -> int:
        if self._pixel_fd is None:
            try:
                self._pixel_fd = os.open(self.pixel_path(store), os.O_RDONLY)
            except FileNotFoundError:
                raise PreparedStoreError(
                    f"{self.pixel_path(store)} is missing but its index is not: the store is damaged. "
                    f"Remove {store} to prepare it again.",
                    path=str(store),
                ) from None
        return self._pixel_fd


class _Writer:
    """This process's own part: pixels appended, then the record that points at them."""

    def __init__(self, parts: Path) -> None:
        self.name = f"{safe_name(socket.gethostname())[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND
        # The pixel file first: a reader that finds the index finds its pixels.
        self.pixel_fd = os.open(parts / (self.name + PIXELS), flags, 0o644)
        self.index_fd = os.open(parts / (self.name + INDEX), flags, 0o644)

    def append(
        self, key: tuple[int, int], pixels: np.ndarray | None, height: int, width: int, source: int
    ) -> tuple[int, int, int]:
        """Write an image (None: a failure) and its record: (where its pixels start, their xxh3, when)."""
        offset = digest = 0
        if pixels is not None:
            # Where the append lands, from the file itself: one truncated under this process (the
            # store damaged by hand) must not leave its records pointing past the end.
            offset = os.fstat(self.pixel_fd).st_size
            digest = xxhash.xxh3_64_intdigest(pixels.data)
            _write_all(self.pixel_fd, pixels.data.cast("B"))
        written = time.time_ns()
        record = np.array([(*key, offset, height, width, source, digest, written, 0)], RECORD)
        record["check"] = _checks(record)
        _write_all(self.index_fd, memoryview(record.tobytes()))  # one write: a kill cannot split it
        return offset, digest, written


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _read_into(fd: int, pixels: np.ndarray, offset: int) -> int:
    if hasattr(os, "preadv"):  # straight into the array: one copy from the page cache
        return os.preadv(fd, [pixels.data], offset)
    data = os.pread(fd, pixels.nbytes, offset)
    pixels.reshape(-1)[: len(data)] = np.frombuffer(data, np.uint8)
    return len(data)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


# -- what the cache commands see ------------------------------------------------------------------


@dataclass(frozen=True)
class StoreInfo:
    """A store as ``vl-datasets cache list`` shows it; ``complete`` once a preparation finished it."""

    path: Path
    version: str | None
    size: int | None
    images: int
    bytes: int
    complete: bool


def list_stores(entry_dir: Path) -> list[StoreInfo]:
    """Every prepared-image store of the cache entry at ``entry_dir``."""
    found = []
    for path in CacheStore.derived_dirs(entry_dir, KIND):
        # A store created by a process killed before its store.json, or with damaged files: still listed.
        identity = _json_object(path / STORE_FILE) or {}
        manifest = _json_object(path / MANIFEST_FILE)
        if manifest is not None and not (type(manifest.get("images")) is int and manifest["images"] >= 0):
            manifest = None
        files = [p for p in (path / PARTS).glob("*") if p.is_file()]
        # Without a manifest, the index records count the images (a failure or a repeat counts too).
        records = sum(p.stat().st_size for p in files if p.name.endswith(INDEX)) // RECORD.itemsize
        found.append(
            StoreInfo(
                path=path,
                version=identity.get("version"),
                size=settings.get("size") if isinstance(settings := identity.get("settings"), dict) else None,
                images=manifest["images"] if manifest else records,
                bytes=sum(p.stat().st_size for p in files),
                complete=manifest is not None,
            )
        )
    return found


def _json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when it is missing, unreadable, nested past what json.loads
    takes, or not an object."""
    try:
        return _json_object_of(path.read_bytes())
    except OSError:
        return None


def _json_object_of(text: bytes) -> dict[str, Any] | None:
    """The JSON object ``text`` holds; None when it is no JSON (or not UTF-8), nests past what
    json.loads takes, or is not an object."""
    try:
        found = json.loads(text.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    return found if isinstance(found, dict) else None


def remove_store(path: Path) -> None:
    """Delete a store: its manifest first, so a half-deleted store is never taken for complete."""
    (path / MANIFEST_FILE).unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)
