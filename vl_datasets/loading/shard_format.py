"""The shared prepared store's format: its files' names, its index record, how images fall into shares.

A shared store is what ``prepare=S`` keeps on a node, published once to object storage (any fsspec
URL) for every machine of a cluster. Every file is written whole, then never changed::

    <store>/
        store.json                       who it is: format, export version, settings, its shares
        shards/<share>-<n:05d>.pixels    raw RGB8 pixels of images one after another, ~64 MiB each
        index/<share>.npy                a SHARD_RECORD per image of the share, sorted by key
        shares/<share>.json              written once the share's shards and index are up
        manifest.json                    written last: a reader trusts only a store that has one

A share built again (damaged, or its originals replaced since: ``shared_store_check``) gets files
of new names, ``shards/<share>-<build>-<n:05d>.pixels``, ``index/<share>-<build>.npy`` and
``shares/<share>-<build>.json``, and the manifest, written again last, names each share's build
(``{"name": share, "build": build}`` in its "shares"). No file is ever written over but the
manifest: a job reads the store its manifest names, whole, whenever it opened it.

A share is the images whose keys fall in one range (``share_of``): the key (``prepared.image_key``)
is a hash, so the shares come out even, and a share's index covers one range of keys. Their count
is fixed by the first build in store.json, so a resumed build (on any number of machines) cuts the
same shares and redoes only those without a shares/<share>.json.
"""

from __future__ import annotations

import io
import uuid

import numpy as np

FORMAT = "vl-prepared-shards/1"
STORE_FILE, MANIFEST_FILE = "store.json", "manifest.json"
SHARDS, INDEX, SHARES = "shards", "index", "shares"
SHARD_BYTES = 64 * 2**20  # a shard's pixels: large enough for fast reads, small enough to cache a few
SHARE_IMAGES = 8192  # images a share holds at most: the unit of work (and of redoing it) of a build
SHARD_RECORD = np.dtype(
    [
        ("hi", "<u8"),
        ("lo", "<u8"),
        ("shard", "<u4"),  # into its share's "shards" list in shares/<share>.json
        ("height", "<u4"),
        ("width", "<u4"),
        ("offset", "<u8"),  # in the shard
        ("source", "<u8"),  # the original's identity when it was prepared (0: not known)
        ("pixels", "<u8"),  # xxh3-64 of the pixel bytes
    ]
)


def index_records(raw: bytes | None) -> np.ndarray | None:
    """The records of a share's index file (its bytes; None: no such file), or None when they are
    not an index of this format (damaged: an empty or cut file reads as no array)."""
    try:
        records = np.load(io.BytesIO(raw), allow_pickle=False) if raw is not None else None
    except (ValueError, EOFError, OSError):
        return None
    return records if records is not None and records.dtype == SHARD_RECORD and records.ndim == 1 else None


def store_identity(export: str | None, settings: dict) -> dict:
    """What store.json and manifest.json say the store is, compared whole by writer and reader: the
    format, the export's content name (``CacheStore.content_name``), the settings (``as_json()``)."""
    return {"format": FORMAT, "export": export, "settings": settings}


def share_count(images: int, share_images: int) -> int:
    """How many shares a store of ``images`` images has, at most ``share_images`` each (about)."""
    return max(1, -(-images // share_images))


def share_of(keys: np.ndarray, shares: int) -> np.ndarray:
    """The share of each of ``keys`` (an (n, 2) uint64 array, ``prepared.keys_of``): the range of
    the first half of the key it falls in, of ``shares`` equal ranges."""
    his = keys[:, 0] if len(keys) else np.empty(0, np.uint64)
    # hi * shares // 2**64, exactly: the top 32 bits times shares fits in 64 bits for any share count below 2**32.
    return ((his >> np.uint64(32)) * np.uint64(shares) >> np.uint64(32)).astype(np.int64)


def share_name(share: int) -> str:
    return f"{share:05d}"


def shard_name(share: str, number: int, build: str | None = None) -> str:
    return f"{SHARDS}/{_built(share, build)}-{number:05d}.pixels"


def index_name(share: str, build: str | None = None) -> str:
    return f"{INDEX}/{_built(share, build)}.npy"


def share_file(share: str, build: str | None = None) -> str:
    return f"{SHARES}/{_built(share, build)}.json"


def manifest_shares(manifest: dict) -> list[tuple[str, str | None]] | None:
    """(name, build) of each share the manifest names (build None: the first); None when its
    "shares" are not a list of names and builds."""
    listed = manifest.get("shares")
    if not isinstance(listed, list):
        return None
    found: list[tuple[str, str | None]] = []
    for share in listed:
        if isinstance(share, str) and _is_share_name(share):
            found.append((share, None))
        elif isinstance(share, dict) and _is_share_name(share.get("name")) and is_build(share.get("build")):
            found.append((share["name"], share["build"]))
        else:
            return None
    return found


def _is_share_name(name: object) -> bool:
    """A name a share's files can carry: letters, digits and underscores (no folder, no "-")."""
    return isinstance(name, str) and name.isascii() and name.replace("_", "").isalnum()


def is_build(build: object) -> bool:
    """Whether ``build`` is a build's name as a writer makes them (``new_build``): hex digits only."""
    return isinstance(build, str) and 0 < len(build) <= 32 and all(c in "0123456789abcdef" for c in build)


def new_build() -> str:
    return uuid.uuid4().hex[:12]


def _built(share: str, build: str | None) -> str:
    """A share's name in the names of its files: with the build that made it again, if one did."""
    return share if build is None else f"{share}-{build}"
