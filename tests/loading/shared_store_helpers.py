"""A small shared prepared store written in the agreed format (SHARED_STORE_SPEC, ``shared_store``'s
docstring) with plain fsspec, so the reader is tested on its own: the store files as a writer leaves
them, and ways to damage them."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator, Mapping
from typing import Any

import fsspec
import numpy as np
import xxhash

from tests.loading.s3_server import SlowDownS3
from vl_datasets.loading.prepared import StoreSettings, image_key
from vl_datasets.loading.shard_format import SHARD_RECORD, store_identity


def pixels_for(i: int) -> np.ndarray:
    """An image whose bytes and size say which one it is."""
    return np.full((4 + i % 5, 6 + i % 3, 3), i % 251, np.uint8)


def write_shared_store(
    url: str,
    images: Mapping[str, np.ndarray],
    *,
    settings: StoreSettings,
    export: str,
    storage_options: Mapping[str, Any] | None = None,
    shares: int = 2,
    shard_bytes: int = 400,
    with_xxh3: bool = True,
    sources: Mapping[str, int] | None = None,
) -> list[tuple[str, int]]:
    """Write ``images`` (path -> pixels) as a store at ``url``, shares chosen by key; each shard
    holds images until it passes ``shard_bytes``. Returns every shard (name, bytes) in store-wide
    order (shares in manifest order)."""
    fs, root = fsspec.core.url_to_fs(url, **dict(storage_options or {}))

    def put(name: str, data: bytes) -> None:
        fs.makedirs(f"{root}/{name}".rpartition("/")[0], exist_ok=True)  # a folder needs its parents
        fs.pipe_file(f"{root}/{name}", data)

    identity = store_identity(export, settings.as_json())
    put("store.json", json.dumps({**identity, "created_at": "2026-12-02T00:00:00+00:00"}).encode())
    names = [f"s{n}" for n in range(shares)]
    by_share: dict[str, list[str]] = {name: [] for name in names}
    for path in sorted(images):
        by_share[names[image_key(path)[0] % shares]].append(path)
    every: list[tuple[str, int]] = []
    for share, paths in by_share.items():
        shards = _write_share(put, share, paths, images, shard_bytes, with_xxh3, sources or {})
        every += [(s["name"], s["bytes"]) for s in shards]
    manifest = {**identity, "shares": names, "images": len(images), "shards": len(every)}
    manifest |= {"bytes": sum(size for _, size in every), "created_at": "2026-12-02T00:00:00+00:00"}
    put("manifest.json", json.dumps({**manifest, "library_version": "test"}).encode())
    return every


def _write_share(put, share, paths, images, shard_bytes, with_xxh3, sources) -> list[dict]:
    shards: list[dict] = []
    records = []
    current = bytearray()

    def close_shard() -> None:
        name = f"{share}-{len(shards):05d}.pixels"
        put(f"shards/{name}", bytes(current))
        shard = {"name": name, "bytes": len(current)}
        if with_xxh3:
            shard["xxh3"] = xxhash.xxh3_64_hexdigest(bytes(current))
        shards.append(shard)
        current.clear()

    for path in paths:
        pixels = np.ascontiguousarray(images[path])
        height, width, _ = pixels.shape
        digest = xxhash.xxh3_64_intdigest(pixels.data)
        records.append((*image_key(path), len(shards), height, width, len(current), sources.get(path, 0), digest))
        current += pixels.tobytes()
        if len(current) >= shard_bytes:
            close_shard()
    if current:
        close_shard()
    index = np.array(records, SHARD_RECORD)
    index = index[np.lexsort((index["lo"], index["hi"]))]
    buffer = io.BytesIO()
    np.save(buffer, index, allow_pickle=False)
    put(f"index/{share}.npy", buffer.getvalue())
    put(f"shares/{share}.json", json.dumps({"shards": shards, "images": len(paths), "failed": []}).encode())
    return shards


@contextlib.contextmanager
def s3_bucket(monkeypatch) -> Iterator[SlowDownS3]:
    """A fresh bucket on a local moto S3 server (``SlowDownS3``), with test credentials in the
    environment (inherited by forked processes)."""
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with SlowDownS3() as server:
        fsspec.filesystem("s3", endpoint_url=server.endpoint, skip_instance_cache=True).mkdir(server.bucket)
        yield server


def shard_gets(server: SlowDownS3, name: str) -> int:
    """How many GETs of the shard ``name`` reached the server."""
    return sum(1 for r in server.requests if r.startswith("GET ") and r.endswith(f"/shards/{name}"))
