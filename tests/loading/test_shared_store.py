"""A shared prepared store read on its own: written in the agreed format by a test helper (the writer is
built apart), read from a folder or a local S3 server; every read checked, damage fetched again or
named, a store without its manifest refused with the URL and no secret."""

from __future__ import annotations

import logging
import multiprocessing
import pickle

import numpy as np
import pytest

from tests.loading.shared_store_helpers import pixels_for, s3_bucket, shard_gets, write_shared_store
from vl_datasets import errors
from vl_datasets.loading import shared_store as shared_store_module
from vl_datasets.loading.prepared import StoreSettings, keys_of
from vl_datasets.loading.shard_cache import ShardCache
from vl_datasets.loading.shared_location import join_url
from vl_datasets.loading.shared_store import SharedStore
from vl_datasets.loading.sources import FsspecRoot

FORK = multiprocessing.get_context("fork")
SETTINGS = StoreSettings(32)
IMAGES = {f"folder/img_{i}.jpg": pixels_for(i) for i in range(30)}
SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYSECRETKEY"


def no_sleep(seconds: float) -> None:
    """The retry policy's sleep in tests: no waiting (a module-level function, so it pickles)."""


def open_store(url, cache_dir, options=None, *, export="m1", settings=SETTINGS) -> SharedStore:
    shards = FsspecRoot(join_url(url, "shards"), options)
    shards.retry = shards.retry.replace(max_attempts=2, sleep=no_sleep)
    store = SharedStore(url, options, settings, export, ShardCache(cache_dir, 10**9, shards))
    store.load()
    return store


@pytest.fixture
def s3(monkeypatch):
    with s3_bucket(monkeypatch) as server:
        yield server


@pytest.fixture
def on_s3(s3, tmp_path):
    """(server, store URL, storage options) of the test images written to the bucket."""
    options = {"endpoint_url": s3.endpoint, "secret": SECRET, "key": "testing"}
    url = f"s3://{s3.bucket}/prepared/v1-x"
    write_shared_store(url, IMAGES, settings=SETTINGS, export="m1", storage_options={"endpoint_url": s3.endpoint})
    return s3, url, options


def test_every_image_reads_back_and_says_its_shard(tmp_path):
    url = str(tmp_path / "bucket" / "store")
    shards = write_shared_store(url, IMAGES, settings=SETTINGS, export="m1")
    store = open_store(url, tmp_path / "cache")
    assert [(s.name, s.size) for s in store.shards] == shards and len(shards) > 4
    for path, pixels in IMAGES.items():
        got = store.get(path)
        assert got is not None and np.array_equal(got, pixels), f"{path} read back wrong"
    assert store.get("folder/not_there.jpg") is None
    numbers = store.shard_numbers(keys_of([*IMAGES, "folder/not_there.jpg"]))
    assert numbers[-1] == -1 and set(numbers[:-1]) == set(range(len(shards)))
    for pixels, number in zip(IMAGES.values(), numbers):
        assert pixels.tobytes() in (tmp_path / "bucket" / "store" / "shards" / shards[number][0]).read_bytes()


def test_an_image_prepared_from_another_original_is_not_served(tmp_path):
    url = str(tmp_path / "store")
    write_shared_store(url, IMAGES, settings=SETTINGS, export="m1", sources={"folder/img_3.jpg": 77})
    store = open_store(url, tmp_path / "cache")
    assert store.get("folder/img_3.jpg", source=78) is None
    assert np.array_equal(store.get("folder/img_3.jpg", source=77), IMAGES["folder/img_3.jpg"])
    assert np.array_equal(store.get("folder/img_3.jpg"), IMAGES["folder/img_3.jpg"])


def test_a_store_without_its_manifest_is_refused_naming_the_url_without_secrets(on_s3, tmp_path):
    server, url, options = on_s3
    import fsspec

    fsspec.filesystem("s3", endpoint_url=server.endpoint, skip_instance_cache=True).rm(
        f"{url.removeprefix('s3://')}/manifest.json"
    )
    with pytest.raises(errors.SharedStoreNotFoundError) as caught:
        open_store(url, tmp_path / "cache", options)
    assert url in str(caught.value) and "manifest.json" in str(caught.value)
    assert caught.value.url == url and isinstance(caught.value, FileNotFoundError)
    assert SECRET not in str(caught.value) and caught.value.__context__ is None


def test_a_store_of_another_export_or_settings_is_refused(tmp_path):
    url = str(tmp_path / "store")
    write_shared_store(url, IMAGES, settings=SETTINGS, export="m1")
    with pytest.raises(errors.SharedStoreError, match="holds another store"):
        open_store(url, tmp_path / "cache", export="m2")
    with pytest.raises(errors.SharedStoreError, match="holds another store"):
        open_store(url, tmp_path / "cache", settings=StoreSettings(64))


def test_a_damaged_local_copy_of_a_shard_is_fetched_again(on_s3, tmp_path):
    server, url, options = on_s3
    store = open_store(url, tmp_path / "cache", options)
    path = "folder/img_5.jpg"
    number = int(store.shard_numbers(keys_of([path]))[0])
    shard = store.shards[number]
    assert np.array_equal(store.get(path), IMAGES[path])
    local = tmp_path / "cache" / shard.name
    data = bytearray(local.read_bytes())
    at = bytes(data).index(IMAGES[path].tobytes())
    data[at] ^= 0xFF  # a bit flipped on the disk: the size still matches
    local.write_bytes(bytes(data))
    assert np.array_equal(store.get(path), IMAGES[path])
    assert shard_gets(server, shard.name) == 2


def test_a_damaged_image_in_the_store_itself_reads_as_missing_with_a_warning(tmp_path, caplog):
    url = str(tmp_path / "store")
    write_shared_store(url, IMAGES, settings=SETTINGS, export="m1", with_xxh3=False)
    store = open_store(url, tmp_path / "cache")
    path = "folder/img_7.jpg"
    shard = store.shards[int(store.shard_numbers(keys_of([path]))[0])]
    remote = tmp_path / "store" / "shards" / shard.name
    data = bytearray(remote.read_bytes())
    data[bytes(data).index(IMAGES[path].tobytes())] ^= 0xFF
    remote.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="vl_datasets"):
        assert store.get(path) is None
    assert path in caplog.text and "damaged" in caplog.text
    others = [p for p in IMAGES if p != path]
    assert all(np.array_equal(store.get(p), IMAGES[p]) for p in others)


def test_a_damaged_record_in_the_store_s_index_reads_as_missing_not_as_a_huge_allocation(tmp_path, caplog):
    """A flipped bit in a record's height made the read allocate terabytes: a MemoryError blamed
    on the healthy original (and the image skipped under on_error='skip')."""
    url = str(tmp_path / "store")
    write_shared_store(url, IMAGES, settings=SETTINGS, export="m1")
    path = "folder/img_7.jpg"
    for index in (tmp_path / "store" / "index").glob("*.npy"):  # the share whose index holds it
        records = np.load(index)
        found = np.flatnonzero(records["lo"] == keys_of([path])[0, 1])
        if len(found):
            records["height"][found[0]] |= 1 << 31  # and the width: terabytes asked for
            records["width"][found[0]] |= 1 << 24
            np.save(index, records)
    store = open_store(url, tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="vl_datasets"):
        assert store.get(path) is None
    assert path in caplog.text and "damaged" in caplog.text
    assert all(np.array_equal(store.get(p), IMAGES[p]) for p in IMAGES if p != path)


def test_a_share_listing_a_shard_without_its_size_is_a_damaged_store(tmp_path):
    url = str(tmp_path / "store")
    write_shared_store(url, IMAGES, settings=SETTINGS, export="m1")
    share = sorted((tmp_path / "store" / "shares").glob("*.json"))[0]
    share.write_text(share.read_text().replace('"bytes"', '"bites"', 1))
    with pytest.raises(errors.SharedStoreError, match=r"shares/.*lists a shard without a name and a size"):
        open_store(url, tmp_path / "cache")


def read_in_child(store, path, results):
    results.put(np.array_equal(store.get(path), IMAGES[path]))


def test_a_store_pickles_small_and_a_worker_maps_this_machine_s_index(on_s3, tmp_path):
    server, url, options = on_s3
    store = open_store(url, tmp_path / "cache", options)
    blob = pickle.dumps(store)
    assert len(blob) < 8192, f"a store pickles to {len(blob)} bytes: its settings and paths, never its index"
    assert SECRET not in repr(store)
    before = list(server.requests)
    results = FORK.Queue()
    child = FORK.Process(target=read_in_child, args=(pickle.loads(blob), "folder/img_1.jpg", results))
    child.start()
    child.join(60)
    assert child.exitcode == 0 and results.get(timeout=5)
    fetched = [r for r in server.requests[len(before) :] if "/shards/" not in r]
    assert fetched == [], f"a worker read the store's files again: {fetched}"


def test_a_shard_that_cannot_be_fetched_raises_its_typed_error_and_rests_a_while(on_s3, tmp_path, monkeypatch):
    server, url, options = on_s3
    store = open_store(url, tmp_path / "cache", options)
    server.slow_down_next(100)
    with pytest.raises(errors.ShardReadError) as caught:
        store.get("folder/img_2.jpg")
    assert "gave up after 2 of 2 attempts" in str(caught.value) and SECRET not in str(caught.value)
    server.slow_down_next(0)
    before = server.object_requests()
    with pytest.raises(errors.ShardReadError):  # its other images fail at once: no attempts spent on each
        store.get("folder/img_2.jpg")
    assert server.object_requests() == before
    monkeypatch.setattr(shared_store_module, "RETRY_FAILED_S", 0.0)
    assert np.array_equal(store.get("folder/img_2.jpg"), IMAGES["folder/img_2.jpg"])
