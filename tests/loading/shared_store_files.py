"""The shared-store tests' dataset, and a published store read back file by file, with fsspec and
numpy only, as a reader would: what the tests compare. Nothing here uses the writer's code."""

from __future__ import annotations

import io
import json

import fsspec
import numpy as np
import xxhash

from vl_datasets.loading.dataset import VisualLayerDataset
from vl_datasets.loading.prepared import StoreSettings
from vl_datasets.loading.shared_store_writer import SharedLocation, store_location

ITEMS = 20
SIZE = 24  # prepare=24: an 80x60 image becomes 32x24
SECRET = "wJalrXUtnFEMI-not-a-real-secret-K7MDENG"
RECORD_FIELDS = ("hi", "lo", "shard", "height", "width", "offset", "source", "pixels")


def read_store(url: str, options: dict) -> dict:
    """{"store", "manifest", "shares": {name: share json}, "index": {name: array}, "shards": {name: bytes},
    "pixels": {(hi, lo): HxWx3 array}} of the store at ``url``; asserts what a reader relies on."""
    fs, base = fsspec.core.url_to_fs(url, **options)
    manifest = json.loads(fs.cat_file(f"{base}/manifest.json"))
    found = {"store": json.loads(fs.cat_file(f"{base}/store.json")), "manifest": manifest}
    found.update(shares={}, index={}, shards={}, pixels={})
    for entry in manifest["shares"]:
        share = entry if isinstance(entry, str) else entry["name"]
        named = entry if isinstance(entry, str) else f"{entry['name']}-{entry['build']}"  # a share built again
        part = json.loads(fs.cat_file(f"{base}/shares/{named}.json"))
        index = np.load(io.BytesIO(fs.cat_file(f"{base}/index/{named}.npy")), allow_pickle=False)
        assert tuple(index.dtype.names) == RECORD_FIELDS
        order = np.lexsort((index["lo"], index["hi"]))
        assert (order == np.arange(len(index))).all(), f"index of share {share} is not sorted by key"
        assert len(index) == part["images"]
        found["shares"][share], found["index"][share] = part, index
        shards = []
        for shard in part["shards"]:
            data = fs.cat_file(f"{base}/{shard['name']}")
            assert len(data) == shard["bytes"], f"{shard['name']} is not the size its share says"
            assert xxhash.xxh3_64_hexdigest(data) == shard["xxh3"], f"{shard['name']} fails its checksum"
            found["shards"][shard["name"]] = data
            shards.append(data)
        for record in index:
            size = int(record["height"]) * int(record["width"]) * 3
            raw = shards[record["shard"]][int(record["offset"]) : int(record["offset"]) + size]
            assert xxhash.xxh3_64_intdigest(raw) == int(record["pixels"])
            shape = (int(record["height"]), int(record["width"]), 3)
            found["pixels"][(int(record["hi"]), int(record["lo"]))] = np.frombuffer(raw, np.uint8).reshape(shape)
    assert manifest["images"] == sum(len(index) for index in found["index"].values())
    return found


def same_store(one: dict, other: dict) -> None:
    """The two stores hold the same shares, indexes and shards, byte for byte."""
    assert one["manifest"]["shares"] == other["manifest"]["shares"]
    for name in ("images", "bytes", "shards", "failed", "export", "settings"):
        assert one["manifest"][name] == other["manifest"][name], name
    assert one["shares"] == other["shares"]
    for share, index in one["index"].items():
        assert index.tobytes() == other["index"][share].tobytes(), f"share {share}'s index differs"
    assert one["shards"].keys() == other["shards"].keys()
    differing = [name for name, data in one["shards"].items() if data != other["shards"][name]]
    assert differing == [], f"these shards differ: {differing}"


def open_shared(export, cache, bucket, **options) -> VisualLayerDataset:
    """The test export opened with ``prepare=SIZE`` and its store under ``bucket``'s prefix."""
    root, storage_options = bucket
    return VisualLayerDataset.from_export(
        export, cache_dir=cache, task=None, prepare=SIZE, prepared_root=root, storage_options=storage_options, **options
    )


def location_of(ds, bucket) -> SharedLocation:
    return store_location(bucket[0], bucket[1], ds.entry, StoreSettings(SIZE))
